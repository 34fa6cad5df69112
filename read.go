package wsroom

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/coder/websocket"
)

// This file holds a client's read path: what it sends is read, limited,
// checked and published, or the client is told why not.

// ErrRateLimited is the leave reason of a client closed for sending faster
// than its rate limit (see CloseOverLimit), or for pinging faster than the
// room answers.
var ErrRateLimited = errors.New("wsroom: rate limit exceeded")

// ErrUnavailable is the leave reason of a client closed with
// websocket.StatusTryAgainLater (1013) because an engine failed: the Broker
// kept failing to take its message for the publish retry time (see
// WithPublishRetry), and it should send the message again; or the Store
// could not tell a new room where its history ends within the write
// timeout, and it should connect again.
var ErrUnavailable = errors.New("wsroom: broker or store unavailable")

// readLoop reads, checks and publishes the client's messages until the
// connection fails or the client must be closed.
func (c *Client) readLoop() error {
	r := c.room
	cfg := &r.cfg
	lim := c.newLimiter()
	for {
		data, err := c.readFrame(lim, cfg.codec.MessageType())
		if err != nil {
			return err
		}
		if data == nil {
			continue // refused; the connection is closing
		}
		payload, err := r.check(data)
		if err != nil {
			// Closing: what the client sent before it knew is still
			// published.
			c.reject(websocket.StatusInvalidFramePayloadData, err)
			continue
		}
		if cfg.onMessage != nil {
			if err := r.hook(c, "message", func() error { return cfg.onMessage(c, payload) }); err != nil {
				code := websocket.StatusPolicyViolation
				if errors.As(err, new(*hookPanic)) {
					code = websocket.StatusInternalError
				} else {
					r.reportError(c, err)
				}
				c.requestClose(code, truncate(err.Error(), maxReason), closeDiscard)
				return err
			}
			continue
		}
		if err := c.publish(Message{Time: time.Now(), From: c.id, Data: payload}); err != nil {
			return err
		}
	}
}

// newLimiter returns the client's rate limiter, or nil if it has none.
func (c *Client) newLimiter() *limiter {
	if c.cfg.rateLimit <= 0 {
		return nil
	}
	return newLimiter(c.cfg.rateLimit, c.cfg.rateBurst)
}

// readFrame reads the client's next frame, which must be of type typ, and
// applies the rate limit: it waits (Throttle) or closes the client
// (CloseOverLimit). An error ends the client; a frame of another type is
// refused (the client is closed with 1003) and returned as nil, and the
// reader goes on until the client's close frame.
//
// Control frames are read only here: while the reader does anything else
// (a publish retried through an outage, a join reading history, a throttle),
// no pong can be read, so the ping timeout spares a client whose reader is
// busy (see ping).
func (c *Client) readFrame(lim *limiter, typ websocket.MessageType) ([]byte, error) {
	c.inRead.Store(true)
	got, data, err := c.conn.Read(context.Background())
	c.inRead.Store(false)
	if err != nil {
		if errors.Is(err, websocket.ErrMessageTooBig) {
			c.stats.closedInvalid.Add(1)
			c.report(err)
		}
		return nil, err
	}
	c.stats.messagesIn.Add(1)
	c.stats.bytesIn.Add(uint64(len(data)))
	c.reads.Add(1)
	if got != typ {
		c.reject(websocket.StatusUnsupportedData, fmt.Errorf("wsroom: %v frame where %v frames are read", got, typ))
		return nil, nil
	}
	if lim != nil {
		if wait := lim.take(time.Now()); wait > 0 {
			if c.cfg.ratePolicy == CloseOverLimit {
				c.stats.closedRate.Add(1)
				c.requestClose(websocket.StatusPolicyViolation, "wsroom: rate limit exceeded", closeDiscard)
				return nil, ErrRateLimited
			}
			c.stats.throttled.Add(1)
			if !c.sleep(wait) {
				return nil, ErrClosed
			}
		}
	}
	return data, nil
}

