package wsroom

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// ErrClosed is returned when publishing to, or joining, a Room or Registry
// that is shut down or closed.
var ErrClosed = errors.New("wsroom: room closed")

// StatusResync is the close code a client gets when the room cannot give it
// every message after its position: it asked to resume from a position the
// room's history no longer covers (or never did), or the room itself lost
// messages. The client should drop what it has and reconnect; when the
// reason ends in "resume=EPOCH:SEQ", reconnecting with that position gets
// every message the room's history holds from there (see the package
// documentation).
const StatusResync websocket.StatusCode = 4000

// Room is a set of WebSocket clients that receive the same messages.
//
// A message published to a room, by a client or by server code, goes to the
// room's Broker, which numbers it and hands it to the room's loop; the loop
// encodes it once and queues the same bytes to every client; each client's
// writer drains its own queue. No client can block the loop or another
// client, and the loop never waits for the application: hooks, the logger,
// the Store and the Broker are called from other goroutines. See the
// package documentation for the whole path.
//
// Room is safe for concurrent use by multiple goroutines. Call Close or
// Shutdown to release its goroutines and connections.
type Room struct {
	name string
	cfg  config

	// The loop's channels (loop.go).
	joinc    chan joinRequest
	leavec   chan *Client
	inbox    *inbox
	queryc   chan chan []*Client
	catchup  chan struct{}    // the broker may have missed messages
	fetchc   chan fetchResult // store reads the keeper did for the loop
	wantc    chan fetchRequest
	errc     chan roomError // errors for the keeper to report
	overflow atomic.Bool    // deliver found the inbox full
	ready    chan struct{}  // closed once the loop knows its start
	heard    chan struct{}  // closed once the room is subscribed to its broker
	quit     chan struct{}  // closed to stop the loop and the keeper
	done     chan struct{}  // closed when the loop has returned
	final    []*Client      // the loop's clients when it returned

	frames frameCache // encoded history frames shared by replays

	mu          sync.Mutex
	state       roomState
	reserved    int            // clients from reservation to leave
	wg          sync.WaitGroup // every goroutine serving the room
	stopOnce    sync.Once
	unsubscribe func()
	onIdle      func() // set by a Registry

	muxQueued *atomic.Int64 // frames queued for the Registry's connections of many rooms; nil for New

	joined  atomic.Int64
	members atomic.Int64  // the room's members on every node, when known
	local   localPresence // the users of the room's clients on this node
	stats   counters
}

type roomState int

const (
	open roomState = iota
	shuttingDown
	closed
)

// New returns a room configured by opts, ready to serve clients through
// Handler. It subscribes to its Broker in the background, so it never
// waits for the Broker or the Store. Its name, for the Broker and the
// Store, is empty: rooms made by New that share a Broker or Store are one
// room there. Use a Registry for named rooms.
//
// New panics if opts cannot work together: WithStore given a Store other
// than the one a Broker numbers messages in (see WithStore). It panics too
// for an option that serves a Registry only, which a lone Room would
// ignore: WithIdleTimeout, WithNameValidator, WithMaxRooms, WithJoinCheck,
// WithMaxRoomsPerClient, WithPresenceEvents, WithOnRoomJoin,
// WithOnRoomLeave and WithOnPublish.
func New(opts ...Option) *Room {
	return newRoom("", mustRoomConfig(opts))
}

func newRoom(name string, cfg config) *Room {
	r := &Room{
		name:    name,
		cfg:     cfg,
		joinc:   make(chan joinRequest),
		leavec:  make(chan *Client),
		inbox:   newInbox(inboxSize),
		queryc:  make(chan chan []*Client),
		catchup: make(chan struct{}, 1),
		fetchc:  make(chan fetchResult),
		wantc:   make(chan fetchRequest, 1),
		errc:    make(chan roomError, errQueue),
		ready:   make(chan struct{}),
		heard:   make(chan struct{}),
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	r.frames.max = frameCacheBytes
	r.wg.Go(r.run)
	r.wg.Go(r.keep)
	return r
}

// Name returns the room's name: the one given to Registry.Room, or "" for a
// room made by New.
func (r *Room) Name() string { return r.name }

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

// Len returns the number of clients of the room on this node.
func (r *Room) Len() int { return int(r.joined.Load()) }

// Handler returns an http.Handler that upgrades each request to a WebSocket,
// joins the client to the room and serves it until it leaves. It answers
// non-WebSocket requests with 426 Upgrade Required, malformed handshakes and
// a bad resume parameter with 400, cross-origin requests with 403, refused
// authorization with the hook's status, and requests to a full, shut down
// or closed room with 503 Service Unavailable. The checks run in that order,
// the authorize hook last.
//
// A client may ask to resume after the last message it saw by adding
// "?resume=EPOCH:SEQ" to the URL; see the package documentation.
func (r *Room) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		serveClient(&r.cfg, w, req, nil, func(maker) (*Room, error) { return r, r.reserve() }, (*Room).release)
	})
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

