package routertest_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/gin-gonic/gin"
	"github.com/go-chi/chi/v5"
	"github.com/labstack/echo/v4"
	"github.com/wsroom/wsroom"
)

func init() { gin.SetMode(gin.ReleaseMode) }

// A router mounts a Room's handler at /ws and a Registry's at /rooms/NAME,
// the registry's pick reading NAME the router's own way.
type router struct {
	name     string
	room     func(h http.Handler) http.Handler
	registry func(reg *wsroom.Registry) http.Handler
}

var routers = []router{
	{
		name: "ServeMux",
		room: func(h http.Handler) http.Handler {
			mux := http.NewServeMux()
			mux.Handle("GET /ws", h)
			return mux
		},
		registry: func(reg *wsroom.Registry) http.Handler {
			mux := http.NewServeMux()
			mux.Handle("GET /rooms/{name}", reg.Handler(func(r *http.Request) string {
				return r.PathValue("name")
			}))
			return mux
		},
	},
	{
		name: "chi",
		room: func(h http.Handler) http.Handler {
			r := chi.NewRouter()
			r.Get("/ws", h.ServeHTTP)
			return r
		},
		registry: func(reg *wsroom.Registry) http.Handler {
			r := chi.NewRouter()
			r.Get("/rooms/{name}", reg.Handler(func(r *http.Request) string {
				return chi.URLParam(r, "name")
			}).ServeHTTP)
			return r
		},
	},
	{
		name: "echo",
		room: func(h http.Handler) http.Handler {
			e := echo.New()
			e.GET("/ws", echo.WrapHandler(h))
			return e
		},
		registry: func(reg *wsroom.Registry) http.Handler {
			e := echo.New()
			h := reg.Handler(func(r *http.Request) string {
				return r.Context().Value(echoContext{}).(echo.Context).Param("name")
			})
			// echo keeps path parameters in its own context: hand that
			// context to pick through the request's.
			e.GET("/rooms/:name", func(c echo.Context) error {
				req := c.Request()
				ctx := context.WithValue(req.Context(), echoContext{}, c)
				h.ServeHTTP(c.Response(), req.WithContext(ctx))
				return nil
			})
			return e
		},
	},
	{
		name: "gin",
		room: func(h http.Handler) http.Handler {
			g := gin.New()
			g.GET("/ws", gin.WrapH(h))
			return g
		},
		registry: func(reg *wsroom.Registry) http.Handler {
			g := gin.New()
			h := reg.Handler(func(r *http.Request) string {
				return r.Context().Value(ginContext{}).(*gin.Context).Param("name")
			})
			// Likewise for gin.
			g.GET("/rooms/:name", func(c *gin.Context) {
				ctx := context.WithValue(c.Request.Context(), ginContext{}, c)
				h.ServeHTTP(c.Writer, c.Request.WithContext(ctx))
			})
			return g
		},
	},
	{
		// A net/http middleware between gin and wsroom wraps gin's
		// writer in its own, which only Unwrap sees through.
		name: "gin+middleware",
		room: func(h http.Handler) http.Handler {
			g := gin.New()
			g.GET("/ws", gin.WrapH(statusMiddleware(h)))
			return g
		},
		registry: func(reg *wsroom.Registry) http.Handler {
			g := gin.New()
			h := statusMiddleware(reg.Handler(func(r *http.Request) string {
				return r.Context().Value(ginContext{}).(*gin.Context).Param("name")
			}))
			g.GET("/rooms/:name", func(c *gin.Context) {
				ctx := context.WithValue(c.Request.Context(), ginContext{}, c)
				h.ServeHTTP(c.Writer, c.Request.WithContext(ctx))
			})
			return g
		},
	},
}

// statusMiddleware wraps the ResponseWriter the way logging and metrics
// middleware do, to see the status.
func statusMiddleware(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&statusWriter{ResponseWriter: w}, r)
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

type (
	echoContext struct{}
	ginContext  struct{}
)

// serve starts srv on handler for the test's duration.
func serve(t *testing.T, handler http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	return srv
}

// dial opens a WebSocket to path on srv, giving up after 3 seconds.
func dial(t *testing.T, srv *httptest.Server, path string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+path, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// read returns the next message on c, failing the test after 3 seconds.
func read(t *testing.T, c *websocket.Conn) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	_, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(b)
}

