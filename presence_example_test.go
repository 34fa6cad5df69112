package wsroom_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/wsclient"
)

// Presence by user: ana has two tabs open, ben one. The room has two
// members, whose connections a Broker implementing wsroom.UserPresence
// (redisbroker, natsbroker) would count across every node.
func ExampleWithPresenceByUser() {
	rooms := wsroom.NewRegistry(
		wsroom.WithPresenceEvents(100),
		wsroom.WithPresenceByUser(),
		wsroom.WithAuthorize(func(r *http.Request) (any, error) {
			return r.URL.Query().Get("user"), nil // a real app reads a session
		}),
	)
	defer rooms.Close()
	srv := httptest.NewServer(rooms.MuxHandler())
	defer srv.Close()

	ctx := context.Background()
	for _, user := range []string{"ana", "ana", "ben"} {
		c, err := wsclient.Dial(ctx, wsURL(srv, "/?user="+user))
		if err != nil {
			panic(err)
		}
		defer c.Close()
		if _, err := c.Join(ctx, "lobby"); err != nil {
			panic(err)
		}
	}
	lobby, _ := rooms.Room("lobby")
	fmt.Println("connections on this node:", lobby.Len())
	n, _ := lobby.Count(ctx)
	fmt.Println("members:", n)
	page, next, _ := lobby.MembersPage(ctx, "", 1)
	for next != "" {
		fmt.Println("page:", page[0].User)
		page, next, _ = lobby.MembersPage(ctx, next, 1)
	}
	fmt.Println("last page:", page[0].User)
	// Output:
	// connections on this node: 3
	// members: 2
	// page: ana
	// last page: ben
}
