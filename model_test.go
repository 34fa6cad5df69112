package wsroom_test

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
	"pgregory.net/rapid"
)

// TestModel drives a Registry over real sockets with random interleavings
// of client and server actions, and checks what every client read against
// a model: per room, the sequence of accepted messages. That sequence is
// the room's history in the MemoryStore (nothing is trimmed in a run),
// itself checked against what the model published (checkStore); the model
// keeps, per client, the requests waiting for a reply and, per connection
// and room, the next message it must get.
//
// Each run draws the options that change delivery (compression, slow
// policy, codec, a small send buffer, history), 2 or 3 rooms, 2 or 3
// clients of many rooms (MuxHandler, the protocol of PROTOCOL.md) and 0 or
// 1 client of one room (Registry.Handler, the README's resume protocol),
// then a sequence of actions; after each action it waits until every
// client has read what it should (event by event, up to 10 s) and checks
// the invariants written next to checkMux, checkOne and checkStore
// (model_check_test.go).
//
// The default run is modelChecks runs of about 30 actions (rapid's
// -rapid.steps). More seeds:
//
//	go test -race -run 'TestModel$' -rapid.checks=500 .
//	go test -race -run 'TestModel$' -rapid.checks=200 -rapid.steps=100 .
//
// A failure prints the seed, a fail file under testdata/rapid/TestModel and
// the shrunk run: the options drawn and one log line per action. Replay it
// with the -rapid.failfile=... or -rapid.seed=... that rapid prints (-v
// shows the trace of a passing run too). Some failures depend on timing on
// the server (a race between a join and a publish): rapid then reports a
// "flaky test", and its "Failed test output" is a replay that passed; the
// message of the first failure ("Original traceback (...)") carries the
// trace of the run that failed. Run the seed again a few times, or with
// more -rapid.checks.
//
// WSROOM_MODEL fixes options that are otherwise drawn (see option) and
// leaves actions out, e.g. WSROOM_MODEL=compression=false,skip=busyJoin+slow
// to look past a known failure; a seed replays the same run only with the
// same WSROOM_MODEL.
func TestModel(t *testing.T) {
	defer setDefault("rapid.checks", "RAPID_CHECKS", strconv.Itoa(modelChecks))()
	defer setDefault("rapid.shrinktime", "RAPID_SHRINKTIME", modelShrinkTime.String())()
	rapid.Check(t, runModel)
}

// modelChecks is how many runs TestModel makes, and modelShrinkTime how long
// it shrinks a failure, unless -rapid.checks and -rapid.shrinktime (or
// RAPID_CHECKS and RAPID_SHRINKTIME) say. 20 runs take 5 to 15 s with -race
// on 2 busy cores.
const (
	modelChecks     = 20
	modelShrinkTime = 20 * time.Second
)

// setDefault sets the flag called name to value unless the command line or
// the environment variable env set it, until the returned function is
// called.
func setDefault(name, env, value string) (restore func()) {
	if flagSet(name) || os.Getenv(env) != "" {
		return func() {}
	}
	f := flag.Lookup(name)
	old := f.Value.String()
	f.Value.Set(value)
	return func() { f.Value.Set(old) }
}

// maxBurst bounds the room messages that can reach one client at once: the
// publishes racing a join, the pubs sent during an outage (released when
// it ends). It is below the smallest send buffer drawn (6), so that a
// client that always reads never overflows its queue with room messages:
// if it is closed 1008 or loses a message, replies filled its queue.
const maxBurst = 4

func flagSet(name string) (set bool) {
	flag.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}

// position is a place in a room's history, as a client keeps it.
type position struct {
	epoch string
	seq   uint64
}

// pub is one message a client or server code published, and what became
// of it. Its data is unique (it holds a token), so the store tells whether
// and where it was stored; a retry sends the same id and data.
type pub struct {
	who   string // "m0", or "server"
	id    string // "" for a pub without id
	room  string
	data  []byte
	acked bool
	ack   *position // the first ack's position, when it had one
	// Server code's publish returned nil (must be stored once) or an error
	// (must never be).
	ok, refused bool
}

// request is a request of a client of many rooms that waits for its reply.
type request struct {
	op, room string
	resume   *position // join with resume (epoch "" for ":0")
	last     int       // join with last
	pub      *pub
}

// episode is a membership of one connection in one room, from joined to
// left: the next numbered message it must get.
type episode struct {
	next uint64
}

