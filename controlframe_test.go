package wsroom

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// recordingConn records every Write made to it.
type recordingConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, append([]byte(nil), p...))
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *recordingConn) recorded() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.writes...)
}

// recordingWriter hands out the hijacked connection as a recordingConn.
type recordingWriter struct {
	http.ResponseWriter
	conn *recordingConn
}

func (w *recordingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.conn = &recordingConn{Conn: nc}
	return w.conn, brw, nil
}

// TestControlFramesAreWrittenWhole pins what framed writes rely on and
// coder/websocket does not document: behind the hijackWriter of a room that
// frames messages itself, coder/websocket writes each control frame (ping,
// pong, close; the close frame with the longest reason there is) whole, in
// one Write call, so that frameConn.Write sees a frame's first byte at the
// start of every call and never a frame in pieces. A coder/websocket
// release that splits a control frame, or a write buffer too small for
// one, fails this test.
func TestControlFramesAreWrittenWhole(t *testing.T) {
	reason := strings.Repeat("r", maxReason)
	type served struct {
		conn *websocket.Conn
		rec  *recordingConn
	}
	accepted := make(chan served, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rw := &recordingWriter{ResponseWriter: w}
		hw := &hijackWriter{ResponseWriter: rw, timeout: 10 * time.Second} // no compression: framed
		conn, err := websocket.Accept(hw, r, nil)
		if err != nil {
			t.Errorf("Accept: %v", err)
			return
		}
		accepted <- served{conn, rw.conn}
	}))
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer client.CloseNow()
	clientCtx := client.CloseRead(ctx) // the client answers pings and the close
	var s served
	select {
	case s = <-accepted:
	case <-ctx.Done():
		t.Fatal("the server did not accept the connection")
	}
	defer s.conn.CloseNow()
	serverRead := make(chan error, 1)
	go func() { // the server answers pings and reads the close reply
		for {
			if _, _, err := s.conn.Read(ctx); err != nil {
				serverRead <- err
				return
			}
		}
	}()

	for i := range 3 {
		if err := s.conn.Ping(ctx); err != nil { // a ping from the server
			t.Fatalf("server ping %d: %v", i, err)
		}
		if err := client.Ping(ctx); err != nil { // the server's pong
			t.Fatalf("client ping %d: %v", i, err)
		}
	}
	if err := s.conn.Close(websocket.StatusNormalClosure, reason); err != nil {
		t.Fatalf("server close: %v", err)
	}
	<-serverRead
	<-clientCtx.Done()

	seen := map[byte]int{}
	for i, p := range s.rec.recorded() {
		if len(p) < 2 {
			t.Fatalf("write %d is %d bytes: %x", i, len(p), p)
		}
		op, fin, n := p[0]&0x0f, p[0]&0x80 != 0, int(p[1]&0x7f)
		if op < opClose || !fin || p[1]&0x80 != 0 || n > 125 {
			t.Fatalf("write %d does not begin a whole, unmasked control frame: %x", i, p)
		}
		if len(p) != 2+n {
			t.Fatalf("write %d is %d bytes, its control frame (opcode %#x) %d: the frame is split or joined to another", i, len(p), op, 2+n)
		}
		seen[op]++
	}
	const opPing = 0x9
	if seen[opPing] != 3 || seen[opPong] != 3 || seen[opClose] != 1 {
		t.Errorf("the server wrote %d pings, %d pongs and %d close frames, want 3, 3 and 1", seen[opPing], seen[opPong], seen[opClose])
	}
}
