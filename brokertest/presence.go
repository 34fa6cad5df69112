package brokertest

// The cases of wsroom.UserPresence: users counted in the engine across
// nodes, counts, pages and leases.

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/storetest"
)

// LeaseWait bounds how long the lease case waits for the entries of a
// crashed node to be swept: it must exceed the adapter's presence lease,
// which its tests should make short.
var LeaseWait = 30 * time.Second

// Crasher is implemented by a node (a Broker newNode returned) that can stop
// as a crashed node does: Crash stops the renewal of its presence entries
// and removes none of them, and the node is not used afterwards, but for
// its Close. The lease case runs only on nodes that implement it; an
// adapter's test can wrap its Broker to add it.
type Crasher interface {
	Crash()
}

func userPresence(t *testing.T, b wsroom.Broker) wsroom.UserPresence {
	t.Helper()
	p, ok := b.(wsroom.UserPresence)
	if !ok {
		t.Skip("broker does not implement wsroom.UserPresence")
	}
	return p
}

func joinUser(t *testing.T, p wsroom.UserPresence, room, id, user string) bool {
	t.Helper()
	first, err := p.JoinUser(t.Context(), room, wsroom.Member{ID: id, User: user, Info: "info-" + user})
	if err != nil {
		t.Fatalf("JoinUser(%s, %s) error: %v", id, user, err)
	}
	return first
}

func leaveUser(t *testing.T, p wsroom.UserPresence, room, id, user string) bool {
	t.Helper()
	last, err := p.LeaveUser(t.Context(), room, id, user)
	if err != nil {
		t.Fatalf("LeaveUser(%s, %s) error: %v", id, user, err)
	}
	return last
}

func count(t *testing.T, p wsroom.UserPresence, room string) int {
	t.Helper()
	n, err := p.Count(t.Context(), room)
	if err != nil {
		t.Fatalf("Count error: %v", err)
	}
	return n
}

// allPages reads every page of room, n users at a time, and returns the
// users in the order read.
func allPages(t *testing.T, p wsroom.UserPresence, room string, n int) []wsroom.Member {
	t.Helper()
	var out []wsroom.Member
	cursor := ""
	for i := 0; ; i++ {
		page, next, err := p.MembersPage(t.Context(), room, cursor, n)
		if err != nil {
			t.Fatalf("MembersPage(%q, %d) error: %v", cursor, n, err)
		}
		if len(page) > n {
			t.Fatalf("MembersPage(%q, %d) returned %d members", cursor, n, len(page))
		}
		out = append(out, page...)
		if next == "" {
			return out
		}
		if i > 10000 {
			t.Fatal("MembersPage never returned the last page")
		}
		cursor = next
	}
}

// testUserFirstLast checks that a user's first join and last leave are
// told once, whichever node their connections are on.
func testUserFirstLast(t *testing.T, newNode func(*testing.T) wsroom.Broker) {
	a, b := userPresence(t, newNode(t)), userPresence(t, newNode(t))
	room := storetest.RoomName(t)
	if !joinUser(t, a, room, "ana-1", "ana") {
		t.Error("first connection of ana: first = false")
	}
	if joinUser(t, b, room, "ana-2", "ana") {
		t.Error("second connection of ana, on another node: first = true")
	}
	if joinUser(t, a, room, "ana-1", "ana") {
		t.Error("the same connection joined again: first = true")
	}
	if !joinUser(t, b, room, "ben-1", "ben") {
		t.Error("first connection of ben: first = false")
	}
	for i, p := range []wsroom.UserPresence{a, b} {
		if n := count(t, p, room); n != 2 {
			t.Errorf("Count from node %d = %d, want 2 users", i, n)
		}
	}
	if got := members(t, a, room); len(got) != 3 {
		t.Errorf("Members = %v, want the 3 connections", got)
	}
	if leaveUser(t, a, room, "ana-1", "ana") {
		t.Error("ana left one of two connections: last = true")
	}
	if !leaveUser(t, b, room, "ana-2", "ana") {
		t.Error("ana left her last connection, on the other node: last = false")
	}
	if leaveUser(t, b, room, "ana-2", "ana") {
		t.Error("a connection already gone left again: last = true")
	}
	if n := count(t, a, room); n != 1 {
		t.Errorf("Count after ana left = %d, want 1", n)
	}
	page := allPages(t, b, room, 10)
	if len(page) != 1 || page[0].User != "ben" || page[0].ID != "ben-1" || page[0].Info != "info-ben" {
		t.Errorf("MembersPage = %v, want only ben-1 of ben", page)
	}
	if !joinUser(t, a, room, "ana-3", "ana") {
		t.Error("ana came back: first = false")
	}
	leaveUser(t, a, room, "ana-3", "ana")
	leaveUser(t, b, room, "ben-1", "ben")
	if n := count(t, a, room); n != 0 {
		t.Errorf("Count after everyone left = %d, want 0", n)
	}
}

