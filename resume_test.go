package wsroom_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
)

// A client that reconnects with the last position it saw gets exactly the
// messages it missed, then live ones, with no gap or duplicate, even while
// messages are being published during the replay.
func TestResumeWhilePublishing(t *testing.T) {
	// A buffer large enough for the unpaced publisher below: this test is
	// about order across the replay, not about slow clients.
	f := newFixture(t, wsroom.WithCodec(wsroom.JSON()), wsroom.WithSendBuffer(1<<16), wsroom.WithStore(wsroom.NewMemoryStore(1<<16, 0)))
	a := f.dial(t, "")
	for i := range 3 {
		if err := f.room.Publish(t.Context(), fmt.Appendf(nil, "%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	var last envelope
	for range 3 {
		last = readEnvelope(t, a)
	}
	a.Close(websocket.StatusNormalClosure, "")
	waitUntil(t, "a left", func() bool { return f.room.Len() == 0 })

	for i := range 20 { // missed while away
		if err := f.room.Publish(t.Context(), fmt.Appendf(nil, "%d", 100+i)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	var published int
	wg.Go(func() { // keeps publishing during the reconnect and replay
		for ctx.Err() == nil && published < 5000 {
			if err := f.room.Publish(ctx, []byte("0")); err != nil {
				return
			}
			published++
		}
	})
	b := dialURL(t, fmt.Sprintf("%s?resume=%s:%d", f.url, last.Epoch, last.Seq))
	want := last.Seq + 1
	for want <= 200 {
		e := readEnvelope(t, b)
		if e.Seq != want || e.Epoch != last.Epoch {
			cancel()
			wg.Wait()
			t.Fatalf("resumed client got %s:%d, want %s:%d (no gap, no duplicate)", e.Epoch, e.Seq, last.Epoch, want)
		}
		want++
	}
	cancel()
	wg.Wait()
	if published < 100 {
		t.Logf("only %d messages published during the replay", published)
	}
}

// A resume the history cannot serve is refused with StatusResync, never
// answered with a silent gap.
func TestResumeRefused(t *testing.T) {
	f := newFixture(t, wsroom.WithCodec(wsroom.JSON()), wsroom.WithStore(wsroom.NewMemoryStore(5, 0)))
	probe := f.dial(t, "")
	for i := range 10 {
		if err := f.room.Publish(t.Context(), fmt.Appendf(nil, "%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	epoch := readEnvelope(t, probe).Epoch
	for _, tt := range []struct{ name, resume string }{
		{"trimmed", epoch + ":2"},
		{"other epoch", "someotherepoch:9"},
		{"future", epoch + ":11"},
	} {
		c := dialURL(t, f.url+"?resume="+tt.resume)
		if code, reason := closeStatus(t, c); code != wsroom.StatusResync {
			t.Errorf("%s: resume=%s closed with %v %q, want StatusResync", tt.name, tt.resume, code, reason)
		}
	}
	c := dialURL(t, f.url+"?resume="+epoch+":5") // 6..10 are kept
	for want := uint64(6); want <= 10; want++ {
		if e := readEnvelope(t, c); e.Seq != want {
			t.Fatalf("resume from 5 got seq %d, want %d", e.Seq, want)
		}
	}
	if got := f.room.Stats().Resyncs; got != 3 {
		t.Errorf("Stats().Resyncs = %d, want 3", got)
	}
}

func TestRegistryHandler(t *testing.T) {
	reg := wsroom.NewRegistry()
	mux := http.NewServeMux()
	mux.Handle("GET /rooms/{name}", reg.Handler(nil))
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		reg.Close()
		srv.Close()
	})
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/rooms/"
	a1, a2, b := dialURL(t, url+"alpha"), dialURL(t, url+"alpha"), dialURL(t, url+"beta")
	waitUntil(t, "3 clients", func() bool {
		n := 0
		for _, r := range reg.Rooms() {
			n += r.Len()
		}
		return n == 3
	})
	write(t, b, "to beta")
	write(t, a1, "to alpha")
	for _, c := range []*websocket.Conn{a1, a2} {
		if got := read(t, c); got != "to alpha" {
			t.Errorf("alpha client read %q, want %q", got, "to alpha")
		}
	}
	if got := read(t, b); got != "to beta" {
		t.Errorf("beta client read %q, want %q", got, "to beta")
	}
	_, resp, err := websocket.Dial(t.Context(), url+"bad%20name", nil)
	if err == nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("Dial with a bad room name: resp %v, err %v; want 400", resp, err)
	}
	if _, err := reg.Room("bad name"); err == nil {
		t.Errorf("Room(%q) succeeded, want the validator's error", "bad name")
	}
	a2.CloseNow()
	b.CloseNow()
	closed := make(chan error, 1)
	go func() { // a1 reads as a real client does, answering the close
		_, _, err := a1.Read(context.Background())
		closed <- err
	}()
	if err := reg.Shutdown(t.Context()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-closed; websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Errorf("client closed with %v after registry Shutdown, want 1001", err)
	}
	if _, err := reg.Room("alpha"); err != wsroom.ErrClosed {
		t.Errorf("Room after Shutdown = %v, want ErrClosed", err)
	}
}

func TestValidRoomName(t *testing.T) {
	for _, tt := range []struct {
		name string
		ok   bool
	}{
		{"lobby", true}, {"Room-1_b.c", true}, {strings.Repeat("a", 64), true},
		{"", false}, {".hidden", false}, {strings.Repeat("a", 65), false}, {"a b", false}, {"a/b", false}, {"é", false}, {"<script>", false},
	} {
		if err := wsroom.ValidRoomName(tt.name); (err == nil) != tt.ok {
			t.Errorf("ValidRoomName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}
