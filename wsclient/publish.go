package wsclient

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"
)

// Ack is the server's answer to a publish: the message's place in the
// room's history (none for an ephemeral message, nor when the server's
// broker does not number messages at publish: the ack is then matched by
// its request id alone, and the place is in the message's Seq).
type Ack struct {
	Room  string
	Epoch string
	Seq   uint64
}

// ErrDisconnected is returned by Room.PublishEphemeral when the connection
// was lost before the server answered (an ephemeral message is not sent
// again), and by Stream.Send between connections.
var ErrDisconnected = errors.New("wsclient: connection lost before the ack")

// pending is a publish waiting for its ack.
type pending struct {
	room      *Room
	id        string
	frame     outFrame
	ephemeral bool
	sent      bool // on the current connection
	retry     *time.Timer
	tries     int // errors "unavailable" and "internal" answered so far
	ack       Ack
	err       error
	done      chan struct{}
}

// Publish publishes data, which must be a JSON value, to the room and
// waits until the server has numbered and stored it, returning its place.
// The publish has a request id of its own: if the connection is lost
// before the ack, it is sent again, with the same id, once the room is
// joined again, so that the server publishes it once (PROTOCOL.md, section
// 5; the server remembers ids for 2 minutes). If the server answers
// "unavailable" or "internal", it is sent again after a while (with
// backoff, as reconnections), with the same id, until ctx is done. If ctx
// is done first, Publish returns ctx.Err() and the message may or may not
// be published. A publish the server refuses for good returns an *Error;
// one past the client's bounds returns ErrQueueFull (see WithMaxPending and
// WithQueue).
func (r *Room) Publish(ctx context.Context, data []byte) (Ack, error) {
	return r.publish(ctx, data, false)
}

// PublishEphemeral publishes data, which must be a JSON value, to the room
// as an ephemeral message (not numbered, not stored, never replayed: for
// typing indicators, cursors) and waits until the server has sent it on. It
// is not sent again after a lost connection: ErrDisconnected.
func (r *Room) PublishEphemeral(ctx context.Context, data []byte) error {
	_, err := r.publish(ctx, data, true)
	return err
}

func (r *Room) publish(ctx context.Context, data []byte, ephemeral bool) (Ack, error) {
	if !json.Valid(data) {
		return Ack{}, errors.New("wsclient: publish of data that is not JSON")
	}
	c := r.c
	c.mu.Lock()
	if err := r.buf.err; err != nil {
		c.mu.Unlock()
		return Ack{}, err
	}
	sendNow := r.onServer && r.joinID == ""
	if len(c.pending) >= c.cfg.maxPending ||
		c.hello && c.limits.AcksPerRoom > 0 && len(r.pubs) >= c.limits.AcksPerRoom ||
		sendNow && c.sess != nil && len(c.sess.out) >= c.queueLimitLocked() {
		c.mu.Unlock()
		return Ack{}, ErrQueueFull
	}
	p := &pending{room: r, id: c.newIDLocked(), ephemeral: ephemeral, done: make(chan struct{})}
	p.frame = outFrame{Op: "pub", Room: r.name, ID: p.id, Data: data, Ephemeral: ephemeral}
	c.pending[p.id] = p
	r.pubs = append(r.pubs, p)
	if sendNow {
		c.sendPubLocked(p)
	}
	c.mu.Unlock()
	select {
	case <-p.done:
	case <-ctx.Done():
		c.mu.Lock()
		p.finishLocked(Ack{}, ctx.Err())
		c.mu.Unlock()
	}
	return p.ack, p.err
}

func (c *Client) sendPubLocked(p *pending) {
	p.sent = c.sendLocked(&p.frame)
}

// pubReplyLocked takes the server's ack or error for p.
func (c *Client) pubReplyLocked(p *pending, f *inFrame) {
	switch {
	case f.Op == "ack":
		p.finishLocked(Ack{Room: f.Room, Epoch: f.Epoch, Seq: f.Seq}, nil)
	case retryable(f.Code) && !p.ephemeral:
		p.sent = false
		if p.retry != nil {
			p.retry.Stop()
		}
		r := p.room
		p.tries++
		p.retry = time.AfterFunc(c.cfg.backoff(p.tries-1), func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.pending[p.id] == p && !p.sent && r.onServer && r.joinID == "" {
				c.sendPubLocked(p)
			}
		})
	default:
		p.finishLocked(Ack{}, &Error{Code: f.Code, Message: f.Message, Room: f.Room})
	}
}

// retryable reports whether a request answered with the error code should
// be sent again later with the same id (wsroom.v3, item 12).
func retryable(code string) bool { return code == "unavailable" || code == "internal" }

// finishLocked ends p with its result, unless it has ended.
func (p *pending) finishLocked(ack Ack, err error) {
	c := p.room.c
	if c.pending[p.id] != p {
		return
	}
	delete(c.pending, p.id)
	r := p.room
	r.pubs = slices.DeleteFunc(slices.Clone(r.pubs), func(q *pending) bool { return q == p })
	if p.retry != nil {
		p.retry.Stop()
	}
	p.ack, p.err = ack, err
	close(p.done)
}
