package brokertest

// A fault test of three server nodes on one engine: RunFaults, the clients
// it drives, and how it counts what they got.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/wsclient"
)

// Fault is a fault of the engine that RunFaults injects while clients
// publish and read: Inject starts it, and Heal, if not nil, ends it Hold
// after Inject returned (a Fault without Heal heals by itself, or not at
// all, within Hold). Inject and Heal, each may be nil, are called from the
// test's goroutine and may fail t.
type Fault struct {
	Name   string
	Inject func(t *testing.T)
	Heal   func(t *testing.T)
	Hold   time.Duration

	// KillNode, if set, also kills the server node with the most
	// subscribers halfway through Hold, as the KillNode cell does: a
	// server crash during the engine's fault, while publishes wait on
	// it. The node is replaced by a new one, on a new Broker, once the
	// cell is measured.
	KillNode bool
}

// Faults configures RunFaults.
type Faults struct {
	// New returns a node's Broker. Every Broker it returns within one run
	// must reach the same engine, and must also be a wsroom.Store (the
	// node's view of the history), whose rooms keep at least a cell's
	// messages (a few thousand: the default history of 1,000 per room is
	// enough at the default rate). RunFaults calls it three times, and
	// once more for each node it replaces, and stops using a Broker
	// before it returns, without closing it: New arranges that
	// (t.Cleanup).
	New func(t *testing.T) wsroom.Broker

	// Rooms are the rooms the clients use; nil: four rooms of random
	// names. Each subscriber is in two of them (one if there is one). A
	// Broker that spreads rooms over shards should be given rooms on
	// different shards.
	Rooms []string

	// Faults are the engine faults, one cell each, in order. RunFaults
	// adds a last cell of its own, which kills a server node (see
	// KillNode).
	Faults []Fault

	// Rate is how many messages a second the publishers send in all
	// (default 50), spread over the rooms and the nodes.
	Rate float64

	// Options are added to the options of every node's Registry (a
	// logger, say).
	Options []wsroom.Option
}

// KillNode is the name of the last cell of RunFaults: it kills the server
// node with the most subscribers.
const KillNode = "kill a wsroom node"

// FaultResult is what one cell of RunFaults measured, over every client.
type FaultResult struct {
	Fault string

	// Acked is the number of messages published in the cell and acked.
	// Failed is the number of publishes that got no ack (an error, or
	// no answer within the cell's bound); they are not counted further.
	Acked, Failed int

	// Delivered counts, per subscriber, the acked messages of its rooms
	// it received; Expected is how many it should have (each acked
	// message once per subscriber of its room).
	Delivered, Expected int

	// Lost counts the acked messages a subscriber of their room neither
	// received nor, after a resync, could find in the history.
	Lost int

	// Dup counts the extra copies of acked messages the subscribers
	// received (a message stored twice in the history, as well as one
	// sent twice); Reordered counts acked messages that came after a
	// later one of the same room and epoch.
	Dup, Reordered int

	// Resynced is the number of subscribers told to resync a room in the
	// cell; Covered the acked messages they missed that the history
	// holds.
	Resynced, Covered int

	// First is the time from the heal (the injection, for a Fault
	// without Heal such as KillNode) to the first delivery on every live
	// node with subscribers. CaughtUp is the time from
	// the heal to the moment every subscriber had every acked message of
	// its rooms published before the heal and one published after it.
	First, CaughtUp time.Duration

	// Reconnects counts the subscribers' new connections in the cell,
	// Left the rooms the server let go of (a "left" frame), which they
	// joined again, and PubErrors the errors the publishers recovered
	// from (lost connections, failed handshakes).
	Reconnects, Left, PubErrors int

	// Problems describes every lost, duplicated or reordered message and
	// any other breach of the protocol seen, at most a few of each kind.
	Problems []string
}

// failed reports whether the cell failed: a lost, duplicated or reordered
// message, another problem, or no message acked at all.
func (r FaultResult) failed() bool {
	return r.Lost > 0 || r.Dup > 0 || r.Reordered > 0 || len(r.Problems) > 0 || r.Acked == 0
}

