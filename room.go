package wsroom

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// ErrClosed is returned when publishing to, or joining, a Room or Registry
// that is shut down or closed.
var ErrClosed = errors.New("wsroom: room closed")

// StatusResync is the close code a client gets when it asked to resume from a
// position the room's history no longer covers (or never did). The client
// should drop what it has and reconnect without resuming.
const StatusResync websocket.StatusCode = 4000

// HTTPError is an error an authorize hook returns to refuse a handshake with
// a given HTTP status, such as 401 or 403.
type HTTPError struct {
	Code    int    // HTTP status code
	Message string // response body; http.StatusText(Code) if empty
}

func (e *HTTPError) Error() string {
	return fmt.Sprintf("wsroom: handshake refused: %d %s", e.Code, e.text())
}

func (e *HTTPError) text() string {
	if e.Message != "" {
		return e.Message
	}
	return http.StatusText(e.Code)
}

// Room is a set of WebSocket clients that receive the same messages.
//
// A message published to a room, by a client or by server code, goes to the
// room's Broker, which numbers it and hands it to the room's loop; the loop
// encodes it once and queues the same bytes to every client; each client's
// writer drains its own queue. No client can block the loop or another
// client. See the package documentation for the whole path.
//
// Room is safe for concurrent use by multiple goroutines. Call Close or
// Shutdown to release its goroutines and connections.
type Room struct {
	name      string
	cfg       config
	rawFrames bool // the room frames messages itself (no compression)

	joinc   chan *Client
	leavec  chan *Client
	inbox   chan Message
	queryc  chan chan []*Client
	catchup chan struct{} // the broker may have missed messages
	quit    chan struct{} // closed to stop the loop
	done    chan struct{} // closed when the loop has returned
	final   []*Client     // the loop's clients when it returned

	mu          sync.Mutex
	state       roomState
	reserved    int            // clients from reservation to leave
	wg          sync.WaitGroup // every goroutine serving the room
	stopOnce    sync.Once
	unsubscribe func()
	onIdle      func() // set by a Registry

	joined atomic.Int64
	stats  counters
}

type roomState int

const (
	open roomState = iota
	shuttingDown
	closed
)

// New returns a room configured by opts, subscribed to its Broker and ready
// to serve clients through Handler. Its name, for the Broker and the Store,
// is empty: rooms made by New that share a Broker or Store are one room
// there. Use a Registry for named rooms.
func New(opts ...Option) *Room {
	return newRoom("", newConfig(opts))
}

func newRoom(name string, cfg config) *Room {
	r := &Room{
		name:      name,
		cfg:       cfg,
		rawFrames: cfg.compression == websocket.CompressionDisabled,
		joinc:     make(chan *Client),
		leavec:    make(chan *Client),
		inbox:     make(chan Message, 256),
		queryc:    make(chan chan []*Client),
		catchup:   make(chan struct{}, 1),
		quit:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.writeTimeout)
	defer cancel()
	unsub, err := cfg.broker.Subscribe(ctx, name, r.deliver, r.lost)
	// The loop starts from the last stored message, so that a loss before
	// the room's first delivery is noticed too.
	var start Message
	if last, err := cfg.store.Last(ctx, name, 1); err == nil && len(last) == 1 {
		start = last[0]
	}
	r.wg.Go(func() { r.run(start.Epoch, start.Seq) })
	if err != nil {
		r.reportError(nil, fmt.Errorf("wsroom: subscribe to room %q: %w", name, err))
		r.wg.Go(r.subscribe)
	} else {
		r.unsubscribe = unsub
	}
	return r
}

// Name returns the room's name: the one given to Registry.Room, or "" for a
// room made by New.
func (r *Room) Name() string { return r.name }

