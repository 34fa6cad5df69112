//go:build unix

package wsroom

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// A frame the socket took only part of must go out whole before anything
// else: before a ping, instead of being dropped by DropOldest, and before
// the close frame of a discarding close.
func TestPartialWriteKeepsFramesWhole(t *testing.T) {
	big := bytes.Repeat([]byte("a"), 4<<20) // more than any socket buffer
	tests := []struct {
		name      string
		opts      []Option
		after     func(c *Client, r *Room)
		want      []string
		wantClose websocket.StatusCode
	}{
		{
			name: "DropOldest",
			opts: []Option{WithSendBuffer(1), WithSlowPolicy(DropOldest)},
			after: func(c *Client, r *Room) {
				c.enqueue(outFrame{data: r.newFrame([]byte("b"))}, false)
				c.enqueue(outFrame{data: r.newFrame([]byte("c"))}, false) // drops b
			},
			want: []string{"big", "c"},
		},
		{
			name: "CloseSlow",
			opts: []Option{WithSendBuffer(1)},
			after: func(c *Client, r *Room) {
				c.enqueue(outFrame{data: r.newFrame([]byte("b"))}, false)
				c.enqueue(outFrame{data: r.newFrame([]byte("c"))}, false) // closes
			},
			want:      []string{"big"},
			wantClose: websocket.StatusPolicyViolation,
		},
		{
			name: "ping",
			after: func(c *Client, r *Room) {
				go c.conn.Ping(context.Background())
			},
			want: []string{"big"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prev := runtime.GOMAXPROCS(1) // the inline write path
			defer runtime.GOMAXPROCS(prev)
			room := New(append(tt.opts, WithPing(0, 0))...)
			defer room.Close()
			srv := httptest.NewServer(room.Handler())
			defer srv.Close()
			conn := dialSmallBuffer(t, "ws"+strings.TrimPrefix(srv.URL, "http"))
			conn.SetReadLimit(8 << 20)
			deadline := time.Now().Add(10 * time.Second)
			for room.Len() == 0 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			c := room.Clients()[0]
			if !c.enqueue(outFrame{data: room.newFrame(big)}, true) {
				t.Fatal("enqueue of the big frame failed")
			}
			tt.after(c, room)

			var got []string
			var err error
			for {
				var b []byte
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, b, err = conn.Read(ctx)
				cancel()
				if err != nil {
					break
				}
				switch {
				case bytes.Equal(b, big):
					got = append(got, "big")
				default:
					got = append(got, string(b[:min(len(b), 10)]))
				}
				if len(got) == len(tt.want) && tt.wantClose == 0 {
					break
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("client read %v (then %v), want %v", got, err, tt.want)
			}
			if tt.wantClose != 0 && websocket.CloseStatus(err) != tt.wantClose {
				t.Errorf("client closed with %v, want %v", err, tt.wantClose)
			}
		})
	}
}

// dialSmallBuffer dials with a small receive buffer, so that the server's
// writes to it fill up quickly.
func dialSmallBuffer(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	d := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return errors.Join(err, serr)
	}}
	hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	c, _, err := websocket.Dial(t.Context(), url, &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}