// muxClient is a client of many rooms across its connections; it has an
// identity ("?who=m0"), so that its retries are recognised after a
// reconnect.
type muxClient struct {
	name  string
	conns []*muxConn          // every connection, the last one current
	in    map[string]bool     // rooms it is in (joined or joining)
	pos   map[string]position // the last position per room, for resume
	pubs  []*pub              // its pubs with an id, for retries
	reqs  int
}

// muxConn is one connection of a muxClient.
type muxConn struct {
	*wsConn
	client  *muxClient
	waiting map[string][]*request // by id
	noID    []*pub                // its pubs without id not stored yet
	rooms   map[string]*episode   // rooms it is in, from joined to left
}

// oneClient is a client of one room (Registry.Handler) across its
// connections.
type oneClient struct {
	name  string
	room  string
	conns []*oneConn // every connection, the last one current
	pos   *position  // the last message it got
}

type oneConn struct {
	*wsConn
	next uint64 // the next numbered message it must get
}

// model is one run: the server, its clients, and what was published.
type model struct {
	reg    *wsroom.Registry
	store  *wsroom.MemoryStore
	broker *outageBroker
	srv    *httptest.Server
	url    string
	hc     *http.Client

	compress   websocket.CompressionMode
	policy     wsroom.SlowPolicy
	jsonCodec  bool
	events     bool // WithEvents: the log is checked after Shutdown
	sendBuffer int  // 0: the default
	histN      int  // WithHistory

	rooms  []string
	muxes  []*muxClient
	ones   []*oneClient
	pubs   []*pub // every publish, of clients and server code
	known  map[string]*pub
	tokens int
	outage bool
	outPub int    // new pubs sent during the outage
	ending string // the end: "shutdown" or the name of the room closed

	trace []string // what m.logf logged, for a failure's message

	gapsMux uint64            // numbered messages connections of many rooms did not get
	gapsOne map[string]uint64 // per room, those connections of one room did not get
}

// outageBroker is a LocalBroker that can be switched into an outage, in
// which every publish fails, and back.
type outageBroker struct {
	*wsroom.LocalBroker
	down atomic.Bool
}

var errOutage = errors.New("model: engine unreachable")

func (b *outageBroker) Publish(ctx context.Context, room string, m wsroom.Message) error {
	_, err := b.PublishSeq(ctx, room, m)
	return err
}

func (b *outageBroker) PublishSeq(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	if b.down.Load() {
		return wsroom.Message{}, errOutage
	}
	return b.LocalBroker.PublishSeq(ctx, room, m)
}

// option draws one of values for the option called name, or takes the one
// WSROOM_MODEL names: "compression=false,policy=0,json=true,buffer=0" (the
// policy by number: 0 CloseSlow, 1 DropOldest, 2 DropNewest). A fixed
// option keeps the runs off a known failure, to look for others; a seed
// replays the same run only with the same WSROOM_MODEL.
func option[V comparable](t *rapid.T, name string, values []V) V {
	for _, kv := range strings.Split(os.Getenv("WSROOM_MODEL"), ",") {
		k, v, _ := strings.Cut(kv, "=")
		if k != name {
			continue
		}
		for _, x := range values {
			if fmt.Sprint(x) == v {
				return rapid.Just(x).Draw(t, name)
			}
		}
		t.Fatalf("WSROOM_MODEL: %s=%s is not one of %v", k, v, values)
	}
	return rapid.SampledFrom(values).Draw(t, name)
}

var policyNames = map[wsroom.SlowPolicy]string{wsroom.CloseSlow: "CloseSlow", wsroom.DropOldest: "DropOldest", wsroom.DropNewest: "DropNewest"}

