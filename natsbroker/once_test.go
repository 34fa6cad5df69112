package natsbroker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/storetest"
)

// withDupWindow sets the stream's duplicate window, wsroom.DedupWindow
// otherwise: tests make it short to see it end.
func withDupWindow(d time.Duration) Option {
	return func(c *config) { c.dupWindow = d }
}

// testPublishOnce runs the PublishOnce cases on two nodes of one cluster
// (or server).
func testPublishOnce(t *testing.T, a, b *Broker) {
	t.Run("RetryAfterOthers", func(t *testing.T) {
		room := storetest.RoomName(t)
		s := subscribe(t, b, room)
		first, dup, err := a.PublishOnce(t.Context(), room, "k1", wsroom.Message{From: "c", Data: []byte("once")})
		if err != nil || dup || first.Seq != 1 {
			t.Fatalf("first PublishOnce = seq %d, dup %v, %v; want seq 1, no dup", first.Seq, dup, err)
		}
		// Other messages through b: a's position of the room is now
		// behind, so its retry expects a stream sequence that is no
		// longer the room's last.
		for i := range 3 {
			if _, err := b.Append(t.Context(), room, wsroom.Message{Data: fmt.Appendf(nil, "other-%d", i)}); err != nil {
				t.Fatal(err)
			}
		}
		for _, n := range []*Broker{a, b} {
			again, dup, err := n.PublishOnce(t.Context(), room, "k1", wsroom.Message{From: "c", Data: []byte("changed")})
			if err != nil || !dup || again.Seq != first.Seq || again.Epoch != first.Epoch || string(again.Data) != "once" {
				t.Fatalf("PublishOnce again = seq %d %q, dup %v, %v; want seq %d %q, dup", again.Seq, again.Data, dup, err, first.Seq, "once")
			}
		}
		// Another key is another message.
		other, dup, err := a.PublishOnce(t.Context(), room, "k2", wsroom.Message{Data: []byte("two")})
		if err != nil || dup || other.Seq != 5 {
			t.Fatalf("PublishOnce of another key = seq %d, dup %v, %v; want seq 5, no dup", other.Seq, dup, err)
		}
		// The same key in another room is another message.
		if _, dup, err := a.PublishOnce(t.Context(), room+"-b", "k1", wsroom.Message{Data: []byte("b")}); err != nil || dup {
			t.Fatalf("PublishOnce of the key in another room: dup %v, %v; want no dup", dup, err)
		}
		s.wait(t, 5, 10*time.Second)
		time.Sleep(100 * time.Millisecond) // let a second copy, if any, arrive
		if got := s.get(); len(got) != 5 {
			t.Errorf("subscriber got %d messages, want 5: %v", len(got), seqs(got))
		}
		last, err := b.Last(t.Context(), room, 10)
		if err != nil || len(last) != 5 {
			t.Errorf("Last = %d messages, %v; want 5", len(last), err)
		}
	})
	t.Run("Concurrent", func(t *testing.T) {
		room := storetest.RoomName(t)
		s := subscribe(t, a, room)
		const keys = 20
		type result struct {
			m   wsroom.Message
			dup bool
			err error
		}
		var res [keys][2]result
		var wg sync.WaitGroup
		for k := range keys {
			for i, n := range []*Broker{a, b} {
				wg.Go(func() {
					m, dup, err := n.PublishOnce(t.Context(), room, "key-"+strconv.Itoa(k), wsroom.Message{Data: fmt.Appendf(nil, "k%d-n%d", k, i)})
					res[k][i] = result{m, dup, err}
				})
			}
		}
		wg.Wait()
		for k, r := range res {
			if r[0].err != nil || r[1].err != nil {
				t.Fatalf("key %d: %v, %v", k, r[0].err, r[1].err)
			}
			if r[0].dup == r[1].dup {
				t.Errorf("key %d: dup %v and %v, want one publish stored and one duplicate", k, r[0].dup, r[1].dup)
			}
			if r[0].m.Seq != r[1].m.Seq || string(r[0].m.Data) != string(r[1].m.Data) {
				t.Errorf("key %d: seq %d %q and seq %d %q, want the same message", k, r[0].m.Seq, r[0].m.Data, r[1].m.Seq, r[1].m.Data)
			}
		}
		s.wait(t, keys, 10*time.Second)
		time.Sleep(100 * time.Millisecond)
		if got := s.get(); len(got) != keys {
			t.Errorf("subscriber got %d messages, want %d: %v", len(got), keys, seqs(got))
		}
		last, err := b.Last(t.Context(), room, 100)
		if err != nil || len(last) != keys {
			t.Errorf("Last = %d messages, %v; want %d", len(last), err, keys)
		}
	})
	t.Run("Ephemeral", func(t *testing.T) {
		if _, _, err := a.PublishOnce(t.Context(), "room", "k", wsroom.Message{Ephemeral: true}); err == nil {
			t.Error("PublishOnce of an ephemeral message: no error")
		}
	})
}

