package wsroom_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
)

// wsURL turns an httptest server URL into a WebSocket one.
func wsURL(srv *httptest.Server, path string) string {
	return "ws" + strings.TrimPrefix(srv.URL, "http") + path
}

// waitClients waits until room has n clients.
func waitClients(room *wsroom.Room, n int) {
	for room.Len() < n {
		time.Sleep(time.Millisecond)
	}
}

// A room on a ServeMux: what one client sends, every client receives.
func ExampleNew() {
	room := wsroom.New()
	defer room.Close()
	mux := http.NewServeMux()
	mux.Handle("GET /chat", room.Handler())
	srv := httptest.NewServer(mux)
	defer srv.Close()

	ctx := context.Background()
	ana, _, err := websocket.Dial(ctx, wsURL(srv, "/chat"), nil)
	if err != nil {
		panic(err)
	}
	defer ana.CloseNow()
	ben, _, err := websocket.Dial(ctx, wsURL(srv, "/chat"), nil)
	if err != nil {
		panic(err)
	}
	defer ben.CloseNow()
	waitClients(room, 2)

	ana.Write(ctx, websocket.MessageText, []byte("hello, room"))
	_, got, _ := ben.Read(ctx)
	fmt.Println("ben got:", string(got))
	_, got, _ = ana.Read(ctx)
	fmt.Println("ana got:", string(got))
	// Output:
	// ben got: hello, room
	// ana got: hello, room
}

// The JSON codec wraps each message in an envelope with its sequence
// number, which clients use to resume.
func ExampleJSON() {
	room := wsroom.New(wsroom.WithCodec(wsroom.JSON()))
	defer room.Close()
	srv := httptest.NewServer(room.Handler())
	defer srv.Close()

	ctx := context.Background()
	c, _, err := websocket.Dial(ctx, wsURL(srv, ""), nil)
	if err != nil {
		panic(err)
	}
	defer c.CloseNow()
	waitClients(room, 1)

	news, _ := json.Marshal(map[string]string{"headline": "wsroom ships"})
	room.Publish(ctx, news)
	room.Publish(ctx, []byte(`"second"`))

	for range 2 {
		var env struct {
			Seq  uint64
			Data json.RawMessage
		}
		_, b, _ := c.Read(ctx)
		json.Unmarshal(b, &env)
		fmt.Println(env.Seq, string(env.Data))
	}
	// Output:
	// 1 {"headline":"wsroom ships"}
	// 2 "second"
}

// An authorize hook runs before the upgrade: it refuses with a status, or
// returns the identity the client carries.
func ExampleWithAuthorize() {
	room := wsroom.New(
		wsroom.WithAuthorize(func(r *http.Request) (any, error) {
			if r.URL.Query().Get("token") != "s3cret" {
				return nil, &wsroom.HTTPError{Code: http.StatusUnauthorized, Message: "bad token"}
			}
			return r.URL.Query().Get("user"), nil
		}),
		wsroom.WithOnJoin(func(c *wsroom.Client) {
			c.Send(c.Context(), []byte(fmt.Sprintf("welcome, %v", c.Identity())))
		}),
	)
	defer room.Close()
	srv := httptest.NewServer(room.Handler())
	defer srv.Close()

	ctx := context.Background()
	_, resp, err := websocket.Dial(ctx, wsURL(srv, "?token=wrong"), nil)
	fmt.Println("without the token:", resp.StatusCode, err != nil)

	c, _, err := websocket.Dial(ctx, wsURL(srv, "?token=s3cret&user=ana"), nil)
	if err != nil {
		panic(err)
	}
	defer c.CloseNow()
	_, got, _ := c.Read(ctx)
	fmt.Println(string(got))
	// Output:
	// without the token: 401 true
	// welcome, ana
}

// A message hook sees each client message before anyone else and decides
// what to publish.
func ExampleWithOnMessage() {
	room := wsroom.New(wsroom.WithOnMessage(func(c *wsroom.Client, data []byte) error {
		if strings.HasPrefix(string(data), "/") {
			return c.Send(c.Context(), []byte("commands are not supported"))
		}
		return c.Room().Publish(c.Context(), []byte(strings.ToUpper(string(data))), wsroom.From(c))
	}))
	defer room.Close()
	srv := httptest.NewServer(room.Handler())
	defer srv.Close()

	ctx := context.Background()
	c, _, err := websocket.Dial(ctx, wsURL(srv, ""), nil)
	if err != nil {
		panic(err)
	}
	defer c.CloseNow()
	c.Write(ctx, websocket.MessageText, []byte("/kick bob"))
	c.Write(ctx, websocket.MessageText, []byte("quiet please"))
	for range 2 {
		_, got, _ := c.Read(ctx)
		fmt.Println(string(got))
	}
	// Output:
	// commands are not supported
	// QUIET PLEASE
}