// Timing of a cell: traffic before the fault and after it heals, and the
// bounds of the waits for publishes and deliveries to end.
const (
	faultBefore   = 2 * time.Second
	faultAfter    = 3 * time.Second
	faultPubWait  = 20 * time.Second // a publish's bound
	faultSettle   = 20 * time.Second // the wait for deliveries after the traffic
	faultNodes    = 3
	faultSubs     = 20 // subscribers per node
	faultSubRooms = 2  // rooms per subscriber
)

// RunFaults runs a fault test on three server nodes, each a wsroom.Registry
// on its own Broker from f.New, serving the protocol of PROTOCOL.md over
// HTTP (Registry.MuxHandler): 20 subscribers per node (clients that speak
// the protocol's frames themselves, each in two of the rooms) and a
// publisher per node (a wsclient.Client, publishing with ids at a steady
// rate in all rooms, retrying with the same id on "unavailable" and after
// reconnecting). A client whose node dies reconnects to another one
// and resumes each room from its last position; a subscriber told to
// resync joins the room again.
//
// Each fault, in turn, is a cell: traffic for 2s, the fault (Inject, Hold,
// Heal), traffic for 3s after it, then a wait (at most 20s) until every
// publish has its answer and every subscriber has caught up. The last
// cell, KillNode, stops the node with the most subscribers abruptly: its
// listener and every connection are closed without a close frame, then its
// Registry; its clients move to the other nodes. A killed node is replaced
// by a new one, on a new Broker, once its cell is measured; the clients
// that moved stay where they are.
//
// Per cell and subscriber, every message acked in the cell must reach
// every subscriber of its room once, in sequence order, with the position
// its ack gave; a subscriber told to resync must instead find the messages
// it missed in the history (the Store of the first Broker). RunFaults
// fails t when a cell has a lost, duplicated or reordered message, a
// message stored twice, or no acked message; it logs the table of the
// cells (see FaultTable) and returns the results. Each cell takes the
// fault's Hold and about 10s more.
func RunFaults(t *testing.T, f Faults) []FaultResult {
	t.Helper()
	rooms := f.Rooms
	if len(rooms) == 0 {
		id := roomID()
		for i := range 4 {
			rooms = append(rooms, fmt.Sprintf("faults-%s-%d", id, i))
		}
	}
	rate := f.Rate
	if rate <= 0 {
		rate = 50
	}
	run := newFaultRun(t, f.New, f.Options, rooms)
	defer run.stop()

	var results []FaultResult
	cells := append(slices.Clone(f.Faults), Fault{Name: KillNode, KillNode: true})
	for i, fault := range cells {
		res := run.cell(t, i, fault, rate)
		run.replaceDead(t)
		results = append(results, res)
		for _, p := range res.Problems {
			t.Errorf("%s: %s", fault.Name, p)
		}
		if res.failed() {
			t.Errorf("%s: %d acked, %d lost, %d duplicated, %d reordered", fault.Name, res.Acked, res.Lost, res.Dup, res.Reordered)
		}
	}
	t.Log("\n" + FaultTable(results))
	return results
}

// FaultTable returns results as a Markdown table: per cell, the messages
// acked (and the publishes that failed), delivered out of those expected
// (and those a resynced subscriber found in the history), lost,
// duplicated, reordered, the subscribers resynced, and the recovery times
// (First and CaughtUp).
func FaultTable(results []FaultResult) string {
	var b strings.Builder
	b.WriteString("| fault | acked | delivered | lost | dup | reordered | resynced | recovery |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		delivered := fmt.Sprintf("%d/%d", r.Delivered, r.Expected)
		if r.Covered > 0 {
			delivered += fmt.Sprintf(" (+%d in history)", r.Covered)
		}
		acked := fmt.Sprint(r.Acked)
		if r.Failed > 0 {
			acked += fmt.Sprintf(" (%d failed)", r.Failed)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %d | %d | %d | first %s, all %s |\n", r.Fault, acked, delivered,
			r.Lost, r.Dup, r.Reordered, r.Resynced, r.First.Round(10*time.Millisecond), r.CaughtUp.Round(10*time.Millisecond))
	}
	return b.String()
}

// faultNode is a server node of RunFaults, whose connections it tracks so
// that it can drop them all at once.
type faultNode struct {
	i   int
	reg *wsroom.Registry
	srv *httptest.Server

	mu    sync.Mutex
	dead  bool
	conns map[net.Conn]struct{}

	closeReg sync.Once
	closing  sync.WaitGroup // the Registry's Close, under way after kill
}

