package natsbroker

import (
	"net/url"
	"strings"
	"testing"

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
		return clusterNode(t, c, n, prefix)
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
	if _, _, err := three.presenceKV(ctx); err != nil {
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