// Many rooms behind one handler, the room picked from the path.
func ExampleRegistry() {
	rooms := wsroom.NewRegistry()
	defer rooms.Close()
	mux := http.NewServeMux()
	mux.Handle("GET /rooms/{name}", rooms.Handler(nil))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	ctx := context.Background()
	for _, name := range []string{"go", "rust", "go"} {
		c, _, err := websocket.Dial(ctx, wsURL(srv, "/rooms/"+name), nil)
		if err != nil {
			panic(err)
		}
		defer c.CloseNow()
	}
	goRoom, _ := rooms.Room("go")
	rustRoom, _ := rooms.Room("rust")
	waitClients(goRoom, 2)
	waitClients(rustRoom, 1)
	for _, r := range rooms.Rooms() {
		fmt.Printf("%s: %d\n", r.Name(), r.Len())
	}
	_, resp, _ := websocket.Dial(ctx, wsURL(srv, "/rooms/no%20spaces"), nil)
	fmt.Println("bad name:", resp.StatusCode)
	// Output:
	// go: 2
	// rust: 1
	// bad name: 400
}

// Graceful shutdown next to http.Server: the server stops accepting, then the
// room writes what is queued and closes each client with 1001.
func ExampleRoom_Shutdown() {
	room := wsroom.New()
	srv := httptest.NewServer(room.Handler())
	defer srv.Close()

	ctx := context.Background()
	c, _, err := websocket.Dial(ctx, wsURL(srv, ""), nil)
	if err != nil {
		panic(err)
	}
	defer c.CloseNow()
	waitClients(room, 1)
	room.Publish(ctx, []byte("last news"))

	done := make(chan error)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// With a real server: srv.Config.Shutdown(ctx) first, then:
		done <- room.Shutdown(ctx)
	}()
	_, got, _ := c.Read(ctx)
	fmt.Println(string(got))
	_, _, err = c.Read(ctx)
	fmt.Println(websocket.CloseStatus(err))
	fmt.Println("shutdown:", <-done)
	fmt.Println("publish after:", room.Publish(ctx, []byte("too late")))
	// Output:
	// last news
	// StatusGoingAway
	// shutdown: <nil>
	// publish after: wsroom: room closed
}

// A complete chat application, with rooms, names, presence, typing
// indicators, history with resume, and file sharing, is in examples/chat:
//
//	go run ./examples/chat
//
// and open http://localhost:8800 in two browser windows.
func Example_chat() {}

// One connection in two rooms, over the wsroom.v1 protocol of PROTOCOL.md:
// join both, publish to one with an id, and read the ack and each room's
// messages.
func ExampleRegistry_MuxHandler() {
	rooms := wsroom.NewRegistry(wsroom.WithCodec(wsroom.JSON()))
	defer rooms.Close()
	mux := http.NewServeMux()
	mux.Handle("GET /ws", rooms.MuxHandler())
	srv := httptest.NewServer(mux)
	defer srv.Close()

	ctx := context.Background()
	c, _, err := websocket.Dial(ctx, wsURL(srv, "/ws"), &websocket.DialOptions{Subprotocols: []string{wsroom.Subprotocol}})
	if err != nil {
		panic(err)
	}
	defer c.CloseNow()
	c.Read(ctx) // hello: the connection's id and the server's limits
	say := func(s string) { c.Write(ctx, websocket.MessageText, []byte(s)) }
	hear := func() {
		_, b, _ := c.Read(ctx)
		var f struct {
			Op, Room, ID string
			Seq          uint64
			Data         json.RawMessage
		}
		json.Unmarshal(b, &f)
		fmt.Println(strings.TrimSpace(fmt.Sprintf("%s %s id=%s seq=%d %s", f.Op, f.Room, f.ID, f.Seq, f.Data)))
	}
	say(`{"op":"join","room":"news","id":"j1"}`)
	hear()
	say(`{"op":"join","room":"chat","id":"j2"}`)
	hear()
	say(`{"op":"pub","room":"chat","id":"p1","ephemeral":false,"data":{"text":"hi"}}`)
	hear() // the message and its ack, in either order
	hear()
	rooms.Publish(ctx, "news", []byte(`"extra!"`))
	hear()
	// Unordered output:
	// joined news id=j1 seq=0
	// joined chat id=j2 seq=0
	// msg chat id= seq=1 {"text":"hi"}
	// ack chat id=p1 seq=1
	// msg news id= seq=1 "extra!"
}

