package wsroom

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Client is one WebSocket connection in a room. Clients are made by the
// room's handler; a Client is valid from the join hook until the leave hook,
// and its methods are safe to call concurrently, also after it has left.
type Client struct {
	id       string
	identity any
	room     *Room
	conn     *websocket.Conn
	fc       *frameConn
	resume   *position

	ctx    context.Context
	cancel context.CancelCauseFunc

	mu        sync.Mutex
	queue     []outFrame    // frames waiting for the writer
	closeReq  *closeRequest // set once: how the connection ends
	closing   chan struct{} // closed when closeReq is set
	writing   bool          // a writer goroutine is running (or has finished the connection)
	replaying bool          // history is being written: live frames wait
	stopped   bool          // the client is gone: start no goroutine
	pingTimer *time.Timer
	wg        sync.WaitGroup // writers and pings

	// Written by one writer at a time (writing is the token).
	lastEpoch string
	lastSeq   uint64
}

// outFrame is an encoded message waiting to be written. data is shared by
// every client the message goes to.
type outFrame struct {
	seq   uint64
	epoch string
	data  []byte
}

type closeMode int

const (
	closeDrain   closeMode = iota // write what is queued, then the close frame
	closeDiscard                  // drop what is queued, write the close frame
	closeAbort                    // drop the connection without a close frame
)

type closeRequest struct {
	code   websocket.StatusCode
	reason string
	mode   closeMode
	err    error // why the client leaves, for the leave hook
}

func newClient(r *Room, conn *websocket.Conn, fc *frameConn, identity any, resume *position) *Client {
	c := &Client{
		id:        newID(),
		identity:  identity,
		room:      r,
		conn:      conn,
		fc:        fc,
		resume:    resume,
		closing:   make(chan struct{}),
		replaying: true,
	}
	c.ctx, c.cancel = context.WithCancelCause(context.Background())
	return c
}

// ID returns the client's identifier: random, unique, fixed for the life of
// the connection.
func (c *Client) ID() string { return c.id }

// Identity returns what the authorize hook returned for this client, or nil.
func (c *Client) Identity() any { return c.identity }

// Room returns the room the client is in.
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
	r := c.room
	if _, err := r.cfg.codec.Decode(data); err != nil {
		return err
	}
	payload, err := r.cfg.codec.Encode(Message{Time: time.Now(), Ephemeral: true, Data: data})
	if err != nil {
		return err
	}
	if !c.enqueue(outFrame{data: r.newFrame(payload)}, false) {
		return ErrClosed
	}
	return nil
}

// Close writes what is already queued for the client, then closes its
// connection with code and reason (at most 123 bytes). It returns at once;
// the leave hook runs when the client has gone.
func (c *Client) Close(code websocket.StatusCode, reason string) error {
	c.fail(&closeRequest{code: code, reason: reason, mode: closeDrain})
	return nil
}

// ErrSlow is the leave reason of a client closed because its send buffer
// was full (see CloseSlow).
var ErrSlow = errors.New("wsroom: send buffer full")

// ErrPongTimeout is the leave reason of a client that did not answer a ping
// in time.
var ErrPongTimeout = errors.New("wsroom: no pong in time")

// queuePool recycles queues, so an idle client holds none.
var queuePool = sync.Pool{New: func() any { return new([]outFrame) }}

