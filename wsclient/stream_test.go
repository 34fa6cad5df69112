package wsclient_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/go-cmp/cmp"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/wsclient"
)

// newStreamFixture serves one room per connection, the room named by the
// URL's path.
func newStreamFixture(t *testing.T, opts ...wsroom.Option) *fixture {
	t.Helper()
	return newFixtureOf(t, func(g *wsroom.Registry) http.Handler {
		return g.Handler(func(r *http.Request) string { return strings.TrimPrefix(r.URL.Path, "/") })
	}, opts...)
}

func dialStream(t *testing.T, url string, opts ...wsclient.Option) *wsclient.Stream {
	t.Helper()
	opts = append([]wsclient.Option{wsclient.WithBackoff(5*time.Millisecond, 50*time.Millisecond)}, opts...)
	s, err := wsclient.DialStream(t.Context(), url, opts...)
	if err != nil {
		t.Fatalf("DialStream: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func nextOf(t *testing.T, s *wsclient.Stream) wsclient.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	m, err := s.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return m
}

// A stream of one room resumes after each lost connection, and its reader
// gets every message once, in order, while the server keeps publishing;
// Send publishes.
func TestStreamResumes(t *testing.T) {
	f := newStreamFixture(t)
	s := dialStream(t, f.url+"/lobby")
	if err := s.Send(t.Context(), []byte(`"hi"`)); err != nil {
		t.Fatal(err)
	}
	if m := nextOf(t, s); short(m) != `1:"hi"` || m.From == "" {
		t.Fatalf("sent message = %+v", m)
	}
	const n = 200
	var published atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 2; i <= n; i++ {
			if err := f.reg.Publish(context.Background(), "lobby", fmt.Append(nil, i)); err != nil {
				t.Errorf("Publish: %v", err)
				return
			}
			published.Store(int32(i))
			if i%10 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	for k := 1; k <= 3; k++ {
		waitFor(t, "publishing to go on", func() bool { return published.Load() >= int32(k*n/5) })
		dials := f.dials.Load()
		f.drop()
		waitFor(t, "a reconnection", func() bool { return f.dials.Load() > dials })
	}
	<-done
	for i := 2; i <= n; i++ {
		if got, want := short(nextOf(t, s)), fmt.Sprintf("%d:%d", i, i); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
}

// A reader that falls behind its buffer still gets every message, once.
func TestStreamSlowReader(t *testing.T) {
	f := newStreamFixture(t)
	s := dialStream(t, f.url+"/lobby", wsclient.WithBuffer(4))
	if err := s.Send(t.Context(), []byte(`0`)); err != nil {
		t.Fatal(err)
	}
	nextOf(t, s) // connected
	for i := 2; i <= 40; i++ {
		publish(t, f.reg, "lobby", fmt.Sprint(i))
	}
	for i := 2; i <= 40; i++ {
		if got, want := short(nextOf(t, s)), fmt.Sprintf("%d:%d", i, i); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
}

// A resume the history cannot serve is reported, and the stream reconnects
// without resume, getting the room's recent history.
func TestStreamResync(t *testing.T) {
	f := newStreamFixture(t, wsroom.WithStore(wsroom.NewMemoryStore(3, 0)), wsroom.WithHistory(2))
	s := dialStream(t, f.url+"/lobby")
	publish(t, f.reg, "lobby", `1`)
	nextOf(t, s)
	f.refuse.Store(true)
	f.drop()
	for i := 2; i <= 8; i++ {
		publish(t, f.reg, "lobby", fmt.Sprint(i))
	}
	f.refuse.Store(false)
	var re *wsclient.ResyncError
	if _, err := s.Next(t.Context()); !errors.As(err, &re) {
		t.Fatalf("Next = %v, want a *ResyncError", err)
	}
	got := []string{short(nextOf(t, s)), short(nextOf(t, s))}
	if diff := cmp.Diff([]string{"7:7", "8:8"}, got); diff != "" {
		t.Errorf("after the resync (-want +got):\n%s", diff)
	}
}

// The stream follows the close codes: after 1013 it reconnects from its
// position; after 4000 with "resume=EPOCH:0" it reports a resync and
// resumes from the start of the new epoch. The server here is a script.
func TestStreamCloseCodes(t *testing.T) {
	resumes := make(chan string, 3)
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		resumes <- r.URL.Query().Get("resume")
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx := r.Context()
		switch n.Add(1) {
		case 1:
			c.Write(ctx, websocket.MessageText, []byte(`{"seq":7,"epoch":"E1","data":"a"}`))
			c.Close(websocket.StatusTryAgainLater, "wsroom: message not published, send it again")
		case 2:
			c.Close(wsclient.StatusResync, "wsroom: messages lost, resync resume=E2:0")
		default:
			c.Write(ctx, websocket.MessageText, []byte(`{"seq":1,"epoch":"E2","time":1795821121121,"data":"b"}`))
			c.Read(ctx) // until the client closes
		}
	}))
	defer srv.Close()
	s := dialStream(t, "ws"+strings.TrimPrefix(srv.URL, "http")+"/room?x=1")
	if got := short(nextOf(t, s)); got != `7:"a"` {
		t.Errorf("first message %s", got)
	}
	var re *wsclient.ResyncError
	if _, err := s.Next(t.Context()); !errors.As(err, &re) || !strings.Contains(re.Reason, "messages lost") {
		t.Errorf("Next = %v, want a *ResyncError", err)
	}
	m := nextOf(t, s)
	if short(m) != `1:"b"` || m.Epoch != "E2" || m.Time.UnixMilli() != 1795821121121 {
		t.Errorf("message of the new epoch = %+v", m)
	}
	s.Close()
	close(resumes)
	var got []string
	for r := range resumes {
		got = append(got, r)
	}
	if diff := cmp.Diff([]string{"", "E1:7", "E2:0"}, got); diff != "" {
		t.Errorf("resume parameters (-want +got):\n%s", diff)
	}
	if !errors.Is(s.Err(), wsclient.ErrClosed) {
		t.Errorf("Err() = %v", s.Err())
	}
}
