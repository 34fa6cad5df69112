package brokertest

// Connections of many rooms (wsroom.v3, PROTOCOL.md) on two server nodes
// of one cluster: the cases of RunNodes and the client they read with.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
)

// Nodes makes the server nodes of RunNodes' cases. Every Broker they return
// within one case must reach the same cluster, and must also be a
// wsroom.Store (the node's history): the cases check what the engine holds.
type Nodes struct {
	// New returns a node's Broker, whose rooms keep their last
	// historyLimit messages (0: the Broker's default).
	New func(t *testing.T, historyLimit int) wsroom.Broker

	// Cuttable returns a node's Broker like New, with cut, which breaks
	// its link to the engine (messages other nodes publish meanwhile do
	// not reach it, and its reconnection attempts fail) until restore.
	// The cases that need it are skipped when Cuttable is nil.
	Cuttable func(t *testing.T, historyLimit int) (b wsroom.Broker, cut, restore func())
}

// RunNodes runs the cases of two or more server nodes as subtests of t:
// clients of many rooms on each node publish, move from one node to the
// other with resume, retry publishes, and miss more than the history keeps
// while their node is cut off. Each case uses room names of its own.
func RunNodes(t *testing.T, n Nodes) {
	t.Run("MuxAcrossNodes", func(t *testing.T) {
		ba, bb := n.New(t, 0), n.New(t, 0)
		store, ok := ba.(wsroom.Store)
		if !ok {
			t.Fatalf("%T is not a wsroom.Store", ba)
		}
		testMuxAcrossNodes(t, newMuxNode(t, ba), newMuxNode(t, bb), store, "mux-"+roomID())
	})
	t.Run("MuxResyncOneRoom", func(t *testing.T) { testMuxResyncOneRoom(t, n) })
	t.Run("APIAcrossNodes", func(t *testing.T) { testAPIAcrossNodes(t, n) })
	if _, ok := n.New(t, 0).(wsroom.Deduplicator); ok {
		t.Run("MuxRetryOnOtherNode", func(t *testing.T) { testMuxRetryOnOtherNode(t, n) })
	}
}

// testMuxRetryOnOtherNode checks the retries of a Deduplicator's cluster
// (PROTOCOL.md, section 5): a publish acked on node a and sent again with
// its id on node b gets the original ack and is stored once; the same
// publish sent on both nodes at once is stored once and both get one ack.
func testMuxRetryOnOtherNode(t *testing.T, n Nodes) {
	ba, bb := n.New(t, 0), n.New(t, 0)
	store, ok := ba.(wsroom.Store)
	if !ok {
		t.Fatalf("%T is not a wsroom.Store", ba)
	}
	a, b := newMuxNode(t, ba), newMuxNode(t, bb)
	r := "muxretry-" + roomID()
	watch := dialMux(t, b, "watcher on b")
	pa, pb := dialMux(t, a, "publisher on a"), dialMux(t, b, "publisher on b")
	for _, c := range []*muxClient{watch, pa, pb} {
		c.join(t, []string{r}, nil)
	}
	ackOf := func(c *muxClient, id string) muxFrame {
		t.Helper()
		var got muxFrame
		c.waitFor(t, "the ack of "+id, func() bool {
			fs := c.filter(func(f muxFrame) bool { return (f.Op == "ack" || f.Op == "error") && f.ID == id })
			if len(fs) == 0 {
				return false
			}
			got = fs[0]
			return true
		})
		if got.Op != "ack" {
			t.Fatalf("%s: %s got %v, want an ack", c.name, id, got)
		}
		return got
	}

	pa.send(t, `{"op":"pub","room":%q,"id":"first","data":%s}`, r, pubData("first"))
	orig := ackOf(pa, "first")
	pb.send(t, `{"op":"pub","room":%q,"id":"first","data":%s}`, r, pubData("first"))
	if again := ackOf(pb, "first"); again.Seq != orig.Seq || again.Epoch != orig.Epoch {
		t.Errorf("the retry on node b got %v, want the original ack %v", again, orig)
	}

	// Both nodes at once, several times.
	const both = 10
	for i := range both {
		id := fmt.Sprintf("both-%d", i)
		var wg sync.WaitGroup
		for _, c := range []*muxClient{pa, pb} {
			wg.Go(func() {
				if err := c.write(t.Context(), fmt.Sprintf(`{"op":"pub","room":%q,"id":%q,"data":%s}`, r, id, pubData(id))); err != nil {
					t.Errorf("%s: %v", c.name, err)
				}
			})
		}
		wg.Wait()
		x, y := ackOf(pa, id), ackOf(pb, id)
		if x.Seq != y.Seq || x.Epoch != y.Epoch {
			t.Errorf("%s acked at %s:%d on node a and at %s:%d on node b, want one position", id, x.Epoch, x.Seq, y.Epoch, y.Seq)
		}
	}
	pa.send(t, `{"op":"pub","room":%q,"id":"last","data":%s}`, r, pubData("last"))
	last := ackOf(pa, "last")
	if want := orig.Seq + both + 1; last.Seq != want {
		t.Errorf("the publish after the retries got seq %d, want %d: a retry was stored again", last.Seq, want)
	}
	watch.waitFor(t, "the last message", func() bool {
		ms := watch.msgs(r)
		return len(ms) > 0 && ms[len(ms)-1].Seq >= last.Seq
	})
	time.Sleep(100 * time.Millisecond) // let a duplicate, if any, arrive
	ms := watch.msgs(r)
	checkSequence(t, watch.name, r, ms, int(last.Seq))
	stored, err := store.After(t.Context(), r, "", 0, 0)
	if err != nil {
		t.Fatalf("Store.After error: %v", err)
	}
	seen := make(map[string]int)
	for _, m := range stored {
		seen[string(m.Data)]++
	}
	for data, k := range seen {
		if k != 1 {
			t.Errorf("the store holds %s %d times, want once", data, k)
		}
	}
	if len(stored) != both+2 {
		t.Errorf("the store holds %d messages, want %d", len(stored), both+2)
	}
	for _, c := range []*muxClient{watch, pa, pb} {
		c.checkNoTrouble(t)
	}
}

