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
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/wsclient"
)

// Fault is a fault of the engine that RunFaults injects while clients
// publish and read: Inject starts it, and Heal, if not nil, ends it Hold
// after Inject returned (a Fault without Heal heals by itself, or not at
// all, within Hold). Inject and Heal are called from the test's goroutine
// and may fail t.
type Fault struct {
	Name   string
	Inject func(t *testing.T)
	Heal   func(t *testing.T)
	Hold   time.Duration
}

// Faults configures RunFaults.
type Faults struct {
	// New returns a node's Broker. Every Broker it returns within one run
	// must reach the same engine, and must also be a wsroom.Store (the
	// node's view of the history), whose rooms keep at least a cell's
	// messages (a few thousand: the default history of 1,000 per room is
	// enough at the default rate). RunFaults calls it three times, and
	// stops using a Broker before it returns, without closing it: New
	// arranges that (t.Cleanup).
	New func(t *testing.T) wsroom.Broker

	// Rooms are the rooms the clients use; nil: four rooms of random
	// names. A Broker that spreads rooms over shards should be given
	// rooms on different shards.
	Rooms []string

	// Faults are the engine faults, one cell each, in order. RunFaults
	// adds a last cell of its own, which kills a server node (see
	// KillNode).
	Faults []Fault

	// Rate is how many messages a second the publishers send in all
	// (default 50), spread over the rooms and the nodes.
	Rate float64
}

// KillNode is the name of the cell of RunFaults that kills a server node.
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

	// Dup counts messages a subscriber received more than once (or that
	// the history holds more than once); Reordered counts messages that
	// came after a later one of the same room and epoch.
	Dup, Reordered int

	// Resynced is the number of subscribers told to resync a room in the
	// cell; Covered the acked messages they missed that the history
	// holds.
	Resynced, Covered int

	// First is the time from the heal (the injection, for KillNode) to
	// the first delivery on every live node; CaughtUp to the moment
	// every subscriber had every acked message published before then.
	First, CaughtUp time.Duration

	// Problems describes every lost, duplicated or reordered message and
	// any other breach of the protocol seen, at most a few of each kind.
	Problems []string
}

// Failed cells: any lost, duplicated or reordered message, a problem, or no
// message acked at all.
func (r FaultResult) failed() bool {
	return r.Lost > 0 || r.Dup > 0 || r.Reordered > 0 || len(r.Problems) > 0 || r.Acked == 0
}

// Timing of a cell: traffic before the fault and after it heals, and the
// bounds of the waits for publishes and deliveries to end.
const (
	faultBefore   = 2 * time.Second
	faultAfter    = 3 * time.Second
	faultPubWait  = 30 * time.Second // a publish's bound
	faultSettle   = 20 * time.Second // the wait for deliveries after the traffic
	faultNodes    = 3
	faultSubs     = 20 // subscribers per node
	faultSubRooms = 2  // rooms per subscriber
)

// RunFaults runs a fault test on three server nodes, each a wsroom.Registry
// on its own Broker from f.New, serving the wsroom.v2 protocol over HTTP:
// 20 subscribers per node (raw protocol clients, each in two of the rooms)
// and a publisher per node (a wsclient.Client, publishing with ids at a
// steady rate in all rooms, retrying with the same id on "unavailable" and
// after reconnecting). A client whose node dies reconnects to another one
// and resumes each room from its last position; a subscriber told to
// resync joins the room again.
//
// Each fault, in turn, is a cell: traffic for a while, the fault (Inject,
// Hold, Heal), traffic for a while after it, then a wait until every
// publish has its answer and every subscriber has caught up. The last cell,
// KillNode, stops the first node abruptly: its listener and every
// connection are closed without a close frame, then its Registry; its
// clients move to the other nodes, which serve to the end.
//
// Per cell and subscriber, every message acked in the cell must reach
// every subscriber of its room once, in sequence order, with the position
// its ack gave; a subscriber told to resync must instead find the messages
// it missed in the history (the Store of the last node). RunFaults fails t
// when a cell has a lost, duplicated or reordered message, or no acked
// message, logs the table of the cells in Markdown, and returns it. It
// does not run in parallel with other tests of t's process that use the
// same rooms.
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
	run := newFaultRun(t, f.New, rooms)
	defer run.stop()

	var results []FaultResult
	cells := append(slices.Clone(f.Faults), Fault{Name: KillNode, Inject: func(*testing.T) { run.nodes[0].kill() }})
	for i, fault := range cells {
		res := run.cell(t, i, fault, rate)
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

// FaultTable returns results as a Markdown table.
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
}