func TestPublishOnce(t *testing.T) {
	prefix := testPrefix(t)
	testPublishOnce(t, newNode(t, prefix), newNode(t, prefix))
}

// Two Brokers on different servers of a cluster.
func TestClusterPublishOnce(t *testing.T) {
	c := startCluster(t)
	prefix := "wsroomtest.r" + newID()
	testPublishOnce(t, clusterNode(t, c, 0, prefix), clusterNode(t, c, 1, prefix))
}

// TestPublishOnceWindow checks that a key is forgotten after the
// duplicate window: the publish is stored again.
func TestPublishOnceWindow(t *testing.T) {
	prefix := testPrefix(t)
	b := newNode(t, prefix, withDupWindow(time.Second))
	room := storetest.RoomName(t)
	first, dup, err := b.PublishOnce(t.Context(), room, "k", wsroom.Message{Data: []byte("x")})
	if err != nil || dup {
		t.Fatalf("PublishOnce = %v, dup %v", err, dup)
	}
	// JetStream forgets the IDs older than the window at its next sweep,
	// within about another window.
	deadline := time.Now().Add(20 * time.Second)
	for {
		m, dup, err := b.PublishOnce(t.Context(), room, "k", wsroom.Message{Data: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		if !dup {
			if m.Seq != first.Seq+1 {
				t.Errorf("PublishOnce after the window stored seq %d, want %d", m.Seq, first.Seq+1)
			}
			break
		}
		if m.Seq != first.Seq {
			t.Fatalf("duplicate within the window returned seq %d, want %d", m.Seq, first.Seq)
		}
		if time.Now().After(deadline) {
			t.Fatal("the key was still remembered 20s after a window of 1s")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestDuplicateBeforeExpectedSequence checks, on JetStream itself, what
// PublishOnce relies on: a publish with a message ID already stored is
// answered as a duplicate although its expected last subject sequence is
// wrong, on a single server and on a cluster.
func TestDuplicateBeforeExpectedSequence(t *testing.T) {
	check := func(t *testing.T, nc *nats.Conn, replicas int) {
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		name := "DUPTEST_" + newID()
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}, Replicas: replicas}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { js.DeleteStream(context.Background(), name) })
		subj := name + ".a"
		pub := func(id string, expect uint64) (*jetstream.PubAck, error) {
			for {
				ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: subj, Data: []byte(id)}, jetstream.WithMsgID(id), jetstream.WithExpectLastSequencePerSubject(expect))
				if err != nil && (errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders)) && ctx.Err() == nil {
					time.Sleep(50 * time.Millisecond) // a new stream's leader
					continue
				}
				return ack, err
			}
		}
		ack, err := pub("one", 0)
		if err != nil || ack.Duplicate {
			t.Fatalf("first publish: %v, %+v", err, ack)
		}
		if _, err := pub("two", ack.Sequence); err != nil {
			t.Fatal(err)
		}
		again, err := pub("one", 0) // expects an empty subject: wrong
		if err != nil || !again.Duplicate || again.Sequence != ack.Sequence {
			t.Fatalf("publish again with a stale expected sequence: %v, %+v; want a duplicate of %d", err, again, ack.Sequence)
		}
		if _, err := pub("three", 0); !isConflict(err) {
			t.Fatalf("new publish with a stale expected sequence: %v, want wrong last sequence", err)
		}
	}
	t.Run("Server", func(t *testing.T) { check(t, connect(t), 1) })
	t.Run("Cluster", func(t *testing.T) {
		c := startCluster(t)
		check(t, c.connect(t, 1), 3)
	})
}
