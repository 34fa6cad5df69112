package natsbroker

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/storetest"
)

func members(t *testing.T, b *Broker, room string) []wsroom.Member {
	t.Helper()
	ms, err := b.Members(t.Context(), room)
	if err != nil {
		t.Fatalf("Members(%q): %v", room, err)
	}
	slices.SortFunc(ms, func(a, b wsroom.Member) int { return cmp.Compare(a.ID, b.ID) })
	for i := range ms {
		if ms[i].User == ms[i].ID {
			ms[i].User = "" // joined without a user
		}
	}
	return ms
}

func join(t *testing.T, b *Broker, room string, m wsroom.Member) {
	t.Helper()
	if err := b.Join(t.Context(), room, m); err != nil {
		t.Fatalf("Join(%q, %v): %v", room, m, err)
	}
}

// TestPresenceNodeDies stops a node without Close, by closing its
// connection: its members are still listed at first, since nothing removed
// them, and expire after the TTL, while the members of the live node, which
// it refreshes, stay.
func TestPresenceNodeDies(t *testing.T) {
	prefix := testPrefix(t)
	const ttl = time.Second
	ncB := connect(t)
	a := newNode(t, prefix, WithPresenceTTL(ttl))
	b := newNodeOn(t, ncB, prefix, WithPresenceTTL(ttl))
	room := storetest.RoomName(t)
	stay, gone := wsroom.Member{ID: "id-stay", Info: "stay"}, wsroom.Member{ID: "id-gone", Info: "gone"}
	join(t, a, room, stay)
	join(t, b, room, gone)
	joined := time.Now()
	both := []wsroom.Member{gone, stay}
	if got := members(t, a, room); !slices.Equal(got, both) {
		t.Fatalf("Members = %v, want %v", got, both)
	}
	ncB.Close()
	if got := members(t, a, room); !slices.Equal(got, both) {
		t.Fatalf("Members right after the node died = %v, want %v (its entries expire, nobody removes them)", got, both)
	}
	expired := false
	for time.Since(joined) < 3*ttl {
		got := members(t, a, room)
		switch {
		case slices.Equal(got, []wsroom.Member{stay}):
			expired = true
		case expired || !slices.Equal(got, both):
			t.Fatalf("Members = %v %v after the node joined, want %v, then %v once the dead node's entries expire", got, time.Since(joined), both, []wsroom.Member{stay})
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !expired {
		t.Fatalf("dead node's member still listed %v after it joined (TTL %v)", time.Since(joined), ttl)
	}
}

// TestPresenceNames checks that room names, client IDs and infos of any
// content are kept apart and returned as given.
func TestPresenceNames(t *testing.T) {
	prefix := testPrefix(t)
	a, b := newNode(t, prefix), newNode(t, prefix)
	rooms := []string{"", "x", "x.>", "x.*", "with space", "ünï/cødé"}
	for i, room := range rooms {
		for _, id := range []string{"", "a.b", "*", "ü c/d"} {
			join(t, a, room, wsroom.Member{ID: id, Info: fmt.Sprintf("%d %s\x00\xff", i, id)})
		}
	}
	for i, room := range rooms {
		got := members(t, b, room)
		want := []wsroom.Member{{ID: "", Info: fmt.Sprintf("%d \x00\xff", i)}, {ID: "*", Info: fmt.Sprintf("%d *\x00\xff", i)},
			{ID: "a.b", Info: fmt.Sprintf("%d a.b\x00\xff", i)}, {ID: "ü c/d", Info: fmt.Sprintf("%d ü c/d\x00\xff", i)}}
		if !slices.Equal(got, want) {
			t.Errorf("Members(%q) = %q, want %q", room, got, want)
		}
	}
	if got := members(t, b, "nobody here"); len(got) != 0 {
		t.Errorf("Members of an empty room = %v, want none", got)
	}
}

// TestMembersWhileRefreshing lists a room's members while their node
// rewrites their entries over and over: every listing has each member once.
func TestMembersWhileRefreshing(t *testing.T) {
	prefix := testPrefix(t)
	a, b := newNode(t, prefix), newNode(t, prefix)
	room := storetest.RoomName(t)
	const n = 100
	for i := range n {
		join(t, a, room, wsroom.Member{ID: fmt.Sprint(i)})
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				a.refresh()
			}
		}
	})
	defer wg.Wait()
	defer close(stop)
	for range 20 {
		got := members(t, b, room)
		if len(got) != n {
			t.Fatalf("Members while refreshing = %d entries, want %d", len(got), n)
		}
		for i, m := range got {
			if i > 0 && m.ID == got[i-1].ID {
				t.Fatalf("Members while refreshing lists %q twice", m.ID)
			}
		}
	}
}