// A session cookie, which a browser sends with the handshake to its own
// site: the authorize hook looks the session up. The same-origin rule
// (the default) is what keeps other sites' pages from connecting with it.
func ExampleWithAuthorize_cookie() {
	sessions := map[string]string{"k7Qx9": "ana"} // session id → user, as the login handler stored it
	room := wsroom.New(
		wsroom.WithAuthorize(func(r *http.Request) (any, error) {
			cookie, err := r.Cookie("session")
			if err != nil {
				return nil, &wsroom.HTTPError{Code: http.StatusUnauthorized, Message: "log in first"}
			}
			user, ok := sessions[cookie.Value]
			if !ok {
				return nil, &wsroom.HTTPError{Code: http.StatusUnauthorized, Message: "session ended"}
			}
			return user, nil
		}),
		wsroom.WithOnJoin(func(c *wsroom.Client) {
			c.Send(c.Context(), fmt.Appendf(nil, "hello, %v", c.Identity()))
		}),
	)
	defer room.Close()
	srv := httptest.NewServer(room.Handler())
	defer srv.Close()

	ctx := context.Background()
	_, resp, _ := websocket.Dial(ctx, wsURL(srv, ""), nil)
	fmt.Println("without the cookie:", resp.StatusCode)

	c, _, err := websocket.Dial(ctx, wsURL(srv, ""), &websocket.DialOptions{
		HTTPHeader: http.Header{"Cookie": {"session=k7Qx9"}}, // what a browser sends
	})
	if err != nil {
		panic(err)
	}
	defer c.CloseNow()
	_, got, _ := c.Read(ctx)
	fmt.Println(string(got))
	// Output:
	// without the cookie: 401
	// hello, ana
}

// tokenKey signs the tokens of the examples; a real one is secret and
// random.
var tokenKey = []byte("example key, not a secret")

// claims are what a token says: who, and until when.
type claims struct {
	User    string `json:"sub"`
	Expires int64  `json:"exp"` // Unix milliseconds
}

// signToken returns a small signed token, like a JWT without its header:
// base64url(JSON claims) "." base64url(HMAC-SHA256 of them). Both parts are
// base64url without padding, so the token is a valid subprotocol name.
func signToken(c claims) string {
	payload, _ := json.Marshal(c)
	mac := hmac.New(sha256.New, tokenKey)
	mac.Write(payload)
	enc := base64.RawURLEncoding
	return enc.EncodeToString(payload) + "." + enc.EncodeToString(mac.Sum(nil))
}

// verifyToken returns the claims of a token signed with tokenKey and not
// expired.
func verifyToken(token string) (claims, error) {
	enc := base64.RawURLEncoding
	p, s, _ := strings.Cut(token, ".")
	payload, err1 := enc.DecodeString(p)
	sig, err2 := enc.DecodeString(s)
	mac := hmac.New(sha256.New, tokenKey)
	mac.Write(payload)
	if err1 != nil || err2 != nil || !hmac.Equal(sig, mac.Sum(nil)) {
		return claims{}, errors.New("bad token")
	}
	var c claims
	if err := json.Unmarshal(payload, &c); err != nil {
		return claims{}, err
	}
	if time.Now().UnixMilli() >= c.Expires {
		return claims{}, errors.New("token expired")
	}
	return c, nil
}

