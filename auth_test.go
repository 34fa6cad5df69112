package wsroom_test

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
	"github.com/google/go-cmp/cmp"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/wsroomtest"
)

// tokenAuth is an authorize hook that reads a credential offered as the
// subprotocol "token.NAME", counts its calls, and returns NAME, or
// "anonymous" without a token; "token.bad" is refused with 401.
func tokenAuth(calls *atomic.Int64) wsroom.Option {
	return wsroom.WithAuthorize(func(r *http.Request) (any, error) {
		calls.Add(1)
		for _, p := range wsroom.OfferedSubprotocols(r) {
			if name, ok := strings.CutPrefix(p, "token."); ok {
				if name == "bad" {
					return nil, &wsroom.HTTPError{Code: http.StatusUnauthorized}
				}
				return name, nil
			}
		}
		return "anonymous", nil
	})
}

// sayWho makes each client's join hook send it "IDENTITY SUBPROTOCOL".
var sayWho = wsroom.WithOnJoin(func(c *wsroom.Client) {
	c.Send(c.Context(), fmt.Appendf(nil, "%v %s", c.Identity(), c.Subprotocol()))
})

// Room.Handler selects the first of WithSubprotocols the client offers,
// serves clients that offer none, refuses those that offer only others
// before the authorize hook, and never echoes a credential.
func TestSubprotocolsSelectAndCarryTokens(t *testing.T) {
	var calls atomic.Int64
	f := newFixture(t, wsroom.WithSubprotocols("chat.v2", "chat.v1"), tokenAuth(&calls), sayWho)
	for _, tt := range []struct {
		name   string
		offer  []string
		status int    // of a refused handshake
		want   string // else what the join hook says
		calls  int64  // authorize hook calls
	}{
		{"token next to a protocol", []string{"chat.v1", "token.ana"}, 0, "ana chat.v1", 1},
		{"token first", []string{"token.ana", "chat.v1"}, 0, "ana chat.v1", 1},
		{"the server's preference", []string{"chat.v1", "chat.v2"}, 0, "anonymous chat.v2", 1},
		{"none offered", nil, 0, "anonymous ", 1},
		{"only a token", []string{"token.ana"}, http.StatusBadRequest, "", 0},
		{"wsroom.v3 at a one-room handler", []string{wsroom.Subprotocol}, http.StatusBadRequest, "", 0},
		{"refused token", []string{"chat.v1", "token.bad"}, http.StatusUnauthorized, "", 1},
	} {
		calls.Store(0)
		c, resp, err := websocket.Dial(t.Context(), f.url, &websocket.DialOptions{Subprotocols: tt.offer})
		if got := calls.Load(); got != tt.calls {
			t.Errorf("%s: authorize hook ran %d times, want %d", tt.name, got, tt.calls)
		}
		if tt.status != 0 {
			if err == nil || resp == nil || resp.StatusCode != tt.status {
				t.Errorf("%s: Dial response %v, err %v; want status %d", tt.name, resp, err, tt.status)
			}
			if c != nil {
				c.CloseNow()
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: Dial: %v", tt.name, err)
			continue
		}
		if got := read(t, c); got != tt.want {
			t.Errorf("%s: join hook says %q, want %q", tt.name, got, tt.want)
		}
		if h := resp.Header.Values("Sec-WebSocket-Protocol"); strings.Contains(strings.Join(h, ","), "token") {
			t.Errorf("%s: the server echoed the credential: %q", tt.name, h)
		}
		c.CloseNow()
	}
}

// A Registry's MuxHandler selects wsroom.v3 whatever WithSubprotocols says,
// with a credential offered next to it; its Handler selects only what
// WithSubprotocols says, never wsroom.v3.
func TestMuxSubprotocolWithToken(t *testing.T) {
	var calls atomic.Int64
	reg := wsroom.NewRegistry(wsroom.WithSubprotocols("chat.v1"), tokenAuth(&calls), sayWho)
	defer reg.Close()
	mux := http.NewServeMux()
	mux.Handle("GET /ws", reg.MuxHandler())
	mux.Handle("GET /rooms/{name}", reg.Handler(nil))
	srv := newServer(t, mux)
	url := "ws" + strings.TrimPrefix(srv.URL, "http")
	for _, tt := range []struct {
		name   string
		path   string
		offer  []string
		status int
		want   string // the selected subprotocol
		calls  int64
	}{
		{"many rooms, token after", "/ws", []string{wsroom.Subprotocol, "token.ana"}, 0, wsroom.Subprotocol, 1},
		{"many rooms, token before", "/ws", []string{"token.ana", wsroom.Subprotocol}, 0, wsroom.Subprotocol, 1},
		{"many rooms, the one-room protocol", "/ws", []string{"chat.v1", "token.ana"}, http.StatusBadRequest, "", 0},
		{"many rooms, refused token", "/ws", []string{wsroom.Subprotocol, "token.bad"}, http.StatusUnauthorized, "", 1},
		{"many rooms, v2 only", "/ws", []string{wsroom.SubprotocolV2, "token.ana"}, 0, wsroom.SubprotocolV2, 1},
		{"many rooms, v2 before v3", "/ws", []string{wsroom.SubprotocolV2, wsroom.Subprotocol, "token.ana"}, 0, wsroom.Subprotocol, 1},
		{"many rooms, v3 in capitals and v2", "/ws", []string{"WSROOM.V3", wsroom.SubprotocolV2, "token.ana"}, 0, wsroom.SubprotocolV2, 1},
		{"one room, wsroom.v3", "/rooms/lobby", []string{wsroom.Subprotocol, "token.ana"}, http.StatusBadRequest, "", 0},
		{"one room, wsroom.v2", "/rooms/lobby", []string{wsroom.SubprotocolV2, "token.ana"}, http.StatusBadRequest, "", 0},
		{"one room, its protocol", "/rooms/lobby", []string{"chat.v1", wsroom.Subprotocol, "token.ana"}, 0, "chat.v1", 1},
	} {
		calls.Store(0)
		c, resp, err := websocket.Dial(t.Context(), url+tt.path, &websocket.DialOptions{Subprotocols: tt.offer})
		if got := calls.Load(); got != tt.calls {
			t.Errorf("%s: authorize hook ran %d times, want %d", tt.name, got, tt.calls)
		}
		if tt.status != 0 {
			if err == nil || resp == nil || resp.StatusCode != tt.status {
				t.Errorf("%s: Dial response %v, err %v; want status %d", tt.name, resp, err, tt.status)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: Dial: %v", tt.name, err)
			continue
		}
		if got := c.Subprotocol(); got != tt.want {
			t.Errorf("%s: subprotocol %q, want %q", tt.name, got, tt.want)
		}
		if tt.path != "/ws" {
			if got, want := read(t, c), "ana "+tt.want; got != want {
				t.Errorf("%s: join hook says %q, want %q", tt.name, got, want)
			}
		}
		c.CloseNow()
	}
	if got := names(reg); !slices.Equal(got, []string{"lobby"}) {
		t.Errorf("rooms = %v, want [lobby] (none for refused handshakes)", got)
	}
}

func TestWithSubprotocolsPanics(t *testing.T) {
	for _, p := range []string{wsroom.Subprotocol, "WSROOM.V3", wsroom.SubprotocolV2, "WSROOM.V2", "", "two words", "a,b", "caf\u00e9"} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("WithSubprotocols(%q) did not panic", p)
				}
			}()
			wsroom.WithSubprotocols("chat.v1", p)
		}()
	}
}

