package natsbroker

import (
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/brokertest"
)

// clusterNode returns a Broker with three replicas (and opts) on a
// connection to server i of c (which moves to the others when i is down),
// once its stream has settled.
func clusterNode(t testing.TB, c *natsCluster, i int, prefix string, opts ...Option) *Broker {
	t.Helper()
	b := newNodeOn(t, c.connect(t, i%clusterSize), prefix, append([]Option{WithReplicas(3)}, opts...)...)
	c.WaitStream(b.name)
	return b
}

// The conformance suites on a cluster of three servers, the Brokers of
// each case on different servers.
func TestClusterConformance(t *testing.T) {
	c := startCluster(t)
	prefix := "wsroomtest.r" + newID()
	n := 0
	brokertest.Run(t, func(t *testing.T) wsroom.Broker {
		n++
		return crashable{clusterNode(t, c, n, prefix, WithPresenceTTL(MinPresenceTTL))}
	})
}

func TestClusterNodes(t *testing.T) {
	c := startCluster(t)
	prefix := "wsroomtest.r" + newID()
	n := 0
	brokertest.RunNodes(t, brokertest.Nodes{
		New: func(t *testing.T, limit int) wsroom.Broker {
			n++
			return clusterNode(t, c, n, prefix, WithHistoryLimit(limit))
		},
		// A node is cut off from its server, and from the others, at a
		// proxy: it knows no other server (IgnoreDiscoveredServers).
		Cuttable: func(t *testing.T, limit int) (wsroom.Broker, func(), func()) {
			n++
			u, err := url.Parse(c.URLs()[n%clusterSize])
			if err != nil {
				t.Fatal(err)
			}
			p := newCutProxy(t, u.Host)
			b := newNodeOn(t, connectTo(t, "nats://"+p.addr(), nats.IgnoreDiscoveredServers()), prefix, WithReplicas(3), WithHistoryLimit(limit))
			c.WaitStream(b.name)
			return b, p.cut, p.restore
		},
	})
}

