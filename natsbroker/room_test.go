package natsbroker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/wsroom/wsroom"
)

// node is one server: a Room on its own Broker and connection, served over
// HTTP.
type node struct {
	room *wsroom.Room
	b    *Broker
	srv  *httptest.Server
	url  string
}

func newRoomNode(t *testing.T, prefix string) *node {
	t.Helper()
	return newRoomNodeOn(t, newNode(t, prefix))
}

// newRoomNodeOn serves a room on b, configured by opts.
func newRoomNodeOn(t *testing.T, b *Broker, opts ...wsroom.Option) *node {
	t.Helper()
	opts = append([]wsroom.Option{wsroom.WithBroker(b), wsroom.WithCodec(wsroom.JSON())}, opts...)
	room := wsroom.New(opts...)
	srv := httptest.NewServer(room.Handler())
	t.Cleanup(func() {
		room.Close()
		srv.Close()
	})
	return &node{room: room, b: b, srv: srv, url: "ws" + strings.TrimPrefix(srv.URL, "http")}
}

func (n *node) dial(t *testing.T, query string) *websocket.Conn {
	t.Helper()
	want := n.room.Len() + 1
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, n.url+query, nil)
	if err != nil {
		t.Fatalf("Dial(%s): %v", n.url+query, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	deadline := time.Now().Add(5 * time.Second)
	for n.room.Len() < want {
		if time.Now().After(deadline) {
			t.Fatalf("room has %d clients, want %d", n.room.Len(), want)
		}
		time.Sleep(time.Millisecond)
	}
	return c
}

type envelope struct {
	Seq   uint64          `json:"seq"`
	Epoch string          `json:"epoch"`
	Data  json.RawMessage `json:"data"`
}

func readEnvelopes(t *testing.T, c *websocket.Conn, n int) []envelope {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var out []envelope
	for range n {
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("Read after %d of %d envelopes: %v", len(out), n, err)
		}
		var e envelope
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatalf("envelope %q: %v", b, err)
		}
		out = append(out, e)
	}
	return out
}

// TestRoomsAcrossNodes runs one room on three nodes: every message, sent by
// any client on any node, reaches every client in one order, and a client
// that moves from one node to another resumes without loss.
func TestRoomsAcrossNodes(t *testing.T) {
	prefix := testPrefix(t)
	nodes := []*node{newRoomNode(t, prefix), newRoomNode(t, prefix), newRoomNode(t, prefix)}
	var clients []*websocket.Conn
	for _, n := range nodes {
		for range 2 {
			clients = append(clients, n.dial(t, ""))
		}
	}
	mover := nodes[0].dial(t, "")

	const each = 5
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Go(func() {
			for j := range each {
				if err := c.Write(t.Context(), websocket.MessageText, fmt.Appendf(nil, `"c%d-%d"`, i, j)); err != nil {
					t.Errorf("client %d Write: %v", i, err)
					return
				}
			}
		})
	}
	for i, n := range nodes {
		wg.Go(func() {
			if err := n.room.Publish(t.Context(), fmt.Appendf(nil, `"server%d"`, i)); err != nil {
				t.Errorf("node %d Publish: %v", i, err)
			}
		})
	}
	wg.Wait()
	total := len(clients)*each + len(nodes)

	var first []envelope
	for i, c := range clients {
		got := readEnvelopes(t, c, total)
		for k, e := range got {
			if e.Seq != uint64(k+1) || e.Epoch != got[0].Epoch || e.Epoch == "" {
				t.Fatalf("client %d envelope %d = seq %d epoch %q, want seq %d in one epoch", i, k, e.Seq, e.Epoch, k+1)
			}
		}
		if first == nil {
			first = got
			continue
		}
		if !slices.EqualFunc(got, first, func(a, b envelope) bool { return a.Seq == b.Seq && string(a.Data) == string(b.Data) }) {
			t.Errorf("client %d saw another order than client 0", i)
		}
	}
	seen := map[string]bool{}
	for _, e := range first {
		seen[string(e.Data)] = true
	}
	if len(seen) != total {
		t.Errorf("clients saw %d distinct messages, want %d", len(seen), total)
	}

	// The mover reads part of the history on node 0, leaves, and comes back
	// on node 2 while messages keep flowing.
	part := readEnvelopes(t, mover, total-4)
	last := part[len(part)-1]
	mover.Close(websocket.StatusNormalClosure, "moving")
	for i := range 3 {
		if err := nodes[1].room.Publish(t.Context(), fmt.Appendf(nil, `"while away %d"`, i)); err != nil {
			t.Fatal(err)
		}
	}
	moved := nodes[2].dial(t, fmt.Sprintf("?resume=%s:%d", last.Epoch, last.Seq))
	if err := nodes[0].room.Publish(t.Context(), []byte(`"after move"`)); err != nil {
		t.Fatal(err)
	}
	got := readEnvelopes(t, moved, 4+3+1)
	for k, e := range got {
		if want := last.Seq + uint64(k) + 1; e.Seq != want || e.Epoch != last.Epoch {
			t.Errorf("after moving, envelope %d = seq %d epoch %q, want seq %d epoch %q", k, e.Seq, e.Epoch, want, last.Epoch)
		}
	}
	if string(got[4].Data) != `"while away 0"` || string(got[7].Data) != `"after move"` {
		t.Errorf("after moving got %s ... %s, want the messages published meanwhile, then the live one", got[4].Data, got[7].Data)
	}
	if !slices.EqualFunc(got[:4], first[total-4:], func(a, b envelope) bool { return a.Seq == b.Seq && string(a.Data) == string(b.Data) }) {
		t.Errorf("resumed history differs from what the other clients saw")
	}
}