// The origin check runs after the same-origin rule and the patterns, only
// for origins they refuse, and before the authorize hook and any room.
func TestOriginCheck(t *testing.T) {
	var mu sync.Mutex
	var checked []string
	var calls atomic.Int64
	reg := wsroom.NewRegistry(
		wsroom.WithOriginPatterns("*.example.com"),
		wsroom.WithOriginCheck(func(r *http.Request) bool {
			mu.Lock()
			defer mu.Unlock()
			origin := r.Header.Get("Origin")
			checked = append(checked, origin)
			return origin == "https://partner.test"
		}),
		tokenAuth(&calls),
	)
	defer reg.Close()
	mux := http.NewServeMux()
	mux.Handle("GET /ws", reg.MuxHandler())
	mux.Handle("GET /rooms/{name}", reg.Handler(nil))
	srv := newServer(t, mux)
	url := "ws" + strings.TrimPrefix(srv.URL, "http")
	for i, tt := range []struct {
		origin string
		ok     bool
	}{
		{"", true},
		{srv.URL, true},
		{"https://app.example.com", true},
		{"https://partner.test", true},
		{"https://evil.test", false},
		{"http://[::1", false}, // not a URL
	} {
		for _, path := range []string{fmt.Sprintf("/rooms/r%d", i), "/ws"} {
			var h http.Header
			if tt.origin != "" {
				h = http.Header{"Origin": {tt.origin}}
			}
			calls.Store(0)
			c, resp, err := websocket.Dial(t.Context(), url+path, &websocket.DialOptions{HTTPHeader: h, Subprotocols: []string{wsroom.Subprotocol}})
			if tt.ok {
				if err != nil {
					t.Errorf("origin %q, %s: Dial: %v", tt.origin, path, err)
					continue
				}
				c.CloseNow()
				continue
			}
			if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
				t.Errorf("origin %q, %s: Dial response %v, err %v; want 403", tt.origin, path, resp, err)
			}
			if calls.Load() != 0 {
				t.Errorf("origin %q, %s: the authorize hook ran for a refused origin", tt.origin, path)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"https://partner.test", "https://partner.test", "https://evil.test", "https://evil.test"}
	if diff := cmp.Diff(want, checked); diff != "" {
		t.Errorf("origins checked (-want +got):\n%s", diff)
	}
	waitUntil(t, "refused handshakes made no room", func() bool {
		return slices.Equal(names(reg), []string{"r0", "r1", "r2", "r3"})
	})
}

// A client whose credential expires is closed with StatusExpired, when it
// expires (in virtual time), after what was queued for it.
func TestExpiryClosesWithStatusExpired(t *testing.T) {
	type session struct {
		expires time.Time
		timer   *time.Timer
	}
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		room := wsroom.New(
			wsroom.WithPing(0, 0), // the client does not read, so would not answer
			wsroom.WithAuthorize(func(r *http.Request) (any, error) {
				return &session{expires: start.Add(time.Hour)}, nil
			}),
			wsroom.WithOnJoin(func(c *wsroom.Client) {
				s := c.Identity().(*session)
				s.timer = time.AfterFunc(time.Until(s.expires), func() {
					c.Send(c.Context(), []byte("goodbye"))
					c.Close(wsroom.StatusExpired, "session expired")
				})
			}),
			wsroom.WithOnLeave(func(c *wsroom.Client, _ error) {
				if s := c.Identity().(*session); s.timer != nil {
					s.timer.Stop()
				}
			}),
		)
		defer room.Close()
		c := wsroomtest.Dial(t, room.Handler(), "/")
		time.Sleep(time.Hour - time.Second)
		wsroomtest.WaitClients(t, room, 1)
		c.Expect("goodbye")
		if reason := c.ExpectClose(wsroom.StatusExpired); reason != "session expired" {
			t.Errorf("close reason %q, want %q", reason, "session expired")
		}
		if d := time.Since(start); d != time.Hour {
			t.Errorf("closed after %v, want 1h0m0s", d)
		}
		wsroomtest.WaitClients(t, room, 0)
	})
}