func runModel(t *rapid.T) {
	before := ours()
	m := &model{known: make(map[string]*pub), gapsOne: make(map[string]uint64)}
	if option(t, "compression", []bool{false, true}) {
		m.compress = websocket.CompressionContextTakeover
	}
	m.policy = option(t, "policy", []wsroom.SlowPolicy{wsroom.CloseSlow, wsroom.DropOldest, wsroom.DropNewest})
	m.jsonCodec = option(t, "json", []bool{false, true})
	m.events = option(t, "events", []bool{false, true})
	m.sendBuffer = option(t, "buffer", []int{0, 6, 8})
	m.histN = rapid.SampledFrom([]int{0, 3}).Draw(t, "history")
	for i := range rapid.IntRange(2, 3).Draw(t, "rooms") {
		m.rooms = append(m.rooms, fmt.Sprintf("r%d", i))
	}
	for i := range rapid.IntRange(2, 3).Draw(t, "mux clients") {
		m.muxes = append(m.muxes, &muxClient{name: fmt.Sprintf("m%d", i), in: map[string]bool{}, pos: map[string]position{}})
	}
	if rapid.Bool().Draw(t, "one-room client") {
		m.ones = append(m.ones, &oneClient{name: "o0", room: rapid.SampledFrom(m.rooms).Draw(t, "its room")})
	}
	m.logf(t, "options: compression %v, %s, codec %s, send buffer %d, history %d; rooms %v, %d mux clients, %d one-room clients",
		m.compress != websocket.CompressionDisabled, policyNames[m.policy], map[bool]string{true: "JSON", false: "Text"}[m.jsonCodec],
		m.sendBuffer, m.histN, m.rooms, len(m.muxes), len(m.ones))
	m.start(t)
	for _, mc := range m.muxes {
		m.connectMux(t, mc)
	}
	for _, oc := range m.ones {
		m.connectOne(t, oc, false)
	}

	actions := map[string]func(*rapid.T){
		"connect":   m.actConnect,
		"reconnect": m.actReconnect,
		"join":      m.actJoin,
		"leave":     m.actLeave,
		"pub":       m.actPub,
		"retry":     m.actRetry,
		"serverPub": m.actServerPub,
		"busyJoin":  m.actBusyJoin,
		"pipelined": m.actPipelined,
		"slow":      m.actSlow,
		"outage":    m.actOutage,
		"":          m.check,
	}
	if len(m.ones) > 0 {
		actions["oneConnect"] = m.actOneConnect
		actions["oneReconnect"] = m.actOneReconnect
	}
	for _, kv := range strings.Split(os.Getenv("WSROOM_MODEL"), ",") {
		if k, v, _ := strings.Cut(kv, "="); k == "skip" {
			for _, name := range strings.Split(v, "+") {
				delete(actions, name)
			}
		}
	}
	t.Repeat(actions)
	m.end(t)
	if err := checkGoroutines(before); err != nil {
		s := err.Error()
		if len(s) > 4000 {
			s = s[:4000]
		}
		m.fatalf(t, "after Registry.Close: %s", s)
	}
}

// start makes the registry and its server.
func (m *model) start(t *rapid.T) {
	m.store = wsroom.NewMemoryStore(0, 0)
	m.broker = &outageBroker{LocalBroker: wsroom.NewLocalBroker(m.store)}
	opts := []wsroom.Option{
		wsroom.WithBroker(m.broker),
		wsroom.WithCompression(m.compress),
		wsroom.WithSlowPolicy(m.policy),
		wsroom.WithHistory(m.histN),
		wsroom.WithRateLimit(0, 0, wsroom.Throttle),
		wsroom.WithPublishRetry(time.Minute), // an outage ends long before
		wsroom.WithIdleTimeout(10 * time.Minute),
		wsroom.WithAuthorize(func(r *http.Request) (any, error) { return r.URL.Query().Get("who"), nil }),
	}
	if m.jsonCodec {
		opts = append(opts, wsroom.WithCodec(wsroom.JSON()))
	}
	if m.sendBuffer > 0 {
		opts = append(opts, wsroom.WithSendBuffer(m.sendBuffer))
	}
	if m.events {
		opts = append(opts, wsroom.WithEvents())
	}
	m.reg = wsroom.NewRegistry(opts...)
	mux := http.NewServeMux()
	mux.Handle("GET /ws", m.reg.MuxHandler())
	mux.Handle("GET /rooms/{name}", m.reg.Handler(nil))
	m.srv = httptest.NewUnstartedServer(mux)
	m.srv.Listener = smallSendListener{m.srv.Listener}
	m.srv.Start()
	m.url = "ws" + strings.TrimPrefix(m.srv.URL, "http")
	m.hc = smallBufferClient()
	t.Cleanup(func() {
		m.broker.down.Store(false)
		for _, c := range m.conns() {
			c.closeNow()
		}
		m.reg.Close()
		m.srv.Close()
		for _, c := range m.conns() {
			c.waitDone()
		}
		m.hc.CloseIdleConnections()
	})
}