// A browser cannot set headers on a WebSocket, so it offers its token as a
// subprotocol next to the one the server speaks:
//
//	new WebSocket(url, ["chat.v1", "token." + token])
//
// The server selects "chat.v1" and never echoes the token. When the token
// expires, the client is closed with StatusExpired (4001), to get a new
// one and reconnect.
func ExampleWithSubprotocols() {
	type session struct {
		user    string
		expires time.Time
		timer   *time.Timer // closes the client when the token expires
	}
	room := wsroom.New(
		wsroom.WithSubprotocols("chat.v1"),
		wsroom.WithAuthorize(func(r *http.Request) (any, error) {
			for _, p := range wsroom.OfferedSubprotocols(r) {
				if token, ok := strings.CutPrefix(p, "token."); ok {
					c, err := verifyToken(token)
					if err != nil {
						return nil, &wsroom.HTTPError{Code: http.StatusUnauthorized, Message: err.Error()}
					}
					return &session{user: c.User, expires: time.UnixMilli(c.Expires)}, nil
				}
			}
			return nil, &wsroom.HTTPError{Code: http.StatusUnauthorized, Message: "no token"}
		}),
		wsroom.WithOnJoin(func(c *wsroom.Client) {
			s := c.Identity().(*session)
			c.Send(c.Context(), fmt.Appendf(nil, "welcome, %s", s.user))
			s.timer = time.AfterFunc(time.Until(s.expires), func() {
				c.Close(wsroom.StatusExpired, "token expired")
			})
		}),
		wsroom.WithOnLeave(func(c *wsroom.Client, _ error) {
			if s := c.Identity().(*session); s.timer != nil {
				s.timer.Stop()
			}
		}),
	)
	defer room.Close()
	srv := httptest.NewServer(room.Handler())
	defer srv.Close()

	ctx := context.Background()
	dial := func(c claims) (*websocket.Conn, *http.Response, error) {
		return websocket.Dial(ctx, wsURL(srv, ""), &websocket.DialOptions{
			Subprotocols: []string{"chat.v1", "token." + signToken(c)},
		})
	}
	_, resp, _ := dial(claims{User: "ana", Expires: time.Now().Add(-time.Second).UnixMilli()})
	fmt.Println("expired token:", resp.StatusCode)

	c, resp, err := dial(claims{User: "ana", Expires: time.Now().Add(200 * time.Millisecond).UnixMilli()})
	if err != nil {
		panic(err)
	}
	defer c.CloseNow()
	fmt.Println("subprotocol:", c.Subprotocol(), resp.Header.Get("Sec-WebSocket-Protocol"))
	_, got, _ := c.Read(ctx)
	fmt.Println(string(got))
	_, _, err = c.Read(ctx) // 200ms later
	var ce websocket.CloseError
	errors.As(err, &ce)
	fmt.Println("closed:", int(ce.Code), ce.Reason, ce.Code == wsroom.StatusExpired)
	// Output:
	// expired token: 401
	// subprotocol: chat.v1 chat.v1
	// welcome, ana
	// closed: 4001 token expired true
}

