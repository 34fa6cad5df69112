package sqlstore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
)

// A connection of many rooms resumes each of three rooms from its durable
// history across a restart of the server: exactly the messages it missed
// in each, none twice.
func TestManyRoomsResumeAcrossRestart(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		type frame struct {
			Op, Room, Epoch, Code string
			Seq                   uint64
			Data                  json.RawMessage
		}
		start := func() (*wsroom.Registry, string, func()) {
			s := newStore(t, d, d.open(t))
			reg := wsroom.NewRegistry(wsroom.WithStore(s), wsroom.WithCodec(wsroom.JSON()), wsroom.WithPing(0, 0))
			srv := httptest.NewServer(reg.MuxHandler())
			return reg, "ws" + strings.TrimPrefix(srv.URL, "http"), func() { reg.Shutdown(context.Background()); srv.Close() }
		}
		dial := func(url string) *websocket.Conn {
			c, _, err := websocket.Dial(t.Context(), url, &websocket.DialOptions{Subprotocols: []string{wsroom.Subprotocol}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.CloseNow() })
			return c
		}
		recv := func(c *websocket.Conn) frame {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			_, b, err := c.Read(ctx)
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			var f frame
			if err := json.Unmarshal(b, &f); err != nil {
				t.Fatal(err)
			}
			return f
		}
		send := func(c *websocket.Conn, s string) {
			if err := c.Write(t.Context(), websocket.MessageText, []byte(s)); err != nil {
				t.Fatal(err)
			}
		}
		publish := func(reg *wsroom.Registry, room string, from, to int) {
			for i := from; i <= to; i++ {
				if err := reg.Publish(t.Context(), room, fmt.Appendf(nil, "%d", i)); err != nil {
					t.Fatal(err)
				}
			}
		}
		// dialJoin connects and reads the hello frame every connection
		// of many rooms starts with.
		dialJoin := func(url string) *websocket.Conn {
			c := dial(url)
			if f := recv(c); f.Op != "hello" {
				t.Fatalf("first frame %+v, want hello", f)
			}
			return c
		}
		rooms := []string{d.prefix + "a", d.prefix + "b", d.prefix + "c"}

		reg, url, stop := start()
		c := dialJoin(url)
		pos := map[string]string{}
		for _, room := range rooms {
			send(c, fmt.Sprintf(`{"op":"join","room":%q}`, room))
			if f := recv(c); f.Op != "joined" {
				t.Fatalf("join %s: %+v", room, f)
			}
			publish(reg, room, 1, 2)
			for range 2 {
				f := recv(c)
				pos[room] = fmt.Sprintf("%s:%d", f.Epoch, f.Seq)
			}
		}
		c.CloseNow()
		stop()

		reg, url, stop = start()
		defer stop()
		for _, room := range rooms {
			publish(reg, room, 3, 5) // missed by the client
		}
		c = dialJoin(url)
		defer c.CloseNow() // before stop: Shutdown would wait for its close
		for _, room := range rooms {
			send(c, fmt.Sprintf(`{"op":"join","room":%q,"resume":%q}`, room, pos[room]))
			// Publish returns once the message is stored, not once the
			// room's loop has it: the join may cut at 2 to 5, and what
			// follows the cut comes live. Either way the client gets 3
			// to 5 once each, in order.
			if f := recv(c); f.Op != "joined" || f.Seq < 2 || f.Seq > 5 {
				t.Fatalf("rejoin %s: %+v, want joined at 2 to 5", room, f)
			}
			var got []string
			for range 3 {
				f := recv(c)
				got = append(got, fmt.Sprintf("%d:%s", f.Seq, f.Data))
			}
			if want := []string{"3:3", "4:4", "5:5"}; !slices.Equal(got, want) {
				t.Errorf("room %s after the restart: %v, want %v", room, got, want)
			}
		}
	})
}