// enqueue queues f for writing, applying the slow-client policy when the
// queue is full. It never blocks and reports whether f was queued (or
// written).
//
// When inline is set (see Room.fanout), nothing is queued and no writer
// runs, enqueue first tries to write the frame at once, without waiting:
// most of the time the socket takes it whole, and no goroutine has to wake
// up. Whatever the socket does not take goes to the writer.
func (c *Client) enqueue(f outFrame, inline bool) bool {
	r := c.room
	c.mu.Lock()
	if c.closeReq != nil {
		c.mu.Unlock()
		return false
	}
	if inline && r.rawFrames && len(c.queue) == 0 && !c.writing && !c.replaying && !c.stopped {
		c.writing = true // the writer's token, held for this attempt
		c.mu.Unlock()
		rest, err := c.writeNow(f)
		c.mu.Lock()
		c.writing = false
		if err != nil {
			c.mu.Unlock()
			c.fail(&closeRequest{mode: closeAbort, err: err})
			return false
		}
		if rest == nil {
			if len(c.queue) > 0 || c.closeReq != nil {
				c.startWriterLocked() // for what came in meanwhile
			}
			c.mu.Unlock()
			return true
		}
		// The unwritten part goes first, before anything queued meanwhile.
		c.queue = append(c.queueOrNew(), outFrame{})
		copy(c.queue[1:], c.queue)
		c.queue[0] = outFrame{data: rest}
		c.startWriterLocked()
		c.mu.Unlock()
		return true
	}
	defer c.mu.Unlock()
	if len(c.queue) >= r.cfg.sendBuffer {
		switch r.cfg.slowPolicy {
		case DropNewest:
			r.stats.dropped.Add(1)
			return false
		case DropOldest:
			n := copy(c.queue, c.queue[1:])
			c.queue[n] = outFrame{}
			c.queue = c.queue[:n]
			r.stats.dropped.Add(1)
		default:
			r.stats.closedSlow.Add(1)
			c.setCloseLocked(&closeRequest{code: websocket.StatusPolicyViolation, reason: "wsroom: send buffer full", mode: closeDiscard, err: ErrSlow})
			return false
		}
	}
	c.queue = append(c.queueOrNew(), f)
	c.startWriterLocked()
	return true
}

// queueOrNew returns the queue, or an empty one from the pool if there is
// none.
func (c *Client) queueOrNew() []outFrame {
	if c.queue == nil {
		return (*queuePool.Get().(*[]outFrame))[:0]
	}
	return c.queue
}

// writeNow writes f if the socket takes it without waiting, holding the
// writer's token. It returns the part not written (nil when all of it, or
// when the client has it already), or the part to hand to the writer.
func (c *Client) writeNow(f outFrame) ([]byte, error) {
	if f.seq != 0 {
		if f.epoch == c.lastEpoch && f.seq <= c.lastSeq {
			return nil, nil
		}
		c.lastEpoch, c.lastSeq = f.epoch, f.seq
	}
	n, ok, err := c.fc.tryWrite(f.data)
	if err != nil {
		return nil, err
	}
	if !ok {
		return f.data, nil
	}
	if n == len(f.data) {
		c.room.stats.messagesOut.Add(1)
		c.room.stats.bytesOut.Add(uint64(n))
		return nil, nil
	}
	if n > 0 {
		c.room.stats.bytesOut.Add(uint64(n))
	}
	return f.data[n:], nil
}

// requestClose asks for the connection to be closed with code and reason.
func (c *Client) requestClose(code websocket.StatusCode, reason string, mode closeMode) {
	c.fail(&closeRequest{code: code, reason: reason, mode: mode})
}

// fail sets how the connection ends, unless that is set already. An abort
// closes the connection at once, from any goroutine; other requests are
// carried out by the writer after (or instead of) what is queued.
func (c *Client) fail(req *closeRequest) {
	c.mu.Lock()
	set := c.setCloseLocked(req)
	c.mu.Unlock()
	if set && req.mode == closeAbort {
		c.conn.CloseNow()
	}
}

// setCloseLocked records req if no close request is set yet, and makes sure
// a writer will carry it out.
func (c *Client) setCloseLocked(req *closeRequest) bool {
	if c.closeReq != nil {
		return false
	}
	c.closeReq = req
	close(c.closing)
	if req.mode != closeAbort {
		c.startWriterLocked()
	}
	return true
}