// errorLog collects what a room reports to its error hook.
type errorLog struct {
	mu   sync.Mutex
	errs []error
}

func (l *errorLog) hook(_ *wsroom.Client, err error) {
	l.mu.Lock()
	l.errs = append(l.errs, err)
	l.mu.Unlock()
}

func (l *errorLog) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, err := range l.errs {
		if strings.Contains(err.Error(), s) {
			return true
		}
	}
	return false
}

// TestRoomAcrossReconnect drops a node's connection while another node
// publishes: its client still gets every message once and in order, and the
// room's error hook hears of the possible loss.
func TestRoomAcrossReconnect(t *testing.T) {
	prefix := testPrefix(t)
	ncB := connect(t)
	var errs errorLog
	a := newRoomNode(t, prefix)
	b := newRoomNodeOn(t, newNodeOn(t, ncB, prefix), wsroom.WithOnError(errs.hook))
	c := b.dial(t, "")
	const total = 40
	for i := range total {
		if i == 15 {
			if err := ncB.ForceReconnect(); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.room.Publish(t.Context(), fmt.Appendf(nil, `"m%d"`, i)); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
		time.Sleep(time.Millisecond)
	}
	got := readEnvelopes(t, c, total)
	for k, e := range got {
		if e.Seq != uint64(k+1) || string(e.Data) != fmt.Sprintf(`"m%d"`, k) {
			t.Fatalf("envelope %d = seq %d %s, want seq %d \"m%d\"", k, e.Seq, e.Data, k+1, k)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for !errs.has("may have missed messages") {
		if time.Now().After(deadline) {
			t.Fatalf("room error hook not told of the reconnection; got %v", errs.errs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !errs.has("connection to NATS was lost") {
		t.Errorf("room error hook got %v, want the broker's cause", errs.errs)
	}
}

// TestKillNode runs one room on three nodes and kills one of them abruptly
// (its connection first, so that it can clean up nothing) while messages
// flow: the clients of the other two still get every message in order, and
// the dead node's clients leave the room's members after the presence TTL.
func TestKillNode(t *testing.T) {
	prefix := testPrefix(t)
	const ttl = time.Second
	var conns []*nats.Conn
	var nodes []*node
	for range 3 {
		nc := connect(t)
		conns = append(conns, nc)
		nodes = append(nodes, newRoomNodeOn(t, newNodeOn(t, nc, prefix, WithPresenceTTL(ttl))))
	}
	var clients [3][]*websocket.Conn
	for i, n := range nodes {
		for range 2 {
			clients[i] = append(clients[i], n.dial(t, ""))
		}
	}
	ids := func(i int) []string {
		var out []string
		for _, c := range nodes[i].room.Clients() {
			out = append(out, c.ID())
		}
		return out
	}
	survivors := slices.Concat(ids(0), ids(1))
	everyone := slices.Concat(survivors, ids(2))
	slices.Sort(survivors)
	slices.Sort(everyone)
	memberIDs := func() []string {
		ms, err := nodes[0].room.Members(t.Context())
		if err != nil {
			t.Fatalf("Members: %v", err)
		}
		var out []string
		for _, m := range ms {
			out = append(out, m.ID)
		}
		slices.Sort(out)
		return out
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		got := memberIDs() // clients join the presence list just after the room
		if slices.Equal(got, everyone) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Members = %v, want %v", got, everyone)
		}
	}

	// Node 0 publishes throughout; node 2 publishes, then dies; node 1
	// publishes after.
	var want []string
	for i := range 5 {
		want = append(want, fmt.Sprintf(`"n2-%d"`, i))
		if err := nodes[2].room.Publish(t.Context(), []byte(want[len(want)-1])); err != nil {
			t.Fatal(err)
		}
	}
	const each = 30
	started, kill := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	var sent0 []string
	wg.Go(func() {
		for i := range each {
			if i == each/2 {
				close(started)
				<-kill
			}
			m := fmt.Sprintf(`"n0-%d"`, i)
			if err := nodes[0].room.Publish(t.Context(), []byte(m)); err != nil {
				t.Errorf("node 0 Publish: %v", err)
				return
			}
			sent0 = append(sent0, m)
			time.Sleep(2 * time.Millisecond)
		}
	})
	<-started
	conns[2].Close()
	close(kill)
	nodes[2].room.Close()
	nodes[2].b.Close()
	nodes[2].srv.Close()
	var sent1 []string
	for i := range each {
		m := fmt.Sprintf(`"n1-%d"`, i)
		if err := nodes[1].room.Publish(t.Context(), []byte(m)); err != nil {
			t.Fatalf("node 1 Publish: %v", err)
		}
		sent1 = append(sent1, m)
	}
	wg.Wait()
	total := len(want) + len(sent0) + len(sent1)

	var first []envelope
	for i := range 2 {
		for j, c := range clients[i] {
			got := readEnvelopes(t, c, total)
			for k, e := range got {
				if e.Seq != uint64(k+1) || e.Epoch != got[0].Epoch {
					t.Fatalf("node %d client %d envelope %d = seq %d epoch %q, want seq %d in one epoch", i, j, k, e.Seq, e.Epoch, k+1)
				}
			}
			if first == nil {
				first = got
			} else if !slices.EqualFunc(got, first, func(a, b envelope) bool { return a.Seq == b.Seq && string(a.Data) == string(b.Data) }) {
				t.Errorf("node %d client %d saw another order than the first client", i, j)
			}
		}
	}
	var data []string
	for _, e := range first {
		data = append(data, string(e.Data))
	}
	for _, sent := range [][]string{want, sent0, sent1} {
		var from []string
		for _, d := range data {
			if strings.HasPrefix(d, sent[0][:4]) {
				from = append(from, d)
			}
		}
		if !slices.Equal(from, sent) {
			t.Errorf("clients got %v from %s, want %v in that order", from, sent[0][1:3], sent)
		}
	}

	// The dead node could not remove its members: they expire.
	killed := time.Now()
	for {
		got := memberIDs()
		if slices.Equal(got, survivors) {
			break
		}
		if !slices.Equal(got, everyone) {
			t.Fatalf("Members = %v, want %v until the dead node's entries expire, then %v", got, everyone, survivors)
		}
		if time.Since(killed) > ttl+3*time.Second {
			t.Fatalf("dead node's members still listed %v after the kill (TTL %v)", time.Since(killed), ttl)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
