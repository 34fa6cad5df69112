package wsroomtest_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/wsroomtest"
)

// exampleT stands in for the *testing.T of a test, so that the examples
// run; in a test, pass t.
type exampleT struct {
	testing.TB
	cleanups []func()
}

func (t *exampleT) Helper()                           {}
func (t *exampleT) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }
func (t *exampleT) Cleanup(f func())                  { t.cleanups = append(t.cleanups, f) }

func (t *exampleT) cleanup() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}

// Two clients of one room, in memory: what one sends, both receive, in
// one order, numbered.
func ExampleDial() {
	t := &exampleT{} // in a test: its t
	defer t.cleanup()

	room := wsroom.New(wsroom.WithCodec(wsroom.JSON()))
	defer room.Close()
	ana := wsroomtest.Dial(t, room.Handler(), "/chat")
	ben := wsroomtest.Dial(t, room.Handler(), "/chat")
	wsroomtest.WaitClients(t, room, 2)

	ana.Send(`{"text":"hi"}`)
	ana.Send(`{"text":"anyone?"}`)
	ben.ExpectData(`{"text":"hi"}`, `{"text":"anyone?"}`)
	for _, e := range ana.ExpectData(`{"text":"hi"}`, `{"text":"anyone?"}`) {
		fmt.Println(e.Seq, string(e.Data))
	}
	// Output:
	// 1 {"text":"hi"}
	// 2 {"text":"anyone?"}
}

// One connection of many rooms, in the wsroom.v3 protocol: join, publish
// with an id, and check the frames.
func ExampleConn_ExpectFrames() {
	t := &exampleT{}
	defer t.cleanup()

	rooms := wsroom.NewRegistry(wsroom.WithJoinCheck(func(c *wsroom.Client, room string) error {
		if room == "staff" {
			return fmt.Errorf("staff only")
		}
		return nil
	}))
	defer rooms.Close()
	c := wsroomtest.DialWith(t, rooms.MuxHandler(), "/ws", &websocket.DialOptions{Subprotocols: []string{wsroom.Subprotocol}})

	c.Send(`{"op":"join","room":"lobby","id":"j1"}`)
	c.Send(`{"op":"join","room":"staff","id":"j2"}`)
	c.ExpectFrames("hello", "joined lobby id=j1", "error staff id=j2 code=forbidden")
	rooms.Publish(context.Background(), "lobby", []byte(`{"text":"welcome"}`))
	f := c.ReadFrame()
	fmt.Println(f)
	fmt.Println(f.Op, f.Room, f.Seq, string(f.Data))
	// Output:
	// msg lobby seq=1 {"text":"welcome"}
	// msg lobby 1 {"text":"welcome"}
}

// Handshakes the application refuses, and the status of each.
func ExampleDialStatus() {
	t := &exampleT{}
	defer t.cleanup()

	room := wsroom.New(wsroom.WithAuthorize(func(r *http.Request) (any, error) {
		if c, err := r.Cookie("session"); err == nil && c.Value == "s3cret" {
			return "ana", nil
		}
		return nil, &wsroom.HTTPError{Code: http.StatusUnauthorized}
	}))
	defer room.Close()
	h := room.Handler()
	cookie := http.Header{"Cookie": {"session=s3cret"}}

	fmt.Println("no cookie:", wsroomtest.DialStatus(t, h, "/", nil))
	fmt.Println("other site:", wsroomtest.DialStatus(t, h, "/", &websocket.DialOptions{
		HTTPHeader: http.Header{"Cookie": {"session=s3cret"}, "Origin": {"https://evil.example"}},
	}))
	c := wsroomtest.DialWith(t, h, "/", &websocket.DialOptions{HTTPHeader: cookie})
	wsroomtest.WaitClients(t, room, 1)
	fmt.Println("with the cookie:", c.Response().StatusCode, room.Clients()[0].Identity())
	// Output:
	// no cookie: 401
	// other site: 403
	// with the cookie: 101 ana
}