func newFaultNode(t *testing.T, i int, b wsroom.Broker, opts []wsroom.Option) *faultNode {
	n := &faultNode{i: i, conns: make(map[net.Conn]struct{})}
	n.reg = wsroom.NewRegistry(append([]wsroom.Option{wsroom.WithBroker(b), wsroom.WithCodec(wsroom.JSON()),
		wsroom.WithSendBuffer(1 << 14), wsroom.WithRateLimit(0, 0, wsroom.Throttle)}, opts...)...)
	n.srv = httptest.NewUnstartedServer(n.reg.MuxHandler())
	n.srv.Listener = &trackListener{Listener: n.srv.Listener, n: n}
	n.srv.Start()
	t.Cleanup(n.close)
	return n
}

func (n *faultNode) addr() string { return n.srv.Listener.Addr().String() }

func (n *faultNode) alive() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.dead
}

// kill stops the node as a crash would: no new connection, every open one
// dropped without a close frame; then the Registry closes in the
// background (it may wait for the engine), so that the node's rooms stop.
func (n *faultNode) kill() {
	n.mu.Lock()
	n.dead = true
	n.srv.Listener.Close()
	for c := range n.conns {
		c.Close()
	}
	n.mu.Unlock()
	n.closeReg.Do(func() { n.closing.Go(func() { n.reg.Close() }) })
}

// close kills the node and waits for its Registry and server to end.
func (n *faultNode) close() {
	n.kill()
	n.closing.Wait()
	n.srv.Close()
}

// trackListener records the connections it accepts in its node.
type trackListener struct {
	net.Listener
	n *faultNode
}

func (l *trackListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.n.mu.Lock()
	defer l.n.mu.Unlock()
	if l.n.dead {
		c.Close()
		return c, nil // the server's read fails at once
	}
	l.n.conns[c] = struct{}{}
	return c, nil
}

// faultRun is the nodes and clients of one RunFaults.
type faultRun struct {
	rooms     []string
	newBroker func(*testing.T) wsroom.Broker
	opts      []wsroom.Option
	store     wsroom.Store // the first Broker's; it is never closed before the end

	mu    sync.Mutex
	nodes []*faultNode // the current node of each place
	dead  []*faultNode // nodes killed, closed at the end

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the clients' goroutines

	subs      []*faultSub
	pubs      []*faultPub
	pubErrors atomic.Int64 // errors the publishers recovered from
}

