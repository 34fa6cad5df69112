package redisbroker

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wsroom/wsroom"
)

func sortedMembers(t *testing.T, b *Broker, room string) []wsroom.Member {
	t.Helper()
	ms, err := b.Members(t.Context(), room)
	if err != nil {
		t.Fatalf("Members(%q) error: %v", room, err)
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
		t.Fatalf("Join(%q, %v) error: %v", room, m, err)
	}
}

// TestPresenceExpiresWithoutClose runs two nodes with a short presence TTL.
// The entries of a live node outlast the TTL, being refreshed, even after
// Redis lost its scripts; those of a node that dies without Close (its
// connections to Redis cut for good) stay listed until they expire, and no
// longer.
func TestPresenceExpiresWithoutClose(t *testing.T) {
	const ttl = time.Second
	admin := newClient(t)
	p := newProxy(t, redisAddr(), 0)
	live := newBroker(t, WithPresenceTTL(ttl))
	dyingClient := redis.NewClient(&redis.Options{Addr: p.addr(), MaxRetries: -1})
	dying := New(dyingClient, WithMaxAge(testMaxAge), WithPresenceTTL(ttl))
	t.Cleanup(func() {
		dying.Close()
		dyingClient.Close()
	})
	room := roomName(t)
	stay, gone := wsroom.Member{ID: "id-stay", Info: "ana"}, wsroom.Member{ID: "id-gone", Info: "ben"}
	join(t, live, room, stay)
	join(t, dying, room, gone)
	both := []wsroom.Member{gone, stay}
	if got := sortedMembers(t, live, room); !slices.Equal(got, both) {
		t.Fatalf("Members = %v, want %v", got, both)
	}
	keys := live.presenceKeys(room)
	for _, k := range keys[:4] { // the fifth holds leaves: none yet
		if d := admin.PTTL(t.Context(), k).Val(); d <= 0 || d > 2*ttl {
			t.Errorf("PTTL %s = %v, want within (0, %v]", k, d, 2*ttl)
		}
	}

	if err := admin.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * ttl)
	if got := sortedMembers(t, live, room); !slices.Equal(got, both) {
		t.Fatalf("Members %v after twice the TTL, want %v: refreshed entries must stay", got, both)
	}

	p.close() // the dying node loses Redis for good, without Close
	killed := time.Now()
	if got := sortedMembers(t, live, room); !slices.Equal(got, both) {
		t.Fatalf("Members %v right after the node died, want %v until its entries expire", got, both)
	}
	for {
		got := sortedMembers(t, live, room)
		if slices.Equal(got, []wsroom.Member{stay}) {
			break
		}
		if time.Since(killed) > ttl+time.Second {
			t.Fatalf("Members %v %v after the node died, want only %v", got, time.Since(killed), stay)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if d := time.Since(killed); d < ttl/2 {
		t.Errorf("the dead node's entry expired %v after it died, want about the TTL %v", d, ttl)
	}
	start := time.Now()
	if err := dying.Close(); err == nil {
		t.Error("Close of a node without Redis returned nil, want the failed removal of its entries")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close without Redis took %v", d)
	}

	// A sweep removes the dead node's entry, and reports its user's leave.
	swept, err := live.Sweep(t.Context(), room)
	if err != nil {
		t.Fatal(err)
	}
	if want := []wsroom.Member{{ID: gone.ID, User: gone.ID, Info: gone.Info}}; !slices.Equal(swept, want) {
		t.Errorf("Sweep = %v, want %v", swept, want)
	}

	// The last member leaves: the room's presence keys are gone, but the
	// note of the leave, which expires by itself.
	if err := live.Leave(t.Context(), room, stay.ID); err != nil {
		t.Fatal(err)
	}
	if n := admin.Exists(t.Context(), keys[:4]...).Val(); n != 0 {
		t.Errorf("%d presence keys left after every member left, want 0", n)
	}
}

// TestPresenceClose checks that Close removes the node's entries, that Join
// then fails, and that Leave and Members keep working.
func TestPresenceClose(t *testing.T) {
	a, b := newBroker(t), newBroker(t)
	room, other := roomName(t), roomName(t)
	join(t, a, room, wsroom.Member{ID: "a1"})
	join(t, b, room, wsroom.Member{ID: "b1", Info: "bea"})
	join(t, b, other, wsroom.Member{ID: "b2"})
	join(t, a, other, wsroom.Member{ID: "a2"})
	if err := b.Close(); err != nil {
		t.Fatalf("Close error: %v", err)
	}
	if got := sortedMembers(t, a, room); !slices.Equal(got, []wsroom.Member{{ID: "a1"}}) {
		t.Errorf("Members(room) after Close = %v, want only a1", got)
	}
	if got := sortedMembers(t, b, other); !slices.Equal(got, []wsroom.Member{{ID: "a2"}}) {
		t.Errorf("Members(other) from the closed Broker = %v, want only a2", got)
	}
	if err := b.Join(t.Context(), room, wsroom.Member{ID: "b3"}); !errors.Is(err, ErrClosed) {
		t.Errorf("Join after Close error = %v, want ErrClosed", err)
	}
	if err := b.Leave(t.Context(), other, "a2"); err != nil {
		t.Errorf("Leave after Close error = %v", err)
	}
	if got := sortedMembers(t, a, other); len(got) != 0 {
		t.Errorf("Members(other) = %v, want none", got)
	}
}

// TestLeaveDuringRefresh checks that a member that leaves while a refresh
// is under way is not written back by it.
func TestLeaveDuringRefresh(t *testing.T) {
	b := newBroker(t)
	room := roomName(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := b.refresh(); err != nil {
				t.Errorf("refresh error: %v", err)
				return
			}
		}
	})
	for i := range 300 {
		m := wsroom.Member{ID: fmt.Sprintf("m%d", i)}
		join(t, b, room, m)
		if err := b.Leave(t.Context(), room, m.ID); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if got := sortedMembers(t, b, room); len(got) != 0 {
		t.Errorf("Members = %v after every member left, want none", got)
	}
}