// startWriterLocked starts a writer unless one runs, history is being
// replayed, or the client is gone. Writers exit when the queue is empty, so
// an idle client has no writer goroutine.
func (c *Client) startWriterLocked() {
	if c.writing || c.replaying || c.stopped {
		return
	}
	c.writing = true
	c.wg.Add(1)
	go c.writeLoop()
}

// serve runs the client from join to leave, on a goroutine of its own.
func (c *Client) serve() {
	r := c.room
	defer r.release()
	if r.cfg.admit != nil {
		if err := r.hook(c, "admit", func() error { return r.cfg.admit(c) }); err != nil {
			code, reason := websocket.StatusPolicyViolation, truncate(err.Error(), 123)
			var ce websocket.CloseError
			if errors.As(err, &ce) {
				code, reason = ce.Code, ce.Reason
			}
			c.conn.Close(code, reason)
			c.cancel(err)
			return
		}
	}
	if !r.join(c) {
		if r.isClosedNow() {
			c.conn.CloseNow() // Close is immediate
		} else {
			c.conn.Close(websocket.StatusGoingAway, "wsroom: room shutting down")
		}
		c.cancel(ErrClosed)
		if r.cfg.admit != nil && r.cfg.onLeave != nil {
			// Let the leave hook release what admit claimed.
			r.hook(c, "leave", func() error { r.cfg.onLeave(c, ErrClosed); return nil })
		}
		return
	}
	r.stats.joins.Add(1)
	r.cfg.logger.Debug("wsroom: join", "room", r.name, "client", c.id)
	presence, _ := r.cfg.broker.(Presence)
	if presence != nil {
		c.presence(func(ctx context.Context) error { return presence.Join(ctx, r.name, c.member()) })
	}
	if r.cfg.onJoin != nil {
		r.hook(c, "join", func() error { r.cfg.onJoin(c); return nil })
	}
	c.conn.SetReadLimit(r.cfg.readLimit)

	req := c.replay()
	c.mu.Lock()
	c.replaying = false
	if req != nil {
		c.setCloseLocked(req)
	}
	c.startWriterLocked()
	if req == nil && r.cfg.pingInterval > 0 {
		c.pingTimer = time.AfterFunc(r.cfg.pingInterval, c.ping)
	}
	c.mu.Unlock()
	if req != nil && req.mode == closeAbort {
		c.conn.CloseNow()
	}

	err := c.readLoop()
	c.fail(&closeRequest{mode: closeAbort, err: err})
	c.mu.Lock()
	c.stopped = true
	if c.pingTimer != nil {
		c.pingTimer.Stop()
	}
	reason := c.closeReq.err
	c.mu.Unlock()
	c.wg.Wait()
	r.leave(c)

	if reason == nil {
		reason = err
	}
	if presence != nil {
		c.presence(func(ctx context.Context) error { return presence.Leave(ctx, r.name, c.id) })
	}
	c.cancel(reason)
	r.stats.leaves.Add(1)
	r.cfg.logger.Debug("wsroom: leave", "room", r.name, "client", c.id, "reason", reason)
	if r.cfg.onLeave != nil {
		r.hook(c, "leave", func() error { r.cfg.onLeave(c, reason); return nil })
	}
}