// roomID returns a random name part, so that cases on a shared engine do
// not meet.
func roomID() string {
	var b [5]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// muxWait bounds how long a test waits for frames.
const muxWait = 20 * time.Second

// muxNode is one server of connections of many rooms: a Registry on its own
// Broker, behind its own HTTP server.
type muxNode struct {
	reg *wsroom.Registry
	url string
}

func newMuxNode(t *testing.T, b wsroom.Broker, opts ...wsroom.Option) *muxNode {
	t.Helper()
	opts = append([]wsroom.Option{
		wsroom.WithBroker(b), wsroom.WithCodec(wsroom.JSON()),
		wsroom.WithSendBuffer(1 << 14), wsroom.WithRateLimit(0, 0, wsroom.Throttle),
	}, opts...)
	reg := wsroom.NewRegistry(opts...)
	srv := httptest.NewServer(reg.MuxHandler())
	t.Cleanup(func() {
		reg.Close()
		srv.Close()
	})
	return &muxNode{reg: reg, url: "ws" + strings.TrimPrefix(srv.URL, "http")}
}

// muxFrame is any frame of the wsroom.v3 protocol, as a client reads it.
type muxFrame struct {
	Op     string          `json:"op"`
	ID     string          `json:"id"`
	Room   string          `json:"room"`
	Seq    uint64          `json:"seq"`
	Epoch  string          `json:"epoch"`
	From   string          `json:"from"`
	Data   json.RawMessage `json:"data"`
	Code   string          `json:"code"`
	Reason string          `json:"reason"`
	Resume string          `json:"resume"`
}

func (f muxFrame) String() string {
	b, _ := json.Marshal(f)
	return string(b)
}

// muxClient is a client of many rooms whose goroutine records every frame
// it reads, until the connection ends.
type muxClient struct {
	name string
	conn *websocket.Conn
	done chan struct{} // closed when the reading goroutine ends

	mu     sync.Mutex
	frames []muxFrame
	err    error // why reading ended
	more   chan struct{}
}

func dialMux(t *testing.T, n *muxNode, name string) *muxClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), muxWait)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, n.url, &websocket.DialOptions{Subprotocols: []string{wsroom.Subprotocol}})
	if err != nil {
		t.Fatalf("%s: Dial(%s) error: %v", name, n.url, err)
	}
	if conn.Subprotocol() != wsroom.Subprotocol {
		t.Fatalf("%s: subprotocol %q, want %q", name, conn.Subprotocol(), wsroom.Subprotocol)
	}
	conn.SetReadLimit(-1)
	c := &muxClient{name: name, conn: conn, done: make(chan struct{}), more: make(chan struct{}, 1)}
	go c.read()
	t.Cleanup(func() {
		c.conn.CloseNow()
		<-c.done
	})
	return c
}

