package redisbroker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/brokertest"
)

// TestSlot checks slot against Redis' CLUSTER KEYSLOT, and that every key
// and the channel of a room share a slot whatever the prefix, braces
// included, but for the prefixes New refuses on a cluster.
func TestSlot(t *testing.T) {
	c := startCluster(t, 1, 0)
	admin := c.nodes[0].client()
	defer admin.Close()
	prefixes := []string{"wsroom:", "", "app{x}:", "a{", "a}", "}{", "{", "a{b", "x}y{", "p{}", "p{}{r}", "{}"}
	rooms := []string{"r1", "a{b}", "x}y", "{", "日本", "}r", "with space"}
	for _, p := range prefixes {
		b := &Broker{cfg: config{prefix: p}}
		if strings.Contains(p, "{}") && !prefixKeepsSlot(p) {
			if nb := New(c.newClient(t), WithPrefix(p)); !errors.Is(nb.err, errPrefixTag) {
				t.Errorf("New with prefix %q on a cluster: err %v, want errPrefixTag", p, nb.err)
			}
			continue
		}
		for _, r := range rooms {
			meta, log := b.keys(r)
			keys := append([]string{meta, log, b.channel(r), b.onceKey(r, "k")}, b.presenceKeys(r)...)
			var slots []int
			for _, k := range keys {
				want, err := admin.ClusterKeySlot(t.Context(), k).Result()
				if err != nil {
					t.Fatal(err)
				}
				if got := slot(k); got != int(want) {
					t.Errorf("slot(%q) = %d, CLUSTER KEYSLOT says %d", k, got, want)
				}
				slots = append(slots, int(want))
			}
			empty := strings.IndexByte(p, '{') < 0 && (r == "" || r[0] == '}')
			if slices.Max(slots) != slices.Min(slots) && !empty {
				t.Errorf("prefix %q room %q: keys %q in slots %v, want one", p, r, keys, slots)
			}
		}
	}
}

// TestCluster runs the conformance suites, and the cluster's own cases, on a
// cluster of three masters with a replica each.
func TestCluster(t *testing.T) {
	c := startCluster(t, 3, 1)
	t.Run("Conformance", func(t *testing.T) {
		brokertest.Run(t, func(t *testing.T) wsroom.Broker {
			return crashable{c.newBroker(t, WithPresenceTTL(time.Second))}
		})
	})
	t.Run("Nodes", func(t *testing.T) {
		brokertest.RunNodes(t, brokertest.Nodes{
			New: func(t *testing.T, limit int) wsroom.Broker {
				return c.newBroker(t, WithHistoryLimit(limit))
			},
			Cuttable: func(t *testing.T, limit int) (wsroom.Broker, func(), func()) {
				g := newGatedCluster(t, c, "wsroom-test-cut-"+newEpoch()[:10])
				b := New(g.client, WithMaxAge(testMaxAge), WithHistoryLimit(limit))
				t.Cleanup(func() { b.Close() })
				cut := func() {
					g.hold()
					g.killPubSub(t)
				}
				return b, cut, g.release
			},
		})
	})
	t.Run("Spread", func(t *testing.T) { testSpread(t, c) })
	t.Run("ShardIsolation", func(t *testing.T) { testShardIsolation(t, c) })
	t.Run("SlotMove", func(t *testing.T) { testSlotMove(t, c) })
	t.Run("PublishOnce", func(t *testing.T) {
		testPublishOnce(t, func(t *testing.T, opts ...Option) *Broker { return c.newBroker(t, opts...) })
	})
	t.Run("ReplicaAcks", func(t *testing.T) {
		a := c.newBroker(t, WithReplicaAcks(1, 5*time.Second))
		testOrderAndDelivery(t, a, c.newBroker(t, WithReplicaAcks(1, 5*time.Second)))
	})
}