// TestLeaveWhileRefreshing has members leave while their node rewrites
// their entries: none of them comes back.
func TestLeaveWhileRefreshing(t *testing.T) {
	prefix := testPrefix(t)
	a := newNode(t, prefix)
	room := storetest.RoomName(t)
	const n = 200
	for i := range n {
		join(t, a, room, wsroom.Member{ID: fmt.Sprint(i)})
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				a.refresh()
			}
		}
	})
	for i := range n {
		if err := a.Leave(t.Context(), room, fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if got := members(t, a, room); len(got) != 0 {
		t.Errorf("%d members listed after all left while refreshing, want none", len(got))
	}
}

// TestLeaveWhileWritingBack has members leave while their node writes
// back their entries, gone as after a server restarted without its store:
// a leave that finds no entry must not be undone by the write-back of a
// refresh that began before it.
func TestLeaveWhileWritingBack(t *testing.T) {
	prefix := testPrefix(t)
	a := newNode(t, prefix)
	room := storetest.RoomName(t)
	const n = 100
	for i := range n {
		join(t, a, room, wsroom.Member{ID: fmt.Sprint(i)})
	}
	for i := range n {
		id := fmt.Sprint(i)
		if err := a.pres.kv.Purge(t.Context(), userKey(room, id)); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Go(a.refresh)
		// The leave comes at a different point of the refresh each time
		// (its read of the entry takes about a round trip).
		time.Sleep(time.Duration(i%25) * 100 * time.Microsecond)
		if err := a.Leave(t.Context(), room, id); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
	}
	if got := members(t, a, room); len(got) != 0 {
		t.Errorf("%d members listed after all left while their entries were written back, want none: %v", len(got), got)
	}
}

// TestPresenceRefreshedAfterReconnect checks that a node rewrites its
// entries at once after a reconnection, in case they expired meanwhile.
func TestPresenceRefreshedAfterReconnect(t *testing.T) {
	prefix := testPrefix(t)
	nc := connect(t)
	b := newNodeOn(t, nc, prefix) // default TTL: no refresh due in this test
	room := storetest.RoomName(t)
	m := wsroom.Member{ID: "id", Info: "info"}
	join(t, b, room, m)
	// Remove the entry behind the node's back, as an expiry would.
	if err := b.pres.kv.Purge(t.Context(), userKey(room, m.ID)); err != nil {
		t.Fatal(err)
	}
	if got := members(t, b, room); len(got) != 0 {
		t.Fatalf("Members = %v after purge, want none", got)
	}
	if err := nc.ForceReconnect(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := members(t, b, room)
		if slices.Equal(got, []wsroom.Member{m}) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Members = %v after reconnecting, want [%v]", got, m)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestWithPresenceTTL(t *testing.T) {
	for _, c := range []struct{ in, want time.Duration }{
		{0, DefaultPresenceTTL}, {-time.Second, DefaultPresenceTTL}, {time.Millisecond, MinPresenceTTL}, {5 * time.Second, 5 * time.Second},
	} {
		cfg := defaultConfig()
		WithPresenceTTL(c.in)(&cfg)
		if cfg.presenceTTL != c.want {
			t.Errorf("WithPresenceTTL(%v) gives %v, want %v", c.in, cfg.presenceTTL, c.want)
		}
	}
	if !strings.HasSuffix(presenceBucket("a.b-c:d"), "A_B-C_D_PRESENCE") {
		t.Errorf("presenceBucket = %q", presenceBucket("a.b-c:d"))
	}
}