// subscribe retries a failed broker subscription with backoff until it
// succeeds or the room stops.
func (r *Room) subscribe() {
	backoff := 50 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.writeTimeout)
		unsub, err := r.cfg.broker.Subscribe(ctx, r.name, r.deliver, r.lost)
		cancel()
		if err == nil {
			r.mu.Lock()
			stopped := isClosed(r.quit) // stop closes quit under mu
			if !stopped {
				r.unsubscribe = unsub
			}
			r.mu.Unlock()
			if stopped {
				unsub()
			}
			return
		}
		r.reportError(nil, fmt.Errorf("wsroom: subscribe to room %q: %w", r.name, err))
		select {
		case <-time.After(backoff):
			backoff = min(2*backoff, 5*time.Second)
		case <-r.quit:
			return
		}
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// deliver hands a message from the broker to the room's loop.
func (r *Room) deliver(m Message) {
	select {
	case r.inbox <- m:
	case <-r.quit:
	}
}

// lost is told by the broker that it may have missed messages; the loop
// then catches up from the store.
func (r *Room) lost(err error) {
	r.reportError(nil, fmt.Errorf("wsroom: room %q may have missed messages: %w", r.name, err))
	select {
	case r.catchup <- struct{}{}:
	default:
	}
}

// run is the room's loop. It alone owns the set of clients. (epoch, last)
// is the position of the last numbered message delivered.
func (r *Room) run(epoch string, last uint64) {
	clients := make(map[*Client]struct{})
	defer func() {
		r.final = slices.Collect(maps.Keys(clients))
		close(r.done)
	}()
	handle := func(m Message) {
		if !m.Ephemeral {
			if m.Epoch == epoch && m.Seq <= last {
				return // delivered already
			}
			if m.Epoch == epoch && last != 0 && m.Seq > last+1 {
				gap, ok := r.missed(clients, epoch, last, m.Seq)
				if !ok {
					epoch, last = "", 0
					return
				}
				for _, g := range gap {
					r.fanout(clients, g)
				}
			}
			epoch, last = m.Epoch, m.Seq
		}
		r.fanout(clients, m)
	}
	for {
		select {
		case c := <-r.joinc:
			clients[c] = struct{}{}
		case c := <-r.leavec:
			delete(clients, c)
		case m := <-r.inbox:
			handle(m)
		case q := <-r.queryc:
			q <- slices.Collect(maps.Keys(clients))
		case <-r.catchup:
			if last == 0 {
				continue
			}
			if ms, ok := r.missed(clients, epoch, last, 0); !ok {
				epoch, last = "", 0
			} else {
				for _, m := range ms {
					handle(m)
				}
			}
		case <-r.quit:
			// Deliver what the broker handed over before the stop.
			for {
				select {
				case m := <-r.inbox:
					handle(m)
				default:
					return
				}
			}
		}
	}
}

// missed returns the messages the store holds after (epoch, last), which the
// broker did not deliver: those before next, all of them if next is zero. If
// the store cannot serve them all, every client is told to resynchronise and
// ok is false.
func (r *Room) missed(clients map[*Client]struct{}, epoch string, last, next uint64) (msgs []Message, ok bool) {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.writeTimeout)
	defer cancel()
	limit := 0
	if next != 0 {
		limit = int(next - last - 1)
	}
	msgs, err := r.cfg.store.After(ctx, r.name, epoch, last, limit)
	if err == nil && (limit == 0 || len(msgs) == limit) {
		return msgs, true
	}
	r.resyncAll(clients, fmt.Errorf("wsroom: room %q cannot recover the messages after %d: %v", r.name, last, err))
	return nil, false
}

func (r *Room) resyncAll(clients map[*Client]struct{}, err error) {
	r.reportError(nil, err)
	for c := range clients {
		c.fail(&closeRequest{code: StatusResync, reason: "wsroom: messages lost, resync", mode: closeDiscard, err: ErrGap})
	}
}