// waitClients waits until room has n clients, so that a message published
// next reaches them.
func waitClients(t *testing.T, room *wsroom.Room, n int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for room.Len() < n {
		if time.Now().After(deadline) {
			t.Fatalf("room has %d clients, want %d", room.Len(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRoomHandler(t *testing.T) {
	for _, rt := range routers {
		t.Run(rt.name, func(t *testing.T) {
			room := wsroom.New()
			t.Cleanup(func() { room.Close() })
			srv := serve(t, rt.room(room.Handler()))

			ana := dial(t, srv, "/ws")
			ben := dial(t, srv, "/ws")
			waitClients(t, room, 2)

			if err := room.Publish(t.Context(), []byte("from the server")); err != nil {
				t.Fatal(err)
			}
			for _, c := range []*websocket.Conn{ana, ben} {
				if got := read(t, c); got != "from the server" {
					t.Errorf("got %q, want %q", got, "from the server")
				}
			}

			// And a client's message goes round the room.
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
			defer cancel()
			if err := ana.Write(ctx, websocket.MessageText, []byte("from ana")); err != nil {
				t.Fatal(err)
			}
			for _, c := range []*websocket.Conn{ana, ben} {
				if got := read(t, c); got != "from ana" {
					t.Errorf("got %q, want %q", got, "from ana")
				}
			}
		})
	}
}

// The registry's pick sees each router's path parameter, and each client
// gets its own room's messages, in the JSON codec's envelope.
func TestRegistryHandler(t *testing.T) {
	type envelope struct {
		Seq   uint64          `json:"seq"`
		Epoch string          `json:"epoch"`
		Data  json.RawMessage `json:"data"`
	}
	for _, rt := range routers {
		t.Run(rt.name, func(t *testing.T) {
			reg := wsroom.NewRegistry(wsroom.WithCodec(wsroom.JSON()))
			t.Cleanup(func() { reg.Close() })
			srv := serve(t, rt.registry(reg))

			clients := map[string]*websocket.Conn{
				"alpha": dial(t, srv, "/rooms/alpha"),
				"beta":  dial(t, srv, "/rooms/beta"),
			}
			rooms := reg.Rooms()
			names := make([]string, len(rooms))
			for i, r := range rooms {
				names[i] = r.Name()
			}
			if want := []string{"alpha", "beta"}; !slices.Equal(names, want) {
				t.Fatalf("rooms %q, want %q", names, want)
			}
			for _, r := range rooms {
				waitClients(t, r, 1)
			}

			for _, r := range rooms {
				data, _ := json.Marshal(map[string]string{"to": r.Name()})
				if err := r.Publish(t.Context(), data); err != nil {
					t.Fatal(err)
				}
			}
			for name, c := range clients {
				raw := read(t, c)
				var env envelope
				if err := json.Unmarshal([]byte(raw), &env); err != nil {
					t.Fatalf("%s got %q: %v", name, raw, err)
				}
				want := `{"to":"` + name + `"}`
				if env.Seq != 1 || env.Epoch == "" || string(env.Data) != want {
					t.Errorf("%s got %s, want seq 1, an epoch and data %s", name, raw, want)
				}
			}
		})
	}
}

// A plain GET is answered 426 Upgrade Required through every router.
func TestUpgradeRequired(t *testing.T) {
	for _, rt := range routers {
		t.Run(rt.name, func(t *testing.T) {
			room := wsroom.New()
			t.Cleanup(func() { room.Close() })
			reg := wsroom.NewRegistry()
			t.Cleanup(func() { reg.Close() })
			servers := map[string]*httptest.Server{
				"/ws":          serve(t, rt.room(room.Handler())),
				"/rooms/alpha": serve(t, rt.registry(reg)),
			}
			for path, srv := range servers {
				resp, err := srv.Client().Get(srv.URL + path)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusUpgradeRequired {
					t.Errorf("GET %s: status %d, want %d", path, resp.StatusCode, http.StatusUpgradeRequired)
				}
				if got := resp.Header.Get("Upgrade"); got != "websocket" {
					t.Errorf("GET %s: Upgrade %q, want websocket", path, got)
				}
			}
		})
	}
}