// conns returns every connection of the run, past and current.
func (m *model) conns() []*wsConn {
	var out []*wsConn
	for _, mc := range m.muxes {
		for _, c := range mc.conns {
			out = append(out, c.wsConn)
		}
	}
	for _, oc := range m.ones {
		for _, c := range oc.conns {
			out = append(out, c.wsConn)
		}
	}
	return out
}

// current returns the client's connection if it is live, else nil.
func (mc *muxClient) current() *muxConn {
	if n := len(mc.conns); n > 0 && mc.conns[n-1].live() {
		return mc.conns[n-1]
	}
	return nil
}

func (oc *oneClient) current() *oneConn {
	if n := len(oc.conns); n > 0 && oc.conns[n-1].live() {
		return oc.conns[n-1]
	}
	return nil
}

// token returns data no other publish has.
func (m *model) token(who string, pad int) []byte {
	m.tokens++
	if pad > 0 {
		return fmt.Appendf(nil, `{"t":"%s-%d","pad":"%s"}`, who, m.tokens, strings.Repeat("x", pad))
	}
	return fmt.Appendf(nil, `{"t":"%s-%d"}`, who, m.tokens)
}

// history returns the stored messages of room, oldest first: the model's
// reference. Nothing is trimmed in a run, so message seq is at index seq-1.
func (m *model) history(t *rapid.T, room string) []wsroom.Message {
	msgs, err := m.store.After(context.Background(), room, "", 0, 0)
	if err != nil {
		m.fatalf(t, "store: %v", err)
	}
	return msgs
}

// dial opens a connection to path.
func (m *model) dial(t *rapid.T, path string, mux bool) (*websocket.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts := &websocket.DialOptions{HTTPClient: m.hc, CompressionMode: m.compress}
	if mux {
		opts.Subprotocols = []string{wsroom.Subprotocol}
	}
	ws, _, err := websocket.Dial(ctx, m.url+path, opts)
	return ws, err
}

// send writes a request of a client of many rooms; a request with an id
// waits for its reply.
func (m *model) send(t *rapid.T, c *muxConn, r *request, id string, extra map[string]any) {
	msg := map[string]any{"op": r.op, "room": r.room}
	if id != "" {
		msg["id"] = id
		c.waiting[id] = append(c.waiting[id], r)
	}
	for k, v := range extra {
		msg[k] = v
	}
	b, _ := json.Marshal(msg)
	m.logf(t, "%s: %s", c.name, b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, b); err != nil {
		m.logf(t, "%s: write: %v", c.name, err) // the connection is ending; its end is checked
	}
}

func (mc *muxClient) id(op string) string {
	mc.reqs++
	return fmt.Sprintf("%s-%s%d", mc.name, op, mc.reqs)
}

// join sends a join of room: plain, with last, or with resume from the
// client's last position in the room.
func (m *model) join(t *rapid.T, c *muxConn, room, mode string, last int) {
	mc := c.client
	r := &request{op: "join", room: room}
	extra := map[string]any{}
	switch mode {
	case "last":
		r.last = last
		extra["last"] = last
	case "resume":
		p := mc.pos[room] // the zero position is ":0", every message of the epoch
		r.resume = &p
		extra["resume"] = p.epoch + ":" + strconv.FormatUint(p.seq, 10)
	}
	mc.in[room] = true
	m.send(t, c, r, mc.id("j"), extra)
}

// publish sends a pub of new data to room, with an id or without.
func (m *model) publish(t *rapid.T, c *muxConn, room string, withID bool) {
	mc := c.client
	p := &pub{who: mc.name, room: room, data: m.token(mc.name, 0)}
	if m.outage {
		m.outPub++
	}
	m.pubs = append(m.pubs, p)
	m.known[string(p.data)] = p
	r := &request{op: "pub", room: room, pub: p}
	if withID {
		p.id = mc.id("p")
		mc.pubs = append(mc.pubs, p)
	} else {
		c.noID = append(c.noID, p)
	}
	m.send(t, c, r, p.id, map[string]any{"data": json.RawMessage(p.data)})
}

