// Command server is a wsroom server for the tests of the JavaScript client.
// It listens on a random loopback port, prints "listening on http://ADDR"
// and serves, with the JSON codec:
//
//	GET  /rooms/{name}         one room per connection (Registry.Handler)
//	GET  /ws                   many rooms per connection (wsroom.v3)
//	GET  /fault/{scenario}     protocoltest.FaultServer: a wsroom.v3 server
//	                           that misbehaves as the scenario says; without
//	                           a WebSocket upgrade, the log of the session
//	                           (?session=S) as JSON, or with do=drop it
//	                           drops the session's connections
//	POST /ctl/publish?room=R   publishes the request body (JSON) to R
//	POST /ctl/drop[?hold=1]    cuts every WebSocket at the TCP level, as a
//	                           network failure would; with hold=1 it also
//	                           refuses WebSocket handshakes (503) until
//	                           /ctl/accept
//	POST /ctl/accept           accepts handshakes again
//	POST /ctl/reset            forgets every room's history: the next
//	                           message starts a new epoch
//	POST /ctl/kick?room=R      removes every client of many rooms from R
//
// Each room keeps the last -history messages, and lives -idle without
// clients. The server stops when its
// standard input closes, so that it never outlives the test that started it.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/protocoltest"
)

func main() {
	history := flag.Int("history", 20, "messages kept per room")
	idle := flag.Duration("idle", 0, "how long a room without clients lives (0: the default)")
	flag.Parse()

	store := &resetStore{limit: *history}
	store.Reset()
	rooms := wsroom.NewRegistry(
		wsroom.WithCodec(wsroom.JSON()),
		wsroom.WithStore(store),
		wsroom.WithAuthorize(func(r *http.Request) (any, error) {
			// The user's name, if given, is the member info.
			return r.URL.Query().Get("user"), nil
		}),
		wsroom.WithMaxRoomsPerClient(8),
		wsroom.WithIdleTimeout(*idle),
	)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	ws := &hijacked{conns: make(map[net.Conn]struct{})}
	var hold atomic.Bool
	refusing := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if hold.Load() {
				http.Error(w, "held by the test", http.StatusServiceUnavailable)
				return
			}
			h.ServeHTTP(w, r)
		})
	}

	mux := http.NewServeMux()
	mux.Handle("GET /rooms/{name}", refusing(rooms.Handler(nil)))
	mux.Handle("GET /ws", refusing(rooms.MuxHandler()))
	mux.Handle("GET /fault/", protocoltest.NewFaultServer())
	mux.HandleFunc("POST /ctl/publish", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := rooms.Publish(r.Context(), r.URL.Query().Get("room"), body); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("POST /ctl/drop", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("hold") == "1" {
			hold.Store(true)
		}
		fmt.Fprintln(w, ws.closeAll())
	})
	mux.HandleFunc("POST /ctl/accept", func(w http.ResponseWriter, r *http.Request) {
		hold.Store(false)
	})
	mux.HandleFunc("POST /ctl/reset", func(w http.ResponseWriter, r *http.Request) {
		store.Reset()
	})
	mux.HandleFunc("POST /ctl/kick", func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("room")
		room, err := rooms.Room(name)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		n := 0
		for _, c := range room.Clients() {
			if c.Leave(name) == nil {
				n++
			}
		}
		fmt.Fprintln(w, n)
	})

	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ConnState: ws.track}
	go func() {
		io.Copy(io.Discard, os.Stdin)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		rooms.Shutdown(ctx)
		srv.Close()
	}()
	fmt.Printf("listening on http://%s\n", ln.Addr())
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		log.Fatal(err)
	}
}

// resetStore is a MemoryStore that can forget everything, as a store whose
// engine lost its data would.
type resetStore struct {
	limit int
	mu    sync.Mutex
	s     *wsroom.MemoryStore
}

func (rs *resetStore) Reset() {
	rs.mu.Lock()
	rs.s = wsroom.NewMemoryStore(rs.limit, 0)
	rs.mu.Unlock()
}

func (rs *resetStore) cur() *wsroom.MemoryStore {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.s
}

func (rs *resetStore) Append(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	return rs.cur().Append(ctx, room, m)
}

func (rs *resetStore) After(ctx context.Context, room, epoch string, seq uint64, limit int) ([]wsroom.Message, error) {
	return rs.cur().After(ctx, room, epoch, seq, limit)
}

func (rs *resetStore) Last(ctx context.Context, room string, n int) ([]wsroom.Message, error) {
	return rs.cur().Last(ctx, room, n)
}

// hijacked keeps every connection handed over to WebSocket, so that the
// test can cut them all; the HTTP connections of /ctl/ stay.
type hijacked struct {
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func (h *hijacked) track(c net.Conn, state http.ConnState) {
	if state == http.StateHijacked {
		h.mu.Lock()
		h.conns[c] = struct{}{}
		h.mu.Unlock()
	}
}

// closeAll closes every connection and returns how many there were.
func (h *hijacked) closeAll() int {
	h.mu.Lock()
	conns := h.conns
	h.conns = make(map[net.Conn]struct{})
	h.mu.Unlock()
	for c := range conns {
		c.Close()
	}
	return len(conns)
}