// fanout encodes m once and queues it to every client it is for.
func (r *Room) fanout(clients map[*Client]struct{}, m Message) {
	frame, err := r.cfg.codec.Encode(m)
	if err != nil {
		r.reportError(nil, fmt.Errorf("wsroom: encode message %d: %w", m.Seq, err))
		return
	}
	f := outFrame{seq: m.Seq, epoch: m.Epoch, data: r.newFrame(frame)}
	// On a single P, with no other message waiting, the loop writes to idle
	// clients itself, saving a goroutine switch per delivery. With more Ps
	// the writers spread the system calls over the cores, and under load
	// they write all that queued up for a client in one system call.
	inline := len(r.inbox) == 0 && runtime.GOMAXPROCS(0) == 1
	for c := range clients {
		if m.Except != "" && c.id == m.Except {
			continue
		}
		c.enqueue(f, inline)
	}
}

// PublishOption changes how one message is published.
type PublishOption func(*publishConfig)

type publishConfig struct {
	ephemeral bool
	except    string
	from      string
	keep      func(*Client) bool
}

// Ephemeral publishes a message that gets no sequence number, is not stored
// and is never replayed, such as a typing indicator.
func Ephemeral() PublishOption {
	return func(p *publishConfig) { p.ephemeral = true }
}

// Except publishes a message to every client but c, on every node. Such a
// message is ephemeral.
func Except(c *Client) PublishOption {
	return func(p *publishConfig) { p.except, p.ephemeral = c.id, true }
}

// From marks a message as sent by c (Message.From), as if c had sent it.
func From(c *Client) PublishOption {
	return func(p *publishConfig) { p.from = c.id }
}

// Filter publishes a message only to the clients of this node for which keep
// returns true; keep runs on the publishing goroutine. Such a message is
// ephemeral and does not go through the Broker, so clients on other nodes
// never see it.
func Filter(keep func(c *Client) bool) PublishOption {
	return func(p *publishConfig) { p.keep, p.ephemeral = keep, true }
}

// Publish sends data to every client of the room, on every node. Unless an
// option makes it ephemeral, the message is numbered, stored in the room's
// history, and reaches every client in the same order as every other
// message. Publish checks data with the codec's Decode first, so that, say,
// a JSON room refuses what is not JSON.
//
// Publish returns when the message is on its way, not when it has been
// written. It returns ErrClosed once the room is shutting down or closed.
// data must not be modified afterwards.
func (r *Room) Publish(ctx context.Context, data []byte, opts ...PublishOption) error {
	var p publishConfig
	for _, o := range opts {
		o(&p)
	}
	if _, err := r.cfg.codec.Decode(data); err != nil {
		return err
	}
	m := Message{Time: time.Now(), From: p.from, Except: p.except, Ephemeral: p.ephemeral, Data: data}
	if p.keep != nil {
		return r.publishLocal(m, p.keep)
	}
	return r.publish(ctx, m)
}

func (r *Room) publish(ctx context.Context, m Message) error {
	if !r.isOpen() {
		return ErrClosed
	}
	return r.cfg.broker.Publish(ctx, r.name, m)
}

// publishLocal encodes m once and queues it to the local clients keep
// accepts.
func (r *Room) publishLocal(m Message, keep func(*Client) bool) error {
	if !r.isOpen() {
		return ErrClosed
	}
	payload, err := r.cfg.codec.Encode(m)
	if err != nil {
		return err
	}
	frame := r.newFrame(payload)
	for _, c := range r.Clients() {
		if keep(c) {
			c.enqueue(outFrame{data: frame}, false)
		}
	}
	return nil
}

// isClosedNow reports whether Close (not Shutdown) has been called.
func (r *Room) isClosedNow() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state == closed
}

func (r *Room) isOpen() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state == open
}

// Clients returns the clients of the room on this node, in no particular
// order. It is a snapshot: clients may leave right after.
func (r *Room) Clients() []*Client {
	q := make(chan []*Client, 1)
	select {
	case r.queryc <- q:
		return <-q
	case <-r.done:
		return nil
	}
}