// connectMux opens a new connection for mc and, as PROTOCOL.md section 7
// says, joins again every room mc is in with resume from its position, and
// sends again every pub with an id that has no ack.
func (m *model) connectMux(t *rapid.T, mc *muxClient) {
	ws, err := m.dial(t, "/ws?who="+mc.name, true)
	if err != nil {
		m.fatalf(t, "%s: dial: %v", mc.name, err)
	}
	c := &muxConn{client: mc, waiting: map[string][]*request{}, rooms: map[string]*episode{}}
	c.wsConn = newWSConn(fmt.Sprintf("%s#%d", mc.name, len(mc.conns)+1), ws)
	mc.conns = append(mc.conns, c)
	m.logf(t, "%s: connected", c.name)
	for _, room := range m.rooms {
		if mc.in[room] {
			m.join(t, c, room, "resume", 0)
		}
	}
	for _, p := range mc.pubs {
		if !p.acked && mc.in[p.room] {
			m.send(t, c, &request{op: "pub", room: p.room, pub: p}, p.id, map[string]any{"data": json.RawMessage(p.data)})
		}
	}
}

// closeMux drops a client's connection, as a client that loses its network
// does, and checks what it had read.
func (m *model) closeMux(t *rapid.T, c *muxConn) {
	m.logf(t, "%s: drop the connection", c.name)
	c.closeNow()
	if !c.waitDone() {
		m.fatalf(t, "%s: reader still running 10s after CloseNow", c.name)
	}
	m.checkMux(t, c)
}

// connectOne opens a connection of one room for oc, with resume from its
// last message if it has one and resume is set, and waits until the room
// has it (no message can be missed or replayed twice meanwhile: nothing is
// published while the test waits).
func (m *model) connectOne(t *rapid.T, oc *oneClient, resume bool) {
	room, err := m.reg.Room(oc.room)
	if err != nil {
		m.fatalf(t, "Registry.Room(%s): %v", oc.room, err)
	}
	joins := room.Stats().Joins
	path := "/rooms/" + oc.room + "?who=" + oc.name
	c := &oneConn{}
	last := uint64(len(m.history(t, oc.room)))
	switch {
	case resume && oc.pos != nil:
		path += "&resume=" + oc.pos.epoch + ":" + strconv.FormatUint(oc.pos.seq, 10)
		c.next = oc.pos.seq + 1
	default:
		// Without resume: the last WithHistory messages, then live ones.
		c.next = last - min(last, uint64(m.histN)) + 1
	}
	ws, err := m.dial(t, path, false)
	if err != nil {
		m.fatalf(t, "%s: dial %s: %v", oc.name, path, err)
	}
	c.wsConn = newWSConn(fmt.Sprintf("%s#%d", oc.name, len(oc.conns)+1), ws)
	oc.conns = append(oc.conns, c)
	m.logf(t, "%s: connected to %s, expects seq %d first", c.name, path, c.next)
	deadline := time.Now().Add(10 * time.Second)
	for room.Stats().Joins == joins {
		if !c.live() {
			return // its end is checked
		}
		if time.Now().After(deadline) {
			m.fatalf(t, "%s: not in room %s 10s after the handshake", c.name, oc.room)
		}
		time.Sleep(time.Millisecond)
	}
}

// serverPublish publishes data to room with Registry.Publish. During an
// outage it fails, and the message must never be stored.
func (m *model) serverPublish(t *rapid.T, room string, pad int) *pub {
	p := &pub{who: "server", room: room, data: m.token("s", pad)}
	m.pubs = append(m.pubs, p)
	m.known[string(p.data)] = p
	err := m.reg.Publish(context.Background(), room, p.data)
	switch {
	case err == nil:
		p.ok = true
	case m.outage && errors.Is(err, errOutage):
		p.refused = true
	default:
		m.fatalf(t, "Registry.Publish(%s): %v", room, err)
	}
	if pad == 0 {
		m.logf(t, "server: publish %s to %s: %v", p.data, room, err)
	}
	return p
}

// pickMux draws one of the clients of many rooms for which ok holds.
func (m *model) pickMux(t *rapid.T, ok func(*muxClient) bool) *muxClient {
	var names []string
	for _, mc := range m.muxes {
		if ok(mc) {
			names = append(names, mc.name)
		}
	}
	if len(names) == 0 {
		t.Skip("no such client")
	}
	name := rapid.SampledFrom(names).Draw(t, "client")
	for _, mc := range m.muxes {
		if mc.name == name {
			return mc
		}
	}
	panic("unreachable")
}

// rooms returns the rooms for which ok holds.
func (m *model) roomsWhere(ok func(string) bool) []string {
	var out []string
	for _, r := range m.rooms {
		if ok(r) {
			out = append(out, r)
		}
	}
	return out
}

