package wsroom_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/wsclient"
)

// presenceServer serves many rooms with opts; a connection's identity is
// its "user" query parameter ("" for none).
func presenceServer(t *testing.T, opts ...wsroom.Option) (*wsroom.Registry, func(user, room string) *wsclient.Client) {
	t.Helper()
	reg := wsroom.NewRegistry(append([]wsroom.Option{wsroom.WithAuthorize(func(r *http.Request) (any, error) {
		if u := r.URL.Query().Get("user"); u != "" {
			return u, nil
		}
		return nil, nil
	})}, opts...)...)
	srv := httptest.NewServer(reg.MuxHandler())
	t.Cleanup(func() {
		srv.Close()
		reg.Close()
	})
	return reg, func(user, room string) *wsclient.Client {
		t.Helper()
		c, err := wsclient.Dial(t.Context(), wsURL(srv, "/?user="+user))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Join(t.Context(), room); err != nil {
			t.Fatal(err)
		}
		return c
	}
}

// With WithPresenceByUser on one node (no UserPresence), Members, Count and
// MembersPage are by user; a client without identity is its own user.
func TestRoomPresenceByUser(t *testing.T) {
	reg, dial := presenceServer(t, wsroom.WithPresenceByUser())
	var want []string
	for i := range 7 {
		u := fmt.Sprintf("u%d", i)
		want = append(want, u)
		dial(u, "r")
		if i%2 == 0 {
			dial(u, "r")
		}
	}
	anon := dial("", "r")
	want = append(want, anon.ConnID())
	slices.Sort(want)
	r, err := reg.Room("r")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if r.Len() != 12 {
		t.Fatalf("Len = %d, want 12 connections", r.Len())
	}
	ms, err := r.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		got = append(got, m.User)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("Members' users = %v, want %v", got, want)
	}
	if n, err := r.Count(ctx); err != nil || n != len(want) {
		t.Errorf("Count = %d, %v; want %d", n, err, len(want))
	}
	got = nil
	cursor := ""
	for {
		page, next, err := r.MembersPage(ctx, cursor, 3)
		if err != nil || len(page) > 3 {
			t.Fatalf("MembersPage(%q, 3) = %v, %v", cursor, page, err)
		}
		for _, m := range page {
			got = append(got, m.User)
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if !slices.Equal(got, want) {
		t.Errorf("pages' users = %v, want %v, each once, in order", got, want)
	}
}

// Without WithPresenceByUser each connection is a member.
func TestRoomPresenceByConnection(t *testing.T) {
	reg, dial := presenceServer(t)
	dial("ana", "r")
	dial("ana", "r")
	r, err := reg.Room("r")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := r.Count(context.Background()); err != nil || n != 2 {
		t.Errorf("Count = %d, %v; want 2", n, err)
	}
	ms, _ := r.Members(context.Background())
	if len(ms) != 2 || ms[0].User == ms[1].User || ms[0].Info != "ana" {
		t.Errorf("Members = %v, want two members of info ana, each its own user", ms)
	}
}
