package wsroom_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
)

// ErrUnavailable is the leave reason both of a client whose message the
// Broker did not take and of one whose new room's Store could not be read:
// its text names both engines, and no message in particular.
func TestErrUnavailableText(t *testing.T) {
	s := wsroom.ErrUnavailable.Error()
	for _, want := range []string{"broker", "store"} {
		if !strings.Contains(s, want) {
			t.Errorf("ErrUnavailable is %q: it does not name the %s", s, want)
		}
	}
	if strings.Contains(s, "not published") {
		t.Errorf("ErrUnavailable is %q: a client closed because the Store failed published nothing", s)
	}
}

// New refuses, with a panic that names it, each option that serves a
// Registry only, as it refuses a Store the Broker does not number messages
// in; NewRegistry takes them all, and New the options a lone Room uses.
func TestNewRefusesRegistryOptions(t *testing.T) {
	registryOnly := map[string]wsroom.Option{
		"WithIdleTimeout":       wsroom.WithIdleTimeout(time.Hour),
		"WithNameValidator":     wsroom.WithNameValidator(wsroom.ValidRoomName),
		"WithMaxRooms":          wsroom.WithMaxRooms(5),
		"WithJoinCheck":         wsroom.WithJoinCheck(func(*wsroom.Client, string) error { return nil }),
		"WithMaxRoomsPerClient": wsroom.WithMaxRoomsPerClient(5),
		"WithPresenceEvents":    wsroom.WithPresenceEvents(10),
		"WithOnRoomJoin":        wsroom.WithOnRoomJoin(func(*wsroom.Client, *wsroom.Room) {}),
		"WithOnRoomLeave":       wsroom.WithOnRoomLeave(func(*wsroom.Client, *wsroom.Room, string) {}),
		"WithOnPublish":         wsroom.WithOnPublish(func(_ *wsroom.Client, _ *wsroom.Room, b []byte) ([]byte, error) { return b, nil }),
	}
	common := []wsroom.Option{
		wsroom.WithCodec(wsroom.JSON()), wsroom.WithHistory(5), wsroom.WithPing(0, 0),
		wsroom.WithOnMessage(func(*wsroom.Client, []byte) error { return nil }),
		wsroom.WithSubprotocols("chat.v1"), wsroom.WithMaxClients(3),
	}
	newRoom := func(opts ...wsroom.Option) (msg string) {
		defer func() {
			if p := recover(); p != nil {
				msg = fmt.Sprint(p)
			}
		}()
		wsroom.New(opts...).Close()
		return ""
	}
	for name, opt := range registryOnly {
		msg := newRoom(append(slices.Clone(common), opt)...)
		if msg == "" {
			t.Errorf("New(%s) did not panic: a lone Room would ignore the option", name)
			continue
		}
		if !strings.Contains(msg, name) || !strings.Contains(msg, "NewRegistry") {
			t.Errorf("New(%s) panicked with %q, want the option's name and NewRegistry", name, msg)
		}
	}
	if msg := newRoom(wsroom.WithMaxRooms(1), wsroom.WithOnPublish(nil)); !strings.Contains(msg, "WithMaxRooms, WithOnPublish") {
		t.Errorf("New(WithMaxRooms, WithOnPublish) panicked with %q, want both names", msg)
	}
	if msg := newRoom(common...); msg != "" {
		t.Errorf("New with the options of a lone Room panicked: %s", msg)
	}
	all := slices.Clone(common)
	for _, opt := range registryOnly {
		all = append(all, opt)
	}
	wsroom.NewRegistry(all...).Close() // must not panic
}

// WithJoinCheck applies to Registry.Handler as to MuxHandler: the room
// picked from the URL is checked after the authorize hook and before the
// upgrade; a refusal gets 403 with the error's text, an *HTTPError its own
// status, a panic 500, and no room is made for any of them. An admitted
// client keeps the ID the check saw.
func TestJoinCheckInRegistryHandler(t *testing.T) {
	type seen struct{ id, room, who string }
	checks := make(chan seen, 10)
	joined := make(chan string, 10)
	var reported atomic.Int64
	reg := wsroom.NewRegistry(
		wsroom.WithAuthorize(func(r *http.Request) (any, error) { return r.URL.Query().Get("user"), nil }),
		wsroom.WithJoinCheck(func(c *wsroom.Client, room string) error {
			checks <- seen{c.ID(), room, fmt.Sprint(c.Identity())}
			switch room {
			case "secret":
				return errors.New("members only")
			case "login":
				return &wsroom.HTTPError{Code: http.StatusUnauthorized, Message: "log in first"}
			case "broken":
				panic("join check bug")
			case "closing":
				c.Close(websocket.StatusNormalClosure, "not yet connected")
				return errors.New("closed by the check")
			}
			return nil
		}),
		wsroom.WithOnJoin(func(c *wsroom.Client) { joined <- c.ID() }),
		wsroom.WithOnError(func(c *wsroom.Client, err error) { reported.Add(1) }),
	)
	defer reg.Close()
	mux := http.NewServeMux()
	mux.Handle("GET /rooms/{name}", reg.Handler(nil))
	srv := newServer(t, mux)
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/rooms/"
	checked := func(room string) seen {
		t.Helper()
		select {
		case s := <-checks:
			return s
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the join check did not run", room)
			return seen{}
		}
	}

	for _, tt := range []struct {
		room   string
		status int
		body   string
	}{
		{"secret", http.StatusForbidden, "members only"},
		{"login", http.StatusUnauthorized, "log in first"},
		{"broken", http.StatusInternalServerError, http.StatusText(http.StatusInternalServerError)},
		{"closing", http.StatusForbidden, "closed by the check"},
	} {
		c, resp, err := websocket.Dial(t.Context(), url+tt.room+"?user=ana", nil)
		if err == nil {
			c.CloseNow()
			t.Errorf("%s: the handshake was accepted, want %d", tt.room, tt.status)
			continue
		}
		if resp == nil || resp.StatusCode != tt.status {
			t.Errorf("%s: Dial response %v, err %v; want status %d", tt.room, resp, err, tt.status)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		if got := strings.TrimSpace(string(body)); got != tt.body {
			t.Errorf("%s: body %q, want %q", tt.room, got, tt.body)
		}
		if s := checked(tt.room); s.room != tt.room || s.who != "ana" || s.id == "" {
			t.Errorf("%s: the check saw room %q, identity %q, ID %q", tt.room, s.room, s.who, s.id)
		}
	}
	if got := names(reg); len(got) != 0 {
		t.Errorf("rooms after refused handshakes = %v, want none", got)
	}
	if got := reported.Load(); got != 1 {
		t.Errorf("error hook ran %d times, want once, for the check's panic", got)
	}

	c, _, err := websocket.Dial(t.Context(), url+"lobby?user=bo", nil)
	if err != nil {
		t.Fatalf("Dial lobby: %v", err)
	}
	defer c.CloseNow()
	s := checked("lobby")
	if s.room != "lobby" || s.who != "bo" {
		t.Errorf("lobby: the check saw room %q, identity %q", s.room, s.who)
	}
	select {
	case id := <-joined:
		if id != s.id {
			t.Errorf("the client joined with ID %q, the check saw %q", id, s.id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the admitted client did not join")
	}
	if got := names(reg); !slices.Equal(got, []string{"lobby"}) {
		t.Errorf("rooms = %v, want [lobby]", got)
	}
}
