package natsbroker

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/brokertest"
)

// TestClusterFailover kills one server of a cluster, under traffic, and
// starts it again on its store: the stream's leader, then a follower.
// Three nodes, one on each server, publish to every room at once, each
// publish retried with the same message until it is acked (as a Room's
// publish retry does), and subscribe to every room. The server is down
// 10s. Every acked message
// must reach every node once, in one order per room, numbered without a
// gap. The test logs, per node, how long after the kill it delivered its
// first message.
func TestClusterFailover(t *testing.T) {
	for _, which := range []string{"Leader", "Follower"} {
		t.Run(which, func(t *testing.T) {
			c := startCluster(t)
			prefix := "wsroomtest.r" + newID()
			var nodes []*Broker
			for i := range clusterSize {
				// Pings every 500ms, given up after two unanswered.
				nodes = append(nodes, clusterNode(t, c, i, prefix, WithHistoryLimit(10000)))
			}
			name := nodes[0].name
			victim := c.WaitStream(name)
			if which == "Follower" {
				victim = c.Follower(name)
			}
			runFailover(t, c, nodes, victim)
		})
	}
}

// failoverRecord is what one node received.
type failoverRecord struct {
	mu    sync.Mutex
	got   map[string][]wsroom.Message // per room
	times []time.Time                 // of every delivery
}