func (c *muxClient) read() {
	defer close(c.done)
	for {
		_, b, err := c.conn.Read(context.Background())
		var f muxFrame
		if err == nil {
			if err = json.Unmarshal(b, &f); err != nil {
				err = fmt.Errorf("frame %q: %w", b, err)
			}
		}
		c.mu.Lock()
		if err != nil {
			c.err = err
		} else {
			c.frames = append(c.frames, f)
		}
		c.mu.Unlock()
		select {
		case c.more <- struct{}{}:
		default:
		}
		if err != nil {
			return
		}
	}
}

// send writes one request, built as by fmt.Sprintf.
func (c *muxClient) send(t *testing.T, format string, args ...any) {
	t.Helper()
	if err := c.write(t.Context(), fmt.Sprintf(format, args...)); err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
}

func (c *muxClient) write(ctx context.Context, req string) error {
	ctx, cancel := context.WithTimeout(ctx, muxWait)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, []byte(req)); err != nil {
		return fmt.Errorf("Write(%s): %w", req, err)
	}
	return nil
}

// all returns the frames read so far, and why reading ended (nil while it
// goes on).
func (c *muxClient) all() ([]muxFrame, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.frames), c.err
}

// filter returns the frames read so far that keep accepts.
func (c *muxClient) filter(keep func(muxFrame) bool) []muxFrame {
	fs, _ := c.all()
	return slices.DeleteFunc(fs, func(f muxFrame) bool { return !keep(f) })
}

// msgs returns the messages of room read so far.
func (c *muxClient) msgs(room string) []muxFrame {
	return c.filter(func(f muxFrame) bool { return f.Op == "msg" && f.Room == room })
}

// op returns the frames of an op read so far, of any room.
func (c *muxClient) op(op string) []muxFrame {
	return c.filter(func(f muxFrame) bool { return f.Op == op })
}

// waitFor waits until cond holds, failing t after muxWait or if the
// connection ends first.
func (c *muxClient) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(muxWait)
	defer deadline.Stop()
	for {
		if cond() {
			return
		}
		if _, err := c.all(); err != nil {
			if cond() {
				return
			}
			t.Fatalf("%s: connection ended (%v) before %s", c.name, err, what)
		}
		select {
		case <-c.more:
		case <-deadline.C:
			fs, _ := c.all()
			t.Fatalf("%s: no %s within %v; %d frames read, the last %v", c.name, what, muxWait, len(fs), fs[max(len(fs)-10, 0):])
		}
	}
}

// join asks for every room, with resume positions from pos when given, and
// waits for the "joined" replies.
func (c *muxClient) join(t *testing.T, rooms []string, pos map[string]string) {
	t.Helper()
	before := len(c.op("joined"))
	for _, r := range rooms {
		if p, ok := pos[r]; ok {
			c.send(t, `{"op":"join","room":%q,"id":"join-%s","resume":%q}`, r, r, p)
		} else {
			c.send(t, `{"op":"join","room":%q,"id":"join-%s"}`, r, r)
		}
	}
	c.waitFor(t, fmt.Sprintf("joined for %d rooms", len(rooms)), func() bool { return len(c.op("joined")) == before+len(rooms) })
}

// position returns the client's position in room as PROTOCOL.md section 7
// says: that of the last message with one, else that of "joined".
func (c *muxClient) position(room string) string {
	fs, _ := c.all()
	for _, f := range slices.Backward(fs) {
		if f.Room == room && (f.Op == "msg" && f.Seq > 0 || f.Op == "joined") {
			return fmt.Sprintf("%s:%d", f.Epoch, f.Seq)
		}
	}
	return ""
}

// checkNoTrouble fails t if the client got an error, a resync or a left.
func (c *muxClient) checkNoTrouble(t *testing.T) {
	t.Helper()
	for _, f := range c.filter(func(f muxFrame) bool { return f.Op == "error" || f.Op == "resync" || f.Op == "left" }) {
		t.Errorf("%s got %v", c.name, f)
	}
}

