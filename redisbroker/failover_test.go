package redisbroker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/brokertest"
)

// fastHealth makes a Broker notice a silent pub/sub connection within a
// second and a half.
func fastHealth(c *config) { c.healthInterval, c.pingTimeout = 500*time.Millisecond, time.Second }

// TestClusterFailover kills, then pauses past the node timeout, the master
// of a room's shard while a publisher sends to the room, with and without
// WithReplicaAcks. With it, no acknowledged message is lost; either way,
// every message delivered is in the room's history at its number, unless
// the room has a new epoch (a history that went back), and none is
// delivered twice or out of order.
func TestClusterFailover(t *testing.T) {
	c := startCluster(t, 3, 1)
	for _, tc := range []struct {
		name  string
		acks  bool
		fault func(c *testCluster, key string)
	}{
		{"KillWithReplicaAcks", true, func(c *testCluster, key string) { c.restart(c.failover(key)) }},
		{"PauseWithReplicaAcks", true, func(c *testCluster, key string) { c.pauseMaster(key) }},
		{"Kill", false, func(c *testCluster, key string) { c.restart(c.failover(key)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var opts []Option
			if tc.acks {
				opts = append(opts, WithReplicaAcks(1, time.Second))
			}
			r := runFailover(t, c, opts, tc.fault)
			t.Logf("acked %d, unacked %d, acked but lost %d, delivered %d, epochs %d, lost calls %d",
				r.acked, r.unacked, r.ackedLost, r.delivered, r.epochs, r.lostCalls)
			if tc.acks && r.ackedLost != 0 {
				t.Errorf("%d acknowledged messages lost with WithReplicaAcks", r.ackedLost)
			}
		})
	}
}

type failoverResult struct {
	acked, unacked, ackedLost, delivered, epochs, lostCalls int
}

// runFailover publishes to one room through a Broker with opts while fault
// runs, and checks what a subscriber on another Broker received against
// the history.
func runFailover(t *testing.T, c *testCluster, opts []Option, fault func(c *testCluster, key string)) failoverResult {
	pub := c.newBroker(t, append(opts, WithHistoryLimit(1e6))...)
	sub := c.newBroker(t, fastHealth)
	room := roomName(t)
	l := subscribeLost(t, sub, room)

	type ack struct {
		m    wsroom.Message
		data string
	}
	var mu sync.Mutex
	var acks []ack
	unacked := 0
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			data := strconv.Itoa(i)
			pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			m, err := pub.PublishSeq(pctx, room, wsroom.Message{Data: []byte(data)})
			cancel()
			mu.Lock()
			if err == nil {
				acks = append(acks, ack{m, data})
			} else {
				unacked++
			}
			mu.Unlock()
			if err != nil {
				time.Sleep(20 * time.Millisecond)
			}
		}
	})
	ackedN := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acks)
	}
	waitAcks := func(n int) {
		deadline := time.Now().Add(clusterWait)
		for ackedN() < n {
			if time.Now().After(deadline) {
				stop()
				wg.Wait()
				t.Fatalf("only %d publishes acknowledged, want %d", ackedN(), n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitAcks(50)
	fault(c, sub.channel(room))
	n := ackedN()
	waitAcks(n + 50)
	stop()
	wg.Wait()

	// What the history holds now, by number, in the current epoch.
	var hist []wsroom.Message
	deadline := time.Now().Add(wait)
	for {
		var err error
		hist, err = pub.Last(t.Context(), room, 100000)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("read the history: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	epoch := hist[len(hist)-1].Epoch
	byData := map[string]wsroom.Message{}
	bySeq := map[uint64]string{}
	for _, m := range hist {
		if _, dup := byData[string(m.Data)]; dup {
			t.Errorf("history holds %q twice", m.Data)
		}
		byData[string(m.Data)] = m
		bySeq[m.Seq] = string(m.Data)
	}
	r := failoverResult{acked: len(acks), unacked: unacked, lostCalls: int(l.lost.Load())}
	for _, a := range acks {
		if _, ok := byData[a.data]; !ok {
			r.ackedLost++
		}
	}
	// Let the last acknowledged message arrive.
	l.waitFor(t, hasData(acks[len(acks)-1].data))
	got := l.snapshot()
	r.delivered = len(got)
	epochs := map[string]bool{}
	var prev wsroom.Message
	for i, m := range got {
		epochs[m.Epoch] = true
		if i > 0 && m.Epoch == prev.Epoch && m.Seq <= prev.Seq {
			t.Errorf("delivery %d is %s:%d after %s:%d: duplicated or out of order", i, m.Epoch, m.Seq, prev.Epoch, prev.Seq)
		}
		if m.Epoch == epoch {
			if d, ok := bySeq[m.Seq]; ok && d != string(m.Data) {
				t.Errorf("delivered %q as %d, but the history holds %q there: the subscriber diverged", m.Data, m.Seq, d)
			}
		}
		prev = m
	}
	r.epochs = len(epochs)
	if r.lostCalls == 0 {
		t.Error("the subscriber was not told it may have missed messages")
	}
	return r
}

// TestReplicaAcksTimeout asks for more replicas than the shard has: the
// publish fails with ErrNotReplicated, and the message is not sent.
func TestReplicaAcksTimeout(t *testing.T) {
	c := startCluster(t, 1, 0)
	pub := c.newBroker(t, WithReplicaAcks(1, 100*time.Millisecond))
	room := roomName(t)
	s := subscribe(t, c.newBroker(t), room)
	_, err := pub.PublishSeq(t.Context(), room, wsroom.Message{Data: []byte("x")})
	if !errors.Is(err, ErrNotReplicated) {
		t.Fatalf("publish without a replica: %v, want ErrNotReplicated", err)
	}
	plain := c.newBroker(t)
	publish(t, plain, room, "end")
	got := s.waitFor(t, hasData("end"))
	if len(got) != 1 {
		t.Errorf("subscriber got %v, want only the end marker", fmt.Sprint(seqs(got)))
	}

	// The same on a single Redis, through a plain client.
	r := startRedis(t)
	single := New(newClientAt(t, r.addr), WithReplicaAcks(1, 100*time.Millisecond))
	t.Cleanup(func() { single.Close() })
	if _, err := single.PublishSeq(t.Context(), room, wsroom.Message{Data: []byte("x")}); !errors.Is(err, ErrNotReplicated) {
		t.Fatalf("publish without a replica on a single Redis: %v, want ErrNotReplicated", err)
	}
}

// TestClusterFaults runs brokertest.RunFaults on three nodes of a private
// Redis Cluster (three masters with a replica each), with WithReplicaAcks:
// the master of a room's shard killed (its replica promoted, the old master
// restarted as a replica), and the master of a room's shard stopped
// (SIGSTOP) past the cluster's node timeout until its replica is promoted,
// then continued.
func TestClusterFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault test takes about a minute")
	}
	c := startCluster(t, 3, 1)
	prefix := "faults-" + newEpoch()[:8] + ":"
	probe := &Broker{cfg: config{prefix: prefix}}
	// Two rooms on each master.
	var rooms []string
	per := map[*clusterNode]int{}
	for i := 0; len(rooms) < 6; i++ {
		r := fmt.Sprintf("faults-%d", i)
		if n := c.masterOf(probe.channel(r)); per[n] < 2 {
			per[n]++
			rooms = append(rooms, r)
		}
	}
	key := probe.channel(rooms[0])
	var killed *clusterNode
	brokertest.RunFaults(t, brokertest.Faults{
		New: func(t *testing.T) wsroom.Broker {
			return c.newBroker(t, WithPrefix(prefix), WithReplicaAcks(1, 10*time.Second), fastHealth)
		},
		Rooms: rooms,
		Faults: []brokertest.Fault{
			{
				Name:   "kill the master of a room's shard (replica promoted)",
				Inject: func(*testing.T) { killed = c.masterOf(key); killed.kill() },
				Heal:   func(*testing.T) { c.waitNewMaster(key, killed); c.restart(killed) },
				Hold:   500 * time.Millisecond,
			},
			{
				Name:   "SIGSTOP the master of a room's shard past the node timeout, SIGCONT",
				Inject: func(*testing.T) { c.pauseMaster(key) },
				Hold:   0,
			},
		},
	})
}