func runFailover(t *testing.T, c *natsCluster, nodes []*Broker, victim int) {
	const (
		rooms  = 4
		every  = 20 * time.Millisecond // per node and room
		before = time.Second
		// Past the election timeout of NATS 2.9 (4 to 9s): the other
		// two servers elect a new leader before the killed one is back.
		outage = 10 * time.Second
		after  = 2 * time.Second
	)
	recs := make([]*failoverRecord, len(nodes))
	for i, n := range nodes {
		r := &failoverRecord{got: map[string][]wsroom.Message{}}
		recs[i] = r
		for k := range rooms {
			room := fmt.Sprintf("failover-%d", k)
			unsub, err := n.Subscribe(t.Context(), room, func(m wsroom.Message) {
				r.mu.Lock()
				r.got[room] = append(r.got[room], m)
				r.times = append(r.times, time.Now())
				r.mu.Unlock()
			}, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(unsub)
		}
	}
	var ackMu sync.Mutex
	acked := map[string][]string{} // room -> data acked
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for i, n := range nodes {
		for k := range rooms {
			room := fmt.Sprintf("failover-%d", k)
			wg.Go(func() {
				tick := time.NewTicker(every)
				defer tick.Stop()
				for j := 0; ; j++ {
					select {
					case <-ctx.Done():
						return
					case <-tick.C:
					}
					m := wsroom.Message{From: fmt.Sprint(i), Time: time.Now(), Data: fmt.Appendf(nil, "n%d-%d", i, j)}
					// The same message until it is acked, for at most 20s.
					pctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					var err error
					for pctx.Err() == nil {
						actx, acancel := context.WithTimeout(pctx, 2*time.Second)
						_, err = n.Append(actx, room, m)
						acancel()
						if err == nil {
							break
						}
						time.Sleep(100 * time.Millisecond)
					}
					cancel()
					if err != nil {
						t.Errorf("node %d room %s: %q never acked: %v", i, room, m.Data, err)
						return
					}
					ackMu.Lock()
					acked[room] = append(acked[room], string(m.Data))
					ackMu.Unlock()
				}
			})
		}
	}
	time.Sleep(before)
	killed := time.Now()
	c.Kill(victim)
	t.Logf("killed server n%d", victim)
	time.Sleep(outage)
	c.Restart(victim)
	restarted := time.Now()
	time.Sleep(after)
	stop()
	wg.Wait()
	if t.Failed() {
		return
	}

	total := 0
	for _, d := range acked {
		total += len(d)
	}
	// Every acked message, on every node, once, in one order per room.
	deadline := time.Now().Add(30 * time.Second)
	for i, r := range recs {
		for k := range rooms {
			room := fmt.Sprintf("failover-%d", k)
			want := map[string]bool{}
			for _, d := range acked[room] {
				want[d] = true
			}
			var got []wsroom.Message
			for {
				r.mu.Lock()
				got = append([]wsroom.Message(nil), r.got[room]...)
				r.mu.Unlock()
				n := 0
				for _, m := range got {
					if want[string(m.Data)] {
						n++
					}
				}
				if n >= len(want) || time.Now().After(deadline) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			seen := map[string]bool{}
			for j, m := range got {
				if m.Seq != got[0].Seq+uint64(j) || m.Epoch != got[0].Epoch {
					t.Errorf("node %d room %s: delivery %d is seq %d epoch %s after seq %d epoch %s", i, room, j, m.Seq, m.Epoch, got[0].Seq, got[0].Epoch)
					break
				}
				if seen[string(m.Data)] {
					t.Errorf("node %d room %s: %q delivered twice", i, room, m.Data)
				}
				seen[string(m.Data)] = true
			}
			lost := 0
			for d := range want {
				if !seen[d] {
					lost++
				}
			}
			if lost > 0 {
				t.Errorf("node %d room %s: %d of %d acked messages not delivered", i, room, lost, len(want))
			}
			if i > 0 {
				first := recs[0].got[room]
				for j := range min(len(first), len(got)) {
					if string(first[j].Data) != string(got[j].Data) {
						t.Errorf("room %s: node %d delivered %q as seq %d, node 0 %q", room, i, got[j].Data, got[j].Seq, first[j].Data)
						break
					}
				}
			}
		}
	}
	for i, r := range recs {
		r.mu.Lock()
		var first time.Time
		for _, at := range r.times {
			if at.After(killed) {
				first = at
				break
			}
		}
		r.mu.Unlock()
		t.Logf("node %d (server n%d): first delivery %v after the kill", i, i, first.Sub(killed).Round(time.Millisecond))
	}
	t.Logf("%d messages acked; server down %v", total, restarted.Sub(killed).Round(time.Millisecond))
}

// TestClusterFaults runs brokertest.RunFaults on three nodes of a cluster
// of three servers, the stream and the presence bucket with three
// replicas, each node on its own server: the stream's leader killed and
// started again on its store (2s later, then 8s later, past the election
// of a new leader), then a follower, then the leader stopped (SIGSTOP) past
// the connections' ping timeout and a publish attempt's timeout, and
// continued.
func TestClusterFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault test takes about a minute")
	}
	c := startCluster(t)
	prefix := "wsroomtest.f" + newID()
	name := streamName(prefix)
	n := 0
	var victim int
	brokertest.RunFaults(t, brokertest.Faults{
		New: func(t *testing.T) wsroom.Broker {
			n++
			// A ping every 500ms, the connection given up after two
			// unanswered: the stops below are past it.
			b := newNodeOn(t, c.connect(t, n%clusterSize, nats.PingInterval(500*time.Millisecond), nats.MaxPingsOutstanding(2)),
				prefix, WithReplicas(3))
			c.WaitStream(name)
			return b
		},
		Faults: []brokertest.Fault{
			{
				Name:   "kill the stream leader, restart it",
				Inject: func(*testing.T) { victim = c.WaitStream(name); c.Kill(victim) },
				Heal:   func(*testing.T) { c.Restart(victim) },
				Hold:   2 * time.Second,
			},
			{
				// Past the election timeout: the other two elect a leader
				// while the killed one is down.
				Name:   "kill the stream leader 8s, restart it",
				Inject: func(*testing.T) { victim = c.WaitStream(name); c.Kill(victim) },
				Heal:   func(*testing.T) { c.Restart(victim) },
				Hold:   8 * time.Second,
			},
			{
				Name:   "kill a follower, restart it",
				Inject: func(*testing.T) { victim = c.Follower(name); c.Kill(victim) },
				Heal:   func(*testing.T) { c.Restart(victim) },
				Hold:   2 * time.Second,
			},
			{
				Name:   "SIGSTOP the stream leader 5s, SIGCONT",
				Inject: func(*testing.T) { victim = c.WaitStream(name); c.Stop(victim) },
				Heal:   func(*testing.T) { c.Resume(victim) },
				Hold:   5 * time.Second,
			},
		},
	})
}
