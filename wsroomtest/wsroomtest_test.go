package wsroomtest_test

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/wsroomtest"
)

// A room's life in a synctest bubble: messages in order, a resume after a
// reconnect, and a shutdown.
func TestOneRoomInSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		room := wsroom.New(wsroom.WithCodec(wsroom.JSON()), wsroom.WithPing(0, 0))
		defer room.Close()
		h := room.Handler()
		ana, ben := wsroomtest.Dial(t, h, "/"), wsroomtest.Dial(t, h, "/")
		wsroomtest.WaitClients(t, room, 2)

		ana.Send(`"one"`)
		ana.ExpectData(`"one"`) // published: "two" comes after it
		room.Publish(t.Context(), []byte(`"two"`))
		ana.ExpectData(`"two"`)
		last := ben.ExpectData(`"one"`, `"two"`)[1]

		ben.Close()
		wsroomtest.WaitClients(t, room, 1)
		ana.Send(`"three"`)
		ana.Send(`"four"`)
		ana.ExpectData(`"three"`, `"four"`)
		ben = wsroomtest.Dial(t, h, "/?resume="+last.Position())
		ben.ExpectData(`"three"`, `"four"`)

		go room.Shutdown(context.Background())
		ana.ExpectClose(websocket.StatusGoingAway)
		wsroomtest.WaitClients(t, room, 0)
	})
}

// Frames of the wsroom.v3 protocol, and a room of a Registry counted, in a
// synctest bubble.
func TestManyRoomsInSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rooms := wsroom.NewRegistry()
		defer rooms.Close()
		mux := http.NewServeMux()
		mux.Handle("GET /ws", rooms.MuxHandler())
		mux.Handle("GET /rooms/{name}", rooms.Handler(nil))
		opts := &websocket.DialOptions{Subprotocols: []string{wsroom.Subprotocol}}
		c := wsroomtest.DialWith(t, mux, "/ws", opts)
		if got := c.Subprotocol(); got != wsroom.Subprotocol {
			t.Errorf("Subprotocol() = %q, want %q", got, wsroom.Subprotocol)
		}
		one := wsroomtest.Dial(t, mux, "/rooms/news")
		wsroomtest.WaitRoom(t, rooms, "news", 1)

		c.SendJSON(map[string]any{"op": "join", "room": "news", "id": "j1"})
		c.ExpectFrames("hello", "joined news id=j1")
		wsroomtest.WaitRoom(t, rooms, "news", 2)
		c.Send(`{"op":"pub","room":"news","id":"p1","data":{"n":1}}`)
		got := []string{c.ReadFrame().String(), c.ReadFrame().String()}
		if !(strings.Join(got, "|") == `msg news seq=1 {"n":1}|ack news id=p1 seq=1` ||
			strings.Join(got, "|") == `ack news id=p1 seq=1|msg news seq=1 {"n":1}`) {
			t.Errorf("frames %q, want the message and its ack", got)
		}
		one.Expect(`{"n":1}`)
		c.Send(`{"op":"leave","room":"news","id":"l1"}`)
		c.ExpectFrames("left news id=l1 reason=requested")
		wsroomtest.WaitRoom(t, rooms, "news", 1)
		wsroomtest.WaitRoom(t, rooms, "nowhere", 0)
		if len(rooms.Rooms()) != 1 {
			t.Errorf("WaitRoom made a room: %d rooms", len(rooms.Rooms()))
		}
	})
}

// recorder is a testing.TB whose Fatalf records the failure and ends the
// goroutine, as t.Fatalf does, so that failures can be checked.
type recorder struct {
	testing.TB
	failure  string
	cleanups []func()
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failure = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (r *recorder) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }

// fails runs fn as a test body on a goroutine of its own and returns what
// it failed with, or "".
func fails(t *testing.T, fn func(t testing.TB)) string {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(r)
	}()
	<-done
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
	return r.failure
}

// envelopes is a handler that sends each client the given messages, then
// closes it with 1008.
func envelopes(msgs ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		for _, m := range msgs {
			c.Write(context.Background(), websocket.MessageText, []byte(m))
		}
		c.Close(websocket.StatusPolicyViolation, "enough")
	})
}