// testOrderAndDelivery publishes concurrently through pub and another
// Broker, checking that a subscriber on sub receives every message once, in
// the order of its numbers.
func testOrderAndDelivery(t *testing.T, pub, sub *Broker) {
	room := roomName(t)
	s := subscribe(t, sub, room)
	const n = 50
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range n {
				if _, err := pub.PublishSeq(t.Context(), room, wsroom.Message{Data: fmt.Appendf(nil, "%d-%d", w, i)}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	got := s.waitN(t, 4*n)
	for i, m := range got {
		if m.Seq != uint64(i+1) {
			t.Fatalf("delivery %d has seq %d: %v", i, m.Seq, seqs(got))
		}
	}
}

// gatedCluster is a cluster client whose new connections can be held back,
// as gatedClient.
type gatedCluster struct {
	c      *testCluster
	client *redis.ClusterClient
	name   string

	mu   sync.Mutex
	gate chan struct{}
}

func newGatedCluster(t testing.TB, c *testCluster, name string) *gatedCluster {
	g := &gatedCluster{c: c, name: name}
	var addrs []string
	for _, n := range c.nodes {
		addrs = append(addrs, n.addr)
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		g.mu.Lock()
		gate := g.gate
		g.mu.Unlock()
		if gate != nil {
			select {
			case <-gate:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	g.client = redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, ClientName: name, Dialer: dial})
	t.Cleanup(func() { g.client.Close() })
	t.Cleanup(g.release)
	return g
}

func (g *gatedCluster) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.gate == nil {
		g.gate = make(chan struct{})
	}
}

func (g *gatedCluster) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.gate != nil {
		close(g.gate)
		g.gate = nil
	}
}

// killPubSub kills the client's sharded pub/sub connections on every
// master, from Redis' side.
func (g *gatedCluster) killPubSub(t testing.TB) {
	t.Helper()
	killed := 0
	for _, n := range g.c.masters() {
		killed += killNamedPubSub(t, n, g.name)
	}
	if killed == 0 {
		t.Fatalf("no pub/sub connection named %s on any master", g.name)
	}
}

// killNamedPubSub kills, on node n, the pub/sub connections named name, or
// all of them if name is empty, and returns how many.
func killNamedPubSub(t testing.TB, n *clusterNode, name string) int {
	t.Helper()
	cl := n.client()
	defer cl.Close()
	list, err := cl.ClientList(t.Context()).Result()
	if err != nil {
		t.Fatal(err)
	}
	killed := 0
	for line := range strings.Lines(list) {
		if name != "" && !strings.Contains(line, " name="+name+" ") {
			continue
		}
		if strings.Contains(line, " sub=0 ") && strings.Contains(line, " ssub=0 ") {
			continue
		}
		for f := range strings.FieldsSeq(line) {
			if v, ok := strings.CutPrefix(f, "id="); ok {
				if err := cl.Do(t.Context(), "CLIENT", "KILL", "ID", v).Err(); err == nil {
					killed++
				}
			}
		}
	}
	return killed
}

// roomsOnEach returns, for each master, a room of this test whose slot it
// owns.
func roomsOnEach(t *testing.T, c *testCluster, b *Broker) map[*clusterNode]string {
	masters := c.masters()
	out := make(map[*clusterNode]string)
	base := roomName(t)
	for i := 0; len(out) < len(masters); i++ {
		r := fmt.Sprintf("%s-%d", base, i)
		n := c.masterOf(b.channel(r))
		if _, ok := out[n]; !ok {
			out[n] = r
		}
	}
	return out
}

// testSpread checks that 1,000 rooms spread over the three masters, and
// that a Broker subscribed to rooms of every master holds one pub/sub
// connection per master.
func testSpread(t *testing.T, c *testCluster) {
	b := c.newBroker(t)
	count := map[string]int{}
	base := roomName(t)
	for i := range 1000 {
		count[c.masterOf(b.channel(fmt.Sprintf("%s-%d", base, i))).addr]++
	}
	t.Logf("1000 rooms over the masters: %v", count)
	if len(count) != 3 {
		t.Fatalf("rooms on %d masters, want 3: %v", len(count), count)
	}
	for a, n := range count {
		if n < 200 {
			t.Errorf("master %s has %d rooms of 1000, want about a third", a, n)
		}
	}
	rooms := roomsOnEach(t, c, b)
	for _, r := range rooms {
		subscribe(t, b, r)
	}
	b.mu.Lock()
	n := len(b.shards)
	b.mu.Unlock()
	if n != 3 {
		t.Errorf("%d pub/sub connections for rooms on 3 masters, want 3", n)
	}
}

// lostLog is a sink that also records the lost calls.
type lostLog struct {
	*sink
	lost atomic.Int32
}

func subscribeLost(t testing.TB, b *Broker, room string) *lostLog {
	t.Helper()
	l := &lostLog{sink: newSink()}
	unsub, err := b.Subscribe(t.Context(), room, l.deliver, func(error) {
		l.lost.Add(1)
		select {
		case l.more <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unsub)
	return l
}

// testShardIsolation breaks one master's pub/sub connection: only that
// master's rooms are told, and every room keeps receiving.
func testShardIsolation(t *testing.T, c *testCluster) {
	sub, pub := c.newBroker(t), c.newBroker(t)
	rooms := roomsOnEach(t, c, sub)
	logs := map[*clusterNode]*lostLog{}
	for n, r := range rooms {
		logs[n] = subscribeLost(t, sub, r)
		publish(t, pub, r, "before")
		logs[n].waitFor(t, hasData("before"))
	}
	var victim *clusterNode
	for n := range rooms {
		victim = n
		break
	}
	if killNamedPubSub(t, victim, "") == 0 {
		t.Fatal("no pub/sub connection killed")
	}
	deadline := time.Now().Add(wait)
	for logs[victim].lost.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the room of the broken connection was not told")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for n, r := range rooms {
		publish(t, pub, r, "after")
		logs[n].waitFor(t, hasData("after"))
	}
	for n, l := range logs {
		if n != victim && l.lost.Load() != 0 {
			t.Errorf("room on master %s told lost %d times; only %s's connection broke", n.addr, l.lost.Load(), victim.addr)
		}
		if got := l.snapshot(); len(got) != 2 {
			t.Errorf("room on master %s got %v, want 2 messages", n.addr, seqs(got))
		}
	}
}

// testSlotMove migrates the slot of one room to another master: Redis
// unsubscribes the Broker from its channel; the Broker subscribes again on
// the new owner and tells that room only.
func testSlotMove(t *testing.T, c *testCluster) {
	sub, pub := c.newBroker(t), c.newBroker(t)
	rooms := roomsOnEach(t, c, sub)
	logs := map[*clusterNode]*lostLog{}
	var from, to *clusterNode
	for n, r := range rooms {
		logs[n] = subscribeLost(t, sub, r)
		publish(t, pub, r, "before")
		logs[n].waitFor(t, hasData("before"))
		if from == nil {
			from = n
		} else if to == nil {
			to = n
		}
	}
	room := rooms[from]
	s := slot(sub.channel(room))
	migrateSlot(t, c, s, from, to)
	deadline := time.Now().Add(wait)
	for logs[from].lost.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the room whose slot moved was not told")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for n, r := range rooms {
		publish(t, pub, r, "after")
		logs[n].waitFor(t, hasData("after"))
	}
	for n, l := range logs {
		if n != from && l.lost.Load() != 0 {
			t.Errorf("room on master %s told lost; only the slot of %s's room moved", n.addr, from.addr)
		}
	}
	sub.mu.Lock()
	owner := sub.topics[sub.channel(room)].sh.addr
	sub.mu.Unlock()
	if owner != to.addr {
		t.Errorf("room subscribed on %s after its slot moved to %s", owner, to.addr)
	}
	// The history came along.
	if ms, err := pub.After(t.Context(), room, "", 0, 0); err != nil || len(ms) != 2 {
		t.Errorf("history after the move: %v, %v; want 2 messages", seqs(ms), err)
	}
}

// migrateSlot moves slot s, with its keys, from master from to master to,
// and tells every master.
func migrateSlot(t *testing.T, c *testCluster, s int, from, to *clusterNode) {
	t.Helper()
	ctx := t.Context()
	fc, tc := from.client(), to.client()
	defer fc.Close()
	defer tc.Close()
	fromID, err := fc.Do(ctx, "CLUSTER", "MYID").Text()
	if err != nil {
		t.Fatal(err)
	}
	toID, err := tc.Do(ctx, "CLUSTER", "MYID").Text()
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(tc.Do(ctx, "CLUSTER", "SETSLOT", s, "IMPORTING", fromID).Err())
	must(fc.Do(ctx, "CLUSTER", "SETSLOT", s, "MIGRATING", toID).Err())
	for {
		keys, err := fc.ClusterGetKeysInSlot(ctx, s, 100).Result()
		must(err)
		if len(keys) == 0 {
			break
		}
		args := []any{"MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		must(fc.Do(ctx, args...).Err())
	}
	must(tc.Do(ctx, "CLUSTER", "SETSLOT", s, "NODE", toID).Err())
	must(fc.Do(ctx, "CLUSTER", "SETSLOT", s, "NODE", toID).Err())
	for _, n := range c.masters() {
		if n != from && n != to {
			cl := n.client()
			must(cl.Do(ctx, "CLUSTER", "SETSLOT", s, "NODE", toID).Err())
			cl.Close()
		}
	}
	wctx, cancel := context.WithTimeout(ctx, clusterWait)
	defer cancel()
	c.waitHealthy(wctx)
}

// TestPublishOnce runs the de-duplication cases on a single Redis.
func TestPublishOnce(t *testing.T) {
	testPublishOnce(t, func(t *testing.T, opts ...Option) *Broker { return newBroker(t, opts...) })
}

// testPublishOnce: concurrent PublishOnce calls of one key through two
// Brokers store one message and publish it once; a retry within the window
// returns its position; one after the window stores it again.
func testPublishOnce(t *testing.T, newB func(t *testing.T, opts ...Option) *Broker) {
	const window = 300 * time.Millisecond
	a, b := newB(t, WithDedupWindow(window)), newB(t, WithDedupWindow(window))
	room := roomName(t)
	s := subscribe(t, a, room)
	key := "k-" + newEpoch()
	type result struct {
		m   wsroom.Message
		dup bool
	}
	var mu sync.Mutex
	var results []result
	var wg sync.WaitGroup
	for i := range 10 {
		br := a
		if i%2 == 1 {
			br = b
		}
		wg.Go(func() {
			m, dup, err := br.PublishOnce(t.Context(), room, key, wsroom.Message{Data: []byte("once")})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			results = append(results, result{m, dup})
			mu.Unlock()
		})
	}
	wg.Wait()
	firsts := 0
	for _, r := range results {
		if !r.dup {
			firsts++
		}
		if r.m.Seq != 1 || r.m.Epoch != results[0].m.Epoch {
			t.Errorf("PublishOnce returned %s:%d, want the first publish's position", r.m.Epoch, r.m.Seq)
		}
	}
	if firsts != 1 {
		t.Errorf("%d of %d calls stored the message, want 1", firsts, len(results))
	}
	publish(t, b, room, "end")
	got := s.waitFor(t, hasData("end"))
	if len(got) != 2 {
		t.Errorf("subscriber got %v, want the message once and the end marker", seqs(got))
	}
	if h, err := b.After(t.Context(), room, "", 0, 0); err != nil || len(h) != 2 {
		t.Errorf("history %v, %v; want 2 messages", seqs(h), err)
	}
	// After the window, the key is gone and the publish is stored again.
	deadline := time.Now().Add(wait)
	for b.client.Exists(t.Context(), b.onceKey(room, key)).Val() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the publish key outlived its window")
		}
		time.Sleep(20 * time.Millisecond)
	}
	m, dup, err := b.PublishOnce(t.Context(), room, key, wsroom.Message{Data: []byte("once")})
	if err != nil || dup || m.Seq != 3 {
		t.Errorf("PublishOnce after the window = %d, dup %v, %v; want stored again as 3", m.Seq, dup, err)
	}
	if _, _, err := a.PublishOnce(t.Context(), room, "eph", wsroom.Message{Ephemeral: true}); err == nil {
		t.Error("PublishOnce of an ephemeral message succeeded")
	}
}