// presence runs a presence update, bounded by the write timeout.
func (c *Client) presence(update func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.room.cfg.writeTimeout)
	defer cancel()
	if err := update(ctx); err != nil {
		c.room.reportError(c, fmt.Errorf("wsroom: presence: %w", err))
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

// readLoop reads, checks and publishes the client's messages until the
// connection fails or the client must be closed.
func (c *Client) readLoop() error {
	r := c.room
	cfg := &r.cfg
	var lim *limiter
	if cfg.rateLimit > 0 {
		lim = newLimiter(cfg.rateLimit, cfg.rateBurst)
	}
	for {
		typ, data, err := c.conn.Read(context.Background())
		if err != nil {
			if errors.Is(err, websocket.ErrMessageTooBig) {
				r.stats.closedInvalid.Add(1)
				r.reportError(c, err)
			}
			return err
		}
		r.stats.messagesIn.Add(1)
		r.stats.bytesIn.Add(uint64(len(data)))
		if typ != cfg.codec.MessageType() {
			return c.reject(websocket.StatusUnsupportedData, fmt.Errorf("wsroom: %v frame in a room of %v frames", typ, cfg.codec.MessageType()))
		}
		if lim != nil {
			if wait := lim.take(time.Now()); wait > 0 {
				if cfg.ratePolicy == CloseOverLimit {
					r.stats.closedRate.Add(1)
					c.requestClose(websocket.StatusPolicyViolation, "wsroom: rate limit exceeded", closeDiscard)
					return ErrRateLimited
				}
				r.stats.throttled.Add(1)
				t := time.NewTimer(wait)
				select {
				case <-t.C:
				case <-c.closing:
					t.Stop()
					return ErrClosed
				}
			}
		}
		payload, err := cfg.codec.Decode(data)
		if err != nil {
			return c.reject(websocket.StatusInvalidFramePayloadData, err)
		}
		if cfg.onMessage != nil {
			if err := r.hook(c, "message", func() error { return cfg.onMessage(c, payload) }); err != nil {
				code := websocket.StatusPolicyViolation
				if errors.As(err, new(*hookPanic)) {
					code = websocket.StatusInternalError
				} else {
					r.reportError(c, err)
				}
				c.requestClose(code, truncate(err.Error(), 123), closeDiscard)
				return err
			}
			continue
		}
		err = r.publish(context.Background(), Message{Time: time.Now(), From: c.id, Data: payload})
		if errors.Is(err, ErrClosed) {
			return err
		}
		if err != nil {
			r.reportError(c, err)
		}
	}
}

// ErrRateLimited is the leave reason of a client closed for sending faster
// than its rate limit (see CloseOverLimit).
var ErrRateLimited = errors.New("wsroom: rate limit exceeded")

// reject reports bad input from the client and closes it with code.
func (c *Client) reject(code websocket.StatusCode, err error) error {
	c.room.stats.closedInvalid.Add(1)
	c.room.reportError(c, err)
	c.requestClose(code, truncate(err.Error(), 123), closeDiscard)
	return err
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// writeLoop writes what is queued until the queue is empty or the
// connection ends. One writer runs at a time.
func (c *Client) writeLoop() {
	defer c.wg.Done()
	for {
		c.mu.Lock()
		batch, req := c.queue, c.closeReq
		c.queue = nil
		if len(batch) == 0 && req == nil {
			c.writing = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		if req != nil && req.mode != closeDrain {
			batch = batch[:0]
		}
		err := c.write(batch)
		if batch != nil {
			clear(batch)
			batch = batch[:0]
			queuePool.Put(&batch)
		}
		if err != nil {
			c.fail(&closeRequest{mode: closeAbort, err: err})
			return // writing stays set: the connection is finished
		}
		if req != nil {
			if req.mode == closeAbort {
				c.conn.CloseNow()
			} else {
				c.conn.Close(req.code, req.reason)
			}
			return
		}
	}
}

// iovPool recycles the lists of frames handed to writev.
var iovPool = sync.Pool{New: func() any { return new(net.Buffers) }}

// write writes a batch of frames, skipping messages the client already has.
func (c *Client) write(batch []outFrame) error {
	if len(batch) == 0 {
		return nil
	}
	r := c.room
	iovp := iovPool.Get().(*net.Buffers)
	iov := (*iovp)[:0]
	var bytes uint64
	for _, f := range batch {
		if f.seq != 0 {
			if f.epoch == c.lastEpoch && f.seq <= c.lastSeq {
				continue
			}
			c.lastEpoch, c.lastSeq = f.epoch, f.seq
		}
		iov = append(iov, f.data)
		bytes += uint64(len(f.data))
	}
	n := len(iov)
	var err error
	if r.rawFrames {
		err = c.fc.writeFrames(iov)
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.writeTimeout)
		for _, f := range iov {
			if err = c.conn.Write(ctx, r.cfg.codec.MessageType(), f); err != nil {
				break
			}
		}
		cancel()
	}
	clear(iov[:n])
	*iovp = iov[:0]
	iovPool.Put(iovp)
	if err != nil {
		return err
	}
	r.stats.messagesOut.Add(uint64(n))
	r.stats.bytesOut.Add(bytes)
	return nil
}

// ping pings the client from the ping timer's goroutine and drops it if no
// pong comes back in time; then it sets the timer for the next ping.
func (c *Client) ping() {
	r := c.room
	c.mu.Lock()
	if c.stopped || c.closeReq != nil {
		c.mu.Unlock()
		return
	}
	c.wg.Add(1)
	c.mu.Unlock()
	defer c.wg.Done()

	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	// The timer records the reason before the connection fails.
	timeout := time.AfterFunc(r.cfg.pongTimeout, func() {
		r.stats.closedPing.Add(1)
		c.fail(&closeRequest{mode: closeAbort, err: ErrPongTimeout})
		cancel()
	})
	err := c.conn.Ping(ctx)
	timeout.Stop()
	if err != nil {
		// No pong (the timer set the reason), or the connection failed.
		c.fail(&closeRequest{mode: closeAbort, err: err})
		return
	}
	c.mu.Lock()
	if !c.stopped {
		c.pingTimer.Reset(r.cfg.pingInterval)
	}
	c.mu.Unlock()
}

// replay writes the history the client is owed before live messages: what
// it missed, when it resumes, or the room's recent history. It runs before
// any writer, and returns how to close the client if it cannot be served.
func (c *Client) replay() *closeRequest {
	r := c.room
	if c.resume == nil && r.cfg.history == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(c.ctx, r.cfg.writeTimeout)
	defer cancel()
	var msgs []Message
	var err error
	if p := c.resume; p != nil {
		msgs, err = r.cfg.store.After(ctx, r.name, p.epoch, p.seq, 0)
		if errors.Is(err, ErrGap) {
			r.stats.resyncs.Add(1)
			return &closeRequest{code: StatusResync, reason: "wsroom: cannot resume, resync", mode: closeDiscard, err: err}
		}
		c.lastEpoch, c.lastSeq = p.epoch, p.seq
	} else {
		msgs, err = r.cfg.store.Last(ctx, r.name, r.cfg.history)
	}
	if err != nil {
		r.reportError(c, fmt.Errorf("wsroom: read history: %w", err))
		return &closeRequest{code: websocket.StatusTryAgainLater, reason: "wsroom: history unavailable", mode: closeDiscard, err: err}
	}
	batch := make([]outFrame, 0, len(msgs))
	for _, m := range msgs {
		payload, err := r.cfg.codec.Encode(m)
		if err != nil {
			r.reportError(c, err)
			continue
		}
		batch = append(batch, outFrame{seq: m.Seq, epoch: m.Epoch, data: r.newFrame(payload)})
	}
	if err := c.write(batch); err != nil {
		return &closeRequest{mode: closeAbort, err: err}
	}
	r.stats.replayed.Add(uint64(len(batch)))
	return nil
}

// limiter is a token bucket.
type limiter struct {
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	last   time.Time
}

func newLimiter(rate float64, burst int) *limiter {
	return &limiter{rate: rate, burst: float64(burst), tokens: float64(burst)}
}

// take takes a token at now and returns how long to wait first (0 if none).
func (l *limiter) take(now time.Time) time.Duration {
	if !l.last.IsZero() {
		l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	}
	l.last = now
	l.tokens--
	if l.tokens >= 0 {
		return 0
	}
	return time.Duration(-l.tokens / l.rate * float64(time.Second))
}