func (m *model) pickRoom(t *rapid.T, ok func(string) bool) string {
	rooms := m.roomsWhere(ok)
	if len(rooms) == 0 {
		t.Skip("no such room")
	}
	return rapid.SampledFrom(rooms).Draw(t, "room")
}

func live(mc *muxClient) bool { return mc.current() != nil }

// actConnect connects a client of many rooms that has no connection (it
// never had one, or the server closed it).
func (m *model) actConnect(t *rapid.T) {
	mc := m.pickMux(t, func(mc *muxClient) bool { return !live(mc) })
	m.connectMux(t, mc)
}

// actReconnect drops a client's connection and connects again, with
// resume and retries.
func (m *model) actReconnect(t *rapid.T) {
	mc := m.pickMux(t, live)
	m.closeMux(t, mc.current())
	m.connectMux(t, mc)
}

// actJoin joins a room: plain, with last, or with resume from the
// client's last position.
func (m *model) actJoin(t *rapid.T) {
	mc := m.pickMux(t, live)
	room := m.pickRoom(t, func(r string) bool { return !mc.in[r] })
	mode := rapid.SampledFrom([]string{"plain", "last", "resume"}).Draw(t, "join")
	m.join(t, mc.current(), room, mode, rapid.IntRange(1, 5).Draw(t, "last"))
}

// actLeave leaves a room.
func (m *model) actLeave(t *rapid.T) {
	mc := m.pickMux(t, live)
	room := m.pickRoom(t, func(r string) bool { return mc.in[r] })
	mc.in[room] = false
	m.send(t, mc.current(), &request{op: "leave", room: room}, mc.id("l"), nil)
}

// actPub publishes to a room the client is in, with an id or without.
func (m *model) actPub(t *rapid.T) {
	mc := m.pickMux(t, live)
	room := m.pickRoom(t, func(r string) bool { return mc.in[r] })
	if m.outage && m.outPub >= maxBurst-1 {
		t.Skip("enough pubs wait for the outage to end")
	}
	m.publish(t, mc.current(), room, rapid.Bool().Draw(t, "with id"))
}

// actRetry sends a pub with an id again, with the same id and data, acked
// or not: it must get the first one's ack and not be published again.
func (m *model) actRetry(t *rapid.T) {
	mc := m.pickMux(t, func(mc *muxClient) bool {
		return live(mc) && slices.ContainsFunc(mc.pubs, func(p *pub) bool { return mc.in[p.room] })
	})
	var ps []*pub
	for _, p := range mc.pubs {
		if mc.in[p.room] {
			ps = append(ps, p)
		}
	}
	p := ps[rapid.IntRange(0, len(ps)-1).Draw(t, "pub")]
	m.send(t, mc.current(), &request{op: "pub", room: p.room, pub: p}, p.id, map[string]any{"data": json.RawMessage(p.data)})
}

// actServerPub publishes from server code.
func (m *model) actServerPub(t *rapid.T) {
	m.serverPublish(t, rapid.SampledFrom(m.rooms).Draw(t, "room"), 0)
}

