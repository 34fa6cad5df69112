package wsroom_test

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// This file holds the client side of the model test (model_test.go): a
// WebSocket connection whose frames a goroutine of its own reads and
// records, and which the test can stop reading for a while.

// wsConn is one client connection of the model test. Its reader records
// every frame; the test goroutine checks them later, in order.
type wsConn struct {
	name string // the client's name and the connection's number, as "m0#2"
	ws   *websocket.Conn
	done chan struct{} // closed when the reader has stopped
	gate gate

	mu     sync.Mutex
	frames [][]byte
	err    error // why the reader stopped

	// The test goroutine's.
	byTest     bool // the test closed it (or ends the run)
	pausedEver bool // it stopped reading for a while (the slow action)
	seen       int  // frames checked so far
	ended      bool // its end was checked
}

func newWSConn(name string, ws *websocket.Conn) *wsConn {
	c := &wsConn{name: name, ws: ws, done: make(chan struct{})}
	ws.SetReadLimit(1 << 20) // the slow action's messages are big
	go c.read()
	return c
}

func (c *wsConn) read() {
	defer close(c.done)
	for {
		c.gate.wait()
		_, b, err := c.ws.Read(context.Background())
		c.mu.Lock()
		if err != nil {
			c.err = err
			c.mu.Unlock()
			return
		}
		c.frames = append(c.frames, b)
		c.mu.Unlock()
	}
}

// unread returns the frames not checked yet, marks them checked, and reports
// whether the reader had stopped before them (so they are the last ones),
// with its error.
func (c *wsConn) unread() (frames [][]byte, stopped bool, err error) {
	select {
	case <-c.done:
		stopped = true
	default:
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	frames = c.frames[c.seen:]
	c.seen = len(c.frames)
	return frames, stopped, c.err
}

// live reports whether the reader still runs.
func (c *wsConn) live() bool {
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

// closeNow drops the connection, as a client that goes away does.
func (c *wsConn) closeNow() {
	c.byTest = true
	c.gate.open()
	c.ws.CloseNow()
}

// waitDone waits for the reader to stop, up to 10 seconds.
func (c *wsConn) waitDone() bool {
	select {
	case <-c.done:
		return true
	case <-time.After(10 * time.Second):
		return false
	}
}

// gate stops a reader while it is shut.
type gate struct {
	mu sync.Mutex
	ch chan struct{} // not nil while shut
}

func (g *gate) shut() {
	g.mu.Lock()
	if g.ch == nil {
		g.ch = make(chan struct{})
	}
	g.mu.Unlock()
}

func (g *gate) open() {
	g.mu.Lock()
	if g.ch != nil {
		close(g.ch)
		g.ch = nil
	}
	g.mu.Unlock()
}

func (g *gate) wait() {
	g.mu.Lock()
	ch := g.ch
	g.mu.Unlock()
	if ch != nil {
		<-ch
	}
}

// Socket buffers are kept small, so that a client that stops reading fills
// its queue on the server after a few big messages instead of megabytes:
// the server's send buffers are fixed (no autotuning), and so are the
// clients' receive buffers, at a size above the loopback MSS (64 KiB), as
// a smaller one stalls a reading client for 200 ms at a time (the
// receiver's silly window avoidance waits for the sender's probe).
const (
	serverSendBuffer    = 16 << 10
	clientReceiveBuffer = 64 << 10
)

// smallBufferClient returns an HTTP client whose connections have a fixed
// receive buffer.
func smallBufferClient() *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetReadBuffer(clientReceiveBuffer)
			}
			return c, err
		},
	}
	return &http.Client{Transport: tr}
}

// smallSendListener accepts connections with a fixed send buffer.
type smallSendListener struct{ net.Listener }

func (l smallSendListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(serverSendBuffer)
	}
	return c, err
}
