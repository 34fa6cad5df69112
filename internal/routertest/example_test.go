package routertest_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/gin-gonic/gin"
	"github.com/go-chi/chi/v5"
	"github.com/labstack/echo/v4"
	"github.com/wsroom/wsroom"
)

// A Registry under chi: pick reads the room's name with chi.URLParam.
func Example_chi() {
	rooms := wsroom.NewRegistry()
	defer rooms.Close()

	r := chi.NewRouter()
	r.Get("/rooms/{name}", rooms.Handler(func(r *http.Request) string {
		return chi.URLParam(r, "name")
	}).ServeHTTP)

	srv := httptest.NewServer(r)
	defer srv.Close()
	publishAndReceive(srv, rooms, "lobby", "hello through chi")
	// Output:
	// lobby got: hello through chi
}

// A Registry under echo: the handler copies echo's path parameter into the
// request's path values, where the default pick (nil) finds it.
func Example_echo() {
	rooms := wsroom.NewRegistry()
	defer rooms.Close()
	h := rooms.Handler(nil) // the path value "name"

	e := echo.New()
	e.GET("/rooms/:name", func(c echo.Context) error {
		c.Request().SetPathValue("name", c.Param("name"))
		h.ServeHTTP(c.Response(), c.Request())
		return nil
	})

	srv := httptest.NewServer(e)
	defer srv.Close()
	publishAndReceive(srv, rooms, "lobby", "hello through echo")
	// Output:
	// lobby got: hello through echo
}

// A Registry under gin, the same way as under echo.
func Example_gin() {
	gin.SetMode(gin.ReleaseMode) // no debug lines on stdout
	rooms := wsroom.NewRegistry()
	defer rooms.Close()
	h := rooms.Handler(nil) // the path value "name"

	g := gin.New()
	g.GET("/rooms/:name", func(c *gin.Context) {
		c.Request.SetPathValue("name", c.Param("name"))
		h.ServeHTTP(c.Writer, c.Request)
	})

	srv := httptest.NewServer(g)
	defer srv.Close()
	publishAndReceive(srv, rooms, "lobby", "hello through gin")
	// Output:
	// lobby got: hello through gin
}

// publishAndReceive dials /rooms/NAME on srv, publishes msg to that room of
// rooms, and prints what the client receives.
func publishAndReceive(srv *httptest.Server, rooms *wsroom.Registry, name, msg string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/rooms/" + name
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer c.CloseNow()

	room, err := rooms.Room(name)
	if err != nil {
		fmt.Println(err)
		return
	}
	for room.Len() < 1 { // wait for the client to join
		time.Sleep(time.Millisecond)
	}
	if err := room.Publish(ctx, []byte(msg)); err != nil {
		fmt.Println("publish:", err)
		return
	}
	_, got, err := c.Read(ctx)
	if err != nil {
		fmt.Println("read:", err)
		return
	}
	fmt.Printf("%s got: %s\n", name, got)
	c.Close(websocket.StatusNormalClosure, "")
}