func newFaultRun(t *testing.T, newBroker func(*testing.T) wsroom.Broker, opts []wsroom.Option, rooms []string) *faultRun {
	t.Helper()
	run := &faultRun{rooms: rooms, newBroker: newBroker, opts: opts}
	run.ctx, run.cancel = context.WithCancel(context.Background())
	for i := range faultNodes {
		b := newBroker(t)
		s, ok := b.(wsroom.Store)
		if !ok {
			t.Fatalf("%T is not a wsroom.Store", b)
		}
		if i == 0 {
			run.store = s
		}
		run.nodes = append(run.nodes, newFaultNode(t, i, b, opts))
	}
	for i := range faultNodes * faultSubs {
		s := &faultSub{run: run, i: i, home: i / faultSubs, more: make(chan struct{}, 1), pos: make(map[string]string)}
		for k := range min(faultSubRooms, len(rooms)) {
			s.rooms = append(s.rooms, rooms[(i+k)%len(rooms)])
		}
		s.client = run.httpClient(s.home, i, func(n int) {
			s.mu.Lock()
			s.node = n
			s.mu.Unlock()
		})
		run.subs = append(run.subs, s)
		run.wg.Go(s.loop)
	}
	// Every subscriber is in its rooms before any traffic.
	deadline := time.Now().Add(muxWait)
	for _, s := range run.subs {
		for !s.joinedAll() {
			if time.Now().After(deadline) {
				run.stop()
				t.Fatalf("subscriber %d did not join its rooms within %v", s.i, muxWait)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for i := range faultNodes {
		p := &faultPub{i: i}
		p.hc = run.httpClient(i, i, nil)
		ctx, cancel := context.WithTimeout(t.Context(), muxWait)
		c, err := wsclient.Dial(ctx, "ws://wsroom-nodes/", wsclient.WithHTTPClient(p.hc),
			wsclient.WithBackoff(50*time.Millisecond, time.Second), wsclient.WithOnError(func(error) { run.pubErrors.Add(1) }))
		cancel()
		if err != nil {
			run.stop()
			t.Fatalf("publisher %d: Dial error: %v", i, err)
		}
		p.c = c
		run.pubs = append(run.pubs, p)
		for _, r := range rooms {
			ctx, cancel := context.WithTimeout(t.Context(), muxWait)
			room, err := c.Join(ctx, r)
			cancel()
			if err != nil {
				run.stop()
				t.Fatalf("publisher %d: Join(%s) error: %v", i, r, err)
			}
			p.rooms = append(p.rooms, room)
			if lim, ok := c.Limits(); ok && i == 0 && len(p.rooms) == 1 {
				t.Logf("the nodes' ackScope: %q", lim.AckScope)
			}
			// The publisher reads its rooms, so that they never fall
			// behind; what it reads is not checked.
			run.wg.Go(func() {
				for {
					if _, err := room.Next(run.ctx); err != nil {
						var rs *wsclient.ResyncError
						if !errors.As(err, &rs) {
							return
						}
					}
				}
			})
		}
	}
	return run
}

// httpClient returns an HTTP client whose connections go to node home while
// it is alive, else to another live node, telling dialed, if not nil,
// which. The URL's host is not used.
func (run *faultRun) httpClient(home, i int, dialed func(node int)) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var live []*faultNode
			for _, n := range run.current() {
				if n.alive() {
					live = append(live, n)
				}
			}
			if len(live) == 0 {
				return nil, errors.New("no live node")
			}
			n := live[i%len(live)]
			if h := run.current()[home]; h.alive() {
				n = h
			}
			if dialed != nil {
				dialed(n.i)
			}
			var d net.Dialer
			return d.DialContext(ctx, network, n.addr())
		},
		DisableKeepAlives: true,
	}
	return &http.Client{Transport: tr}
}

// stop ends every client, then every node.
func (run *faultRun) stop() {
	run.cancel()
	for _, p := range run.pubs {
		p.c.Close()
	}
	for _, s := range run.subs {
		s.closeConn()
	}
	run.wg.Wait()
	for _, n := range append(run.current(), run.dead...) {
		n.close()
	}
}

// current returns the current nodes.
func (run *faultRun) current() []*faultNode {
	run.mu.Lock()
	defer run.mu.Unlock()
	return slices.Clone(run.nodes)
}

// kill kills the live node with the most subscribers connected.
func (run *faultRun) kill() *faultNode {
	count := make(map[int]int)
	for _, s := range run.subs {
		s.mu.Lock()
		count[s.node]++
		s.mu.Unlock()
	}
	var victim *faultNode
	for _, n := range run.current() {
		if n.alive() && (victim == nil || count[n.i] > count[victim.i]) {
			victim = n
		}
	}
	victim.kill()
	return victim
}

// replaceDead puts a new node, on a new Broker, in the place of each dead
// one.
func (run *faultRun) replaceDead(t *testing.T) {
	for i, n := range run.current() {
		if n.alive() {
			continue
		}
		fresh := newFaultNode(t, i, run.newBroker(t), run.opts)
		run.mu.Lock()
		run.nodes[i] = fresh
		run.dead = append(run.dead, n)
		run.mu.Unlock()
	}
}

// faultPub is a publisher: a wsclient.Client in every room.
type faultPub struct {
	i     int
	hc    *http.Client
	c     *wsclient.Client
	rooms []*wsclient.Room
}

// pubRec is one publish of a cell.
type pubRec struct {
	room, id     string
	start, acked time.Time
	epoch        string
	seq          uint64
	err          error
}

// faultEvent is what a subscriber read: a message, a resync, or a
// (re)join's answer.
type faultEvent struct {
	op    string // "msg", "resync" (with the position to resume from, if any), "left", "joined", "fresh" (a join without resume sent), "conn" (a new connection)
	room  string
	epoch string
	seq   uint64
	id    string // the message's publish id
	at    time.Time
	node  int
}