// checkSequence fails t unless ms are messages seq 1..n of one epoch, and
// returns that epoch.
func checkSequence(t *testing.T, who, room string, ms []muxFrame, n int) string {
	t.Helper()
	if len(ms) != n {
		t.Errorf("%s has %d messages of %s, want %d", who, len(ms), room, n)
	}
	var epoch string
	for i, m := range ms {
		if i == 0 {
			epoch = m.Epoch
		}
		if m.Seq != uint64(i+1) || m.Epoch != epoch || epoch == "" {
			t.Errorf("%s: message %d of %s is %s:%d, want %s:%d (no gap, no duplicate)", who, i, room, m.Epoch, m.Seq, epoch, i+1)
			return epoch
		}
	}
	return epoch
}

// sameMessages fails t unless a and b hold the same messages in the same
// order.
func sameMessages(t *testing.T, what string, a, b []muxFrame) {
	t.Helper()
	if len(a) != len(b) {
		t.Errorf("%s: %d messages and %d", what, len(a), len(b))
	}
	for i := range min(len(a), len(b)) {
		x, y := a[i], b[i]
		if x.Seq != y.Seq || x.Epoch != y.Epoch || x.From != y.From || string(x.Data) != string(y.Data) {
			t.Errorf("%s: message %d differs: %v and %v", what, i, x, y)
			return
		}
	}
}

// pubData is the data of a client's publish, which names it.
func pubData(id string) string { return fmt.Sprintf(`{"id":%q}`, id) }

