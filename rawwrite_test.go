//go:build unix

package wsroom

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// tryWrite writes to the socket's descriptor itself. Once the connection is
// closed, the descriptor number may name a new socket at once: no write
// under way when Close was called, nor any later one, may reach it.
func TestRawWriteStopsAtClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pair := func() (net.Conn, net.Conn) {
		t.Helper()
		a, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		b, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return a, b
	}
	for round := range 50 {
		peer, server := pair()
		fc := newFrameConn(server, time.Second, true)
		if fc.fd < 0 {
			t.Fatal("no descriptor for a TCP connection")
		}
		// Writers keep writing until a write fails, or the round ends; the
		// peer drains what they wrote.
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for range 4 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					if _, _, err := fc.tryWrite([]byte("old")); err != nil {
						if !errors.Is(err, net.ErrClosed) {
							t.Errorf("round %d: write error %v, want net.ErrClosed", round, err)
						}
						return
					}
				}
			})
		}
		go func() {
			buf := make([]byte, 4096)
			for {
				if _, err := peer.Read(buf); err != nil {
					return
				}
			}
		}()
		time.Sleep(time.Millisecond)
		fc.Close()
		// New sockets, some of which take the closed one's number, while
		// the writers may still be running.
		var fresh []net.Conn
		for range 4 {
			a, b := pair()
			fresh = append(fresh, a, b)
		}
		time.Sleep(time.Millisecond)
		for _, c := range fresh {
			c.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
			buf := make([]byte, 16)
			if n, err := c.Read(buf); err == nil || n > 0 {
				t.Fatalf("round %d: a new socket read %q, written after its descriptor's old socket was closed", round, buf[:n])
			}
			c.Close()
		}
		close(stop)
		wg.Wait()
		peer.Close()
	}
}
