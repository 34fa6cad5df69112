// Command gws is a broadcast server on github.com/lxzan/gws, in the manner
// of its chatroom example: sessions in a map under a mutex, every text
// message broadcast to all of them with gws.Broadcaster (the frame is built
// once and queued to each connection's asynchronous writer).
package main

import (
	"net/http"
	"sync"

	"github.com/lxzan/gws"
	"github.com/wsroom/wsroom/bench/internal/serve"
)

type handler struct {
	gws.BuiltinEventHandler
	mu       sync.Mutex
	sessions map[*gws.Conn]struct{}
}

func (h *handler) OnOpen(c *gws.Conn) {
	h.mu.Lock()
	h.sessions[c] = struct{}{}
	h.mu.Unlock()
}

func (h *handler) OnClose(c *gws.Conn, err error) {
	h.mu.Lock()
	delete(h.sessions, c)
	h.mu.Unlock()
}

func (h *handler) OnMessage(c *gws.Conn, msg *gws.Message) {
	defer msg.Close()
	if msg.Opcode != gws.OpcodeText {
		return
	}
	b := gws.NewBroadcaster(gws.OpcodeText, msg.Bytes())
	defer b.Close()
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.sessions {
		b.Broadcast(s)
	}
}

func main() {
	h := &handler{sessions: map[*gws.Conn]struct{}{}}
	up := gws.NewUpgrader(h, &gws.ServerOption{})
	serve.Main("gws", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r)
		if err != nil {
			return
		}
		go c.ReadLoop()
	}))
}
