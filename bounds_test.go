package wsroom_test

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
)

// A connection of many rooms may make WithMaxNewRooms' perConn rooms: a
// join that would make one more gets too_many_rooms, a join of a room that
// exists does not count, and a room it made counts until the registry
// forgets it (the idle timeout after its last client left).
func TestMaxNewRoomsPerConnection(t *testing.T) {
	f := newMux(t, wsroom.WithMaxNewRooms(2, -1), wsroom.WithIdleTimeout(50*time.Millisecond))
	other := f.dial(t)
	send(t, other, `{"op":"join","room":"x"}`)
	expect(t, other, "joined")

	c := f.dial(t)
	for _, room := range []string{"a", "b", "x"} { // x exists: not made by c
		send(t, c, fmt.Sprintf(`{"op":"join","room":%q}`, room))
		expect(t, c, "joined")
	}
	send(t, other, `{"op":"join","room":"a"}`) // a exists: not made by other
	expect(t, other, "joined")
	send(t, c, `{"op":"join","room":"c","id":"j"}`)
	if e := expect(t, c, "error"); e.Code != "too_many_rooms" || e.ID != "j" {
		t.Fatalf("join of a third new room = %+v, want error too_many_rooms for j", e)
	}
	if _, err := f.reg.Room("c"); err != nil { // server code is not capped
		t.Fatalf("Registry.Room(c) = %v", err)
	}

	send(t, c, `{"op":"leave","room":"a"}`)
	expect(t, c, "left")
	send(t, c, `{"op":"join","room":"d","id":"j2"}`)
	if e := expect(t, c, "error"); e.Code != "too_many_rooms" {
		t.Fatalf("join while a room c made is still held = %+v, want too_many_rooms", e)
	}
	send(t, other, `{"op":"leave","room":"a"}`)
	expect(t, other, "left")
	waitUntil(t, "room a is forgotten", func() bool {
		for _, r := range f.reg.Rooms() {
			if r.Name() == "a" {
				return false
			}
		}
		return true
	})
	send(t, c, `{"op":"join","room":"d"}`)
	expect(t, c, "joined")
}

// The connections of one identity, of many rooms or of one, together make
// at most WithMaxNewRooms' perIdentity rooms; a new room over it gets
// too_many_rooms or 503, and another identity is not held up.
func TestMaxNewRoomsPerIdentity(t *testing.T) {
	g := wsroom.NewRegistry(wsroom.WithMaxNewRooms(-1, 2),
		wsroom.WithAuthorize(func(r *http.Request) (any, error) { return r.URL.Query().Get("user"), nil }))
	t.Cleanup(func() { g.Close() })
	mux := http.NewServeMux()
	mux.Handle("GET /rooms/{name}", g.Handler(nil))
	mux.Handle("GET /mux", g.MuxHandler())
	srv := newServer(t, mux)
	base := "ws" + strings.TrimPrefix(srv.URL, "http")
	dialMux := func(user string) *websocket.Conn {
		c, _, err := websocket.Dial(t.Context(), base+"/mux?user="+user, &websocket.DialOptions{Subprotocols: []string{wsroom.Subprotocol}})
		if err != nil {
			t.Fatalf("Dial mux: %v", err)
		}
		t.Cleanup(func() { c.CloseNow() })
		expectHello(t, c)
		return c
	}
	dialRoom := func(room, user string) (int, error) {
		c, resp, err := websocket.Dial(t.Context(), base+"/rooms/"+room+"?user="+user, nil)
		if err == nil {
			t.Cleanup(func() { c.CloseNow() })
			waitUntil(t, "the client is in "+room, func() bool { r, _ := g.Room(room); return r.Len() > 0 })
			return http.StatusSwitchingProtocols, nil
		}
		if resp == nil {
			return 0, err
		}
		return resp.StatusCode, err
	}

	if code, err := dialRoom("a", "alice"); code != http.StatusSwitchingProtocols {
		t.Fatalf("alice's first room: %d %v", code, err)
	}
	m := dialMux("alice") // another connection of alice
	send(t, m, `{"op":"join","room":"b"}`)
	expect(t, m, "joined")
	send(t, m, `{"op":"join","room":"c"}`)
	if e := expect(t, m, "error"); e.Code != "too_many_rooms" {
		t.Fatalf("alice's third new room over many rooms = %+v, want too_many_rooms", e)
	}
	if code, _ := dialRoom("c", "alice"); code != http.StatusServiceUnavailable {
		t.Errorf("alice's third new room over one room: status %d, want 503", code)
	}
	if code, err := dialRoom("b", "alice"); code != http.StatusSwitchingProtocols {
		t.Errorf("alice joining a room that exists: %d %v, want the upgrade", code, err)
	}
	if code, err := dialRoom("c", "bob"); code != http.StatusSwitchingProtocols {
		t.Errorf("bob's first room: %d %v, want the upgrade", code, err)
	}
	send(t, m, `{"op":"join","room":"c"}`) // made by bob now
	expect(t, m, "joined")
}

