package wsroom

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// Client is one WebSocket connection in a room. Clients are made by the
// room's handler; a Client is valid from the join hook until the leave hook,
// and its methods are safe to call concurrently, also after it has left.
//
// An idle client has one goroutine, its reader, which serves it from join
// to leave (read.go; for a room's handler, the handler's goroutine). Others
// run only while they have work: a writer while frames wait (write.go), the
// history's sender after the client joins (replay.go), and the ping timer.
type Client struct {
	id       string
	identity any
	room     *Room       // its room; nil for a connection of many rooms
	home     *membership // its place in room; nil for many rooms
	mux      *muxConn    // the rooms of a connection of many rooms
	cfg      *config     // the room's or the registry's
	raw      bool        // frames go to the socket as built (no compression negotiated)
	stats    *counters   // the room's, or the registry's for many rooms
	conn     *websocket.Conn
	fc       *frameConn
	resume   *position
	joinedAt cut // where the live messages of a client of one room start

	ctx        context.Context
	cancel     context.CancelCauseFunc
	readDone   chan struct{} // closed when the reader has stopped reading
	aborted    chan struct{} // closed when the connection is finished
	reads      atomic.Int64  // messages read
	inRead     atomic.Bool   // the reader is waiting for a frame (see readFrame)
	publishing atomic.Bool   // a message the client sent is being published
	abortOnce  sync.Once

	mu            sync.Mutex
	queue         []outFrame    // frames waiting for the writer
	partial       bool          // a frame is begun in fc: a writer must finish it
	closeReq      *closeRequest // set once: how the connection ends
	deferredClose *closeRequest // a resync waiting for the publish under way (one room)
	closing       chan struct{} // closed when closeReq is set; many rooms only
	writing       bool          // a writer goroutine is running (or has finished the connection)
	stopped       bool          // the client is gone: start no goroutine
	drained       chan struct{} // signalled by the writer when the queue is empty; many rooms only
	replies       int           // replies queued or being written (see reply)
	repliesOut    chan struct{} // signalled by the writer when it wrote replies; many rooms only
	pingTimer     *time.Timer
	wg            sync.WaitGroup  // writers, pings and a ping flood's report
	evictions     []chan struct{} // a client of many rooms: closed as evictions end (mux.go); guarded by mu
}

// membership is a client's place in one room.
type membership struct {
	room *Room

	// Under the client's mu.
	replaying  bool       // history is being sent: live frames wait
	held       []outFrame // live frames waiting for the history (many rooms)
	overflow   bool       // live frames were dropped meanwhile: read them back from the store
	told       bool       // the client was sent "joined" (many rooms)
	evicted    *reply     // the room evicted the client before it was told it joined
	leaveAfter string     // server code asked to remove the client during its join
	sentEpoch  string     // the end of the history the client was sent, once sent:
	sentSeq    uint64     // live frames up to it are not queued again

	// Written by one writer at a time (writing is the token): the last
	// numbered message of the room the client was sent.
	lastEpoch string
	lastSeq   uint64
}

func newClient(r *Room, conn *websocket.Conn, fc *frameConn, identity any, resume *position) *Client {
	c := newConn(&r.cfg, &r.stats, conn, fc, identity)
	c.room, c.resume = r, resume
	c.home = &membership{room: r, replaying: true}
	return c
}

// newConn returns a client with what both kinds of connection share.
func newConn(cfg *config, stats *counters, conn *websocket.Conn, fc *frameConn, identity any) *Client {
	c := &Client{
		id:       newID(),
		identity: identity,
		cfg:      cfg,
		raw:      fc.framed,
		stats:    stats,
		conn:     conn,
		fc:       fc,
		readDone: make(chan struct{}),
		aborted:  make(chan struct{}),
	}
	c.ctx, c.cancel = context.WithCancelCause(context.Background())
	fc.abuse = func() {
		// Called from a write: the report, which runs the application's
		// hooks, and the close go on from a goroutine the client waits for.
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.stopped {
			return
		}
		stats.closedRate.Add(1)
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.report(errPingFlood)
			c.requestClose(websocket.StatusPolicyViolation, errPingFlood.Error(), closeDiscard)
		}()
	}
	return c
}