// publish publishes a message a client of one room sent. While the broker
// fails, it retries (see publishRetry); if the broker still fails after the
// publish retry time, the client is closed with
// websocket.StatusTryAgainLater, so that it knows to send again: that
// message and every one it sent after it are not published (the reader
// stops), while every one before it was.
//
// A resync of the room while the message is retried (see resyncClose)
// waits for the publish: if it fails, the client must learn that its
// message was not published (1013), which a 4000 would not tell it.
func (c *Client) publish(m Message) error {
	c.publishing.Store(true)
	_, err := c.publishRetry(c.room, m, "", false)
	c.mu.Lock() // resyncClose defers under mu while publishing is set
	c.publishing.Store(false)
	deferred := c.deferredClose
	c.deferredClose = nil
	c.mu.Unlock()
	if errors.Is(err, ErrUnavailable) {
		c.stats.closedUnavailable.Add(1)
		c.requestClose(websocket.StatusTryAgainLater, "wsroom: message not published, send it again", closeDrain)
	} else if deferred != nil {
		c.fail(deferred)
	}
	return err
}

// resyncClose closes a client of one room whose room cannot give it every
// message (see loop.resync), at once, or once the message it is publishing
// is done.
func (c *Client) resyncClose(req *closeRequest) {
	c.mu.Lock()
	if c.publishing.Load() && c.closeReq == nil {
		c.deferredClose = req
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	c.fail(req)
}

// publishRetry publishes a message a client sent to r and, if seq is set,
// returns it as numbered (when the Broker is a Sequencer). While the broker fails, it
// retries with backoff, and the client's next message waits: the client is
// slowed, not lied to. After the publish retry time it returns an error
// wrapping ErrUnavailable.
//
// A non-empty key makes each attempt a PublishOnce of the room's Broker, if
// it is a Deduplicator (see publishSeq), so that an attempt whose answer
// was lost, or a retry of the publish on another node, is stored once.
func (c *Client) publishRetry(r *Room, m Message, key string, seq bool) (Message, error) {
	backoff := 20 * time.Millisecond
	start := time.Now()
	deadline := start.Add(r.cfg.publishRetry)
	for {
		// An attempt that hangs (an engine that does not answer) ends well
		// within the retry time, so that an engine back after an outage
		// takes the message at the next attempt.
		limit := min(r.cfg.writeTimeout, attemptTimeout(r.cfg.publishRetry), max(time.Until(deadline), minAttempt))
		ctx, cancel := context.WithTimeout(c.ctx, limit)
		out := m
		var err error
		if seq {
			out, err = r.publishSeq(ctx, m, key)
		} else {
			err = r.publish(ctx, m)
		}
		cancel()
		if err == nil || errors.Is(err, ErrClosed) {
			return out, err
		}
		r.reportError(c, err)
		// A client being closed (a resync, a shutdown) can no longer be
		// told that its message failed: it is retried for as long as the
		// close waits for the client (closeMax).
		if time.Now().Add(backoff).After(deadline) && (!c.closeAsked() || time.Since(start) > closeMax) {
			return Message{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		r.stats.publishRetries.Add(1)
		if !c.sleep(backoff) {
			return Message{}, ErrClosed
		}
		backoff = min(2*backoff, time.Second)
	}
}

// closeAsked reports whether the connection is to be closed gracefully.
func (c *Client) closeAsked() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeReq != nil && c.closeReq.mode != closeAbort
}

// minAttempt is the least time a publish attempt is given, and maxAttempt
// the most: each attempt has a fifth of the publish retry time between the
// two.
const (
	minAttempt = 50 * time.Millisecond
	maxAttempt = 2 * time.Second
)

func attemptTimeout(retry time.Duration) time.Duration {
	return min(max(retry/5, minAttempt), maxAttempt)
}

// sleep waits for d, or until the connection is finished; it reports
// whether it waited the whole time.
func (c *Client) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.aborted:
		return false
	}
}

// reject reports bad input from the client and closes it with code; bad
// input from a client that is closing already is not reported again.
func (c *Client) reject(code websocket.StatusCode, err error) error {
	c.mu.Lock()
	closing := c.closeReq != nil
	c.mu.Unlock()
	if closing {
		return err
	}
	c.stats.closedInvalid.Add(1)
	c.report(err)
	c.requestClose(code, truncate(err.Error(), maxReason), closeDiscard)
	return err
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
