package wsclient_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/wsclient"
)

// One client in two rooms publishes to each and reads each room's messages.
func Example() {
	rooms := wsroom.NewRegistry(wsroom.WithCodec(wsroom.JSON()))
	srv := httptest.NewServer(rooms.MuxHandler())
	defer srv.Close()
	defer rooms.Close()
	ctx := context.Background()

	c, err := wsclient.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	lobby, err := c.Join(ctx, "lobby")
	if err != nil {
		fmt.Println(err)
		return
	}
	news, err := c.Join(ctx, "news")
	if err != nil {
		fmt.Println(err)
		return
	}

	ack, err := lobby.Publish(ctx, []byte(`{"text":"hello"}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("ack:", ack.Room, ack.Seq)
	rooms.Publish(ctx, "news", []byte(`"extra"`)) // server code publishes too
	if ack, err = news.Publish(ctx, []byte(`"read all about it"`)); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("ack:", ack.Room, ack.Seq)

	for _, r := range []*wsclient.Room{lobby, news, news} {
		m, err := r.Next(ctx)
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(m.Room, m.Seq, string(m.Data))
	}
	// Output:
	// ack: lobby 1
	// ack: news 2
	// lobby 1 {"text":"hello"}
	// news 1 "extra"
	// news 2 "read all about it"
}
