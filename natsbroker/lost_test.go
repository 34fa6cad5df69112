package natsbroker

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/storetest"
)

// lostLog records the calls of one subscription's lost function.
type lostLog struct {
	mu     sync.Mutex
	causes []error
	calls  chan struct{}
}

func newLostLog() *lostLog { return &lostLog{calls: make(chan struct{}, 100)} }

func (l *lostLog) lost(err error) {
	l.mu.Lock()
	l.causes = append(l.causes, err)
	l.mu.Unlock()
	l.calls <- struct{}{}
}

// wait returns the first cause, failing t if lost is not called within d.
func (l *lostLog) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-l.calls:
	case <-time.After(d):
		t.Fatalf("lost not called within %v", d)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.causes[0]
}

func (l *lostLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.causes)
}

// subscribeLost subscribes to room on b with a sink and a lost log.
func subscribeLost(t *testing.T, b *Broker, room string) (*sink, *lostLog) {
	t.Helper()
	s := &sink{more: make(chan struct{}, 1)}
	l := newLostLog()
	unsub, err := b.Subscribe(context.Background(), room, func(m wsroom.Message) {
		s.mu.Lock()
		s.msgs = append(s.msgs, m)
		s.mu.Unlock()
		select {
		case s.more <- struct{}{}:
		default:
		}
	}, l.lost)
	if err != nil {
		t.Fatalf("Subscribe(%q): %v", room, err)
	}
	t.Cleanup(unsub)
	return s, l
}

func checkInOrder(t *testing.T, got []wsroom.Message, n int) {
	t.Helper()
	if len(got) != n {
		t.Errorf("got %d deliveries, want %d (each message once)", len(got), n)
	}
	for i, m := range got {
		if m.Seq != uint64(i+1) || string(m.Data) != fmt.Sprint(i) {
			t.Errorf("delivery %d = seq %d %q, want seq %d %q", i, m.Seq, m.Data, i+1, fmt.Sprint(i))
			return
		}
	}
}