// testUserConcurrentJoins joins two connections of one user at once on two
// nodes, and leaves them at once: one first and one last, every time.
func testUserConcurrentJoins(t *testing.T, newNode func(*testing.T) wsroom.Broker) {
	a, b := userPresence(t, newNode(t)), userPresence(t, newNode(t))
	room := storetest.RoomName(t)
	for i := range 30 {
		user := fmt.Sprintf("u%d", i)
		at := func(f func(p wsroom.UserPresence, id string) bool) int {
			var wg sync.WaitGroup
			got := make([]bool, 2)
			for j, p := range []wsroom.UserPresence{a, b} {
				wg.Go(func() { got[j] = f(p, fmt.Sprintf("%s-%d", user, j)) })
			}
			wg.Wait()
			n := 0
			for _, g := range got {
				if g {
					n++
				}
			}
			return n
		}
		if n := at(func(p wsroom.UserPresence, id string) bool {
			first, err := p.JoinUser(t.Context(), room, wsroom.Member{ID: id, User: user})
			if err != nil {
				t.Errorf("JoinUser error: %v", err)
			}
			return first
		}); n != 1 {
			t.Fatalf("round %d: %d of two concurrent joins of one user were first, want 1", i, n)
		}
		if n := at(func(p wsroom.UserPresence, id string) bool {
			last, err := p.LeaveUser(t.Context(), room, id, user)
			if err != nil {
				t.Errorf("LeaveUser error: %v", err)
			}
			return last
		}); n != 1 {
			t.Fatalf("round %d: %d of two concurrent leaves of one user were last, want 1", i, n)
		}
	}
	if n := count(t, a, room); n != 0 {
		t.Errorf("Count = %d after every user left, want 0", n)
	}
}

// testUserCount checks Count of users with many connections on two nodes.
func testUserCount(t *testing.T, newNode func(*testing.T) wsroom.Broker) {
	a, b := userPresence(t, newNode(t)), userPresence(t, newNode(t))
	room, other := storetest.RoomName(t), storetest.RoomName(t)
	for i := range 40 {
		user := fmt.Sprintf("user-%02d", i%25) // 25 users, 15 of them with two connections
		p := []wsroom.UserPresence{a, b}[i%2]
		joinUser(t, p, room, fmt.Sprintf("c%d", i), user)
	}
	joinUser(t, a, other, "elsewhere", "user-00")
	for i, p := range []wsroom.UserPresence{a, b} {
		if n := count(t, p, room); n != 25 {
			t.Errorf("Count from node %d = %d, want 25", i, n)
		}
	}
	if n := count(t, b, storetest.RoomName(t)); n != 0 {
		t.Errorf("Count of an empty room = %d, want 0", n)
	}
}

