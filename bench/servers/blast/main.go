// Command blast is not a design under test: it is the reference that shows
// how fast the load tool can read. It speaks the same protocol (every text
// message is broadcast to every client) as cheaply as possible: the frame is
// built once, appended to each client's pending bytes, and each client's
// writer sends everything pending in one write. Frames from clients are
// parsed by hand and must be small (at most 125 bytes, unfragmented).
package main

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/wsroom/wsroom/bench/internal/serve"
)

type client struct {
	conn    net.Conn
	mu      sync.Mutex
	pending []byte
	wake    chan struct{}
}

type server struct {
	mu      sync.Mutex
	clients map[*client]struct{}
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		http.Error(w, "websocket only", http.StatusUpgradeRequired)
		return
	}
	sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
		base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n")
	if brw.Flush() != nil {
		conn.Close()
		return
	}
	c := &client{conn: conn, wake: make(chan struct{}, 1)}
	s.mu.Lock()
	s.clients[c] = struct{}{}
	s.mu.Unlock()
	done := make(chan struct{})
	go c.writeLoop(done)
	s.readLoop(c, brw.Reader)
	close(done)
	s.mu.Lock()
	delete(s.clients, c)
	s.mu.Unlock()
	conn.Close()
}

func (s *server) readLoop(c *client, br *bufio.Reader) {
	var hdr [6]byte
	var payload [125]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return
		}
		op, n := hdr[0]&0x0f, int(hdr[1]&0x7f)
		if hdr[0]&0x80 == 0 || hdr[1]&0x80 == 0 || n > 125 {
			return // fragmented, unmasked or large: not supported
		}
		p := payload[:n]
		if _, err := io.ReadFull(br, p); err != nil {
			return
		}
		for i := range p {
			p[i] ^= hdr[2+i&3]
		}
		switch op {
		case 0x1:
			frame := append([]byte{0x81, byte(n)}, p...)
			s.mu.Lock()
			for o := range s.clients {
				o.mu.Lock()
				o.pending = append(o.pending, frame...)
				o.mu.Unlock()
				select {
				case o.wake <- struct{}{}:
				default:
				}
			}
			s.mu.Unlock()
		case 0x8:
			return
		}
	}
}

func (c *client) writeLoop(done chan struct{}) {
	var out []byte
	for {
		select {
		case <-c.wake:
		case <-done:
			return
		}
		c.mu.Lock()
		out, c.pending = c.pending, out[:0]
		c.mu.Unlock()
		if _, err := c.conn.Write(out); err != nil {
			c.conn.Close()
			return
		}
	}
}

func main() {
	serve.Main("blast", &server{clients: map[*client]struct{}{}})
}