// TestClusterReplicas checks that the stream and the presence bucket get
// the replicas asked for, that a Broker moves a stream of another count
// to its own, and that a single server refuses more than one replica.
func TestClusterReplicas(t *testing.T) {
	c := startCluster(t)
	prefix := "wsroomtest.r" + newID()
	ctx := t.Context()
	replicas := func(b *Broker, stream string) int {
		t.Helper()
		s, err := b.js.Stream(ctx, stream)
		if err != nil {
			t.Fatalf("stream %s: %v", stream, err)
		}
		return s.CachedInfo().Config.Replicas
	}
	one := newNodeOn(t, c.connect(t, 0), prefix)
	if err := one.Join(ctx, "room", wsroom.Member{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := one.Append(ctx, "room", wsroom.Message{Data: []byte("before")}); err != nil {
		t.Fatal(err)
	}
	if got := replicas(one, one.name); got != 1 {
		t.Fatalf("stream replicas %d without WithReplicas, want 1", got)
	}
	if got := replicas(one, "KV_"+presenceBucket(prefix)); got != 1 {
		t.Fatalf("presence bucket replicas %d without WithReplicas, want 1", got)
	}
	// A node with WithReplicas(3) moves both to three replicas, and the
	// history stays.
	three := clusterNode(t, c, 1, prefix)
	// The first use of presence moves the bucket; a write waits until the
	// bucket's new replicas have a leader.
	if _, err := three.presenceKV(ctx); err != nil {
		t.Fatal(err)
	}
	c.WaitStream("KV_" + presenceBucket(prefix))
	if err := three.Join(ctx, "room", wsroom.Member{ID: "b"}); err != nil {
		t.Fatal(err)
	}
	if got := replicas(three, three.name); got != 3 {
		t.Errorf("stream replicas %d after New with WithReplicas(3), want 3", got)
	}
	if got := replicas(three, "KV_"+presenceBucket(prefix)); got != 3 {
		t.Errorf("presence bucket replicas %d after Join with WithReplicas(3), want 3", got)
	}
	last, err := three.Last(ctx, "room", 10)
	if err != nil || len(last) != 1 || string(last[0].Data) != "before" {
		t.Errorf("Last after the move to 3 replicas = %v, %v; want the message stored before", last, err)
	}
	// Five replicas on three servers: New says why it cannot.
	_, err = New(ctx, c.connect(t, 2), WithPrefix(prefix), WithReplicas(5))
	if err == nil || !strings.Contains(err.Error(), "WithReplicas") {
		t.Errorf("New with 5 replicas on 3 servers: %v, want an error naming WithReplicas", err)
	}
	if got := replicas(three, three.name); got != 3 {
		t.Errorf("stream replicas %d after a failed New with 5, want 3", got)
	}

	// A single server takes one replica only.
	single := startNATS(t)
	_, err = New(ctx, connectTo(t, single.url), WithPrefix(prefix), WithReplicas(3))
	if err == nil || !strings.Contains(err.Error(), "WithReplicas") {
		t.Errorf("New with 3 replicas on a single server: %v, want an error naming WithReplicas", err)
	}
	t.Logf("single server, 3 replicas: %v", err)
}

// TestClusterOneRoomManyNodes publishes to one room from three nodes, on
// three servers, at once, in a few rounds: a stream with replicas may store
// two messages published at the same moment after the same position (see
// Broker.won). Every node must deliver every message once, numbered 1 to
// the total without a gap, in one order, and the history must hold the
// same messages.
func TestClusterOneRoomManyNodes(t *testing.T) {
	c := startCluster(t)
	prefix := "wsroomtest.r" + newID()
	var nodes []*Broker
	for i := range clusterSize {
		nodes = append(nodes, clusterNode(t, c, i, prefix))
	}
	for round := range 3 {
		room := fmt.Sprintf("one-%d", round)
		var sinks []*sink
		for _, n := range nodes {
			sinks = append(sinks, subscribe(t, n, room))
		}
		const each = 30
		var wg sync.WaitGroup
		for i, n := range nodes {
			wg.Go(func() {
				for j := range each {
					if err := n.Publish(t.Context(), room, wsroom.Message{Data: fmt.Appendf(nil, "n%d-%d", i, j)}); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		total := each * len(nodes)
		first := sinks[0].wait(t, total, 20*time.Second)
		for i, s := range sinks {
			got := s.wait(t, total, 20*time.Second)
			checkOneOrder(t, fmt.Sprintf("room %s node %d", room, i), got, first, total)
		}
		for i, n := range nodes {
			last, err := n.Last(t.Context(), room, total)
			if err != nil {
				t.Fatalf("Last on node %d: %v", i, err)
			}
			checkOneOrder(t, fmt.Sprintf("room %s Last on node %d", room, i), last, first, total)
			after, err := n.After(t.Context(), room, first[0].Epoch, 10, 0)
			if err != nil {
				t.Fatalf("After on node %d: %v", i, err)
			}
			checkOneOrder(t, fmt.Sprintf("room %s After(10) on node %d", room, i), after, first[10:], total-10)
		}
	}
	s, err := nodes[0].js.Stream(t.Context(), nodes[0].name)
	if err != nil {
		t.Fatal(err)
	}
	// More messages than published: those that lost their position.
	t.Logf("the stream holds %d messages for %d published", s.CachedInfo().State.Msgs, 3*30*clusterSize)
}

// checkOneOrder checks that got holds n messages, numbered on from the
// first of want, in want's order, each published once.
func checkOneOrder(t *testing.T, what string, got, want []wsroom.Message, n int) {
	t.Helper()
	if len(got) != n {
		t.Errorf("%s: %d messages, want %d", what, len(got), n)
		return
	}
	seen := map[string]bool{}
	for k, m := range got {
		if m.Seq != want[0].Seq+uint64(k) || m.Epoch != want[0].Epoch {
			t.Errorf("%s: message %d is seq %d epoch %s, want seq %d epoch %s", what, k, m.Seq, m.Epoch, want[0].Seq+uint64(k), want[0].Epoch)
			return
		}
		if string(m.Data) != string(want[k].Data) {
			t.Errorf("%s: seq %d is %q, want %q", what, m.Seq, m.Data, want[k].Data)
			return
		}
		if seen[string(m.Data)] {
			t.Errorf("%s: %q twice", what, m.Data)
		}
		seen[string(m.Data)] = true
	}
}
