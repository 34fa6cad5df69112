// Command minimal is the smallest broadcast server one writes directly on
// github.com/coder/websocket, in the manner of its chat example: a map of
// clients under a mutex, one writer goroutine per client fed by a buffered
// channel of 256 messages, one message per Write; a client whose channel is
// full is closed (1008).
package main

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom/bench/internal/serve"
)

type client struct {
	msgs      chan []byte
	closeSlow func()
}

type server struct {
	mu      sync.Mutex
	clients map[*client]struct{}
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	cl := &client{
		msgs: make(chan []byte, 256),
		closeSlow: func() {
			c.Close(websocket.StatusPolicyViolation, "connection too slow to keep up with messages")
		},
	}
	s.mu.Lock()
	s.clients[cl] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.clients, cl)
		s.mu.Unlock()
	}()

	go func() {
		defer cancel()
		for {
			select {
			case msg := <-cl.msgs:
				wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
				err := c.Write(wctx, websocket.MessageText, msg)
				wcancel()
				if err != nil {
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		typ, msg, err := c.Read(ctx)
		if err != nil {
			c.CloseNow()
			return
		}
		if typ == websocket.MessageText {
			s.publish(msg)
		}
	}
}

func (s *server) publish(msg []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for cl := range s.clients {
		select {
		case cl.msgs <- msg:
		default:
			go cl.closeSlow()
		}
	}
}

func main() {
	serve.Main("minimal", &server{clients: map[*client]struct{}{}})
}