// actBusyJoin joins a room while server code publishes to it, so that
// messages race the join.
func (m *model) actBusyJoin(t *rapid.T) {
	mc := m.pickMux(t, live)
	room := m.pickRoom(t, func(r string) bool { return !mc.in[r] })
	mode := rapid.SampledFrom([]string{"plain", "last", "resume"}).Draw(t, "join")
	n := rapid.IntRange(2, maxBurst).Draw(t, "publishes")
	ps := make([]*pub, n)
	for i := range ps {
		ps[i] = &pub{who: "server", room: room, data: m.token("s", 0)}
		m.pubs = append(m.pubs, ps[i])
		m.known[string(ps[i].data)] = ps[i]
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	wg.Go(func() {
		for i, p := range ps {
			errs[i] = m.reg.Publish(context.Background(), room, p.data)
		}
	})
	m.join(t, mc.current(), room, mode, 3)
	wg.Wait()
	for i, p := range ps {
		switch {
		case errs[i] == nil:
			p.ok = true
		case m.outage && errors.Is(errs[i], errOutage):
			p.refused = true
		default:
			m.fatalf(t, "Registry.Publish(%s): %v", room, errs[i])
		}
	}
	m.logf(t, "server: published %d messages to %s during the join (errors %v)", n, room, errs)
}

// actPipelined sends, without waiting for any reply, a join of every room
// the client is not in, then a pub with an id to every room it is in.
func (m *model) actPipelined(t *rapid.T) {
	mc := m.pickMux(t, live)
	c := mc.current()
	for _, room := range m.roomsWhere(func(r string) bool { return !mc.in[r] }) {
		m.join(t, c, room, rapid.SampledFrom([]string{"plain", "last"}).Draw(t, "join"), 2)
	}
	for _, room := range m.roomsWhere(func(r string) bool { return mc.in[r] }) {
		if !m.outage || m.outPub < maxBurst-1 {
			m.publish(t, c, room, true)
		}
	}
}

// actSlow stops a client reading while server code publishes big messages
// to its rooms (each read by every other client before the next), then
// lets it read again: it gets them all, or is told (1008 with CloseSlow),
// or what it lost is counted in Stats.Dropped.
func (m *model) actSlow(t *rapid.T) {
	if m.outage {
		t.Skip("outage")
	}
	var cands []*wsConn
	var rooms [][]string
	for _, mc := range m.muxes {
		if c := mc.current(); c != nil && len(c.rooms) > 0 {
			cands = append(cands, c.wsConn)
			var rs []string
			for r := range c.rooms {
				rs = append(rs, r)
			}
			slices.Sort(rs)
			rooms = append(rooms, rs)
		}
	}
	for _, oc := range m.ones {
		if c := oc.current(); c != nil {
			cands = append(cands, c.wsConn)
			rooms = append(rooms, []string{oc.room})
		}
	}
	if len(cands) == 0 {
		t.Skip("no client in a room")
	}
	i := rapid.IntRange(0, len(cands)-1).Draw(t, "slow client")
	c := cands[i]
	n := rapid.IntRange(4, 24).Draw(t, "big messages")
	m.logf(t, "%s: stops reading; server: %d messages of 32 KiB to %v", c.name, n, rooms[i])
	c.gate.shut()
	c.pausedEver = true
	for k := range n {
		room := rooms[i][k%len(rooms[i])]
		m.serverPublish(t, room, 32<<10)
		m.waitRead(t, room, c)
	}
	m.logf(t, "%s: reads again", c.name)
	c.gate.open()
}

// actOutage switches the engine's outage on or off.
func (m *model) actOutage(t *rapid.T) {
	m.outage = !m.outage
	m.outPub = 0
	m.broker.down.Store(m.outage)
	m.logf(t, "engine: outage %v", m.outage)
}

// actOneConnect connects the client of one room, plain or with resume.
func (m *model) actOneConnect(t *rapid.T) {
	if len(m.ones) == 0 || m.ones[0].current() != nil {
		t.Skip("no client of one room without a connection")
	}
	m.connectOne(t, m.ones[0], rapid.Bool().Draw(t, "resume"))
}

// actOneReconnect drops the connection of the client of one room and
// connects again with resume.
func (m *model) actOneReconnect(t *rapid.T) {
	if len(m.ones) == 0 || m.ones[0].current() == nil {
		t.Skip("no client of one room with a connection")
	}
	c := m.ones[0].current()
	m.logf(t, "%s: drop the connection", c.name)
	c.closeNow()
	if !c.waitDone() {
		m.fatalf(t, "%s: reader still running 10s after CloseNow", c.name)
	}
	m.checkOne(t, m.ones[0], c)
	m.connectOne(t, m.ones[0], true)
}

// end ends the outage, checks once more, then either shuts the registry
// down (every client is closed with 1001) or closes one room (its clients
// are told, the other rooms go on), closes the registry and checks that no
// goroutine is left.
func (m *model) end(t *rapid.T) {
	if m.outage {
		m.actOutage(t)
	}
	m.check(t)
	if rapid.Bool().Draw(t, "end with Shutdown") {
		m.ending = "shutdown"
		m.logf(t, "server: Registry.Shutdown")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.reg.Shutdown(ctx); err != nil {
			m.fatalf(t, "Registry.Shutdown: %v", err)
		}
		for _, c := range m.conns() {
			if !c.waitDone() {
				m.fatalf(t, "%s: still open 10s after Shutdown returned", c.name)
			}
		}
		m.checkAll(t)
		if m.events {
			m.checkEvents(t)
		}
	} else {
		room := rapid.SampledFrom(m.rooms).Draw(t, "room to close")
		m.ending = room
		m.logf(t, "server: Room(%s).Close", room)
		r, err := m.reg.Room(room)
		if err != nil {
			m.fatalf(t, "Registry.Room(%s): %v", room, err)
		}
		r.Close()
		// Every member of the room is told: left "closed", or its
		// connection of one room dropped.
		deadline := time.Now().Add(10 * time.Second)
		for {
			m.checkAll(t)
			why := ""
			for _, mc := range m.muxes {
				if c := mc.current(); c != nil && c.rooms[room] != nil {
					why = c.name + " got no left for " + room
				}
			}
			for _, oc := range m.ones {
				if c := oc.current(); c != nil && oc.room == room {
					why = c.name + " is still connected"
				}
			}
			if why == "" {
				break
			}
			if time.Now().After(deadline) {
				m.fatalf(t, "10s after Room(%s).Close: %s", room, why)
			}
			time.Sleep(2 * time.Millisecond)
		}
		// The other rooms go on.
		for _, other := range m.rooms {
			if other != room {
				m.serverPublish(t, other, 0)
			}
		}
		m.check(t)
	}
	for _, c := range m.conns() {
		c.byTest = true
	}
	m.reg.Close()
	m.srv.Close()
	for _, c := range m.conns() {
		c.closeNow()
		if !c.waitDone() {
			m.fatalf(t, "%s: reader still running 10s after Registry.Close", c.name)
		}
	}
	m.checkAll(t)
	m.hc.CloseIdleConnections()
}

// logf logs a step of the run, and keeps it for a failure's message.
func (m *model) logf(t *rapid.T, format string, args ...any) {
	t.Helper()
	s := fmt.Sprintf(format, args...)
	m.trace = append(m.trace, s)
	t.Logf("%s", s)
}

// fatalf fails the run with the trace of its steps in the message: when a
// failure depends on timing on the server and does not come again when
// rapid replays the run, rapid prints the message of the first failure,
// and its trace with it.
func (m *model) fatalf(t *rapid.T, format string, args ...any) {
	t.Helper()
	t.Fatalf("%s\ntrace of the run:\n\t%s", fmt.Sprintf(format, args...), strings.Join(m.trace, "\n\t"))
}

// checkEvents checks the event log once Shutdown has ended every
// connection, outages included: each connection's events are a connect,
// then per room joins and leaves that alternate, a join first, then a
// disconnect, with nothing after it; and every connection the server
// admitted is there.
func (m *model) checkEvents(t *rapid.T) {
	msgs, err := m.store.After(context.Background(), ".wsroom.events", "", 0, 0)
	if err != nil {
		m.fatalf(t, "event log: %v", err)
	}
	type connState struct {
		connected, disconnected bool
		in                      map[string]bool
	}
	conns := make(map[string]*connState)
	for _, msg := range msgs {
		var ev wsroom.Event
		if err := json.Unmarshal(msg.Data, &ev); err != nil {
			m.fatalf(t, "event %d: %v", msg.Seq, err)
		}
		if ev.Conn == "" {
			continue // a user's first join or last leave
		}
		c := conns[ev.Conn]
		if c == nil {
			c = &connState{in: map[string]bool{}}
			conns[ev.Conn] = c
		}
		bad := ""
		switch {
		case c.disconnected:
			bad = "after its disconnect"
		case ev.Type == wsroom.EventConnect:
			if c.connected {
				bad = "a second connect"
			}
			c.connected = true
		case !c.connected:
			bad = "before its connect"
		case ev.Type == wsroom.EventJoin:
			if c.in[ev.Room] {
				bad = "a second join"
			}
			c.in[ev.Room] = true
		case ev.Type == wsroom.EventLeave:
			if !c.in[ev.Room] {
				bad = "a leave without a join"
			}
			c.in[ev.Room] = false
		case ev.Type == wsroom.EventDisconnect:
			for room, in := range c.in {
				if in {
					bad = "a disconnect while in " + room
				}
			}
			c.disconnected = true
		}
		if bad != "" {
			m.fatalf(t, "event log: %s of connection %s: %s (event %d)", ev.Type, ev.Conn, bad, msg.Seq)
		}
	}
	for id, c := range conns {
		if !c.disconnected {
			m.fatalf(t, "event log: connection %s has no disconnect", id)
		}
	}
	if len(conns) == 0 {
		m.fatalf(t, "event log: no connection")
	}
	m.logf(t, "event log: %d events of %d connections, each whole", len(msgs), len(conns))
}
