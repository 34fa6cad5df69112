package natsbroker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/brokertest"
	"github.com/wsroom/wsroom/storetest"
)

func TestStoreConformance(t *testing.T) {
	prefix := testPrefix(t)
	storetest.Run(t, func(t *testing.T) wsroom.Store { return newNode(t, prefix, WithHistoryLimit(100)) })
}

var _ wsroom.Sequencer = (*Broker)(nil)

func TestBrokerConformance(t *testing.T) {
	prefix := testPrefix(t)
	brokertest.Run(t, func(t *testing.T) wsroom.Broker {
		return crashable{newNode(t, prefix, WithPresenceTTL(MinPresenceTTL))}
	})
}

// TestRoomNames checks that names with subject metacharacters are rooms of
// their own.
func TestRoomNames(t *testing.T) {
	prefix := testPrefix(t)
	a, b := newNode(t, prefix), newNode(t, prefix)
	names := []string{"", "a", "a.b", "a.*", "a.>", "*", ">", "with space", "tab\tand\nnewline", "ünï/cødé", strings.Repeat("x", 300)}
	sinks := make([]*sink, len(names))
	for i, name := range names {
		sinks[i] = subscribe(t, b, name)
	}
	for i, name := range names {
		for j := range i + 1 {
			if err := a.Publish(t.Context(), name, wsroom.Message{Data: fmt.Appendf(nil, "%d-%d", i, j)}); err != nil {
				t.Fatalf("Publish(%q): %v", name, err)
			}
		}
	}
	for i, name := range names {
		sinks[i].wait(t, i+1, 5*time.Second)
		time.Sleep(10 * time.Millisecond) // let a stray message, if any, arrive
		got := sinks[i].get()
		if len(got) != i+1 {
			t.Errorf("room %q got %d messages, want %d", name, len(got), i+1)
		}
		for j, m := range got {
			if want := fmt.Sprintf("%d-%d", i, j); string(m.Data) != want || m.Seq != uint64(j+1) {
				t.Errorf("room %q message %d = %q seq %d, want %q seq %d", name, j, m.Data, m.Seq, want, j+1)
			}
		}
		last, err := b.Last(t.Context(), name, 100)
		if err != nil || len(last) != i+1 {
			t.Errorf("Last(%q) = %d messages, %v; want %d", name, len(last), err, i+1)
		}
	}
}