// Members returns who is in the room on every node, when the room's Broker
// implements Presence, or on this node otherwise. A member's Info is the
// client's identity when that is a string or a fmt.Stringer.
func (r *Room) Members(ctx context.Context) ([]Member, error) {
	if p, ok := r.cfg.broker.(Presence); ok {
		return p.Members(ctx, r.name)
	}
	var out []Member
	for _, c := range r.Clients() {
		out = append(out, c.member())
	}
	return out, nil
}

// Len returns the number of clients of the room on this node.
func (r *Room) Len() int { return int(r.joined.Load()) }

// Handler returns an http.Handler that upgrades each request to a WebSocket,
// joins the client to the room and serves it until it leaves. It answers
// non-WebSocket requests with 426 Upgrade Required, a bad resume parameter
// with 400, refused authorization with the hook's status, cross-origin
// requests with 403, and requests to a full, shut down or closed room with
// 503 Service Unavailable.
//
// A client may ask to resume after the last message it saw by adding
// "?resume=EPOCH:SEQ" to the URL; see the package documentation.
func (r *Room) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		serveClient(&r.cfg, w, req, func() (*Room, error) { return r, r.reserve() })
	})
}

var (
	errFull = errors.New("wsroom: room is full")
)

// serveClient runs the handshake checks, upgrades, and serves the client on
// the room that acquire reserves a place in.
func serveClient(cfg *config, w http.ResponseWriter, req *http.Request, acquire func() (*Room, error)) {
	if !headerHas(req.Header, "Connection", "upgrade") || !headerHas(req.Header, "Upgrade", "websocket") {
		w.Header().Set("Upgrade", "websocket")
		http.Error(w, "wsroom: this endpoint speaks WebSocket only", http.StatusUpgradeRequired)
		return
	}
	resume, err := parseResume(req.URL.Query().Get("resume"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var identity any
	if cfg.authorize != nil {
		identity, err = cfg.authorize(req)
		if err != nil {
			var he *HTTPError
			if errors.As(err, &he) {
				http.Error(w, he.text(), he.Code)
			} else {
				http.Error(w, http.StatusText(http.StatusForbidden), http.StatusForbidden)
			}
			return
		}
	}
	r, err := acquire()
	if err != nil {
		w.Header().Set("Retry-After", "1")
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	hw := &hijackWriter{ResponseWriter: w, timeout: r.cfg.writeTimeout}
	conn, err := websocket.Accept(hw, req, &websocket.AcceptOptions{
		OriginPatterns:  cfg.origins,
		CompressionMode: cfg.compression,
	})
	if err != nil {
		r.release()
		r.cfg.logger.Debug("wsroom: handshake failed", "room", r.name, "err", err)
		return
	}
	// The client runs on its own goroutine, so that the handler returns and
	// net/http lets go of the request and its buffers.
	go newClient(r, conn, hw.conn, identity, resume).serve()
}

func headerHas(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// position is a place in a room's history a client resumes after.
type position struct {
	epoch string
	seq   uint64
}

var errBadResume = errors.New(`wsroom: bad resume parameter: want "EPOCH:SEQ" as sent in message envelopes`)

func parseResume(s string) (*position, error) {
	if s == "" {
		return nil, nil
	}
	i := strings.LastIndexByte(s, ':')
	if i < 1 || i > 128 {
		return nil, errBadResume
	}
	seq, err := strconv.ParseUint(s[i+1:], 10, 64)
	if err != nil {
		return nil, errBadResume
	}
	return &position{epoch: s[:i], seq: seq}, nil
}

// reserve takes a place for a client about to join.
func (r *Room) reserve() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state != open {
		return ErrClosed
	}
	if r.cfg.maxClients > 0 && r.reserved >= r.cfg.maxClients {
		return errFull
	}
	r.reserved++
	r.wg.Add(1)
	return nil
}

// release gives back a place taken by reserve.
func (r *Room) release() {
	r.mu.Lock()
	r.reserved--
	idle := r.reserved == 0 && r.state == open && r.onIdle != nil
	r.mu.Unlock()
	r.wg.Done()
	if idle {
		r.onIdle()
	}
}

// markClosedIfIdle marks the room closed if no client holds a place in it,
// and reports whether it did so; the caller then calls Close.
func (r *Room) markClosedIfIdle() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	idle := r.reserved == 0 && r.state == open
	if idle {
		r.state = closed
	}
	return idle
}

// join adds c to the loop's set, or reports false if the room has stopped.
func (r *Room) join(c *Client) bool {
	select {
	case r.joinc <- c:
		r.joined.Add(1)
		return true
	case <-r.done:
		return false
	}
}

func (r *Room) leave(c *Client) {
	select {
	case r.leavec <- c:
	case <-r.done:
	}
	r.joined.Add(-1)
}

// stop stops the loop and the broker subscription, once.
func (r *Room) stop() {
	r.stopOnce.Do(func() {
		r.mu.Lock()
		unsub := r.unsubscribe
		r.unsubscribe = nil
		close(r.quit)
		r.mu.Unlock()
		if unsub != nil {
			unsub()
		}
		<-r.done
	})
}

// Shutdown shuts the room down gracefully: new handshakes get 503 and
// publishing returns ErrClosed; every client is sent what is already queued
// for it, then a close frame with websocket.StatusGoingAway (1001). Shutdown
// returns when every goroutine of the room has ended, or with ctx.Err() when
// ctx ends first (Close then finishes the job).
//
// http.Server.Shutdown does not wait for WebSocket connections, which it no
// longer tracks once upgraded: call Room.Shutdown after it (see the
// example).
func (r *Room) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	if r.state == open {
		r.state = shuttingDown
	}
	r.mu.Unlock()
	r.stop()
	for _, c := range r.final {
		c.fail(&closeRequest{code: websocket.StatusGoingAway, reason: "wsroom: room shutting down", mode: closeDrain, err: ErrClosed})
	}
	done := make(chan struct{})
	go func() {
		r.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		r.mu.Lock()
		r.state = closed
		r.mu.Unlock()
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close closes the room at once: new handshakes get 503, publishing returns
// ErrClosed, and every client's connection is closed without a close
// handshake. Close returns when every goroutine of the room has ended.
// Closing a closed room does nothing more and returns nil.
func (r *Room) Close() error {
	r.mu.Lock()
	r.state = closed
	r.mu.Unlock()
	r.stop()
	for _, c := range r.final {
		c.conn.CloseNow()
	}
	r.wg.Wait()
	return nil
}

func (r *Room) reportError(c *Client, err error) {
	r.stats.errors.Add(1)
	if c != nil {
		r.cfg.logger.Warn("wsroom: client error", "room", r.name, "client", c.id, "err", err)
	} else {
		r.cfg.logger.Warn("wsroom: room error", "room", r.name, "err", err)
	}
	if r.cfg.onError != nil {
		defer func() {
			if p := recover(); p != nil {
				r.cfg.logger.Error("wsroom: error hook panicked", "room", r.name, "panic", p)
			}
		}()
		r.cfg.onError(c, err)
	}
}

// hookPanic is the error of a hook that panicked.
type hookPanic struct {
	name  string
	value any
}

func (e *hookPanic) Error() string {
	return fmt.Sprintf("wsroom: %s hook panicked: %v", e.name, e.value)
}

// hook runs an application hook, turning a panic into an error that is
// reported and returned, as net/http does for handlers: one client's bad
// luck must not take the server down.
func (r *Room) hook(c *Client, name string, fn func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &hookPanic{name: name, value: p}
			r.reportError(c, err)
		}
	}()
	return fn()
}