// hook runs an application hook for the client, as Room.hook does.
func (c *Client) hook(name string, fn func() error) error {
	if c.room != nil {
		return c.room.hook(c, name, fn)
	}
	return c.mux.g.hook(c, name, fn)
}

// admit runs the admit hook, if any, and reports whether the client may
// stay; a refused client is closed with the hook's code and reason.
func (c *Client) admit() bool {
	if c.cfg.admit == nil {
		return true
	}
	err := c.hook("admit", func() error { return c.cfg.admit(c) })
	if err == nil {
		return true
	}
	code, reason := websocket.StatusPolicyViolation, err.Error()
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		code, reason = ce.Code, ce.Reason
	}
	c.conn.Close(code, truncate(reason, maxReason))
	c.cancel(err)
	return false
}

// report counts err and passes it to the logger and the error hook, on the
// calling goroutine.
func (c *Client) report(err error) {
	if c.room != nil {
		c.room.reportError(c, err)
		return
	}
	c.stats.errors.Add(1)
	c.cfg.report(c, "", err)
}

var errPingFlood = errors.New("wsroom: too many pings")

// ID returns the client's identifier: random, unique, fixed for the life of
// the connection.
func (c *Client) ID() string { return c.id }

// Identity returns what the authorize hook returned for this client, or nil.
func (c *Client) Identity() any { return c.identity }

// Room returns the room the client is in, or nil for a connection of many
// rooms (see Registry.MuxHandler and Client.Rooms).
func (c *Client) Room() *Room { return c.room }

// Context returns a context that is cancelled, with the leave reason as its
// cause, when the client has left.
func (c *Client) Context() context.Context { return c.ctx }

// Send queues data for this client alone. The message is ephemeral: no
// sequence number, not stored. Like Publish it checks data with the codec
// and returns once the message is queued, not written; the slow-client
// policy applies if the client's buffer is full. It returns ErrClosed if the
// client is leaving or has left.
func (c *Client) Send(ctx context.Context, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if c.mux != nil {
		return c.sendMux(data)
	}
	r := c.room
	data, err := r.check(data)
	if err != nil {
		return err
	}
	payload, err := r.encode(Message{Time: time.Now(), Ephemeral: true, Data: data})
	if err != nil {
		return err
	}
	if !c.enqueue(outFrame{data: r.newFrame(payload)}, false) {
		return ErrClosed
	}
	return nil
}

// maxReason is the longest close reason a close frame carries.
const maxReason = 123

// Close writes what is already queued for the client, then closes its
// connection with code and reason. A reason longer than 123 bytes is cut
// at a character boundary to fit. It returns at once; the leave hook runs
// when the client has gone. A client that cannot take its writes is
// dropped within the write timeout.
func (c *Client) Close(code websocket.StatusCode, reason string) error {
	c.fail(&closeRequest{code: code, reason: truncate(reason, maxReason), mode: closeDrain})
	return nil
}

// truncate cuts s to at most n bytes, at a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// ErrSlow is the leave reason of a client closed because its send buffer
// was full (see CloseSlow).
var ErrSlow = errors.New("wsroom: send buffer full")

// ErrPongTimeout is the leave reason of a client that did not answer a ping
// in time.
var ErrPongTimeout = errors.New("wsroom: no pong in time")