// testUserPages checks that the pages of a room's users cover each user
// present throughout once, in user order, while others come and go.
func testUserPages(t *testing.T, newNode func(*testing.T) wsroom.Broker) {
	a, b := userPresence(t, newNode(t)), userPresence(t, newNode(t))
	room := storetest.RoomName(t)
	var want []string
	for i := range 57 {
		user := fmt.Sprintf("stay-%03d", i)
		want = append(want, user)
		joinUser(t, a, room, user+"-a", user)
		if i%3 == 0 {
			joinUser(t, b, room, user+"-b", user)
		}
	}
	for _, n := range []int{1, 7, 57, 100} {
		got := allPages(t, b, room, n)
		users := make([]string, len(got))
		for i, m := range got {
			users[i] = m.User
			if m.ID != m.User+"-a" && m.ID != m.User+"-b" {
				t.Errorf("page of %d: member %v has an ID of another user", n, m)
			}
		}
		if !slices.Equal(users, want) {
			t.Errorf("pages of %d = %v, want %v", n, users, want)
		}
	}

	// Users come and go while the pages are read: those present throughout
	// come once each, and no user comes twice.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			user := fmt.Sprintf("move-%03d", i%40)
			if _, err := a.JoinUser(t.Context(), room, wsroom.Member{ID: user, User: user}); err != nil {
				t.Errorf("JoinUser error: %v", err)
				return
			}
			if i%2 == 0 {
				if _, err := b.LeaveUser(t.Context(), room, user, user); err != nil {
					t.Errorf("LeaveUser error: %v", err)
					return
				}
			}
		}
	})
	got := allPages(t, b, room, 5)
	close(stop)
	wg.Wait()
	seen := make(map[string]bool)
	var stayed []string
	for _, m := range got {
		if seen[m.User] {
			t.Errorf("user %s came twice in the pages", m.User)
		}
		seen[m.User] = true
		if m.User < "s" {
			continue
		}
		stayed = append(stayed, m.User)
	}
	if !slices.Equal(stayed, want) {
		t.Errorf("pages while others moved: users present throughout = %v, want %v", stayed, want)
	}
}

// testUserLease crashes a node: the other nodes' sweeps report its users'
// last leaves once the lease ran out, each user once in all.
func testUserLease(t *testing.T, newNode func(*testing.T) wsroom.Broker) {
	a, b := userPresence(t, newNode(t)), userPresence(t, newNode(t))
	nc := newNode(t)
	c := userPresence(t, nc)
	crasher, ok := nc.(Crasher)
	if !ok {
		t.Skip("node does not implement brokertest.Crasher")
	}
	room := storetest.RoomName(t)
	joinUser(t, a, room, "stay-a", "stay")
	joinUser(t, c, room, "stay-c", "stay")   // the user stays, on a
	joinUser(t, c, room, "gone-c1", "gone")  // both of gone's connections die
	joinUser(t, c, room, "gone-c2", "gone")  //
	joinUser(t, c, room, "alone-c", "alone") // and alone's one
	crasher.Crash()
	crashed := time.Now()

	var (
		mu    sync.Mutex
		swept = make(map[string]int)
		until = make(map[string]time.Duration)
	)
	deadline := time.Now().Add(LeaseWait)
	var wg sync.WaitGroup
	for _, p := range []wsroom.UserPresence{a, b} {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				gone, err := p.Sweep(t.Context(), room)
				if err != nil {
					t.Errorf("Sweep error: %v", err)
					return
				}
				mu.Lock()
				for _, m := range gone {
					swept[m.User]++
					until[m.User] = time.Since(crashed)
					if m.User == "gone" && m.ID != "gone-c1" && m.ID != "gone-c2" || m.User == "alone" && m.ID != "alone-c" {
						t.Errorf("Sweep returned %v, an ID of another user", m)
					}
				}
				done := swept["gone"] > 0 && swept["alone"] > 0
				mu.Unlock()
				if done {
					// Sweep a little longer: a second report would
					// come now.
					time.Sleep(200 * time.Millisecond)
					if _, err := p.Sweep(t.Context(), room); err != nil {
						t.Errorf("Sweep error: %v", err)
					}
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if swept["gone"] != 1 || swept["alone"] != 1 || swept["stay"] != 0 || len(swept) != 2 {
		t.Fatalf("sweeps within %v of the crash reported %v, want gone and alone once each", LeaseWait, swept)
	}
	t.Logf("the crashed node's users were swept %v (gone) and %v (alone) after the crash", until["gone"].Round(time.Millisecond), until["alone"].Round(time.Millisecond))
	if n := count(t, a, room); n != 1 {
		t.Errorf("Count after the sweep = %d, want 1 (stay)", n)
	}
	if got := allPages(t, b, room, 10); len(got) != 1 || got[0].User != "stay" || got[0].ID != "stay-a" {
		t.Errorf("MembersPage after the sweep = %v, want stay-a of stay", got)
	}
	if !leaveUser(t, a, room, "stay-a", "stay") {
		t.Error("stay left its last live connection: last = false")
	}
}
