package wsroom

import (
	"context"
	"errors"
	"fmt"
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
	resume   *position

	ctx    context.Context
	cancel context.CancelCauseFunc

	wake       chan struct{} // a frame or a close request is waiting
	writerDone chan struct{}
	pinging    chan struct{} // holds a token while a ping is in flight

	mu       sync.Mutex
	queue    []outFrame
	closeReq *closeRequest

	// Writer goroutine only.
	spare     []outFrame
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

func newClient(r *Room, conn *websocket.Conn, identity any, resume *position) *Client {
	c := &Client{
		id:         newID(),
		identity:   identity,
		room:       r,
		conn:       conn,
		resume:     resume,
		wake:       make(chan struct{}, 1),
		writerDone: make(chan struct{}),
		pinging:    make(chan struct{}, 1),
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
	codec := c.room.cfg.codec
	if _, err := codec.Decode(data); err != nil {
		return err
	}
	frame, err := codec.Encode(Message{Time: time.Now(), Ephemeral: true, Data: data})
	if err != nil {
		return err
	}
	if !c.enqueue(outFrame{data: frame}) {
		return ErrClosed
	}
	return nil
}

// Close writes what is already queued for the client, then closes its
// connection with code and reason (at most 123 bytes). It returns at once;
// the leave hook runs when the client has gone.
func (c *Client) Close(code websocket.StatusCode, reason string) error {
	c.requestClose(code, reason, closeDrain)
	return nil
}

// enqueue queues f for writing, applying the slow-client policy when the
// queue is full. It never blocks and reports whether f was queued.
func (c *Client) enqueue(f outFrame) bool {
	r := c.room
	c.mu.Lock()
	if c.closeReq != nil {
		c.mu.Unlock()
		return false
	}
	if len(c.queue) >= r.cfg.sendBuffer {
		switch r.cfg.slowPolicy {
		case DropNewest:
			c.mu.Unlock()
			r.stats.dropped.Add(1)
			return false
		case DropOldest:
			n := copy(c.queue, c.queue[1:])
			c.queue = c.queue[:n]
			r.stats.dropped.Add(1)
		default:
			c.closeReq = &closeRequest{code: websocket.StatusPolicyViolation, reason: "wsroom: send buffer full", mode: closeDiscard, err: ErrSlow}
			c.mu.Unlock()
			r.stats.closedSlow.Add(1)
			c.signal()
			return false
		}
	}
	c.queue = append(c.queue, f)
	c.mu.Unlock()
	c.signal()
	return true
}

// ErrSlow is the leave reason of a client closed because its send buffer
// was full (see CloseSlow).
var ErrSlow = errors.New("wsroom: send buffer full")

// ErrPongTimeout is the leave reason of a client that did not answer a ping
// in time.
var ErrPongTimeout = errors.New("wsroom: no pong in time")

func (c *Client) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// requestClose asks the writer to close the connection; the first request
// wins.
func (c *Client) requestClose(code websocket.StatusCode, reason string, mode closeMode) {
	c.fail(&closeRequest{code: code, reason: reason, mode: mode})
}

func (c *Client) fail(req *closeRequest) {
	c.mu.Lock()
	if c.closeReq == nil {
		c.closeReq = req
	}
	c.mu.Unlock()
	c.signal()
}

// take returns what is queued and any close request.
func (c *Client) take() ([]outFrame, *closeRequest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	batch := c.queue
	c.queue, c.spare = c.spare[:0], nil
	return batch, c.closeReq
}

// serve runs the client from join to leave, on the handler's goroutine.
func (c *Client) serve() {
	r := c.room
	defer r.release()
	if r.cfg.admit != nil {
		if err := r.cfg.admit(c); err != nil {
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
		c.conn.Close(websocket.StatusGoingAway, "wsroom: room closed")
		c.cancel(ErrClosed)
		return
	}
	r.stats.joins.Add(1)
	r.cfg.logger.Debug("wsroom: join", "room", r.name, "client", c.id)
	presence, _ := r.cfg.broker.(Presence)
	if presence != nil {
		c.presence(func(ctx context.Context) error { return presence.Join(ctx, r.name, c.member()) })
	}
	if r.cfg.onJoin != nil {
		r.cfg.onJoin(c)
	}
	c.conn.SetReadLimit(r.cfg.readLimit)
	r.wg.Go(c.writeLoop)

	err := c.readLoop()
	c.fail(&closeRequest{mode: closeAbort, err: err})
	<-c.writerDone
	r.leave(c)

	c.mu.Lock()
	reason := c.closeReq.err
	c.mu.Unlock()
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
		r.cfg.onLeave(c, reason)
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
				case <-c.writerDone:
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
			if err := cfg.onMessage(c, payload); err != nil {
				r.reportError(c, err)
				c.requestClose(websocket.StatusPolicyViolation, truncate(err.Error(), 123), closeDiscard)
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

// writeLoop writes the client's queue until a close request, on its own
// goroutine. It sends history first when the client resumes or the room
// replays history to newcomers.
func (c *Client) writeLoop() {
	defer close(c.writerDone)
	r := c.room
	if err := c.replay(); err != nil {
		c.finish(err)
		return
	}
	var tick <-chan time.Time
	if r.cfg.pingInterval > 0 {
		t := time.NewTicker(r.cfg.pingInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-c.wake:
		case <-tick:
			c.ping()
			continue
		}
		batch, req := c.take()
		if req != nil && req.mode != closeDrain {
			batch = batch[:0]
		}
		if err := c.write(batch); err != nil {
			c.finish(&closeRequest{mode: closeAbort, err: err})
			return
		}
		clear(batch)
		c.spare = batch[:0]
		if req != nil {
			c.finish(req)
			return
		}
	}
}

// write writes a batch of frames, skipping messages the client already has.
func (c *Client) write(batch []outFrame) error {
	if len(batch) == 0 {
		return nil
	}
	r := c.room
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.writeTimeout)
	defer cancel()
	typ := r.cfg.codec.MessageType()
	var n, bytes uint64
	for _, f := range batch {
		if f.seq != 0 {
			if f.epoch == c.lastEpoch && f.seq <= c.lastSeq {
				continue
			}
			c.lastEpoch, c.lastSeq = f.epoch, f.seq
		}
		if err := c.conn.Write(ctx, typ, f.data); err != nil {
			return err
		}
		n++
		bytes += uint64(len(f.data))
	}
	r.stats.messagesOut.Add(n)
	r.stats.bytesOut.Add(bytes)
	return nil
}

// finish closes the connection as req says; the reader then ends.
func (c *Client) finish(req *closeRequest) {
	c.mu.Lock()
	if c.closeReq == nil {
		c.closeReq = req
	}
	c.mu.Unlock()
	if req.mode == closeAbort {
		c.conn.CloseNow()
		return
	}
	c.conn.Close(req.code, req.reason)
}

// ping sends a ping on a goroutine of its own, unless one is in flight, and
// closes the client if no pong comes back in time.
func (c *Client) ping() {
	select {
	case c.pinging <- struct{}{}:
	default:
		return
	}
	r := c.room
	r.wg.Go(func() {
		defer func() { <-c.pinging }()
		ctx, cancel := context.WithCancel(c.ctx)
		defer cancel()
		// The timer records the reason before the connection fails.
		timer := time.AfterFunc(r.cfg.pongTimeout, func() {
			r.stats.closedPing.Add(1)
			c.fail(&closeRequest{mode: closeAbort, err: ErrPongTimeout})
			cancel()
		})
		c.conn.Ping(ctx)
		timer.Stop()
	})
}

// replay writes the history the client is owed before live messages: what
// it missed, when it resumes, or the room's recent history.
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
		frame, err := r.cfg.codec.Encode(m)
		if err != nil {
			r.reportError(c, err)
			continue
		}
		batch = append(batch, outFrame{seq: m.Seq, epoch: m.Epoch, data: frame})
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