// Each helper fails the test with a message that says what was wanted and
// what came; waits end after Timeout, at once in virtual time.
func TestFailureMessages(t *testing.T) {
	h := envelopes(`{"seq":1,"epoch":"e","data":"a"}`, `{"seq":3,"epoch":"e","data":"b"}`)
	refuse := wsroom.New(wsroom.WithAuthorize(func(*http.Request) (any, error) {
		return nil, &wsroom.HTTPError{Code: http.StatusUnauthorized, Message: "who are you?"}
	}))
	defer refuse.Close()
	for _, tt := range []struct {
		name string
		fn   func(t testing.TB)
		want string
	}{
		{"Expect", func(t testing.TB) { wsroomtest.Dial(t, h, "/").Expect(`{"seq":1,"epoch":"e","data":"a"}`, "x") },
			`message 2 of 2 is "{\"seq\":3,\"epoch\":\"e\",\"data\":\"b\"}", want "x"`},
		{"ExpectData gap", func(t testing.TB) { wsroomtest.Dial(t, h, "/").ExpectData(`"a"`, `"b"`) },
			"message 2 of 2 has seq 3 after 1"},
		{"ExpectData data", func(t testing.TB) { wsroomtest.Dial(t, h, "/").ExpectData(`"z"`) },
			`message 1 of 1 is "a", want "z"`},
		{"Read after close", func(t testing.TB) {
			c := wsroomtest.Dial(t, h, "/")
			c.Read()
			c.Read()
			c.Read()
		}, `Read: connection closed with 1008 "enough"`},
		{"ExpectClose", func(t testing.TB) { wsroomtest.Dial(t, h, "/").ExpectClose(websocket.StatusPolicyViolation) },
			`ExpectClose(1008): got the message "{\"seq\":1,\"epoch\":\"e\",\"data\":\"a\"}"`},
		{"ReadFrame", func(t testing.TB) { wsroomtest.Dial(t, h, "/").ReadFrame() },
			"is not a frame of the wsroom.v3 protocol"},
		{"Dial refused", func(t testing.TB) { wsroomtest.Dial(t, refuse.Handler(), "/") },
			`Dial(ws://room.test/): failed to WebSocket dial: expected handshake response status code 101 but got 401 (HTTP 401 Unauthorized: "who are you?")`},
		{"DialStatus accepted", func(t testing.TB) { wsroomtest.DialStatus(t, h, "/", nil) },
			"Dial(ws://room.test/) succeeded, want it refused"},
	} {
		if got := fails(t, tt.fn); !strings.Contains(got, tt.want) {
			t.Errorf("%s failed with %q, want it to say %q", tt.name, got, tt.want)
		}
	}
	// Timeouts, in virtual time.
	synctest.Test(t, func(t *testing.T) {
		room := wsroom.New()
		defer room.Close()
		start := time.Now()
		got := fails(t, func(t testing.TB) { wsroomtest.WaitClients(t, room, 1) })
		if want := `room "" has 0 clients after 10s, want 1`; !strings.Contains(got, want) {
			t.Errorf("WaitClients failed with %q, want it to say %q", got, want)
		}
		got = fails(t, func(t testing.TB) { wsroomtest.Dial(t, room.Handler(), "/").Read() })
		if want := "Read: nothing received within 10s"; !strings.Contains(got, want) {
			t.Errorf("Read failed with %q, want it to say %q", got, want)
		}
		if d := time.Since(start); d < 2*wsroomtest.Timeout {
			t.Errorf("the waits took %v of virtual time, want at least %v", d, 2*wsroomtest.Timeout)
		}
	})
}

// The handler gets the request as a server does: an Origin of the
// request's own host is same-origin; another is not.
func TestOrigins(t *testing.T) {
	room := wsroom.New()
	defer room.Close()
	var got *http.Request
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r
		room.Handler().ServeHTTP(w, r)
	})
	same := &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"http://" + wsroomtest.Host}}}
	wsroomtest.DialWith(t, h, "/chat?x=1", same)
	if got.Host != wsroomtest.Host || got.RequestURI != "/chat?x=1" || got.URL.String() != "/chat?x=1" || got.RemoteAddr == "" {
		t.Errorf("the handler got Host %q, RequestURI %q, URL %q, RemoteAddr %q; want them as a server has them", got.Host, got.RequestURI, got.URL, got.RemoteAddr)
	}
	other := &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"http://elsewhere.test"}}}
	if status := wsroomtest.DialStatus(t, h, "/chat", other); status != http.StatusForbidden {
		t.Errorf("cross-origin handshake: status %d, want 403", status)
	}
	wsroomtest.DialWith(t, h, "ws://elsewhere.test/chat", other)
}