func newFaultNode(t *testing.T, i int, b wsroom.Broker) *faultNode {
	n := &faultNode{i: i, conns: make(map[net.Conn]struct{})}
	n.reg = wsroom.NewRegistry(wsroom.WithBroker(b), wsroom.WithCodec(wsroom.JSON()),
		wsroom.WithSendBuffer(1<<14), wsroom.WithRateLimit(0, 0, wsroom.Throttle))
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
// dropped without a close frame, then the Registry closed.
func (n *faultNode) kill() {
	n.mu.Lock()
	n.dead = true
	n.srv.Listener.Close()
	for c := range n.conns {
		c.Close()
	}
	n.mu.Unlock()
	n.reg.Close()
}

func (n *faultNode) close() {
	n.kill()
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
	rooms []string
	nodes []*faultNode
	store wsroom.Store // the last node's, never killed

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the clients' goroutines

	subs []*faultSub
	pubs []*faultPub
}

func newFaultRun(t *testing.T, newBroker func(*testing.T) wsroom.Broker, rooms []string) *faultRun {
	t.Helper()
	run := &faultRun{rooms: rooms}
	run.ctx, run.cancel = context.WithCancel(context.Background())
	for i := range faultNodes {
		b := newBroker(t)
		if i == faultNodes-1 {
			s, ok := b.(wsroom.Store)
			if !ok {
				t.Fatalf("%T is not a wsroom.Store", b)
			}
			run.store = s
		}
		run.nodes = append(run.nodes, newFaultNode(t, i, b))
	}
	for i := range faultNodes * faultSubs {
		s := &faultSub{run: run, i: i, home: i / faultSubs, more: make(chan struct{}, 1), pos: make(map[string]string)}
		for k := range faultSubRooms {
			s.rooms = append(s.rooms, rooms[(i+k)%len(rooms)])
		}
		s.client = run.httpClient(s.home, i, &s.node)
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
		var node int
		p.hc = run.httpClient(i, i, &node)
		ctx, cancel := context.WithTimeout(t.Context(), muxWait)
		c, err := wsclient.Dial(ctx, "ws://wsroom-nodes/", wsclient.WithHTTPClient(p.hc), wsclient.WithBackoff(50*time.Millisecond, time.Second))
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
// it is alive, else to another live node, recording the node in *node.
// The URL's host is not used.
func (run *faultRun) httpClient(home, i int, node *int) *http.Client {
	var mu sync.Mutex
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var live []*faultNode
			for _, n := range run.nodes {
				if n.alive() {
					live = append(live, n)
				}
			}
			if len(live) == 0 {
				return nil, errors.New("no live node")
			}
			n := live[i%len(live)]
			if run.nodes[home].alive() {
				n = run.nodes[home]
			}
			mu.Lock()
			*node = n.i
			mu.Unlock()
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
	for _, n := range run.nodes {
		n.close()
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
	op    string // "msg", "resync", "joined", "fresh" (a join without resume sent)
	room  string
	epoch string
	seq   uint64
	id    string // the message's publish id
	at    time.Time
	node  int
}

// faultSub is a subscriber: a raw protocol client that reconnects to a
// live node and resumes its rooms.
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
			s.record(faultEvent{op: "resync", room: f.Room})
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
	var mu sync.Mutex
	var recs []*pubRec
	var pubs sync.WaitGroup
	trafficCtx, stopTraffic := context.WithCancel(run.ctx)
	pubCtx, cancelPubs := context.WithTimeout(run.ctx, faultPubWait)
	defer cancelPubs()
	var ticking sync.WaitGroup
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
					ack, err := room.Publish(pubCtx, []byte(fmt.Sprintf(`{"id":%q}`, rec.id)))
					mu.Lock()
					rec.acked, rec.epoch, rec.seq, rec.err = time.Now(), ack.Epoch, ack.Seq, err
					mu.Unlock()
				})
			}
		})
	}

	sleep(run.ctx, faultBefore)
	injected := time.Now()
	fault.Inject(t)
	healed := injected
	if fault.Heal != nil || fault.Hold > 0 {
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
		t.Logf("%s: %d publishes failed, e.g. %v", fault.Name, res.Failed, ackErrs)
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
	run.measure(t, &res, acked, start, injected, healed)
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
func (run *faultRun) measure(t *testing.T, res *FaultResult, acked map[string]map[string]*pubRec, start, injected, healed time.Time) {
	var probs problems

	// The history of every room, for the subscribers that resynced, and
	// to tell whether a duplicate is in the engine.
	history := make(map[string]map[string]int) // room: id: times stored
	for _, r := range run.rooms {
		history[r] = make(map[string]int)
		epochs := make(map[string]bool)
		for _, p := range acked[r] {
			epochs[p.epoch] = true
		}
		for e := range epochs {
			ctx, cancel := context.WithTimeout(run.ctx, muxWait)
			ms, err := run.store.After(ctx, r, e, 0, 0)
			cancel()
			if err != nil {
				probs.add("history", "Store.After(%s, %s:0): %v", r, e, err)
				continue
			}
			for _, m := range ms {
				var d struct {
					ID string `json:"id"`
				}
				json.Unmarshal(m.Data, &d)
				history[r][d.ID]++
			}
		}
		for id, n := range history[r] {
			if _, ok := acked[r][id]; ok && n > 1 {
				probs.add("stored twice", "%s of %s is %d times in the history", id, r, n)
			}
		}
	}

	firstByNode := make(map[int]time.Time)
	live := make(map[int]bool)
	for _, n := range run.nodes {
		if n.alive() {
			live[n.i] = true
		}
	}
	var caughtUp time.Time
	resynced := 0
	for _, s := range run.subs {
		evs := s.snapshot()
		sresync := false
		for _, e := range evs {
			if e.op == "msg" && !e.at.Before(healed) && live[e.node] {
				if f, ok := firstByNode[e.node]; !ok || e.at.Before(f) {
					firstByNode[e.node] = e.at
				}
			}
		}
		for _, r := range s.rooms {
			who := fmt.Sprintf("subscriber %d (node %d) in %s", s.i, s.home, r)
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
					fresh = true
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
						if e.at.After(caughtUp) && p.start.Before(healed) {
							caughtUp = e.at
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
				res.Lost++
				probs.add("lost", "%s: %s acked at %s:%d never came (resynced: %v, in history: %d)", who, id, p.epoch, p.seq, rresync, history[r][id])
			}
		}
		if sresync {
			resynced++
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
	_ = injected
}
