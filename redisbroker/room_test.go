package redisbroker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"
	"github.com/wsroom/wsroom"
)

// node is one server: a Registry on its own Broker, behind its own HTTP
// server.
type node struct {
	reg *wsroom.Registry
	url string // of the room under test
}

func newNode(t *testing.T, room string, b *Broker, opts ...wsroom.Option) node {
	t.Helper()
	opts = append([]wsroom.Option{wsroom.WithBroker(b), wsroom.WithCodec(wsroom.JSON()), wsroom.WithSendBuffer(1 << 14)}, opts...)
	reg := wsroom.NewRegistry(opts...)
	mux := http.NewServeMux()
	mux.Handle("GET /rooms/{name}", reg.Handler(nil))
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		reg.Close()
		srv.Close()
	})
	return node{reg: reg, url: "ws" + strings.TrimPrefix(srv.URL, "http") + "/rooms/" + room}
}

func (n node) room(t *testing.T, name string) *wsroom.Room {
	t.Helper()
	r, err := n.reg.Room(name)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

type envelope struct {
	Seq   uint64          `json:"seq"`
	Epoch string          `json:"epoch"`
	Data  json.RawMessage `json:"data"`
}

func dialWS(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.Dial(t.Context(), url, nil)
	if err != nil {
		t.Fatalf("Dial(%s) error: %v", url, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

func readEnvelope(t *testing.T, c *websocket.Conn) envelope {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	_, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("Read error: %v", err)
	}
	var e envelope
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("envelope %q: %v", b, err)
	}
	return e
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRoomsAcrossNodes runs one room on three nodes, each a Registry with
// its own Broker: clients on every node write, every client receives every
// message in one order, and a client that moves to another node resumes
// there without loss while others keep publishing.
func TestRoomsAcrossNodes(t *testing.T) {
	name := "multi-" + newEpoch()[:10]
	nodes := []node{newNode(t, name, newBroker(t)), newNode(t, name, newBroker(t)), newNode(t, name, newBroker(t))}
	const perNode, each = 2, 15
	var conns []*websocket.Conn
	for _, n := range nodes {
		for range perNode {
			conns = append(conns, dialWS(t, n.url))
		}
	}
	for i, n := range nodes {
		r := n.room(t, name)
		waitUntil(t, fmt.Sprintf("%d clients on node %d", perNode, i), func() bool { return r.Len() == perNode })
	}

	var wg sync.WaitGroup
	errs := make(chan error, len(conns))
	for i, c := range conns {
		wg.Go(func() {
			for j := range each {
				if err := c.Write(t.Context(), websocket.MessageText, fmt.Appendf(nil, `"c%d-%d"`, i, j)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("client write error: %v", err)
	}

	total := len(conns) * each
	var first []envelope
	for i, c := range conns {
		var got []envelope
		for range total {
			got = append(got, readEnvelope(t, c))
		}
		if i == 0 {
			first = got
		}
		seen := make(map[string]bool)
		for k, e := range got {
			if e.Seq != uint64(k+1) || e.Epoch != first[0].Epoch {
				t.Fatalf("client %d message %d is %s:%d, want %s:%d", i, k, e.Epoch, e.Seq, first[0].Epoch, k+1)
			}
			if string(e.Data) != string(first[k].Data) {
				t.Fatalf("client %d message %d is %s, client 0 saw %s: not one order", i, k, e.Data, first[k].Data)
			}
			seen[string(e.Data)] = true
		}
		if len(seen) != total {
			t.Errorf("client %d saw %d distinct messages, want %d", i, len(seen), total)
		}
	}

	// Client 0 leaves node 0 after message `total`; messages keep coming
	// from node 1 while it reconnects to node 2 with its position.
	last := first[total-1]
	conns[0].Close(websocket.StatusNormalClosure, "")
	r0 := nodes[0].room(t, name)
	waitUntil(t, "client 0 left", func() bool { return r0.Len() == perNode-1 })
	r1 := nodes[1].room(t, name)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var pubs sync.WaitGroup
	pubs.Go(func() {
		for i := 0; ctx.Err() == nil && i < 500; i++ {
			if err := r1.Publish(ctx, fmt.Appendf(nil, `"live-%d"`, i)); err != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
	})
	time.Sleep(20 * time.Millisecond) // some are published while away
	moved := dialWS(t, fmt.Sprintf("%s?resume=%s:%d", nodes[2].url, last.Epoch, last.Seq))
	want := last.Seq + 1
	for range 100 {
		e := readEnvelope(t, moved)
		if e.Seq != want || e.Epoch != last.Epoch {
			cancel()
			pubs.Wait()
			t.Fatalf("moved client got %s:%d, want %s:%d (no gap, no duplicate)", e.Epoch, e.Seq, last.Epoch, want)
		}
		want++
	}
	cancel()
	pubs.Wait()
}

// TestKillNode runs one room on three nodes and kills one of them
// mid-stream: its connections to Redis are cut for good, then its Registry
// and Broker are closed, so its clients cannot leave cleanly. The clients of
// the other two nodes keep receiving every message, in order, and the
// dead node's clients vanish from the room's members once their presence
// entries expire.
func TestKillNode(t *testing.T) {
	const ttl = 1500 * time.Millisecond
	requireRedis(t)
	name := "kill-" + newEpoch()[:10]
	p := newProxy(t, redisAddr(), 0)
	deadClient := redis.NewClient(&redis.Options{Addr: p.addr(), MaxRetries: -1})
	t.Cleanup(func() { deadClient.Close() })
	dead := New(deadClient, WithMaxAge(testMaxAge), WithPresenceTTL(ttl))
	t.Cleanup(func() { dead.Close() })
	nodes := []node{
		newNode(t, name, newBroker(t, WithPresenceTTL(ttl))),
		newNode(t, name, newBroker(t, WithPresenceTTL(ttl))),
		newNode(t, name, dead),
	}
	const perNode = 2
	var conns []*websocket.Conn
	for _, n := range nodes {
		for range perNode {
			conns = append(conns, dialWS(t, n.url))
		}
	}
	rooms := make([]*wsroom.Room, len(nodes))
	for i, n := range nodes {
		rooms[i] = n.room(t, name)
		waitUntil(t, fmt.Sprintf("%d clients on node %d", perNode, i), func() bool { return rooms[i].Len() == perNode })
	}
	ids := func(rs ...*wsroom.Room) []string {
		var out []string
		for _, r := range rs {
			for _, c := range r.Clients() {
				out = append(out, c.ID())
			}
		}
		slices.Sort(out)
		return out
	}
	memberIDs := func() []string {
		ms, err := rooms[0].Members(t.Context())
		if err != nil {
			t.Fatalf("Members error: %v", err)
		}
		var out []string
		for _, m := range ms {
			out = append(out, m.ID)
		}
		slices.Sort(out)
		return out
	}
	all, survivors := ids(rooms...), ids(rooms[0], rooms[1])
	waitUntil(t, "every node's clients listed as members", func() bool { return slices.Equal(memberIDs(), all) })

	// Node 1 publishes a stream; node 2 dies a third of the way through.
	const total = 300
	var killed time.Time
	for i := range total {
		if i == total/3 {
			p.close()
			killed = time.Now()
			nodes[2].reg.Close()
			dead.Close()
			if got := memberIDs(); !slices.Equal(got, all) {
				t.Errorf("Members right after the kill = %v, want still %v until the dead node's entries expire", got, all)
			}
		}
		if err := rooms[1].Publish(t.Context(), fmt.Appendf(nil, `"m%d"`, i)); err != nil {
			t.Fatalf("Publish %d error: %v", i, err)
		}
		time.Sleep(time.Millisecond)
	}

	for i, c := range conns[:2*perNode] {
		var epoch string
		for k := range total {
			e := readEnvelope(t, c)
			if k == 0 {
				epoch = e.Epoch
			}
			if e.Seq != uint64(k+1) || e.Epoch != epoch || string(e.Data) != fmt.Sprintf(`"m%d"`, k) {
				t.Fatalf("surviving client %d got message %d as %s:%d %s, want %s:%d \"m%d\"", i, k, e.Epoch, e.Seq, e.Data, epoch, k+1, k)
			}
		}
	}
	for i, c := range conns[2*perNode:] {
		ctx, cancel := context.WithTimeout(t.Context(), wait)
		for {
			if _, _, err := c.Read(ctx); err != nil {
				if ctx.Err() != nil {
					t.Errorf("client %d of the dead node is still connected", i)
				}
				break
			}
		}
		cancel()
	}

	for {
		got := memberIDs()
		if slices.Equal(got, survivors) {
			break
		}
		if time.Since(killed) > ttl+time.Second {
			t.Fatalf("Members %v after the node died, want the survivors' clients %v", got, survivors)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRoomCatchesUpAfterReconnect cuts one node's pub/sub connection and
// keeps it from reconnecting while another node publishes. The messages it
// missed are never re-sent on the channel and nothing more is published:
// its Broker must tell the room, through lost, once it is subscribed again,
// and the room must read them from the history, so that its client gets
// them without waiting for another message. The room's error hook is told
// why.
func TestRoomCatchesUpAfterReconnect(t *testing.T) {
	name := "gap-" + newEpoch()[:10]
	g := newGatedClient(t, redisAddr(), "wsroom-test-"+name)
	b := New(g.client, WithMaxAge(testMaxAge))
	t.Cleanup(func() { b.Close() })
	roomErrs := &errorLog{}
	pubNode := newNode(t, name, newBroker(t))
	gapNode := newNode(t, name, b, wsroom.WithOnError(func(_ *wsroom.Client, err error) { roomErrs.add(err) }))
	c := dialWS(t, gapNode.url)
	r2 := gapNode.room(t, name)
	waitUntil(t, "client joined", func() bool { return r2.Len() == 1 })
	r1 := pubNode.room(t, name)
	if err := r1.Publish(t.Context(), []byte(`"first"`)); err != nil {
		t.Fatal(err)
	}
	if e := readEnvelope(t, c); e.Seq != 1 {
		t.Fatalf("first message has seq %d, want 1", e.Seq)
	}

	// Cut the gap node's pub/sub connection and hold its reconnection.
	g.hold()
	g.killPubSub(t)
	const missed = 10
	for i := range missed {
		if err := r1.Publish(t.Context(), fmt.Appendf(nil, `"missed-%d"`, i)); err != nil {
			t.Fatal(err)
		}
	}
	g.release()

	// Nothing more is published: the missed messages must come anyway.
	for want := uint64(2); want <= missed+1; want++ {
		if e := readEnvelope(t, c); e.Seq != want || string(e.Data) != fmt.Sprintf(`"missed-%d"`, want-2) {
			t.Fatalf("client on the reconnected node got seq %d (%s), want %d", e.Seq, e.Data, want)
		}
	}
	// Then live delivery goes on, without a duplicate.
	for i := range 5 {
		if err := r1.Publish(t.Context(), fmt.Appendf(nil, `"after-%d"`, i)); err != nil {
			t.Fatal(err)
		}
	}
	for want := uint64(missed + 2); want <= missed+6; want++ {
		if e := readEnvelope(t, c); e.Seq != want {
			t.Fatalf("client on the reconnected node got seq %d, want %d", e.Seq, want)
		}
	}
	var told bool
	for _, err := range roomErrs.all() {
		if strings.Contains(err.Error(), "may have missed messages") && strings.Contains(err.Error(), "redisbroker: pub/sub connection failed") {
			told = true
		}
	}
	if !told {
		t.Errorf("room's error hook was told %v, want the broker's lost connection", roomErrs.all())
	}
}
