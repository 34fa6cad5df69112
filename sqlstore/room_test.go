package sqlstore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
)

// A room restarted on the same database continues the same sequence, and a
// client resumes across the restart without loss or duplicate.
func TestRoomResumesAcrossRestart(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		type envelope struct {
			Seq   uint64
			Epoch string
			Data  json.RawMessage
		}
		// start serves a room whose history is in a new *sql.DB on d.
		start := func() (*wsroom.Room, string, func()) {
			s := newStore(t, d, d.open(t))
			room := wsroom.New(wsroom.WithStore(s), wsroom.WithCodec(wsroom.JSON()), wsroom.WithPing(0, 0))
			srv := httptest.NewServer(room.Handler())
			return room, "ws" + strings.TrimPrefix(srv.URL, "http"), func() { room.Shutdown(context.Background()); srv.Close() }
		}
		publish := func(room *wsroom.Room, from, to int) {
			for i := from; i <= to; i++ {
				if err := room.Publish(t.Context(), fmt.Appendf(nil, "%d", i)); err != nil {
					t.Fatal(err)
				}
			}
		}
		read := func(c *websocket.Conn) envelope {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			_, b, err := c.Read(ctx)
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			var e envelope
			if err := json.Unmarshal(b, &e); err != nil {
				t.Fatal(err)
			}
			return e
		}

		room, url, stop := start()
		c, _, err := websocket.Dial(t.Context(), url, nil)
		if err != nil {
			t.Fatal(err)
		}
		for room.Len() < 1 {
			time.Sleep(time.Millisecond)
		}
		publish(room, 1, 5)
		var last envelope
		for range 3 {
			last = read(c)
		}
		c.CloseNow()
		stop()

		room, url, stop = start()
		defer stop()
		publish(room, 6, 7)
		c, _, err = websocket.Dial(t.Context(), fmt.Sprintf("%s?resume=%s:%d", url, last.Epoch, last.Seq), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		for want := uint64(4); want <= 7; want++ {
			e := read(c)
			if e.Seq != want || e.Epoch != last.Epoch || string(e.Data) != fmt.Sprint(want) {
				t.Fatalf("after the restart got %s:%d %s, want %s:%d %d", e.Epoch, e.Seq, e.Data, last.Epoch, want, want)
			}
		}
	})
}