// awaitReady waits until the room has read its start from the store, so
// that every message published after a join reaches the client, and reports
// whether it has within the write timeout.
func (r *Room) awaitReady() bool {
	select {
	case <-r.ready:
		return true
	default:
	}
	t := time.NewTimer(r.cfg.writeTimeout)
	defer t.Stop()
	select {
	case <-r.ready:
		return true
	case <-r.done:
		return true // join reports it
	case <-t.C:
		return false
	}
}

// joinRequest asks the loop to add a client; the loop answers on at with
// the cut: the position of the last numbered message it delivered before
// the client was in, so that the client gets every message after it live
// and is owed the ones up to it from the history.
type joinRequest struct {
	c  *Client
	at chan cut
}

// cut is where a client's live messages start; known is false when the
// loop does not know its place (it is catching up after a resync).
type cut struct {
	pos   position
	known bool
}

// join adds c to the loop's set and returns the cut, or reports false if
// the room has stopped.
func (r *Room) join(c *Client) (cut, bool) {
	req := joinRequest{c: c, at: make(chan cut, 1)}
	select {
	case r.joinc <- req:
		r.joined.Add(1)
		return <-req.at, true
	case <-r.done:
		return cut{}, false
	}
}

// joinCut returns where the live messages of a client that joined at k
// start: the loop's cut, or the store's last message if the loop did not
// know its place.
func (r *Room) joinCut(ctx context.Context, k cut) (position, error) {
	if k.known {
		return k.pos, nil
	}
	return r.position(ctx)
}

func (r *Room) leave(c *Client) {
	select {
	case r.leavec <- c:
	case <-r.done:
	}
	r.joined.Add(-1)
}

// stop stops the loop, the keeper and the broker subscription, once.
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
// for it, then a close frame with websocket.StatusGoingAway (1001). A
// client that cannot take its writes is dropped within the write timeout.
// Shutdown returns when every goroutine of the room has ended, or with
// ctx.Err() when ctx ends first (Close then finishes the job).
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
		if c.mux != nil {
			c.evict(r, &reply{Op: "left", Room: r.name, Reason: "closed"})
			continue
		}
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
		if c.mux != nil {
			c.evict(r, &reply{Op: "left", Room: r.name, Reason: "closed"})
			continue
		}
		c.closeNow()
	}
	r.wg.Wait()
	return nil
}

// reportError counts err, logs it and passes it to the error hook, on the
// calling goroutine: a client's own, never the loop's (see reportAsync).
func (r *Room) reportError(c *Client, err error) {
	r.stats.errors.Add(1)
	r.report(c, err)
}

func (r *Room) report(c *Client, err error) { r.cfg.report(c, r.name, err) }

// report logs err and passes it to the error hook.
func (cfg *config) report(c *Client, room string, err error) {
	if c != nil {
		cfg.logger.Warn("wsroom: client error", "room", room, "client", c.id, "err", err)
	} else {
		cfg.logger.Warn("wsroom: room error", "room", room, "err", err)
	}
	if cfg.onError != nil {
		defer func() {
			if p := recover(); p != nil {
				cfg.logger.Error("wsroom: error hook panicked", "room", room, "panic", p)
			}
		}()
		cfg.onError(c, err)
	}
}

// roomError is an error the loop or a broker callback hands to the keeper
// to report.
type roomError struct {
	c   *Client
	err error
}

// reportAsync counts err and hands it to the keeper, which logs it and runs
// the error hook, so that the caller (the loop, a broker's goroutine) never
// waits for them. When errQueue errors wait already, err is counted only.
func (r *Room) reportAsync(c *Client, err error) {
	r.stats.errors.Add(1)
	select {
	case r.errc <- roomError{c, err}:
	default:
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
	return runHook(c, name, fn, r.reportError)
}

func runHook(c *Client, name string, fn func() error, report func(*Client, error)) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &hookPanic{name: name, value: p}
			report(c, err)
		}
	}()
	return fn()
}

// position returns the position of the room's last stored message.
func (r *Room) position(ctx context.Context) (position, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.writeTimeout)
	defer cancel()
	last, err := r.cfg.store.Last(ctx, r.name, 1)
	if err != nil || len(last) == 0 {
		return position{}, err
	}
	return position{epoch: last[0].Epoch, seq: last[0].Seq}, nil
}

// readAfter reads at most n messages after p, returning a *gapError if the
// history cannot serve p.
func (r *Room) readAfter(ctx context.Context, p position, n int) ([]Message, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.writeTimeout)
	defer cancel()
	msgs, err := r.cfg.store.After(ctx, r.name, p.epoch, p.seq, n)
	if errors.Is(err, ErrGap) {
		return nil, r.gap(ctx, p)
	}
	return msgs, err
}
