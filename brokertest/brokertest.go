// Package brokertest checks that a wsroom.Broker behaves as the wsroom
// package expects. Implementations call Run from their own tests:
//
//	func TestConformance(t *testing.T) {
//		brokertest.Run(t, func(t *testing.T) wsroom.Broker { return mybroker.New(...) })
//	}
//
// newNode is called more than once in some cases: each call stands for one
// server node, and every node returned within one test must reach the same
// cluster (for an in-process broker, return the same broker each time).
// Each case uses room names of its own, so a shared engine need not be
// emptied first.
//
// The presence cases run on a Broker that implements wsroom.Presence, and
// those of users on one that implements wsroom.UserPresence: first joins
// and last leaves across two nodes, two connections of one user joining
// and leaving at once on two nodes, Count, pages that cover every user
// once, and, on nodes that implement Crasher, leases: the users of a
// crashed node are swept once, by one of the surviving nodes, within
// LeaseWait; and, with lifecycle events (wsroom.WithEvents), the leave and
// disconnect events of a crashed node's connections are written once by
// the survivors.
//
// RunNodes goes further, for a Broker of many nodes: real server nodes
// (Registries behind HTTP servers) on the Broker, and clients of many rooms
// (PROTOCOL.md) that publish, move between nodes with resume, retry
// publishes, and miss more than the history keeps while their node is cut
// off from the engine.
package brokertest

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/storetest"
)

// Wait bounds how long a case waits for a delivery before it fails.
var Wait = 10 * time.Second

// Run runs every conformance case as a subtest of t.
func Run(t *testing.T, newNode func(t *testing.T) wsroom.Broker) {
	cases := []struct {
		name string
		fn   func(*testing.T, func(*testing.T) wsroom.Broker)
	}{
		{"DeliverOnceInOrder", testDeliverOnceInOrder},
		{"Fields", testFields},
		{"Ephemeral", testEphemeral},
		{"RoomsIsolated", testRoomsIsolated},
		{"Unsubscribe", testUnsubscribe},
		{"History", testHistory},
		{"PublishSeq", testPublishSeq},
		{"PublishOnce", testPublishOnce},
		{"Presence", testPresence},
		{"PresenceEndsWithNode", testPresenceEndsWithNode},
		{"UserFirstLast", testUserFirstLast},
		{"UserConcurrentJoins", testUserConcurrentJoins},
		{"UserCount", testUserCount},
		{"UserPages", testUserPages},
		{"UserLease", testUserLease},
		{"EventsOfADeadNode", testEventsOfADeadNode},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, newNode) })
	}
}

// sink collects one subscription's deliveries.
type sink struct {
	mu   sync.Mutex
	msgs []wsroom.Message
	more chan struct{}
}

func subscribe(t *testing.T, b wsroom.Broker, room string) *sink {
	t.Helper()
	s := &sink{more: make(chan struct{}, 1)}
	unsub, err := b.Subscribe(t.Context(), room, func(m wsroom.Message) {
		s.mu.Lock()
		s.msgs = append(s.msgs, m)
		s.mu.Unlock()
		select {
		case s.more <- struct{}{}:
		default:
		}
	}, nil)
	if err != nil {
		t.Fatalf("Subscribe(%q) error: %v", room, err)
	}
	t.Cleanup(unsub)
	return s
}

// wait returns the first n deliveries, failing t if they do not arrive.
func (s *sink) wait(t *testing.T, n int) []wsroom.Message {
	t.Helper()
	deadline := time.After(Wait)
	for {
		s.mu.Lock()
		got := slices.Clone(s.msgs)
		s.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-s.more:
		case <-deadline:
			t.Fatalf("got %d deliveries after %v, want %d", len(got), Wait, n)
		}
	}
}

func publish(t *testing.T, b wsroom.Broker, room string, m wsroom.Message) {
	t.Helper()
	if err := b.Publish(t.Context(), room, m); err != nil {
		t.Fatalf("Publish(%q) error: %v", room, err)
	}
}

