package wsclient_test

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/wsclient"
)

// users returns the users of a room's presence, or nil if it is not listed.
func users(p wsclient.Presence) []string {
	if !p.Listed {
		return nil
	}
	var out []string
	for _, m := range p.Members {
		out = append(out, m.User)
	}
	return out
}

// waitPresence waits until the room's presence lists exactly want.
func waitPresence(t *testing.T, r *wsclient.Room, want ...string) wsclient.Presence {
	t.Helper()
	var p wsclient.Presence
	waitFor(t, "presence ["+strings.Join(want, " ")+"]", func() bool {
		p = r.Presence()
		return slices.Equal(users(p), want) && p.Count == len(want)
	})
	return p
}

// A user with two connections is one member; it leaves with its last.
func TestPresenceByUser(t *testing.T) {
	f := newFixture(t, wsroom.WithPresenceEvents(10), wsroom.WithPresenceByUser(),
		wsroom.WithAuthorize(func(r *http.Request) (any, error) { return r.Header.Get("X-User"), nil }))
	as := func(user string) wsclient.Option {
		return wsclient.WithHeader(http.Header{"X-User": {user}})
	}
	obs := join(t, f.dial(t, as("obs")), "lobby", wsclient.Members())
	waitPresence(t, obs, "obs")
	tab1 := f.dial(t, as("ana"))
	join(t, tab1, "lobby")
	tab2 := f.dial(t, as("ana"))
	r2 := join(t, tab2, "lobby", wsclient.Members())
	ben := f.dial(t, as("ben"))
	join(t, ben, "lobby")
	p := waitPresence(t, obs, "ana", "ben", "obs")
	if m := p.Members[0]; m.Info != "ana" || m.ID == "" {
		t.Errorf("member ana = %+v, want info ana and a connection id", m)
	}
	if got := users(r2.Presence()); !slices.Equal(got, []string{"ana", "obs"}) && !slices.Equal(got, []string{"ana", "ben", "obs"}) {
		t.Errorf("the second tab's presence = %v, want ana and obs (and ben)", got)
	}

	// One of ana's tabs leaves, then ben: when ben's leave has come, ana
	// is still there (the events of one node come in order).
	tab1.Close()
	ben.Close()
	waitPresence(t, obs, "ana", "obs")
	tab2.Close()
	waitPresence(t, obs, "obs")
}

// Without WithPresenceByUser each connection is a member, its user its id.
func TestPresenceByConnection(t *testing.T) {
	f := newFixture(t, wsroom.WithPresenceEvents(10),
		wsroom.WithAuthorize(func(r *http.Request) (any, error) { return "ana", nil }))
	a := f.dial(t)
	ra := join(t, a, "lobby", wsclient.Members())
	b := f.dial(t)
	join(t, b, "lobby")
	p := waitPresence(t, ra, sortedIDs(a.ConnID(), b.ConnID())...)
	for _, m := range p.Members {
		if m.Info != "ana" || m.User != m.ID {
			t.Errorf("member %+v, want info ana and user = id", m)
		}
	}
	b.Close()
	waitPresence(t, ra, a.ConnID())
}

func sortedIDs(ids ...string) []string {
	slices.Sort(ids)
	return ids
}

// Above the presence bound, a room's presence is a count.
func TestPresenceCount(t *testing.T) {
	f := newFixture(t, wsroom.WithPresenceEvents(2))
	var rooms []*wsclient.Room
	for range 3 {
		rooms = append(rooms, join(t, f.dial(t), "big", wsclient.Members()))
	}
	waitFor(t, "a count of 3", func() bool {
		p := rooms[0].Presence()
		return !p.Listed && p.Count == 3
	})
	if p := rooms[2].Presence(); p.Listed || p.Count != 3 {
		t.Errorf("the third member's presence after its join = %+v, want a count of 3", p)
	}
}
