// Package wspipe connects WebSocket clients to an http.Handler over
// in-memory pipes (net.Pipe), with no network, so tests can run inside a
// testing/synctest bubble where time is virtual.
package wspipe

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"

	"github.com/coder/websocket"
)

// Dial performs a WebSocket handshake with h over a fresh net.Pipe and
// returns the client side. The handler runs on a goroutine of its own for as
// long as it serves the connection. opts may be nil.
func Dial(ctx context.Context, h http.Handler, url string, opts *websocket.DialOptions) (*websocket.Conn, *http.Response, error) {
	var o websocket.DialOptions
	if opts != nil {
		o = *opts
	}
	o.HTTPClient = &http.Client{Transport: transport{h}}
	return websocket.Dial(ctx, url, &o)
}

type transport struct{ h http.Handler }

func (t transport) RoundTrip(r *http.Request) (*http.Response, error) {
	client, server := net.Pipe()
	w := &hijacker{ResponseRecorder: httptest.NewRecorder(), conn: server, hijacked: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		t.h.ServeHTTP(w, r)
	}()
	select {
	case <-w.hijacked:
	case <-done:
		select {
		case <-w.hijacked: // hijacked, then returned at once
		default:
			client.Close()
			server.Close()
			return w.Result(), nil
		}
	}
	resp := w.Result()
	resp.Body = client
	return resp, nil
}

type hijacker struct {
	*httptest.ResponseRecorder
	conn     net.Conn
	once     sync.Once
	hijacked chan struct{}
}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h.once.Do(func() { close(h.hijacked) })
	return h.conn, bufio.NewReadWriter(bufio.NewReader(h.conn), bufio.NewWriter(h.conn)), nil
}