// testMuxAcrossNodes runs three rooms on two nodes, a and b. Two clients,
// one on each node, publish to all three rooms with request ids while a
// mover on node a reads, disconnects, and reconnects to node b, resuming each
// room from its last position. Per room, the mover's messages from both
// connections are exactly 1..N, and every client, on either node, sees one
// sequence. Every publish is acked with the seq and epoch the message has.
// A publish retried with the same id on the same node, after a reconnect,
// gets the original ack and is stored once.
func testMuxAcrossNodes(t *testing.T, a, b *muxNode, store wsroom.Store, prefix string) {
	rooms := []string{prefix + "-x", prefix + "-y", prefix + "-z"}
	watchA := dialMux(t, a, "watcher on a")
	stayer := dialMux(t, b, "stayer on b")
	mover := dialMux(t, a, "mover on a")
	pubs := []*muxClient{dialMux(t, a, "publisher on a"), dialMux(t, b, "publisher on b")}
	for _, c := range append([]*muxClient{watchA, stayer, mover}, pubs...) {
		c.join(t, rooms, nil)
	}

	// Each publisher sends each rounds to every room, with a pause now and
	// then, so that the stream goes on while the mover is away.
	const each = 100
	const n = each * 2 // messages per room
	var wg sync.WaitGroup
	errs := make(chan error, len(pubs))
	for i, p := range pubs {
		wg.Go(func() {
			for j := range each {
				for _, r := range rooms {
					id := fmt.Sprintf("p%d-%s-%d", i, r, j)
					if err := p.write(t.Context(), fmt.Sprintf(`{"op":"pub","room":%q,"id":%q,"data":%s}`, r, id, pubData(id))); err != nil {
						errs <- fmt.Errorf("%s: %w", p.name, err)
						return
					}
				}
				if j%10 == 9 {
					time.Sleep(10 * time.Millisecond)
				}
			}
		})
	}

	// The mover leaves abruptly once it has some of every room's messages.
	mover.waitFor(t, "20 messages of every room", func() bool {
		for _, r := range rooms {
			if len(mover.msgs(r)) < 20 {
				return false
			}
		}
		return true
	})
	mover.conn.CloseNow()
	<-mover.done
	pos := make(map[string]string)
	for _, r := range rooms {
		pos[r] = mover.position(r)
	}
	firstPart := make(map[string]int)
	for _, r := range rooms {
		firstPart[r] = len(mover.msgs(r))
	}
	// Publishing goes on while it is away.
	stayer.waitFor(t, "messages published while the mover is away", func() bool {
		for _, r := range rooms {
			if len(stayer.msgs(r)) < firstPart[r]+20 {
				return false
			}
		}
		return true
	})
	moved := dialMux(t, b, "mover on b")
	moved.join(t, rooms, pos)

	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	everyone := append([]*muxClient{watchA, stayer, moved}, pubs...)
	for _, c := range everyone {
		c.waitFor(t, fmt.Sprintf("%d messages of every room", n), func() bool {
			for _, r := range rooms {
				if ms := c.msgs(r); len(ms) == 0 || ms[len(ms)-1].Seq < n {
					return false
				}
			}
			return true
		})
	}
	for _, p := range pubs {
		p.waitFor(t, "an ack for every publish", func() bool { return len(p.op("ack")) >= each*len(rooms) })
	}

	epochs := make(map[string]string)
	for _, r := range rooms {
		ref := stayer.msgs(r)
		epochs[r] = checkSequence(t, stayer.name, r, ref, n)
		checkSequence(t, watchA.name, r, watchA.msgs(r), n)
		sameMessages(t, fmt.Sprintf("room %s on node a and on node b", r), watchA.msgs(r), ref)
		for _, p := range pubs {
			sameMessages(t, fmt.Sprintf("room %s for %s and %s", r, p.name, stayer.name), p.msgs(r), ref)
		}

		// The mover: joined at its position on b, then the rest.
		for _, j := range moved.op("joined") {
			if j.Room == r && (j.Epoch != epochs[r] || j.Seq < uint64(firstPart[r])) {
				t.Errorf("%s rejoined %s at %s:%d, resuming from %s", moved.name, r, j.Epoch, j.Seq, pos[r])
			}
		}
		union := append(mover.msgs(r), moved.msgs(r)...)
		checkSequence(t, "mover, both connections", r, union, n)
		sameMessages(t, fmt.Sprintf("room %s for the mover and %s", r, stayer.name), union, ref)
		t.Logf("room %s: mover got %d messages on a, %d on b after resuming from %s", r, firstPart[r], len(moved.msgs(r)), pos[r])
	}
	for _, c := range append(everyone, mover) {
		c.checkNoTrouble(t)
	}

	// Every ack carries the position of the message it acknowledges.
	for i, p := range pubs {
		acks := p.op("ack")
		if len(acks) != each*len(rooms) {
			t.Errorf("%s got %d acks, want %d", p.name, len(acks), each*len(rooms))
		}
		for _, ack := range acks {
			ref := stayer.msgs(ack.Room)
			if ack.Seq == 0 || ack.Seq > uint64(len(ref)) || ack.Epoch != epochs[ack.Room] {
				t.Errorf("%s: ack %v lacks the message's position (room epoch %s)", p.name, ack, epochs[ack.Room])
				continue
			}
			if got := ref[ack.Seq-1]; string(got.Data) != pubData(ack.ID) || !strings.HasPrefix(ack.ID, fmt.Sprintf("p%d-", i)) {
				t.Errorf("%s: ack %v names message %v", p.name, ack, got)
			}
		}
	}

	// A publish retried after a reconnect to the same node gets the
	// original ack and is not published again.
	r := rooms[0]
	id := fmt.Sprintf("p0-%s-%d", r, each/2)
	var orig muxFrame
	for _, ack := range pubs[0].op("ack") {
		if ack.ID == id {
			orig = ack
		}
	}
	pubs[0].conn.CloseNow()
	<-pubs[0].done
	again := dialMux(t, a, "publisher on a, reconnected")
	again.join(t, rooms[:1], map[string]string{r: pubs[0].position(r)})
	again.send(t, `{"op":"pub","room":%q,"id":%q,"data":%s}`, r, id, pubData(id))
	again.send(t, `{"op":"pub","room":%q,"id":"after-retry","data":"after"}`, r)
	again.waitFor(t, "two acks", func() bool { return len(again.op("ack")) == 2 })
	acks := again.op("ack")
	if acks[0].ID != id || acks[0].Seq != orig.Seq || acks[0].Epoch != orig.Epoch || acks[0].Room != r {
		t.Errorf("retried publish got %v, want the original ack %v", acks[0], orig)
	}
	if acks[1].Seq != n+1 || acks[1].Epoch != epochs[r] {
		t.Errorf("the next publish got %v, want seq %d: the retry was published again", acks[1], n+1)
	}
	stayer.waitFor(t, "the message after the retry", func() bool { return len(stayer.msgs(r)) >= n+1 })
	time.Sleep(100 * time.Millisecond) // let a duplicate, if any, arrive
	if ms := stayer.msgs(r); len(ms) != n+1 || string(ms[n].Data) != `"after"` {
		t.Errorf("%s has %d messages of %s, the last %v; want %d, the last \"after\"", stayer.name, len(ms), r, ms[len(ms)-1], n+1)
	}
	stored, err := store.After(t.Context(), r, epochs[r], 0, 0)
	if err != nil {
		t.Fatalf("Store.After error: %v", err)
	}
	seen := make(map[string]int)
	for _, m := range stored {
		seen[string(m.Data)]++
	}
	if len(stored) != n+1 || seen[pubData(id)] != 1 {
		t.Errorf("store holds %d messages of %s, the retried one %d times; want %d, it once", len(stored), r, seen[pubData(id)], n+1)
	}
	again.checkNoTrouble(t)
}