// MaxHistoryRooms forgets the least recently written rooms' histories past
// the bound.
func TestMemoryStoreMaxRooms(t *testing.T) {
	ctx := t.Context()
	s := wsroom.NewMemoryStore(0, 0, wsroom.MaxHistoryRooms(2))
	epochs := map[string]string{}
	for _, room := range []string{"a", "b", "a", "c"} { // b is the least recently written
		m, err := s.Append(ctx, room, wsroom.Message{Data: []byte(room)})
		if err != nil {
			t.Fatal(err)
		}
		epochs[room] = m.Epoch
	}
	if got, _ := s.Last(ctx, "b", 10); len(got) != 0 {
		t.Errorf("b's history kept past the bound: %v", got)
	}
	if _, err := s.After(ctx, "b", epochs["b"], 0, 0); !errors.Is(err, wsroom.ErrGap) {
		t.Errorf("After in b's forgotten epoch = %v, want ErrGap", err)
	}
	for room, n := range map[string]int{"a": 2, "c": 1} {
		if got, _ := s.Last(ctx, room, 10); len(got) != n {
			t.Errorf("Last(%s) = %d messages, want %d", room, len(got), n)
		}
	}
	if m, _ := s.Append(ctx, "b", wsroom.Message{}); m.Seq != 1 || m.Epoch == epochs["b"] {
		t.Errorf("b's next message = %s:%d, want seq 1 in a new epoch", m.Epoch, m.Seq)
	}
}

// MaxHistoryBytes forgets the least recently written rooms' histories past
// the bound and, for a room alone over it, its oldest messages.
func TestMemoryStoreMaxBytes(t *testing.T) {
	ctx := t.Context()
	_, per := wsroom.MemoryStoreBytes(wsroom.NewMemoryStore(0, 0))
	const data = 100
	size := per + data
	s := wsroom.NewMemoryStore(0, 0, wsroom.MaxHistoryBytes(10*size))
	payload := make([]byte, data)
	for _, room := range []string{"a", "b"} {
		for range 5 {
			if _, err := s.Append(ctx, room, wsroom.Message{Data: payload}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if total, _ := wsroom.MemoryStoreBytes(s); total != 10*size {
		t.Fatalf("10 messages count %d bytes, want %d", total, 10*size)
	}
	s.Append(ctx, "c", wsroom.Message{Data: payload}) // over: a goes
	if got, _ := s.Last(ctx, "a", 10); len(got) != 0 {
		t.Errorf("a's history kept past the byte bound: %d messages", len(got))
	}
	if got, _ := s.Last(ctx, "b", 10); len(got) != 5 {
		t.Errorf("b's history = %d messages, want 5", len(got))
	}
	for range 20 { // c alone over the bound: only its newest messages stay
		s.Append(ctx, "c", wsroom.Message{Data: payload})
	}
	total, _ := wsroom.MemoryStoreBytes(s)
	got, _ := s.Last(ctx, "c", 100)
	if total > 10*size || len(got) == 0 || got[len(got)-1].Seq != 21 {
		t.Errorf("after 21 messages to c: %d bytes (bound %d), c keeps %d messages", total, 10*size, len(got))
	}
	big := wsroom.NewMemoryStore(0, 0, wsroom.MaxHistoryBytes(size)) // a message bigger than the bound is kept alone
	for range 3 {
		big.Append(ctx, "r", wsroom.Message{Data: make([]byte, 2*data)})
	}
	if got, _ := big.Last(ctx, "r", 10); len(got) != 1 || got[0].Seq != 3 {
		t.Errorf("a store whose bound holds no message keeps %d, want the last", len(got))
	}
}

// A client resuming into a room whose history the store forgot, and a
// client of that room when its next message starts a new epoch, are
// resynchronised (4000), not left silent.
func TestEvictedHistoryResyncs(t *testing.T) {
	store := wsroom.NewMemoryStore(0, 0, wsroom.MaxHistoryRooms(1))
	g := wsroom.NewRegistry(wsroom.WithStore(store), wsroom.WithCodec(wsroom.JSON()))
	t.Cleanup(func() { g.Close() })
	srv := newServer(t, g.Handler(func(r *http.Request) string { return strings.TrimPrefix(r.URL.Path, "/") }))
	base := "ws" + strings.TrimPrefix(srv.URL, "http") + "/"
	c := dialURL(t, base+"a")
	a, _ := g.Room("a")
	waitUntil(t, "the client is in a", func() bool { return a.Len() == 1 })
	if err := g.Publish(t.Context(), "a", []byte(`1`)); err != nil {
		t.Fatal(err)
	}
	seen := readEnvelope(t, c)
	if err := g.Publish(t.Context(), "b", []byte(`1`)); err != nil { // a's history goes
		t.Fatal(err)
	}
	if got, _ := store.Last(t.Context(), "a", 1); len(got) != 0 {
		t.Fatalf("a's history kept: %v", got)
	}
	r := dialURL(t, fmt.Sprintf("%sa?resume=%s:%d", base, seen.Epoch, seen.Seq))
	if got, _ := closeStatus(t, r); got != wsroom.StatusResync {
		t.Errorf("resume into the forgotten history: close %v, want StatusResync", got)
	}
	if err := g.Publish(t.Context(), "a", []byte(`2`)); err != nil { // a new epoch
		t.Fatal(err)
	}
	if got, _ := closeStatus(t, c); got != wsroom.StatusResync {
		t.Errorf("client of a when its history started again: close %v, want StatusResync", got)
	}
}