// serve runs the client from join to leave, on a goroutine of its own.
func (c *Client) serve() {
	r := c.room
	defer r.release()
	defer c.discardQueue() // if it ends before it joined
	if !c.admit() {
		return
	}
	ready := r.awaitReady()
	var joined bool
	if ready {
		c.joinedAt, joined = r.join(c)
	}
	if !joined {
		reason := error(ErrClosed)
		if !ready {
			reason = ErrUnavailable
			c.conn.Close(websocket.StatusTryAgainLater, "wsroom: history unavailable, try again")
		} else if r.isClosedNow() {
			c.conn.CloseNow() // Close is immediate
		} else {
			c.conn.Close(websocket.StatusGoingAway, "wsroom: room shutting down")
		}
		c.cancel(reason)
		if r.cfg.admit != nil && r.cfg.onLeave != nil {
			// Let the leave hook release what admit claimed.
			r.hook(c, "leave", func() error { r.cfg.onLeave(c, reason); return nil })
		}
		return
	}
	r.stats.joins.Add(1)
	r.cfg.logger.Debug("wsroom: join", "room", r.name, "client", c.id)
	r.cfg.events.connected(c)
	r.presenceJoin(c)
	if r.cfg.onJoin != nil {
		r.hook(c, "join", func() error { r.cfg.onJoin(c); return nil })
	}
	c.conn.SetReadLimit(r.cfg.readLimit)

	// History goes out before live messages, which queue meanwhile, from a
	// goroutine that ends when it is sent; this one reads at once, so that
	// pings and a close are answered during a long replay, and an idle
	// client has no other goroutine.
	replayed := make(chan struct{})
	go func() {
		defer close(replayed)
		c.replayThenWrite()
	}()
	err := c.readLoop()
	close(c.readDone)
	// A close the reader asked for during the replay (a publish that
	// failed, bad input) is carried out by the writer the replay starts
	// when it ends: wait for it before the client stops.
	<-replayed
	// Unless a close was asked for, which the writer carries out (or aborts
	// within the write timeout), the connection ends now.
	c.fail(&closeRequest{mode: closeAbort, err: err})
	c.mu.Lock()
	c.stopped = true
	if c.pingTimer != nil {
		c.pingTimer.Stop()
	}
	reason := c.closeReq.err
	c.mu.Unlock()
	c.wg.Wait()
	c.discardQueue()
	r.leave(c)

	if reason == nil {
		reason = err
	}
	r.presenceLeave(c, disconnectReason(reason))
	r.cfg.events.disconnected(c, reason)
	c.cancel(reason)
	r.stats.leaves.Add(1)
	r.cfg.logger.Debug("wsroom: leave", "room", r.name, "client", c.id, "reason", reason)
	if r.cfg.onLeave != nil {
		r.hook(c, "leave", func() error { r.cfg.onLeave(c, reason); return nil })
	}
}

// replayThenWrite sends the client its room's history (see replay), then lets
// the writer send what queued meanwhile and starts the ping timer.
func (c *Client) replayThenWrite() {
	req := c.replay()
	c.mu.Lock()
	for req == nil && c.home.overflow {
		// More live messages came during the history than the queue
		// holds: send what the store has after the history, then look
		// again.
		c.home.overflow = false
		from := position{epoch: c.home.lastEpoch, seq: c.home.lastSeq}
		c.mu.Unlock()
		req = c.replayFrom(from, -1)
		c.mu.Lock()
	}
	c.home.replaying = false
	// The writer token is this goroutine's until the writer starts.
	c.home.sentEpoch, c.home.sentSeq = c.home.lastEpoch, c.home.lastSeq
	if req != nil {
		c.setCloseLocked(req)
	}
	c.startWriterLocked()
	if req == nil && c.cfg.pingInterval > 0 && !c.stopped {
		c.pingTimer = time.AfterFunc(c.cfg.pingInterval, c.ping)
	}
	c.mu.Unlock()
	if req != nil && req.mode == closeAbort {
		c.conn.CloseNow()
	}
}

// member returns the client's presence entry.
func (c *Client) member() Member {
	m := Member{ID: c.id}
	switch v := c.identity.(type) {
	case string:
		m.Info = v
	case fmt.Stringer:
		m.Info = v.String()
	}
	return m
}