// faultSub is a subscriber: a client of the protocol's frames, which
// reconnects to a live node and resumes its rooms.
type faultSub struct {
	run    *faultRun
	i      int
	home   int
	rooms  []string
	client *http.Client
	more   chan struct{}

	mu       sync.Mutex
	node     int // of the current connection
	conn     *websocket.Conn
	events   []faultEvent
	pos      map[string]string // room: the resume position, "" for none
	joined   map[string]bool   // on the current connection
	everJoin map[string]bool
}

func (s *faultSub) joinedAll() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.rooms {
		if !s.everJoin[r] {
			return false
		}
	}
	return true
}

func (s *faultSub) closeConn() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		s.conn.CloseNow()
	}
}

func (s *faultSub) snapshot() []faultEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.events)
}

// loop connects, joins and reads until the run ends, reconnecting after a
// lost connection.
func (s *faultSub) loop() {
	ctx := s.run.ctx
	for ctx.Err() == nil {
		s.serve(ctx)
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *faultSub) record(e faultEvent) {
	s.mu.Lock()
	e.at, e.node = time.Now(), s.node
	s.events = append(s.events, e)
	s.mu.Unlock()
	select {
	case s.more <- struct{}{}:
	default:
	}
}

// join sends a join of room, with its resume position when it has one.
func (s *faultSub) join(ctx context.Context, conn *websocket.Conn, room string) {
	s.mu.Lock()
	p := s.pos[room]
	s.mu.Unlock()
	req := fmt.Sprintf(`{"op":"join","room":%q,"id":"join-%s"}`, room, room)
	if p != "" {
		req = fmt.Sprintf(`{"op":"join","room":%q,"id":"join-%s","resume":%q}`, room, room, p)
	} else {
		s.record(faultEvent{op: "fresh", room: room})
	}
	wctx, cancel := context.WithTimeout(ctx, muxWait)
	defer cancel()
	if err := conn.Write(wctx, websocket.MessageText, []byte(req)); err != nil {
		conn.CloseNow()
	}
}

// serve runs one connection.
func (s *faultSub) serve(ctx context.Context) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	conn, _, err := websocket.Dial(dctx, "ws://wsroom-nodes/", &websocket.DialOptions{HTTPClient: s.client, Subprotocols: []string{wsroom.Subprotocol}})
	cancel()
	if err != nil {
		return
	}
	conn.SetReadLimit(-1)
	s.mu.Lock()
	if ctx.Err() != nil {
		s.mu.Unlock()
		conn.CloseNow()
		return
	}
	s.conn = conn
	s.joined = make(map[string]bool)
	if s.everJoin == nil {
		s.everJoin = make(map[string]bool)
	}
	s.mu.Unlock()
	s.record(faultEvent{op: "conn"})
	defer conn.CloseNow()

	var timers sync.WaitGroup // joins retried after "unavailable"
	defer timers.Wait()
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	for _, r := range s.rooms {
		s.join(cctx, conn, r)
	}
	for {
		_, b, err := conn.Read(cctx)
		if err != nil {
			return
		}
		var f muxFrame
		if json.Unmarshal(b, &f) != nil {
			continue
		}
		switch {
		case f.Op == "msg" && f.Seq > 0:
			var d struct {
				ID string `json:"id"`
			}
			json.Unmarshal(f.Data, &d)
			s.mu.Lock()
			s.pos[f.Room] = fmt.Sprintf("%s:%d", f.Epoch, f.Seq)
			s.mu.Unlock()
			s.record(faultEvent{op: "msg", room: f.Room, epoch: f.Epoch, seq: f.Seq, id: d.ID})
		case f.Op == "joined":
			s.mu.Lock()
			if s.pos[f.Room] == "" {
				// Joined without resume: the position is joined's.
				s.pos[f.Room] = fmt.Sprintf("%s:%d", f.Epoch, f.Seq)
			}
			s.joined[f.Room], s.everJoin[f.Room] = true, true
			s.mu.Unlock()
			s.record(faultEvent{op: "joined", room: f.Room, epoch: f.Epoch, seq: f.Seq})
		case f.Op == "resync" || f.Op == "error" && f.Code == "resync":
			// Join again: from the start of the new epoch when the server
			// names it, else afresh.
			s.mu.Lock()
			s.pos[f.Room] = f.Resume
			s.joined[f.Room] = false
			s.mu.Unlock()
			e := faultEvent{op: "resync", room: f.Room}
			if i := strings.LastIndexByte(f.Resume, ':'); i > 0 {
				e.epoch = f.Resume[:i]
				e.seq, _ = strconv.ParseUint(f.Resume[i+1:], 10, 64)
			}
			s.record(e)
			s.join(cctx, conn, f.Room)
		case f.Op == "left":
			// The server let the room go (it closed, say): join again
			// from the last position.
			s.mu.Lock()
			s.joined[f.Room] = false
			s.mu.Unlock()
			s.record(faultEvent{op: "left", room: f.Room})
			s.join(cctx, conn, f.Room)
		case f.Op == "error" && strings.HasPrefix(f.ID, "join-"):
			// "unavailable" or "internal": join again a little later.
			room := f.Room
			timers.Go(func() {
				select {
				case <-cctx.Done():
				case <-time.After(200 * time.Millisecond):
					s.join(cctx, conn, room)
				}
			})
		}
	}
}