// TestLostOnReconnect checks that a subscriber is told of a possible loss
// after its node reconnects, once, with the cause, and that it still
// receives every message in order.
func TestLostOnReconnect(t *testing.T) {
	prefix := testPrefix(t)
	ncB := connect(t)
	a, b := newNode(t, prefix), newNodeOn(t, ncB, prefix)
	room := storetest.RoomName(t)
	s, l := subscribeLost(t, b, room)
	const total = 20
	for i := range total {
		if i == 10 {
			if err := ncB.ForceReconnect(); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.Publish(t.Context(), room, wsroom.Message{Data: fmt.Appendf(nil, "%d", i)}); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
	cause := l.wait(t, 5*time.Second)
	if cause == nil || !strings.Contains(cause.Error(), "connection to NATS was lost") {
		t.Errorf("lost cause = %v, want the lost connection", cause)
	}
	s.wait(t, total, 5*time.Second)
	time.Sleep(200 * time.Millisecond) // let a duplicate or a second call, if any, arrive
	checkInOrder(t, s.get(), total)
	if n := l.count(); n != 1 {
		t.Errorf("lost called %d times for one reconnection, want 1", n)
	}
}

// TestNotLostWithoutFault checks that lost is not called while nothing goes
// wrong.
func TestNotLostWithoutFault(t *testing.T) {
	prefix := testPrefix(t)
	a, b := newNode(t, prefix), newNode(t, prefix)
	room := storetest.RoomName(t)
	s, l := subscribeLost(t, b, room)
	const total = 30
	for i := range total {
		if err := a.Publish(t.Context(), room, wsroom.Message{Data: fmt.Appendf(nil, "%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	s.wait(t, total, 5*time.Second)
	checkInOrder(t, s.get(), total)
	if n := l.count(); n != 0 {
		t.Errorf("lost called %d times without a fault (%v)", n, l.causes)
	}
}

// TestLostOnSlowConsumer makes NATS drop a room's announcements on a node
// whose subscriber is stuck, including the last ones, and checks that the
// node still delivers every message in order once the subscriber moves
// again, and tells it of the drop.
func TestLostOnSlowConsumer(t *testing.T) {
	prefix := testPrefix(t)
	quiet := nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}) // not on stderr
	a, b := newNode(t, prefix), newNodeOn(t, connect(t, quiet), prefix)
	room := storetest.RoomName(t)
	unblock := make(chan struct{})
	var once sync.Once
	s := &sink{more: make(chan struct{}, 1)}
	l := newLostLog()
	unsub, err := b.Subscribe(t.Context(), room, func(m wsroom.Message) {
		once.Do(func() { <-unblock })
		s.mu.Lock()
		s.msgs = append(s.msgs, m)
		s.mu.Unlock()
		select {
		case s.more <- struct{}{}:
		default:
		}
	}, l.lost)
	if err != nil {
		t.Fatal(err)
	}
	defer unsub()
	b.mu.Lock()
	tp := b.topics[room]
	b.mu.Unlock()
	if err := tp.sub.SetPendingLimits(4, -1); err != nil {
		t.Fatal(err)
	}
	// Let the room's one check of the stream pass, so that only the drop
	// detection can find the dropped messages at the end.
	time.Sleep(probeDelay + 100*time.Millisecond)
	// The first message blocks the room's goroutine; the next fill its
	// channel, then the subscription's pending queue, then are dropped.
	total := 1 + cap(tp.in) + 1 + 4 + 40
	for i := range total {
		if err := a.Publish(t.Context(), room, wsroom.Message{Data: fmt.Appendf(nil, "%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if n, _ := tp.sub.Dropped(); n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("NATS dropped no announcement")
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(unblock)
	cause := l.wait(t, 5*time.Second)
	if cause == nil || !strings.Contains(cause.Error(), "slow consumer") {
		t.Errorf("lost cause = %v, want the slow consumer", cause)
	}
	s.wait(t, total, 5*time.Second)
	time.Sleep(100 * time.Millisecond)
	checkInOrder(t, s.get(), total)
}

// TestStuckRoomDoesNotDelayOthers checks that a room whose deliver function
// blocks does not hold up the deliveries of another room on the same node:
// each room has a subscription and a goroutine of its own.
func TestStuckRoomDoesNotDelayOthers(t *testing.T) {
	prefix := testPrefix(t)
	a, b := newNode(t, prefix), newNode(t, prefix)
	roomA, roomB := storetest.RoomName(t), storetest.RoomName(t)
	entered, gate := make(chan struct{}), make(chan struct{})
	var first, open sync.Once
	release := func() { open.Do(func() { close(gate) }) }
	var got []wsroom.Message
	var mu sync.Mutex
	unsub, err := b.Subscribe(t.Context(), roomA, func(m wsroom.Message) {
		first.Do(func() {
			close(entered)
			<-gate
		})
		mu.Lock()
		got = append(got, m)
		mu.Unlock()
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unsub)
	t.Cleanup(release) // runs before unsub and Close
	sb := subscribe(t, b, roomB)

	publish := func(room, data string) {
		t.Helper()
		if err := a.Publish(t.Context(), room, wsroom.Message{Data: []byte(data)}); err != nil {
			t.Fatal(err)
		}
	}
	publish(roomA, "a-1")
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("room A's first message was not delivered")
	}
	for i := range 300 { // more than the room's channel holds
		publish(roomA, fmt.Sprint("a-", i+2))
	}
	start := time.Now()
	for i := range 5 {
		publish(roomB, fmt.Sprint("b-", i))
	}
	sb.wait(t, 5, 2*time.Second)
	t.Logf("room B's 5 messages arrived %v after publishing, room A still blocked", time.Since(start))
	release()
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == 301 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("room A got %d of 301 messages after it was released", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
