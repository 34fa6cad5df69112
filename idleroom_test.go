package wsroom_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
)

// BenchmarkIdleRoom reports what a room of a Registry costs once its last
// client has left and until the idle timeout forgets it: heap and goroutine
// stacks per room (B/room) and goroutines per room. Each of the rooms is
// made by a client's handshake, joined and left once.
func BenchmarkIdleRoom(b *testing.B) {
	const n = 1000
	g := wsroom.NewRegistry(wsroom.WithIdleTimeout(time.Hour), wsroom.WithPing(0, 0))
	mux := http.NewServeMux()
	mux.Handle("GET /rooms/{name}", g.Handler(nil))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	defer g.Close()
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/rooms/"

	// One room first, so that what every room shares is counted before.
	joinAndLeave(b, g, url, "warm")
	before, goroutines := serverMemory(), runtime.NumGoroutine()
	for i := range n {
		joinAndLeave(b, g, url, fmt.Sprintf("r%d", i))
	}
	// The server's side of each connection ends after the room counts the
	// leave: wait for its goroutines.
	settle := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > goroutines+2*n && time.Now().Before(settle) {
		time.Sleep(time.Millisecond)
	}
	after, goroutinesAfter := serverMemory(), runtime.NumGoroutine()
	if got := len(g.Rooms()); got != n+1 {
		b.Fatalf("registry holds %d rooms, want %d", got, n+1)
	}
	for b.Loop() {
	}
	b.ReportMetric(float64(int64(after)-int64(before))/n, "B/room")
	b.ReportMetric(float64(goroutinesAfter-goroutines)/n, "goroutines/room")
}

// joinAndLeave joins a client to the room called name and closes it once
// the room counts it, then waits until the room has no client.
func joinAndLeave(b *testing.B, g *wsroom.Registry, url, name string) {
	c, _, err := websocket.Dial(b.Context(), url+name, nil)
	if err != nil {
		b.Fatalf("Dial: %v", err)
	}
	r, err := g.Room(name)
	if err != nil {
		b.Fatal(err)
	}
	for r.Len() == 0 {
		time.Sleep(100 * time.Microsecond)
	}
	c.Close(websocket.StatusNormalClosure, "")
	for r.Len() != 0 {
		time.Sleep(100 * time.Microsecond)
	}
}