// TestHistoryLimits checks WithHistoryLimit and WithMaxAge, including a
// subscriber that sees its room start a new epoch.
func TestHistoryLimits(t *testing.T) {
	prefix := testPrefix(t)
	b := newNode(t, prefix, WithHistoryLimit(3), WithMaxAge(time.Second))
	room := storetest.RoomName(t)
	s := subscribe(t, b, room)
	var ms []wsroom.Message
	for i := range 5 {
		m, err := b.Append(t.Context(), room, wsroom.Message{Data: fmt.Appendf(nil, "m%d", i+1)})
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	epoch := ms[0].Epoch
	if got, err := b.Last(t.Context(), room, 10); err != nil || !slices.Equal(seqs(got), []uint64{3, 4, 5}) {
		t.Errorf("Last(10) = %v, %v; want seqs 3..5", seqs(got), err)
	}
	if got, err := b.After(t.Context(), room, epoch, 2, 0); err != nil || !slices.Equal(seqs(got), []uint64{3, 4, 5}) {
		t.Errorf("After(2) = %v, %v; want seqs 3..5", seqs(got), err)
	}
	if got, err := b.After(t.Context(), room, epoch, 1, 0); !errors.Is(err, wsroom.ErrGap) {
		t.Errorf("After(1) = %v, %v; want ErrGap (message 2 trimmed)", seqs(got), err)
	}
	s.wait(t, 5, 5*time.Second)

	// Let every message expire: the room forgets its epoch.
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := b.Last(t.Context(), room, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("messages still stored after %v with MaxAge 1s", 10*time.Second)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := b.After(t.Context(), room, epoch, 5, 0); !errors.Is(err, wsroom.ErrGap) {
		t.Errorf("After(old epoch) after expiry error = %v, want ErrGap", err)
	}
	m, err := b.Append(t.Context(), room, wsroom.Message{Data: []byte("new")})
	if err != nil {
		t.Fatal(err)
	}
	if m.Seq != 1 || m.Epoch == epoch || m.Epoch == "" {
		t.Errorf("Append after expiry = seq %d epoch %q, want seq 1 in a new epoch (old %q)", m.Seq, m.Epoch, epoch)
	}
	got := s.wait(t, 6, 5*time.Second)
	if last := got[5]; last.Seq != 1 || last.Epoch != m.Epoch || string(last.Data) != "new" {
		t.Errorf("subscriber got %+v after expiry, want seq 1 of epoch %q", last, m.Epoch)
	}
}

// TestStoredNotAnnounced checks that a message that was stored but never
// announced (its node failed in between) still reaches subscribers, in
// order, once the next message is announced.
func TestStoredNotAnnounced(t *testing.T) {
	prefix := testPrefix(t)
	a, b := newNode(t, prefix), newNode(t, prefix)
	room := storetest.RoomName(t)
	s := subscribe(t, b, room)
	if err := a.Publish(t.Context(), room, wsroom.Message{Data: []byte("1")}); err != nil {
		t.Fatal(err)
	}
	s.wait(t, 1, 5*time.Second)
	// Store message 2 the way Append does, without the announcement.
	m2 := wsroom.Message{Seq: 2, Epoch: s.get()[0].Epoch, Time: time.UnixMilli(time.Now().UnixMilli()), Data: []byte("2")}
	data, _ := m2.MarshalBinary()
	if _, err := a.js.Publish(t.Context(), a.hist+roomToken(room), data); err != nil {
		t.Fatal(err)
	}
	if err := a.Publish(t.Context(), room, wsroom.Message{Data: []byte("3")}); err != nil {
		t.Fatal(err)
	}
	s.wait(t, 3, 5*time.Second)
	time.Sleep(50 * time.Millisecond) // let a duplicate or stray message, if any, arrive
	got := s.get()
	if !slices.Equal(seqs(got), []uint64{1, 2, 3}) || string(got[1].Data) != "2" || string(got[2].Data) != "3" {
		t.Errorf("got seqs %v (data %q %q), want 1, 2, 3", seqs(got), got[1].Data, got[2].Data)
	}
}

// TestReconnect drops both nodes' connections while messages are being
// published, and checks that every message still reaches the subscriber
// once and in order, and that the loss was reported.
func TestReconnect(t *testing.T) {
	prefix := testPrefix(t)
	var (
		mu       sync.Mutex
		reported []error
	)
	onError := func(err error) {
		mu.Lock()
		reported = append(reported, err)
		mu.Unlock()
	}
	ncA, ncB := connect(t), connect(t)
	a := newNodeOn(t, ncA, prefix, WithErrorHandler(onError))
	b := newNodeOn(t, ncB, prefix, WithErrorHandler(onError))
	room := storetest.RoomName(t)
	s := subscribe(t, b, room)

	const total = 60
	published := 0
	for i := range total {
		switch i {
		case 15:
			if err := ncB.ForceReconnect(); err != nil {
				t.Fatal(err)
			}
		case 35:
			if err := ncA.ForceReconnect(); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		err := a.Publish(ctx, room, wsroom.Message{Data: fmt.Appendf(nil, "%d", i)})
		cancel()
		if err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
		published++
		time.Sleep(2 * time.Millisecond)
	}
	s.wait(t, published, 10*time.Second)
	time.Sleep(200 * time.Millisecond) // let a duplicate or stray message, if any, arrive
	got := s.get()
	if len(got) != published {
		t.Errorf("got %d deliveries, want %d (each message once)", len(got), published)
	}
	for i, m := range got {
		if m.Seq != uint64(i+1) || string(m.Data) != fmt.Sprint(i) {
			t.Errorf("delivery %d = seq %d %q, want seq %d %q", i, m.Seq, m.Data, i+1, fmt.Sprint(i))
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	lost := 0
	for _, err := range reported {
		if strings.Contains(err.Error(), "connection to NATS lost") {
			lost++
		}
	}
	if lost < 2 {
		t.Errorf("error handler told of %d lost connections, want 2 (reports: %v)", lost, reported)
	}
}

// TestManyRooms checks that a node subscribed to one room of 1,000 receives
// the traffic of that room only.
func TestManyRooms(t *testing.T) {
	prefix := testPrefix(t)
	ncB := connect(t)
	a, b := newNode(t, prefix), newNodeOn(t, ncB, prefix)
	const rooms = 1000
	names := make([]string, rooms)
	for i := range names {
		names[i] = fmt.Sprintf("%s-%d", storetest.RoomName(t), i)
	}
	s := subscribe(t, b, names[rooms/2])
	before := ncB.Stats()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < rooms; i += 8 {
				if err := a.Publish(context.Background(), names[i], wsroom.Message{Data: []byte(names[i])}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Publish: %v", err)
	}
	s.wait(t, 1, 5*time.Second)
	time.Sleep(100 * time.Millisecond) // let a duplicate or stray message, if any, arrive
	got := s.get()
	if len(got) != 1 || string(got[0].Data) != names[rooms/2] {
		t.Errorf("subscriber got %d messages (first %q), want only %q", len(got), got[0].Data, names[rooms/2])
	}
	after := ncB.Stats()
	if in := after.InMsgs - before.InMsgs; in > 5 {
		t.Errorf("subscribed node received %d NATS messages while %d rooms got one each, want only its room's", in, rooms)
	}
}

// TestUnsubscribeLast checks that a node drops a room's NATS subscription
// after its last local unsubscribe, and keeps it until then.
func TestUnsubscribeLast(t *testing.T) {
	prefix := testPrefix(t)
	nc := connect(t)
	b := newNodeOn(t, nc, prefix)
	room := storetest.RoomName(t)
	base := nc.NumSubscriptions()
	var unsubs []func()
	for range 3 {
		u, err := b.Subscribe(t.Context(), room, func(wsroom.Message) {}, nil)
		if err != nil {
			t.Fatal(err)
		}
		unsubs = append(unsubs, u)
	}
	if n := nc.NumSubscriptions() - base; n != 1 {
		t.Errorf("3 subscribers to one room hold %d NATS subscriptions, want 1", n)
	}
	unsubs[0]()
	unsubs[1]()
	if n := nc.NumSubscriptions() - base; n != 1 {
		t.Errorf("after 2 of 3 unsubscribes: %d NATS subscriptions, want 1", n)
	}
	unsubs[2]()
	if n := nc.NumSubscriptions() - base; n != 0 {
		t.Errorf("after the last unsubscribe: %d NATS subscriptions, want 0", n)
	}
	b.mu.Lock()
	n := len(b.topics)
	b.mu.Unlock()
	if n != 0 {
		t.Errorf("%d rooms still tracked after the last unsubscribe, want 0", n)
	}
}

func TestClose(t *testing.T) {
	prefix := testPrefix(t)
	b := newNode(t, prefix)
	room := storetest.RoomName(t)
	s := subscribe(t, b, room)
	if err := b.Publish(t.Context(), room, wsroom.Message{Data: []byte("1")}); err != nil {
		t.Fatal(err)
	}
	s.wait(t, 1, 5*time.Second)
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := b.Publish(t.Context(), room, wsroom.Message{Data: []byte("2")}); !errors.Is(err, ErrClosed) {
		t.Errorf("Publish after Close = %v, want ErrClosed", err)
	}
	if _, err := b.Subscribe(t.Context(), room, func(wsroom.Message) {}, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Subscribe after Close = %v, want ErrClosed", err)
	}
	other := newNode(t, prefix)
	if err := other.Publish(t.Context(), room, wsroom.Message{Data: []byte("3")}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if got := s.get(); len(got) != 1 {
		t.Errorf("closed broker delivered %d messages, want 1", len(got))
	}
}

func TestNewInvalidPrefix(t *testing.T) {
	nc := connect(t)
	for _, p := range []string{"a..b", "a.*", "a b", ".a", "a."} {
		if _, err := New(t.Context(), nc, WithPrefix(p)); err == nil || !strings.HasPrefix(err.Error(), "natsbroker: ") {
			t.Errorf("New(WithPrefix(%q)) error = %v, want a natsbroker error", p, err)
		}
	}
}

// TestEphemeralOrderAcrossNodes checks that a node's ephemeral messages keep
// their place among its stored ones on another node.
func TestEphemeralOrderAcrossNodes(t *testing.T) {
	prefix := testPrefix(t)
	a, b := newNode(t, prefix), newNode(t, prefix)
	room := storetest.RoomName(t)
	s := subscribe(t, b, room)
	var want []string
	for i := range 30 {
		m := wsroom.Message{Data: fmt.Appendf(nil, "%d", i), Ephemeral: i%3 == 1}
		if err := a.Publish(t.Context(), room, m); err != nil {
			t.Fatal(err)
		}
		want = append(want, string(m.Data))
	}
	got := s.wait(t, len(want), 5*time.Second)
	var data []string
	for _, m := range got {
		data = append(data, string(m.Data))
	}
	if !slices.Equal(data, want) {
		t.Errorf("delivered %v, want %v", data, want)
	}
}

// TestUnannouncedAfterSubscribe checks that a message stored without an
// announcement just after a room is subscribed (as happens while the
// subscription spreads through a NATS cluster) is still delivered, though
// no other message follows it.
func TestUnannouncedAfterSubscribe(t *testing.T) {
	prefix := testPrefix(t)
	a, b := newNode(t, prefix), newNode(t, prefix)
	room := storetest.RoomName(t)
	s := subscribe(t, b, room)
	m := wsroom.Message{Seq: 1, Epoch: newID(), Time: time.UnixMilli(time.Now().UnixMilli()), Data: []byte("quiet")}
	data, _ := m.MarshalBinary()
	if _, err := a.js.Publish(t.Context(), a.hist+roomToken(room), data); err != nil {
		t.Fatal(err)
	}
	got := s.wait(t, 1, 3*probeDelay)
	if got[0].Seq != 1 || got[0].Epoch != m.Epoch || string(got[0].Data) != "quiet" {
		t.Errorf("delivered %+v, want %+v", got[0], m)
	}
}

// crashable is a Broker that brokertest's lease case can crash.
type crashable struct{ *Broker }

// Crash implements brokertest.Crasher.
func (c crashable) Crash() { c.stopRenewing() }
