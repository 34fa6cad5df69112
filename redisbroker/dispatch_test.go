package redisbroker

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsroom/wsroom"
)

// prompt bounds how long a room may wait for a delivery while another room
// of its node is stuck.
const prompt = 2 * time.Second

// stuckRoom subscribes to room on b with a deliver function that blocks, on
// its first call, until the returned release function is called, and a lost
// function that records its causes.
func stuckRoom(t *testing.T, b *Broker, room string) (s *sink, losses *lossLog, entered <-chan struct{}, release func()) {
	t.Helper()
	s, losses = newSink(), &lossLog{calls: make(chan error, 100)}
	in, gate := make(chan struct{}), make(chan struct{})
	var first, open sync.Once
	unsub, err := b.Subscribe(t.Context(), room, func(m wsroom.Message) {
		first.Do(func() {
			close(in)
			<-gate
		})
		s.deliver(m)
	}, losses.lost)
	if err != nil {
		t.Fatalf("Subscribe(%q) error: %v", room, err)
	}
	release = func() { open.Do(func() { close(gate) }) }
	// Cleanups run last first: the deliver function is released before the
	// subscription and the Broker are closed.
	t.Cleanup(unsub)
	t.Cleanup(release)
	return s, losses, in, release
}

// lossLog records the calls of a lost function.
type lossLog struct{ calls chan error }

func (l *lossLog) lost(err error) { l.calls <- err }

// TestStuckRoomDoesNotDelayOthers checks that a room whose deliver function
// blocks does not hold up the deliveries of another room on the same node.
func TestStuckRoomDoesNotDelayOthers(t *testing.T) {
	a, pub := newBroker(t), newBroker(t)
	roomA, roomB := roomName(t), roomName(t)
	sa, _, entered, release := stuckRoom(t, a, roomA)
	sb := subscribe(t, a, roomB)

	publish(t, pub, roomA, "a-1")
	select {
	case <-entered:
	case <-time.After(wait):
		t.Fatal("room A's first message was not delivered")
	}
	publish(t, pub, roomA, "a-2")
	start := time.Now()
	for i := range 5 {
		publish(t, pub, roomB, fmt.Sprintf("b-%d", i))
	}
	deadline := time.After(prompt)
	for len(sb.snapshot()) < 5 {
		select {
		case <-sb.more:
		case <-deadline:
			t.Fatalf("room B got %d of 5 messages within %v while room A's deliver was blocked", len(sb.snapshot()), prompt)
		}
	}
	t.Logf("room B's 5 messages arrived %v after publishing, room A still blocked", time.Since(start))

	release()
	if got := sa.waitN(t, 2); string(got[0].Data) != "a-1" || string(got[1].Data) != "a-2" {
		t.Errorf("room A got %v, want a-1 then a-2 once released", seqs(got))
	}
}

// TestStuckRoomOverflow checks that when a stuck room's queue overflows, its
// backlog is dropped and its subscription is told through lost, while
// another room of the node goes on receiving everything and is told
// nothing; and that the stuck room receives new messages once it moves.
func TestStuckRoomOverflow(t *testing.T) {
	const queue = 8
	errs := &errorLog{}
	a := newBroker(t, WithErrorHandler(errs.add), func(c *config) { c.roomQueue = queue })
	pub := newBroker(t)
	roomA, roomB := roomName(t), roomName(t)
	sa, lostA, entered, release := stuckRoom(t, a, roomA)
	sb := newSink()
	lostB := &lossLog{calls: make(chan error, 100)}
	unsub, err := a.Subscribe(t.Context(), roomB, sb.deliver, lostB.lost)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unsub)

	publish(t, pub, roomA, "a-0")
	select {
	case <-entered:
	case <-time.After(wait):
		t.Fatal("room A's first message was not delivered")
	}
	// Room A is stuck in its first delivery: more than its queue holds.
	// Room B gets fewer than its queue holds, so that it does not overflow
	// even when, on one P, the connection's reader queues them all before
	// room B's goroutine runs.
	const more, forB = 3 * queue, queue / 2
	for i := 1; i <= more; i++ {
		publish(t, pub, roomA, fmt.Sprintf("a-%d", i))
	}
	for i := 1; i <= forB; i++ {
		publish(t, pub, roomB, fmt.Sprintf("b-%d", i))
	}
	deadline := time.After(prompt)
	for len(sb.snapshot()) < forB {
		select {
		case <-sb.more:
		case <-deadline:
			t.Fatalf("room B got %d of %d messages within %v while room A was stuck", len(sb.snapshot()), forB, prompt)
		}
	}
	if got := seqs(sb.snapshot()); len(got) != forB || got[0]+uint64(forB-1) != got[forB-1] {
		t.Errorf("room B got seqs %v, want %d in a row", got, forB)
	}
	select {
	case err := <-lostA.calls:
		t.Fatalf("room A's lost(%v) called while its deliver was still blocked", err)
	default:
	}

	release()
	select {
	case err := <-lostA.calls:
		if err == nil || !strings.HasPrefix(err.Error(), "redisbroker: ") || !strings.Contains(err.Error(), "dropped") {
			t.Errorf("room A's lost(%v), want the dropped backlog", err)
		}
	case <-time.After(wait):
		t.Fatal("room A's lost was not called after its queue overflowed")
	}
	publish(t, pub, roomA, "a-after")
	got := sa.waitFor(t, hasData("a-after"))
	for k := 1; k < len(got); k++ {
		if got[k].Seq <= got[k-1].Seq {
			t.Fatalf("room A got seqs %v, want increasing", seqs(got))
		}
	}
	if n := len(got); n > 2+queue {
		t.Errorf("room A got %d deliveries (%v), want at most %d: the backlog beyond its queue dropped", n, seqs(got), 2+queue)
	}
	// What room A did not receive is in the history, for the room to read.
	hist, err := a.After(t.Context(), roomA, got[0].Epoch, got[0].Seq, 0)
	if err != nil || len(hist) != more+1 {
		t.Errorf("After(%d) = %d messages, %v; want %d", got[0].Seq, len(hist), err, more+1)
	}
	time.Sleep(50 * time.Millisecond)
	if n := len(lostA.calls); n != 0 {
		t.Errorf("room A's lost called %d more times, want once per overflow", n)
	}
	if n := len(lostB.calls); n != 0 {
		t.Errorf("room B's lost called %d times, want 0: only room A overflowed", n)
	}
	var told int
	for _, err := range errs.all() {
		if strings.Contains(err.Error(), "dropped") {
			told++
		}
	}
	if told != 1 {
		t.Errorf("error handler told of %d overflows (%v), want 1", told, errs.all())
	}
}