// TestHistoryWentBack makes a room's history lose its last messages behind
// a subscriber's back, as a failover to a replica that had not received
// them does, then breaks the subscriber's pub/sub connection: the room
// gets a new epoch, so that a client resuming from what it saw gets
// wsroom.ErrGap, and no sequence number is used again for another
// message. When the history is intact, the epoch stays.
func TestHistoryWentBack(t *testing.T) {
	requireRedis(t)
	name := "wsroom-test-back-" + newEpoch()[:10]
	g := newGatedClient(t, redisAddr(), name)
	errs := &errorLog{}
	a := New(g.client, WithMaxAge(testMaxAge), WithErrorHandler(errs.add))
	t.Cleanup(func() { a.Close() })
	pub := newBroker(t)
	room := roomName(t)
	l := subscribeLost(t, a, room)
	for i := range 5 {
		publish(t, pub, room, strconv.Itoa(i))
	}
	got := l.waitN(t, 5)
	epoch := got[0].Epoch
	meta, log := pub.keys(room)
	admin := newClient(t)

	// Intact: a reconnection keeps the epoch.
	g.killPubSub(t)
	waitLost(t, l, 1)
	if e := admin.HGet(t.Context(), meta, "epoch").Val(); e != epoch {
		t.Fatalf("epoch changed to %s after a reconnection with the history intact", e)
	}

	// The last two messages vanish, and their numbers are used again.
	// The stream is rebuilt with its first three entries, as a replica
	// that missed the last two writes holds it.
	keep, err := admin.XRangeN(t.Context(), log, "-", "3-0", 3).Result()
	if err != nil || len(keep) != 3 {
		t.Fatalf("XRANGE = %v, %v", keep, err)
	}
	admin.Del(t.Context(), log)
	for _, e := range keep {
		if err := admin.XAdd(t.Context(), &redis.XAddArgs{Stream: log, ID: e.ID, Values: e.Values}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	admin.HSet(t.Context(), meta, "seq", 3)
	publish(t, pub, room, "other 4")
	g.killPubSub(t)
	waitLost(t, l, 2)
	if e := admin.HGet(t.Context(), meta, "epoch").Val(); e == epoch {
		t.Fatal("the epoch stayed after the history went back")
	}
	if _, err := a.After(t.Context(), room, epoch, 5, 0); !errors.Is(err, wsroom.ErrGap) {
		t.Errorf("After from the position delivered = %v, want ErrGap", err)
	}
	publish(t, pub, room, "next")
	ms := l.waitFor(t, hasData("next"))
	last := ms[len(ms)-1]
	if last.Epoch == epoch {
		t.Errorf("message after the reset has the old epoch")
	}
	for _, m := range ms[:len(ms)-1] {
		if string(m.Data) == "other 4" {
			t.Errorf("delivered %q under seq %d, a number already delivered", m.Data, m.Seq)
		}
	}
	if !slices.ContainsFunc(errs.all(), func(err error) bool { return strings.Contains(err.Error(), "went back") }) {
		t.Errorf("no error reported for the reset; got %v", errs.all())
	}
}

func waitLost(t *testing.T, l *lostLog, n int32) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for l.lost.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("told lost %d times, want %d", l.lost.Load(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNumberReused has a room's history lose its last two messages behind a
// subscriber's back, with no reconnection, then a publish use one of their
// numbers again, as the old and the new master of a failover both send: the
// subscriber does not take it, the room gets a new epoch, and the
// subscriber is told.
func TestNumberReused(t *testing.T) {
	errs := &errorLog{}
	a := newBroker(t, WithErrorHandler(errs.add))
	pub := newBroker(t)
	room := roomName(t)
	l := subscribeLost(t, a, room)
	for i := range 5 {
		publish(t, pub, room, strconv.Itoa(i))
	}
	epoch := l.waitN(t, 5)[0].Epoch
	meta, log := pub.keys(room)
	admin := newClient(t)
	keep, err := admin.XRangeN(t.Context(), log, "-", "3-0", 3).Result()
	if err != nil || len(keep) != 3 {
		t.Fatalf("XRANGE = %v, %v", keep, err)
	}
	admin.Del(t.Context(), log)
	for _, e := range keep {
		if err := admin.XAdd(t.Context(), &redis.XAddArgs{Stream: log, ID: e.ID, Values: e.Values}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	admin.HSet(t.Context(), meta, "seq", 3)
	publish(t, pub, room, "other 4")
	waitLost(t, l, 1)
	if e := admin.HGet(t.Context(), meta, "epoch").Val(); e == epoch {
		t.Fatal("the epoch stayed after a number was used again")
	}
	for _, m := range l.snapshot() {
		if string(m.Data) == "other 4" {
			t.Errorf("delivered %q under seq %d, a number already delivered", m.Data, m.Seq)
		}
	}
	publish(t, pub, room, "next")
	if ms := l.waitFor(t, hasData("next")); ms[len(ms)-1].Epoch == epoch {
		t.Error("message after the reset has the old epoch")
	}
}