// testMuxResyncOneRoom makes one node miss messages of one room only, more
// than the history keeps: its link to the engine is cut while another node
// publishes to that room alone. The client of many rooms on that node gets
// a resync of that room and nothing else: its other rooms, whose catch-up
// after the link is back finds nothing missing, go on without a gap, and it
// can join the resynced room again.
func testMuxResyncOneRoom(t *testing.T, n Nodes) {
	if n.Cuttable == nil {
		t.Skip("Nodes.Cuttable is nil")
	}
	name := "muxgap-" + roomID()
	rooms := []string{name + "-x", name + "-y", name + "-z"}
	const limit = 3
	gapBroker, cut, restore := n.Cuttable(t, limit)
	pubNode := newMuxNode(t, n.New(t, limit))
	gapNode := newMuxNode(t, gapBroker)
	c := dialMux(t, gapNode, "client on the gap node")
	c.join(t, rooms, nil)
	publish := func(room string, data string) {
		t.Helper()
		if err := pubNode.reg.Publish(t.Context(), room, []byte(data)); err != nil {
			t.Fatalf("Publish to %s error: %v", room, err)
		}
	}
	for _, r := range rooms {
		publish(r, `"first"`)
	}
	c.waitFor(t, "the first message of every room", func() bool {
		return len(c.msgs(rooms[0])) == 1 && len(c.msgs(rooms[1])) == 1 && len(c.msgs(rooms[2])) == 1
	})

	cut()
	const missed = limit + 2 // the history keeps the last 3: seq 4 to 6
	for i := range missed {
		publish(rooms[0], fmt.Sprintf(`"missed-%d"`, i))
	}
	restore()

	c.waitFor(t, "a resync", func() bool { return len(c.op("resync")) > 0 })
	for i := range 3 {
		for _, r := range rooms[1:] {
			publish(r, fmt.Sprintf(`"after-%d"`, i))
		}
	}
	for _, r := range rooms[1:] {
		c.waitFor(t, "the messages after the gap in "+r, func() bool { return len(c.msgs(r)) >= 4 })
	}
	time.Sleep(100 * time.Millisecond) // let a stray frame, if any, arrive
	if rs := c.op("resync"); len(rs) != 1 || rs[0].Room != rooms[0] || rs[0].Resume != "" {
		t.Errorf("resyncs %v, want one, of %s, without a new epoch", rs, rooms[0])
	}
	for _, f := range c.filter(func(f muxFrame) bool { return f.Op == "error" || f.Op == "left" }) {
		t.Errorf("got %v", f)
	}
	if ms := c.msgs(rooms[0]); len(ms) != 1 {
		t.Errorf("got %d messages of %s, want only the first: the rest are lost with the history", len(ms), rooms[0])
	}
	for _, r := range rooms[1:] {
		checkSequence(t, c.name, r, c.msgs(r), 4)
	}

	// Join again without resume: the room's current position, then live
	// messages.
	c.send(t, `{"op":"join","room":%q,"id":"again","last":%d}`, rooms[0], limit)
	c.waitFor(t, "joined again", func() bool { return len(c.filter(func(f muxFrame) bool { return f.ID == "again" })) > 0 })
	if j := c.filter(func(f muxFrame) bool { return f.ID == "again" })[0]; j.Op != "joined" || j.Seq != missed+1 {
		t.Fatalf("join again: %v, want joined at seq %d", j, missed+1)
	}
	// Publish only once the history is sent: the new message pushes the
	// oldest out of it.
	c.waitFor(t, "the last messages of "+rooms[0], func() bool { return len(c.msgs(rooms[0])) >= 1+limit })
	publish(rooms[0], `"live"`)
	c.waitFor(t, "the rest of "+rooms[0], func() bool { return len(c.msgs(rooms[0])) >= 1+limit+1 })
	var got []string
	for _, m := range c.msgs(rooms[0])[1:] {
		got = append(got, fmt.Sprintf("%d:%s", m.Seq, m.Data))
	}
	if want := []string{`4:"missed-2"`, `5:"missed-3"`, `6:"missed-4"`, `7:"live"`}; !slices.Equal(got, want) {
		t.Errorf("after joining %s again got %v, want %v", rooms[0], got, want)
	}
}