// A join check for both handlers of a Registry: anyone may join the lobby,
// and a team's room only its members. A connection of many rooms gets an
// error reply for a refused join; a handshake of Registry.Handler for a
// refused room gets 403 with the check's message.
func ExampleWithJoinCheck() {
	teams := map[string][]string{"ana": {"red"}, "ben": {"blue"}} // user → teams
	rooms := wsroom.NewRegistry(
		wsroom.WithAuthorize(func(r *http.Request) (any, error) {
			user, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ") // a stand-in for a real check
			if !ok {
				return nil, &wsroom.HTTPError{Code: http.StatusUnauthorized}
			}
			return user, nil
		}),
		wsroom.WithJoinCheck(func(c *wsroom.Client, room string) error {
			team, ok := strings.CutPrefix(room, "team-")
			if !ok || slices.Contains(teams[c.Identity().(string)], team) {
				return nil
			}
			return fmt.Errorf("%v is not in team %s", c.Identity(), team)
		}),
	)
	defer rooms.Close()
	mux := http.NewServeMux()
	mux.Handle("GET /ws", rooms.MuxHandler())
	mux.Handle("GET /rooms/{name}", rooms.Handler(nil))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	ctx := context.Background()
	auth := http.Header{"Authorization": {"Bearer ana"}}
	c, _, err := websocket.Dial(ctx, wsURL(srv, "/ws"), &websocket.DialOptions{
		Subprotocols: []string{wsroom.Subprotocol},
		HTTPHeader:   auth,
	})
	if err != nil {
		panic(err)
	}
	defer c.CloseNow()
	c.Read(ctx) // hello
	for i, room := range []string{"lobby", "team-red", "team-blue"} {
		c.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"op":"join","room":%q,"id":"j%d"}`, room, i+1))
		_, b, _ := c.Read(ctx)
		var f struct{ Op, Room, ID, Code, Message string }
		json.Unmarshal(b, &f)
		fmt.Println(strings.TrimSpace(fmt.Sprintln(f.Op, f.Room, f.ID, f.Code, f.Message)))
	}
	_, resp, err := websocket.Dial(ctx, wsURL(srv, "/rooms/team-blue"), &websocket.DialOptions{HTTPHeader: auth})
	if err == nil {
		panic("joined team-blue")
	}
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, strings.TrimSpace(string(body)))
	// Output:
	// joined lobby j1
	// joined team-red j2
	// error team-blue j3 forbidden ana is not in team blue
	// 403 ana is not in team blue
}

// A backend in any language publishes through the server API: an HTTP
// POST with the API key, answered with the message's position. A retry
// with the same Idempotency-Key is published once and gets the same answer.
func ExampleRegistry_API() {
	reg := wsroom.NewRegistry(wsroom.WithCodec(wsroom.JSON()))
	defer reg.Close()
	mux := http.NewServeMux()
	mux.Handle("/ws", reg.MuxHandler())
	mux.Handle("/api/", http.StripPrefix("/api", reg.API(wsroom.WithAPIKey("secret"))))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	ctx := context.Background()
	c, _, err := websocket.Dial(ctx, wsURL(srv, "/ws"), &websocket.DialOptions{Subprotocols: []string{wsroom.Subprotocol}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.CloseNow()
	c.Read(ctx) // hello
	c.Write(ctx, websocket.MessageText, []byte(`{"op":"join","room":"orders"}`))
	c.Read(ctx) // joined

	post := func(body string) {
		req, _ := http.NewRequest("POST", srv.URL+"/api/rooms/orders/messages", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer secret")
		req.Header.Set("Idempotency-Key", "order-1234")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			fmt.Println(err)
			return
		}
		defer resp.Body.Close()
		var ack struct {
			Room string `json:"room"`
			Seq  uint64 `json:"seq"`
		}
		json.NewDecoder(resp.Body).Decode(&ack)
		fmt.Println(resp.StatusCode, ack.Room, ack.Seq)
	}
	post(`{"data":{"order":1234,"state":"paid"}}`)
	post(`{"data":{"order":1234,"state":"paid"}}`) // a retry

	_, msg, _ := c.Read(ctx)
	var m struct {
		Seq  uint64          `json:"seq"`
		Data json.RawMessage `json:"data"`
	}
	json.Unmarshal(msg, &m)
	fmt.Println(m.Seq, string(m.Data))
	// Output:
	// 200 orders 1
	// 200 orders 1
	// 1 {"order":1234,"state":"paid"}
}

// A backend follows connections through the event log: here it prints the
// events of one client that connects, joins a room and disconnects.
func ExampleRegistry_FeedEvents() {
	reg := wsroom.NewRegistry(wsroom.WithEvents(), wsroom.WithAuthorize(func(r *http.Request) (any, error) {
		return r.URL.Query().Get("user"), nil
	}))
	defer reg.Close()
	srv := httptest.NewServer(reg.MuxHandler())
	defer srv.Close()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n := 0
		reg.FeedEvents(ctx, "", func(_ context.Context, events []wsroom.Event) error {
			for _, ev := range events { // a real backend de-duplicates by ev.ID
				fmt.Println(strings.TrimSpace(ev.Type + " " + ev.User + " " + ev.Room))
				if n++; n == 4 {
					cancel()
				}
			}
			return nil
		})
	}()

	c, _, err := websocket.Dial(ctx, wsURL(srv, "/?user=ana"), &websocket.DialOptions{Subprotocols: []string{wsroom.Subprotocol}})
	if err != nil {
		fmt.Println(err)
		return
	}
	c.Read(ctx) // hello
	c.Write(ctx, websocket.MessageText, []byte(`{"op":"join","room":"lobby"}`))
	c.Read(ctx) // joined
	c.Close(websocket.StatusNormalClosure, "bye")
	<-done
	// Output:
	// connect ana
	// join ana lobby
	// leave ana lobby
	// disconnect ana
}