func testDeliverOnceInOrder(t *testing.T, newNode func(*testing.T) wsroom.Broker) {
	room := storetest.RoomName(t)
	nodes := []wsroom.Broker{newNode(t), newNode(t), newNode(t)}
	var sinks []*sink
	for _, n := range nodes {
		sinks = append(sinks, subscribe(t, n, room))
	}
	const each = 20
	var wg sync.WaitGroup
	errs := make(chan error, len(nodes))
	for i, n := range nodes {
		wg.Go(func() {
			for j := range each {
				if err := n.Publish(t.Context(), room, wsroom.Message{Data: fmt.Appendf(nil, "n%d-%d", i, j)}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent Publish error: %v", err)
	}
	total := each * len(nodes)
	first := sinks[0].wait(t, total)
	for i, s := range sinks {
		s.wait(t, total)
		time.Sleep(50 * time.Millisecond) // let a duplicate, if any, arrive
		got := s.wait(t, total)
		if len(got) != total {
			t.Errorf("node %d got %d deliveries, want %d (no duplicates)", i, len(got), total)
		}
		for k, m := range got {
			if m.Seq != uint64(k+1) {
				t.Errorf("node %d delivery %d has seq %d, want %d", i, k, m.Seq, k+1)
				break
			}
		}
		if !slices.EqualFunc(got, first, func(a, b wsroom.Message) bool { return bytes.Equal(a.Data, b.Data) && a.Seq == b.Seq }) {
			t.Errorf("node %d saw another order than node 0", i)
		}
	}
	seen := map[string]bool{}
	for _, m := range first {
		seen[string(m.Data)] = true
	}
	if len(seen) != total {
		t.Errorf("node 0 saw %d distinct messages, want %d", len(seen), total)
	}
}

func testFields(t *testing.T, newNode func(*testing.T) wsroom.Broker) {
	room := storetest.RoomName(t)
	a, b := newNode(t), newNode(t)
	s := subscribe(t, b, room)
	at := time.UnixMilli(time.Now().UnixMilli())
	in := wsroom.Message{From: "c9", Data: []byte("d\x00\xff\u00e9"), Time: at}
	publish(t, a, room, in)
	eph := wsroom.Message{From: "c9", Except: "c3", Ephemeral: true, Data: []byte("typing"), Time: at}
	publish(t, a, room, eph)
	got := s.wait(t, 2)
	if m := got[0]; m.Seq != 1 || m.Epoch == "" || m.From != in.From || !bytes.Equal(m.Data, in.Data) || !m.Time.Equal(at) || m.Ephemeral {
		t.Errorf("delivered %+v, want %+v with Seq 1 and an epoch", m, in)
	}
	if m := got[1]; m.Seq != 0 || m.From != eph.From || m.Except != eph.Except || !m.Ephemeral || !bytes.Equal(m.Data, eph.Data) || !m.Time.Equal(at) {
		t.Errorf("delivered %+v, want %+v", m, eph)
	}
}

func testEphemeral(t *testing.T, newNode func(*testing.T) wsroom.Broker) {
	room := storetest.RoomName(t)
	b := newNode(t)
	s := subscribe(t, b, room)
	publish(t, b, room, wsroom.Message{Data: []byte("1")})
	publish(t, b, room, wsroom.Message{Data: []byte("e"), Ephemeral: true})
	publish(t, b, room, wsroom.Message{Data: []byte("2")})
	got := s.wait(t, 3)
	want := []uint64{1, 0, 2}
	var seqs []uint64
	for _, m := range got {
		seqs = append(seqs, m.Seq)
	}
	if !slices.Equal(seqs, want) {
		t.Errorf("seqs = %v, want %v: an ephemeral message takes no sequence number", seqs, want)
	}
}

func testRoomsIsolated(t *testing.T, newNode func(*testing.T) wsroom.Broker) {
	a, b := storetest.RoomName(t), storetest.RoomName(t)
	n := newNode(t)
	sa, sb := subscribe(t, n, a), subscribe(t, n, b)
	publish(t, n, b, wsroom.Message{Data: []byte("for b")})
	publish(t, n, a, wsroom.Message{Data: []byte("for a")})
	if got := sa.wait(t, 1); string(got[0].Data) != "for a" {
		t.Errorf("room a got %q first, want %q", got[0].Data, "for a")
	}
	if got := sb.wait(t, 1); string(got[0].Data) != "for b" || got[0].Seq != 1 {
		t.Errorf("room b got %q (seq %d) first, want %q (seq 1)", got[0].Data, got[0].Seq, "for b")
	}
	time.Sleep(50 * time.Millisecond)
	if got := sa.wait(t, 1); len(got) != 1 {
		t.Errorf("room a got %d messages, want 1", len(got))
	}
}

func testUnsubscribe(t *testing.T, newNode func(*testing.T) wsroom.Broker) {
	room := storetest.RoomName(t)
	n := newNode(t)
	gone := &sink{more: make(chan struct{}, 1)}
	unsub, err := n.Subscribe(t.Context(), room, func(m wsroom.Message) {
		gone.mu.Lock()
		gone.msgs = append(gone.msgs, m)
		gone.mu.Unlock()
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	stay := subscribe(t, n, room)
	publish(t, n, room, wsroom.Message{Data: []byte("1")})
	stay.wait(t, 1)
	unsub()
	unsub() // a second call is harmless
	publish(t, n, room, wsroom.Message{Data: []byte("2")})
	stay.wait(t, 2)
	time.Sleep(50 * time.Millisecond)
	gone.mu.Lock()
	defer gone.mu.Unlock()
	if len(gone.msgs) != 1 {
		t.Errorf("unsubscribed handler got %d messages, want 1 (none after unsubscribe)", len(gone.msgs))
	}
}

// testHistory checks that published messages reach the broker's Store, when
// the broker is one (it implements wsroom.Store) or has one (a Store method).
func testHistory(t *testing.T, newNode func(*testing.T) wsroom.Broker) {
	b := newNode(t)
	s := storeOf(t, b)
	room := storetest.RoomName(t)
	sub := subscribe(t, b, room)
	publish(t, b, room, wsroom.Message{Data: []byte("a")})
	publish(t, b, room, wsroom.Message{Data: []byte("x"), Ephemeral: true})
	publish(t, b, room, wsroom.Message{Data: []byte("b")})
	live := sub.wait(t, 3)
	got, err := s.After(t.Context(), room, "", 0, 0)
	if err != nil {
		t.Fatalf("Store.After error: %v", err)
	}
	if len(got) != 2 || string(got[0].Data) != "a" || string(got[1].Data) != "b" {
		t.Fatalf("stored %v, want the two non-ephemeral messages", got)
	}
	if got[0].Epoch != live[0].Epoch || got[1].Seq != live[2].Seq {
		t.Errorf("stored (%s,%d) differs from delivered (%s,%d)", got[1].Epoch, got[1].Seq, live[2].Epoch, live[2].Seq)
	}
}

func members(t *testing.T, p wsroom.Presence, room string) []wsroom.Member {
	t.Helper()
	ms, err := p.Members(t.Context(), room)
	if err != nil {
		t.Fatalf("Members(%q) error: %v", room, err)
	}
	slices.SortFunc(ms, func(a, b wsroom.Member) int { return cmp.Compare(a.ID, b.ID) })
	for i := range ms {
		ms[i].User = "" // compared apart, by the cases of users
	}
	return ms
}

func presence(t *testing.T, b wsroom.Broker) wsroom.Presence {
	t.Helper()
	p, ok := b.(wsroom.Presence)
	if !ok {
		t.Skip("broker does not implement wsroom.Presence")
	}
	return p
}

// testPresence checks that members joined on any node are seen from every
// node, and leave.
func testPresence(t *testing.T, newNode func(*testing.T) wsroom.Broker) {
	a, b := presence(t, newNode(t)), presence(t, newNode(t))
	room, other := storetest.RoomName(t), storetest.RoomName(t)
	ana, ben := wsroom.Member{ID: "id-ana", Info: "ana"}, wsroom.Member{ID: "id-ben", Info: "ben"}
	for _, j := range []struct {
		p    wsroom.Presence
		room string
		m    wsroom.Member
	}{{a, room, ana}, {b, room, ben}, {b, other, wsroom.Member{ID: "id-cy", Info: "cy"}}} {
		if err := j.p.Join(t.Context(), j.room, j.m); err != nil {
			t.Fatalf("Join(%v) error: %v", j.m, err)
		}
	}
	want := []wsroom.Member{ana, ben}
	for i, p := range []wsroom.Presence{a, b} {
		if got := members(t, p, room); !slices.Equal(got, want) {
			t.Errorf("Members from node %d = %v, want %v", i, got, want)
		}
	}
	if err := a.Leave(t.Context(), room, ana.ID); err != nil {
		t.Fatalf("Leave error: %v", err)
	}
	if got := members(t, b, room); !slices.Equal(got, []wsroom.Member{ben}) {
		t.Errorf("Members after Leave = %v, want [%v]", got, ben)
	}
	if err := b.Leave(t.Context(), room, ben.ID); err != nil {
		t.Fatalf("Leave error: %v", err)
	}
	if got := members(t, a, room); len(got) != 0 {
		t.Errorf("Members after everyone left = %v, want none", got)
	}
}

// testPresenceEndsWithNode checks that the members of a node that is closed
// disappear from the others' view, when the broker is an io.Closer.
func testPresenceEndsWithNode(t *testing.T, newNode func(*testing.T) wsroom.Broker) {
	a := presence(t, newNode(t))
	nb := newNode(t)
	b := presence(t, nb)
	closer, ok := nb.(io.Closer)
	if !ok {
		t.Skip("broker is not an io.Closer")
	}
	room := storetest.RoomName(t)
	stay, gone := wsroom.Member{ID: "id-stay"}, wsroom.Member{ID: "id-gone"}
	if err := a.Join(t.Context(), room, stay); err != nil {
		t.Fatal(err)
	}
	if err := b.Join(t.Context(), room, gone); err != nil {
		t.Fatal(err)
	}
	if got := members(t, a, room); len(got) != 2 {
		t.Fatalf("Members = %v, want 2", got)
	}
	closer.Close()
	deadline := time.Now().Add(Wait)
	for {
		got := members(t, a, room)
		if slices.Equal(got, []wsroom.Member{stay}) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Members %v after the node closed, want only %v within %v", got, stay, Wait)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// testPublishOnce checks a wsroom.Deduplicator across two nodes: a key
// published on one node and again on the other is stored and delivered
// once, the second call getting the first one's numbering with dup set;
// the same keys published on both nodes at once are each stored once, one
// call of each pair not a duplicate; a key is a key of its room only.
func testPublishOnce(t *testing.T, newNode func(*testing.T) wsroom.Broker) {
	var nodes []wsroom.Deduplicator
	for range 2 {
		d, ok := newNode(t).(wsroom.Deduplicator)
		if !ok {
			t.Skip("broker does not implement wsroom.Deduplicator")
		}
		nodes = append(nodes, d)
	}
	store := storeOf(t, nodes[0])
	room, other := storetest.RoomName(t)+"-a", storetest.RoomName(t)+"-b"
	s := subscribe(t, nodes[1].(wsroom.Broker), room)
	msg := func(data string) wsroom.Message {
		return wsroom.Message{Time: time.Now(), From: "c", Data: []byte(data)}
	}

	first, dup, err := nodes[0].PublishOnce(t.Context(), room, "k1", msg("one"))
	if err != nil || dup || first.Seq == 0 || first.Epoch == "" {
		t.Fatalf("PublishOnce(k1) = %v, dup %v, %v; want a numbered message, not a duplicate", first, dup, err)
	}
	again, dup, err := nodes[1].PublishOnce(t.Context(), room, "k1", msg("one"))
	if err != nil || !dup || again.Seq != first.Seq || again.Epoch != first.Epoch {
		t.Errorf("PublishOnce(k1) again on the other node = %v, dup %v, %v; want %s:%d, a duplicate", again, dup, err, first.Epoch, first.Seq)
	}
	o, dup, err := nodes[1].PublishOnce(t.Context(), other, "k1", msg("other room"))
	if err != nil || dup || o.Seq != 1 {
		t.Errorf("PublishOnce(k1) in another room = %v, dup %v, %v; want its seq 1, not a duplicate", o, dup, err)
	}

	const pairs = 10
	type result struct {
		m   wsroom.Message
		dup bool
		err error
	}
	results := make([][2]result, pairs)
	var wg sync.WaitGroup
	for i := range pairs {
		for n, d := range nodes {
			wg.Go(func() {
				m, dup, err := d.PublishOnce(t.Context(), room, fmt.Sprint("pair-", i), msg(fmt.Sprint("pair-", i)))
				results[i][n] = result{m, dup, err}
			})
		}
	}
	wg.Wait()
	for i, r := range results {
		a, b := r[0], r[1]
		if a.err != nil || b.err != nil {
			t.Errorf("pair %d: errors %v, %v", i, a.err, b.err)
			continue
		}
		if a.dup == b.dup || a.m.Seq != b.m.Seq || a.m.Epoch != b.m.Epoch {
			t.Errorf("pair %d: %s:%d dup %v and %s:%d dup %v; want one position, one duplicate", i, a.m.Epoch, a.m.Seq, a.dup, b.m.Epoch, b.m.Seq, b.dup)
		}
	}
	last, _, err := nodes[0].PublishOnce(t.Context(), room, "last", msg("last"))
	if err != nil {
		t.Fatalf("PublishOnce(last) error: %v", err)
	}
	if want := first.Seq + pairs + 1; last.Seq != want {
		t.Errorf("PublishOnce(last) numbered %d, want %d", last.Seq, want)
	}
	s.wait(t, pairs+2)
	time.Sleep(100 * time.Millisecond) // let a duplicate, if any, arrive
	s.mu.Lock()
	got := slices.Clone(s.msgs)
	s.mu.Unlock()
	if len(got) != pairs+2 {
		t.Errorf("the subscriber got %d messages, want %d: %v", len(got), pairs+2, describe(got))
	}
	stored, err := store.After(t.Context(), room, "", 0, 0)
	if err != nil {
		t.Fatalf("After error: %v", err)
	}
	if len(stored) != pairs+2 {
		t.Errorf("the store holds %d messages, want %d: %v", len(stored), pairs+2, describe(stored))
	}
}

// storeOf returns the broker's Store, when it is one (it implements
// wsroom.Store) or has one (a Store method), and skips t otherwise.
func storeOf(t *testing.T, b any) wsroom.Store {
	switch v := b.(type) {
	case wsroom.Store:
		return v
	case interface{ Store() wsroom.Store }:
		return v.Store()
	}
	t.Skip("broker neither is nor has a wsroom.Store")
	return nil
}

// testPublishSeq publishes from two nodes at once with PublishSeq, when the
// broker is a wsroom.Sequencer, and checks that each returned message is the
// one subscribers receive and the Store keeps under that position: same
// Seq, Epoch, Time and Data. An ephemeral message comes back as published,
// unnumbered.
func testPublishSeq(t *testing.T, newNode func(*testing.T) wsroom.Broker) {
	var nodes []wsroom.Sequencer
	for range 2 {
		sq, ok := newNode(t).(wsroom.Sequencer)
		if !ok {
			t.Skip("broker does not implement wsroom.Sequencer")
		}
		nodes = append(nodes, sq)
	}
	store := storeOf(t, nodes[0])
	room := storetest.RoomName(t)
	s := subscribe(t, nodes[1].(wsroom.Broker), room)
	const each = 25
	returned := make([][]wsroom.Message, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, b := range nodes {
		wg.Go(func() {
			for j := range each {
				m, err := b.PublishSeq(t.Context(), room, wsroom.Message{Time: time.Now(), From: fmt.Sprint("node", i), Data: fmt.Appendf(nil, "n%d-%d", i, j)})
				if err != nil {
					errs[i] = err
					return
				}
				returned[i] = append(returned[i], m)
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("node %d PublishSeq error: %v", i, err)
		}
	}
	total := len(nodes) * each
	bySeq := make(map[uint64]wsroom.Message)
	var epoch string
	for i, ms := range returned {
		for j, m := range ms {
			if want := fmt.Sprintf("n%d-%d", i, j); string(m.Data) != want || m.Ephemeral {
				t.Fatalf("node %d publish %d returned %q (ephemeral %v), want %q", i, j, m.Data, m.Ephemeral, want)
			}
			if m.Seq == 0 || m.Epoch == "" {
				t.Fatalf("node %d publish %d returned unnumbered: seq %d epoch %q", i, j, m.Seq, m.Epoch)
			}
			if j > 0 && m.Seq <= ms[j-1].Seq {
				t.Errorf("node %d publish %d returned seq %d after %d: not increasing", i, j, m.Seq, ms[j-1].Seq)
			}
			if epoch == "" {
				epoch = m.Epoch
			}
			if m.Epoch != epoch {
				t.Errorf("node %d publish %d returned epoch %q, want %q", i, j, m.Epoch, epoch)
			}
			if _, dup := bySeq[m.Seq]; dup {
				t.Fatalf("seq %d returned twice", m.Seq)
			}
			bySeq[m.Seq] = m
		}
	}

	eph, err := nodes[0].PublishSeq(t.Context(), room, wsroom.Message{Ephemeral: true, Data: []byte("typing")})
	if err != nil {
		t.Fatalf("ephemeral PublishSeq error: %v", err)
	}
	if eph.Seq != 0 || eph.Epoch != "" || !eph.Ephemeral || string(eph.Data) != "typing" {
		t.Errorf("ephemeral PublishSeq returned %+v, want it unnumbered, as published", eph)
	}

	s.wait(t, total+1)
	time.Sleep(100 * time.Millisecond) // let a duplicate, if any, arrive
	delivered := s.wait(t, total+1)
	if len(delivered) != total+1 {
		t.Fatalf("got %d deliveries, want %d: %v", len(delivered), total+1, describe(delivered))
	}
	stored, err := store.After(t.Context(), room, epoch, 0, 0)
	if err != nil {
		t.Fatalf("After error: %v", err)
	}
	if len(stored) != total {
		t.Fatalf("store holds %d messages, want %d", len(stored), total)
	}
	// The ephemeral message may overtake the other node's last ones.
	var numbered []wsroom.Message
	var ephs int
	for _, d := range delivered {
		if d.Ephemeral {
			ephs++
			if d.Seq != 0 || d.Epoch != "" || string(d.Data) != "typing" {
				t.Errorf("ephemeral delivery = %+v, want it unnumbered, as published", d)
			}
			continue
		}
		numbered = append(numbered, d)
	}
	if ephs != 1 || len(numbered) != total {
		t.Fatalf("got %d ephemeral and %d numbered deliveries, want 1 and %d: %v", ephs, len(numbered), total, describe(delivered))
	}
	same := func(a, b wsroom.Message) bool {
		return a.Seq == b.Seq && a.Epoch == b.Epoch && a.Time.Equal(b.Time) && a.From == b.From && string(a.Data) == string(b.Data)
	}
	for k := range total {
		seq := uint64(k + 1)
		r, ok := bySeq[seq]
		if !ok {
			t.Fatalf("no PublishSeq returned seq %d", seq)
		}
		if d := numbered[k]; !same(d, r) {
			t.Errorf("delivery %d is %d %q %v %q %q, PublishSeq returned %d %q %v %q %q", k, d.Seq, d.Epoch, d.Time, d.From, d.Data, r.Seq, r.Epoch, r.Time, r.From, r.Data)
		}
		if st := stored[k]; !same(st, r) {
			t.Errorf("stored message %d is %d %q %v %q %q, PublishSeq returned %d %q %v %q %q", k, st.Seq, st.Epoch, st.Time, st.From, st.Data, r.Seq, r.Epoch, r.Time, r.From, r.Data)
		}
	}
}

// describe lists messages as seq:data, ephemeral ones as e:data.
func describe(ms []wsroom.Message) []string {
	var out []string
	for _, m := range ms {
		if m.Ephemeral {
			out = append(out, "e:"+string(m.Data))
		} else {
			out = append(out, fmt.Sprintf("%d:%s", m.Seq, m.Data))
		}
	}
	return out
}