// cell runs one fault with traffic around it and measures it.
func (run *faultRun) cell(t *testing.T, i int, fault Fault, rate float64) FaultResult {
	t.Helper()
	res := FaultResult{Fault: fault.Name}
	start := time.Now()
	pubErrors := run.pubErrors.Load()
	var mu sync.Mutex
	var recs []*pubRec
	// The publishers' goroutines end with the cell, even if a fault fails
	// t: publishes stop once cellCtx is done.
	var pubs, ticking sync.WaitGroup
	cellCtx, endCell := context.WithCancel(run.ctx)
	defer func() {
		endCell()
		ticking.Wait()
		pubs.Wait()
	}()
	trafficCtx, stopTraffic := context.WithCancel(cellCtx)
	for _, p := range run.pubs {
		ticking.Go(func() {
			tick := time.NewTicker(time.Duration(float64(time.Second) * float64(len(run.pubs)) / rate))
			defer tick.Stop()
			for n := 0; ; n++ {
				select {
				case <-trafficCtx.Done():
					return
				case <-tick.C:
				}
				room := p.rooms[(n+p.i)%len(p.rooms)]
				rec := &pubRec{room: room.Name(), id: fmt.Sprintf("c%d-p%d-%d", i, p.i, n), start: time.Now()}
				mu.Lock()
				recs = append(recs, rec)
				mu.Unlock()
				pubs.Go(func() {
					ctx, cancel := context.WithTimeout(cellCtx, faultPubWait)
					defer cancel()
					ack, err := room.Publish(ctx, []byte(fmt.Sprintf(`{"id":%q}`, rec.id)))
					mu.Lock()
					rec.acked, rec.epoch, rec.seq, rec.err = time.Now(), ack.Epoch, ack.Seq, err
					mu.Unlock()
				})
			}
		})
	}

	sleep(run.ctx, faultBefore)
	injected := time.Now()
	if fault.Inject != nil {
		fault.Inject(t)
	}
	healed := injected
	if fault.KillNode {
		// Halfway through the fault, so that publishes wait on the node.
		sleep(run.ctx, fault.Hold/2)
		n := run.kill()
		t.Logf("%s: killed node %d %v after the injection", fault.Name, n.i, time.Since(injected).Round(time.Millisecond))
		sleep(run.ctx, fault.Hold-fault.Hold/2)
	} else {
		sleep(run.ctx, fault.Hold)
	}
	if fault.Heal != nil {
		fault.Heal(t)
		healed = time.Now()
	}
	sleep(run.ctx, faultAfter)
	stopTraffic()
	ticking.Wait()
	pubs.Wait()
	t.Logf("%s: injected %.1fs after the cell began, healed %.1fs later", fault.Name, injected.Sub(start).Seconds(), healed.Sub(injected).Seconds())

	// The acked publishes, per room.
	mu.Lock()
	acked := make(map[string]map[string]*pubRec) // room: id: publish
	var ackErrs []string
	for _, r := range recs {
		if r.err != nil {
			res.Failed++
			if len(ackErrs) < 3 {
				ackErrs = append(ackErrs, fmt.Sprintf("%s: %v", r.id, r.err))
			}
			continue
		}
		res.Acked++
		if acked[r.room] == nil {
			acked[r.room] = make(map[string]*pubRec)
		}
		acked[r.room][r.id] = r
	}
	mu.Unlock()
	if res.Failed > 0 {
		t.Logf("%s: publishes failed: %v", fault.Name, ackErrs)
	}

	// Wait until every subscriber has every acked message of its rooms,
	// or has resynced past them.
	deadline := time.Now().Add(faultSettle)
	for _, s := range run.subs {
		for !s.caughtUp(acked, start) && time.Now().Before(deadline) {
			select {
			case <-s.more:
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	time.Sleep(100 * time.Millisecond) // let a duplicate, if any, arrive
	run.measure(&res, acked, start, healed)
	res.PubErrors = int(run.pubErrors.Load() - pubErrors)
	t.Logf("%s: %d publishes failed, %d subscriber connections made, %d rooms left by the server, %d publisher errors recovered from, %d messages of %d missed by resynced subscribers found in the history",
		fault.Name, res.Failed, res.Reconnects, res.Left, res.PubErrors, res.Covered, res.Expected)
	return res
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// caughtUp reports whether s has every message of acked in its rooms, or
// has resynced since start and is past the last of them.
func (s *faultSub) caughtUp(acked map[string]map[string]*pubRec, start time.Time) bool {
	evs := s.snapshot()
	for _, r := range s.rooms {
		got := make(map[string]bool)
		resynced := false
		var last faultEvent
		for _, e := range evs {
			if e.room != r {
				continue
			}
			switch {
			case e.op == "msg":
				got[e.id] = true
				last = e
			case e.op == "resync" && !e.at.Before(start):
				resynced = true
			}
		}
		for id, p := range acked[r] {
			if !got[id] && !(resynced && last.epoch == p.epoch && last.seq >= p.seq) {
				return false
			}
		}
	}
	return true
}

// problems collects at most a few descriptions of each kind.
type problems struct {
	kinds map[string]int
	list  []string
}

func (p *problems) add(kind, format string, args ...any) {
	if p.kinds == nil {
		p.kinds = make(map[string]int)
	}
	p.kinds[kind]++
	if p.kinds[kind] <= 5 {
		p.list = append(p.list, fmt.Sprintf(kind+": "+format, args...))
	}
}

// measure fills res from what the subscribers read.
func (run *faultRun) measure(res *FaultResult, acked map[string]map[string]*pubRec, start, healed time.Time) {
	var probs problems

	// The history of every room, for the subscribers that resynced, and
	// to tell whether a duplicate is in the engine.
	// Each epoch is read from just before the cell's first acked message.
	history := make(map[string]map[string]int)  // room: id: times stored
	copies := make(map[string][]wsroom.Message) // id: each copy
	histErr := make(map[string]error)           // room: why its history could not be read
	for _, r := range run.rooms {
		history[r] = make(map[string]int)
		from := make(map[string]uint64) // epoch: the first seq acked
		for _, p := range acked[r] {
			if f, ok := from[p.epoch]; !ok || p.seq < f {
				from[p.epoch] = p.seq
			}
		}
		for e, seq := range from {
			ctx, cancel := context.WithTimeout(run.ctx, muxWait)
			ms, err := run.store.After(ctx, r, e, max(seq, 1)-1, 0)
			cancel()
			if err != nil {
				histErr[r] = fmt.Errorf("Store.After(%s, %s:%d): %w", r, e, max(seq, 1)-1, err)
				continue
			}
			for _, m := range ms {
				var d struct {
					ID string `json:"id"`
				}
				json.Unmarshal(m.Data, &d)
				history[r][d.ID]++
				copies[d.ID] = append(copies[d.ID], m)
			}
		}
		for id, n := range history[r] {
			if _, ok := acked[r][id]; ok && n > 1 {
				var at []string
				from := make(map[string]bool)
				for _, m := range copies[id] {
					at = append(at, fmt.Sprintf("%d (from %s)", m.Seq, m.From))
					from[m.From] = true
				}
				why := "one connection published it more than once: a node retried it"
				if len(from) > 1 {
					why = "several connections published it: a client retried it on another node"
				}
				probs.add("stored twice", "%s of %s is %d times in the history, at seq %s; acked at %d; %s", id, r, n,
					strings.Join(at, ", "), acked[r][id].seq, why)
			}
		}
	}

	// The live nodes with subscribers now.
	firstByNode := make(map[int]time.Time)
	live := make(map[int]bool)
	nodes := run.current()
	for _, s := range run.subs {
		s.mu.Lock()
		if nodes[s.node].alive() {
			live[s.node] = true
		}
		s.mu.Unlock()
	}
	var caughtUp time.Time
	resynced := 0
	for _, s := range run.subs {
		evs := s.snapshot()
		sresync := false
		// When s had every message published before the heal, and when
		// it got the first one published after it.
		var old, next time.Time
		for _, e := range evs {
			switch {
			case e.at.Before(start):
			case e.op == "conn":
				res.Reconnects++
			case e.op == "left":
				res.Left++
			}
			if e.op == "msg" && !e.at.Before(healed) && live[e.node] {
				if f, ok := firstByNode[e.node]; !ok || e.at.Before(f) {
					firstByNode[e.node] = e.at
				}
			}
		}
		for _, r := range s.rooms {
			who := fmt.Sprintf("subscriber %d (of node %d) in %s", s.i, s.home, r)
			count := make(map[string]int)
			var prev faultEvent // the last message of the current segment
			fresh := true       // a join without resume was sent: a new segment
			rresync := false
			for _, e := range evs {
				if e.room != r {
					continue
				}
				switch e.op {
				case "fresh":
					fresh = true
				case "resync":
					if !e.at.Before(start) {
						rresync = true
					}
					// The messages that follow start after the position
					// the server gave, or after a new join's.
					prev, fresh = faultEvent{epoch: e.epoch, seq: e.seq}, e.epoch == ""
				case "joined":
					if fresh {
						prev = faultEvent{epoch: e.epoch, seq: e.seq}
						fresh = false
					}
				case "msg":
					count[e.id]++
					p, mine := acked[r][e.id]
					if mine && count[e.id] == 1 {
						res.Delivered++
						if e.epoch != p.epoch || e.seq != p.seq {
							probs.add("wrong position", "%s got %s at %s:%d, acked at %s:%d", who, e.id, e.epoch, e.seq, p.epoch, p.seq)
						}
						switch {
						case p.start.Before(healed):
							if e.at.After(old) {
								old = e.at
							}
						case next.IsZero() || e.at.Before(next):
							next = e.at
						}
					}
					if mine && count[e.id] >= 2 {
						res.Dup++
						probs.add("duplicate", "%s got %s twice (at %s:%d the second time, node %d)", who, e.id, e.epoch, e.seq, e.node)
					}
					switch {
					case prev.epoch != "" && e.epoch != prev.epoch:
						if mine {
							probs.add("epoch change", "%s got %s at %s:%d after %s:%d, with no resync", who, e.id, e.epoch, e.seq, prev.epoch, prev.seq)
						}
					case e.seq <= prev.seq && mine && count[e.id] == 1:
						res.Reordered++
						probs.add("reordered", "%s got %s at %s:%d after seq %d", who, e.id, e.epoch, e.seq, prev.seq)
					}
					if e.epoch != prev.epoch || e.seq > prev.seq {
						prev = e
					}
				}
			}
			if rresync {
				sresync = true
			}
			for id, p := range acked[r] {
				res.Expected++
				if count[id] > 0 {
					continue
				}
				if rresync && history[r][id] > 0 {
					res.Covered++
					continue
				}
				if rresync && histErr[r] != nil {
					probs.add("history", "%s: %v", who, histErr[r])
				}
				res.Lost++
				probs.add("lost", "%s: %s acked at %s:%d never came (resynced: %v, in history: %d)", who, id, p.epoch, p.seq, rresync, history[r][id])
			}
		}
		if sresync {
			resynced++
		}
		if next.After(old) {
			old = next
		}
		if old.After(caughtUp) {
			caughtUp = old
		}
	}
	res.Resynced = resynced
	for n := range live {
		f, ok := firstByNode[n]
		if !ok {
			probs.add("no delivery", "no subscriber on node %d got a message after the heal", n)
			continue
		}
		res.First = max(res.First, f.Sub(healed))
	}
	if caughtUp.After(healed) {
		res.CaughtUp = caughtUp.Sub(healed)
	}
	for k, n := range probs.kinds {
		if n > 5 {
			probs.list = append(probs.list, fmt.Sprintf("%s: %d more", k, n-5))
		}
	}
	res.Problems = probs.list
}
