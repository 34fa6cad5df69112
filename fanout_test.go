package wsroom_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
)

// With more than one P, a room splits a fan-out to many clients among
// helpers (parts of at least 256 clients; 2 here) when no other message
// waits. Each client still gets every message, in the room's order,
// whichever part it is in and whether the loop wrote or queued it, and a
// client of many rooms in the same room gets the same messages.
func TestParallelFanout(t *testing.T) {
	defer wsroom.SetFanoutShard(2)()
	prev := runtime.GOMAXPROCS(4)
	defer runtime.GOMAXPROCS(prev)
	defer leakCheck(t)()

	reg := wsroom.NewRegistry(wsroom.WithHistory(0))
	mux := http.NewServeMux()
	mux.Handle("/room", reg.Handler(func(*http.Request) string { return "a" }))
	mux.Handle("/mux", reg.MuxHandler())
	srv := httptest.NewServer(mux)
	defer srv.Close()
	defer reg.Close()
	base := "ws" + strings.TrimPrefix(srv.URL, "http")

	m, _, err := websocket.Dial(t.Context(), base+"/mux", &websocket.DialOptions{Subprotocols: []string{wsroom.Subprotocol}})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer m.CloseNow()
	expectHello(t, m)
	send(t, m, `{"op":"join","room":"a"}`)
	expect(t, m, "joined")
	const clients, messages = 11, 100
	conns := make([]*websocket.Conn, clients)
	for i := range conns {
		conns[i] = dialURL(t, base+"/room")
		defer conns[i].CloseNow()
	}
	room, err := reg.Room("a")
	if err != nil {
		t.Fatalf("Room: %v", err)
	}
	waitUntil(t, "room has every client", func() bool { return room.Len() == clients+1 })
	publish := func(i int) {
		t.Helper()
		if err := room.Publish(t.Context(), fmt.Appendf(nil, "m%d", i)); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	check := func(from, to int) {
		t.Helper()
		for j, c := range conns {
			for i := from; i < to; i++ {
				if got, want := read(t, c), fmt.Sprintf("m%d", i); got != want {
					t.Fatalf("client %d message %d: got %q, want %q", j, i, got, want)
				}
			}
		}
		for i, g := range msgs(t, m, to-from) {
			if want := fmt.Sprintf(`a:%d:text:"m%d"`, from+i+1, from+i); g != want {
				t.Fatalf("client of many rooms, message %d: got %q, want %q", from+i, g, want)
			}
		}
	}
	// One at a time, so that the loop finds no other message waiting and
	// writes itself, in parts; then all at once, as under load, when it
	// only queues.
	for i := range messages {
		publish(i)
		check(i, i+1)
	}
	for i := messages; i < 2*messages; i++ {
		publish(i)
	}
	check(messages, 2*messages)
	for _, c := range conns {
		c.Close(websocket.StatusNormalClosure, "")
	}
	m.Close(websocket.StatusNormalClosure, "")
	reg.Close() // stops the room, its loop and the loop's helpers
	srv.Close()
}
