package wsroom_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
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
