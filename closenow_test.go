package wsroom_test

import (
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/internal/wspipe"
)

// closeTime returns how long, in the bubble's virtual time, Room.Close
// takes for n compressed clients that never read, after each was sent
// messages it cannot take (its writer is stuck), or, if closing, was asked
// to close with nothing queued, so that coder/websocket's close handshake
// is under way for each, its close frame stuck.
func closeTime(t *testing.T, n int, closing bool) (d time.Duration) {
	synctest.Test(t, func(t *testing.T) {
		room := wsroom.New(wsroom.WithCompression(websocket.CompressionContextTakeover), wsroom.WithPing(0, 0))
		defer room.Close()
		h := room.Handler()
		for range n {
			c, _, err := wspipe.Dial(t.Context(), h, "ws://room.test/", &websocket.DialOptions{CompressionMode: websocket.CompressionContextTakeover})
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			defer c.CloseNow()
		}
		synctest.Wait()
		if got := room.Len(); got != n {
			t.Fatalf("room.Len() = %d, want %d", got, n)
		}
		if !closing {
			for i := range 4 {
				if err := room.Publish(t.Context(), []byte(strings.Repeat(fmt.Sprint(i), 1000))); err != nil {
					t.Fatalf("Publish: %v", err)
				}
			}
			synctest.Wait() // every writer is stuck on a peer that does not read
		} else {
			for _, c := range room.Clients() {
				c.Close(websocket.StatusNormalClosure, "bye")
			}
			synctest.Wait()
		}
		start := time.Now()
		room.Close()
		d = time.Since(start)
		if got := room.Len(); got != 0 {
			t.Errorf("after Close, room.Len() = %d", got)
		}
	})
	return d
}

// Room.Close closes every connection at once, also with compression, where
// coder/websocket closes a connection its own way: a client whose close
// handshake is under way (it was asked to close and does not answer) does
// not hold Close up for the handshake's timeout. The times are the bubble's
// virtual time, which moves only when every goroutine waits for it, so
// they do not depend on the machine's speed.
func TestCloseWaitsForNoCloseHandshake(t *testing.T) {
	for _, tt := range []struct {
		name    string
		closing bool
	}{
		{"writers stuck", false},
		{"close handshakes under way", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, n := range []int{1, 8} {
				d := closeTime(t, n, tt.closing)
				t.Logf("%d compressed clients that do not read, %s: Room.Close took %v", n, tt.name, d)
				if d > 0 {
					t.Errorf("%d clients, %s: Room.Close took %v of virtual time: it waited for a timeout", n, tt.name, d)
				}
			}
		})
	}
}

// Registry.Close closes its connections of many rooms at once in the same
// case: compressed, not reading, their close handshakes under way.
func TestRegistryCloseWaitsForNoCloseHandshake(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		joined := make(chan *wsroom.Client, 8)
		reg := wsroom.NewRegistry(wsroom.WithCompression(websocket.CompressionContextTakeover), wsroom.WithPing(0, 0),
			wsroom.WithOnJoin(func(c *wsroom.Client) { joined <- c }))
		defer reg.Close()
		h := reg.MuxHandler()
		for range 8 {
			c, _, err := wspipe.Dial(t.Context(), h, "ws://room.test/", &websocket.DialOptions{
				CompressionMode: websocket.CompressionContextTakeover,
				Subprotocols:    []string{wsroom.Subprotocol},
			})
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			defer c.CloseNow()
		}
		synctest.Wait()
		for range 8 {
			(<-joined).Close(websocket.StatusNormalClosure, "bye")
		}
		synctest.Wait()
		start := time.Now()
		reg.Close()
		d := time.Since(start)
		t.Logf("8 compressed connections of many rooms that do not read, close handshakes under way: Registry.Close took %v", d)
		if d > 0 {
			t.Errorf("Registry.Close took %v of virtual time: it waited for a timeout", d)
		}
	})
}
