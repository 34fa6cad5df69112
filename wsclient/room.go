package wsclient

import (
	"context"
	"encoding/base64"
	"fmt"
	"iter"
	"strconv"
	"strings"
	"time"
)

// Message is a message of a room.
type Message struct {
	Room  string
	Epoch string // the epoch of Seq; "" for an ephemeral message
	Seq   uint64 // the message's number in the room, from 1; 0 for an ephemeral message
	Time  time.Time
	From  string // the id of the publishing connection; "" for server code's messages
	Kind  Kind   // which kind of payload Data holds
	// Data is the payload: the JSON value published (KindData), the UTF-8
	// text (KindText) or the bytes (KindBytes).
	Data []byte
}

// Kind says how a message's payload came (wsroom.v3, item 16).
type Kind uint8

// The kinds of payload: the "data", "text" and "bytes" members of a msg.
const (
	KindData  Kind = iota // a JSON value, as clients publish
	KindText              // UTF-8 text that is not JSON, from server code or a raw text codec
	KindBytes             // bytes that are not UTF-8, from a binary codec
)

// String returns "data", "text" or "bytes".
func (k Kind) String() string {
	switch k {
	case KindData:
		return "data"
	case KindText:
		return "text"
	case KindBytes:
		return "bytes"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Member is a member of a room, as the server describes it.
type Member struct {
	ID   string `json:"id"`   // the connection's id, as in Message.From
	Info string `json:"info"` // the identity the server gave it
}

// ResyncError is what Room.Next returns, without ending the room, when the
// server's history can no longer give the room every message after the
// last one its reader got (trimmed, or lost by the server). The reader
// should drop what it holds of the room: the messages that follow are
// those of a new join, as Join's options ask (or, when the server's
// history moved to a new epoch, every message of that epoch).
type ResyncError struct {
	Room   string
	Reason string
}

// Error names the room and the server's reason.
func (e *ResyncError) Error() string {
	return fmt.Sprintf("wsclient: room %q must be resynchronised: %s", e.Room, e.Reason)
}

// LeftError is the error that ends a room the client is no longer in:
// Reason is "requested" after Room.Leave, "removed" when server code
// removed the client, "closed" when the room closed, or a reason the
// server's application gave.
type LeftError struct {
	Room   string
	Reason string
}

// Error names the room and the reason.
func (e *LeftError) Error() string {
	return fmt.Sprintf("wsclient: left room %q: %s", e.Room, e.Reason)
}

// Error is a request's failure as the server answered it (PROTOCOL.md,
// section 6): Code is one of "bad_request", "unknown_op", "bad_room",
// "not_joined", "forbidden", "too_many_rooms", ... The client sends again
// by itself, with the same id, what was answered "unavailable" or
// "internal"; the other codes are final.
type Error struct {
	Code    string
	Message string
	Room    string
}

// Error returns the code and the server's message.
func (e *Error) Error() string { return fmt.Sprintf("wsclient: %s: %s", e.Code, e.Message) }

// JoinOption configures Client.Join.
type JoinOption func(*Room)

// Last asks for the room's last n messages (at most the server's bound)
// before live ones, on the first join and on a join after a resync without
// a position to resume from.
func Last(n int) JoinOption {
	return func(r *Room) { r.last = max(n, 0) }
}

// Members asks for the room's members at each join; see Room.Members.
func Members() JoinOption {
	return func(r *Room) { r.wantMembers = true }
}

// Room is the client's membership of one room, made by Client.Join. It
// lasts across reconnections until Leave, the Client's Close, or the
// server removing the client (see LeftError).
//
// Room is safe for concurrent use; its messages are meant for one reader
// at a time (Next or Messages), each message going to one of them.
type Room struct {
	c           *Client
	name        string
	last        int
	wantMembers bool
	ready       chan struct{} // closed at the first joined, or when the room ends

	// Under c.mu.
	epoch    string // position of the last message given to the reader
	seq      uint64
	hasPos   bool
	joinID   string // of the join in flight
	joinMode int
	onServer bool // joined, or a join sent, on the current connection
	behind   bool // the buffer filled up: messages are dropped until it empties
	leaving  bool
	leaveID  string
	joined   bool // once
	members  []Member
	buf      buffer     // for the reader; buf.err is why the room ended
	pubs     []*pending // in order
	retry    *time.Timer
	tries    int // of the join, answered "unavailable" or "internal"
}

// How a join asks for history.
const (
	joinFresh  = iota // no position: last n
	joinResume        // resume from the position
)

// Join joins the room called name and returns once the server has said so
// (or failed it, with an *Error, or ctx is done). After a reconnection the
// Client joins it again by itself, resuming after the last message the
// room took. A join the server answers "unavailable" or "internal" is made
// again after a while (with backoff), until ctx is done. A name the Client
// is in already is an error.
func (c *Client) Join(ctx context.Context, name string, opts ...JoinOption) (*Room, error) {
	r := &Room{c: c, name: name, ready: make(chan struct{})}
	r.buf = newBuffer(&c.mu, func() {
		if r.behind {
			r.catchUpLocked()
		}
	})
	for _, o := range opts {
		o(r)
	}
	c.mu.Lock()
	switch {
	case c.err != nil:
		c.mu.Unlock()
		return nil, c.err
	case c.rooms[name] != nil:
		c.mu.Unlock()
		return nil, fmt.Errorf("wsclient: in room %q already", name)
	}
	c.rooms[name] = r
	c.joinLocked(r)
	c.mu.Unlock()
	select {
	case <-r.ready:
	case <-ctx.Done():
		c.mu.Lock()
		if !r.joined {
			r.quitLocked()
			r.endLocked(ctx.Err())
		}
		c.mu.Unlock()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !r.joined {
		return nil, r.buf.err
	}
	return r, nil
}

// Name returns the room's name.
func (r *Room) Name() string { return r.name }

// Members returns the room's members as of the last join, if Join was
// given the Members option and the room is within the server's presence
// bound; else nil.
func (r *Room) Members() []Member {
	r.c.mu.Lock()
	defer r.c.mu.Unlock()
	return r.members
}

// Done returns a channel closed when the room has ended; Next returns why
// once the buffered messages are read.
func (r *Room) Done() <-chan struct{} { return r.buf.done }

// Next returns the room's next message, waiting for one until ctx is done.
// It returns a *ResyncError, without ending the room, when the room must be
// resynchronised; and, once the room has ended and its buffered messages
// are read, the error that ended it (ErrClosed, a *LeftError, a
// *DialError, an *Error) at every call.
//
// Each room buffers WithBuffer messages. When its reader falls further
// behind, the room drops messages (ephemeral ones for good) and, once the
// reader has read every buffered one, joins again from the last of them,
// so that the reader still gets every numbered message, or a
// *ResyncError if the server's history no longer holds them.
func (r *Room) Next(ctx context.Context) (Message, error) {
	return r.buf.next(ctx)
}

// Messages returns an iterator over the room's messages, as Next returns
// them: a *ResyncError is yielded and the iteration goes on; any other
// error is yielded last.
func (r *Room) Messages(ctx context.Context) iter.Seq2[Message, error] {
	return messages(ctx, r.Next)
}

func messages(ctx context.Context, next func(context.Context) (Message, error)) iter.Seq2[Message, error] {
	return func(yield func(Message, error) bool) {
		for {
			m, err := next(ctx)
			_, resync := err.(*ResyncError)
			if !yield(m, err) || err != nil && !resync {
				return
			}
		}
	}
}

// Leave leaves the room and waits for the server to confirm it, or for
// ctx. The room ends with a *LeftError (reason "requested"), and its
// publishes waiting for an ack return it.
func (r *Room) Leave(ctx context.Context) error {
	c := r.c
	c.mu.Lock()
	if r.buf.err == nil && !r.leaving {
		r.leaving = true
		r.leaveID = c.newIDLocked()
		if !r.onServer || !c.sendLocked(&outFrame{Op: "leave", Room: r.name, ID: r.leaveID}) {
			r.endLocked(&LeftError{Room: r.name, Reason: "requested"})
		}
	}
	c.mu.Unlock()
	select {
	case <-r.buf.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// joinLocked sends a join for r if it should be joined and can be.
func (c *Client) joinLocked(r *Room) {
	if c.sess == nil || r.onServer || r.behind || r.leaving || r.buf.err != nil {
		return
	}
	f := &outFrame{Op: "join", Room: r.name, ID: c.newIDLocked(), Members: r.wantMembers}
	switch {
	case r.hasPos && r.epoch != "":
		f.Resume, r.joinMode = r.epoch+":"+strconv.FormatUint(r.seq, 10), joinResume
	case r.hasPos:
		// A position in an empty history: ":0" asks for every message of
		// whichever epoch the room has now.
		f.Resume, r.joinMode = ":0", joinResume
	default:
		f.Last, r.joinMode = r.last, joinFresh
	}
	r.joinID, r.onServer = f.ID, true
	c.sendLocked(f)
}

// joinedLocked takes the answer to the join in flight.
func (r *Room) joinedLocked(f *inFrame) {
	r.joinID, r.tries = "", 0
	switch r.joinMode {
	case joinFresh:
		r.epoch, r.seq = f.Epoch, f.Seq-min(f.Seq, uint64(r.last))
	}
	r.hasPos = true
	r.members = f.Members
	if !r.joined {
		r.joined = true
		close(r.ready)
	}
	for _, p := range r.pubs {
		if !p.sent {
			r.c.sendPubLocked(p)
		}
	}
}

// joinFailedLocked takes an error answering the join in flight.
func (r *Room) joinFailedLocked(f *inFrame) {
	r.joinID, r.onServer = "", false
	switch {
	case f.Code == "resync":
		r.resyncLocked(f.Message, f.Resume)
	case retryable(f.Code):
		if r.retry != nil {
			r.retry.Stop()
		}
		c := r.c
		r.tries++
		r.retry = time.AfterFunc(c.cfg.backoff(r.tries-1), func() {
			c.mu.Lock()
			c.joinLocked(r)
			c.mu.Unlock()
		})
	default:
		r.endLocked(&Error{Code: f.Code, Message: f.Message, Room: r.name})
	}
}

// resyncLocked reports a resync to the reader and joins again, from resume
// ("EPOCH:0") if the server gave one, else afresh.
func (r *Room) resyncLocked(reason, resume string) {
	r.joinID, r.onServer = "", false
	r.hasPos = false
	if i := strings.LastIndexByte(resume, ':'); i > 0 {
		if seq, err := strconv.ParseUint(resume[i+1:], 10, 64); err == nil {
			r.epoch, r.seq, r.hasPos = resume[:i], seq, true
		}
	}
	r.buf.pushLocked(item{err: &ResyncError{Room: r.name, Reason: reason}})
	r.c.joinLocked(r)
}

// msgLocked takes a message of the room.
func (r *Room) msgLocked(f *inFrame) {
	if r.joinID != "" || !r.onServer || r.behind {
		return // of a membership before the join in flight, or dropped
	}
	if f.Seq != 0 && f.Epoch == r.epoch && f.Seq <= r.seq {
		return // had it
	}
	if r.buf.nmsgs >= r.c.cfg.buffer {
		if f.Seq != 0 {
			r.behind = true
		}
		return
	}
	m := Message{Room: r.name, Epoch: f.Epoch, Seq: f.Seq, From: f.From, Data: f.Data}
	switch {
	case f.Text != nil:
		m.Kind, m.Data = KindText, []byte(*f.Text)
	case f.Bytes != nil:
		b, err := base64.StdEncoding.DecodeString(*f.Bytes)
		if err != nil {
			return // not this protocol's
		}
		m.Kind, m.Data = KindBytes, b
	}
	if f.Time != 0 {
		m.Time = time.UnixMilli(f.Time)
	}
	if f.Seq != 0 {
		r.epoch, r.seq, r.hasPos = f.Epoch, f.Seq, true
	}
	r.buf.pushLocked(item{msg: m})
}

// catchUpLocked joins again a room that dropped messages, now that its
// reader has read the buffer.
func (r *Room) catchUpLocked() {
	r.behind = false
	if r.onServer {
		r.leaveID = r.c.newIDLocked()
		r.c.sendLocked(&outFrame{Op: "leave", Room: r.name, ID: r.leaveID})
		r.onServer = false
	}
	r.c.joinLocked(r)
}

// disconnectedLocked forgets the server's side of the room when the
// connection is lost.
func (r *Room) disconnectedLocked() {
	r.joinID, r.onServer = "", false
	if r.leaving {
		r.endLocked(&LeftError{Room: r.name, Reason: "requested"})
	}
}

// quitLocked leaves the room on the server, if it is there, without waiting.
func (r *Room) quitLocked() {
	if r.onServer {
		r.c.sendLocked(&outFrame{Op: "leave", Room: r.name})
		r.onServer = false
	}
}

// endLocked ends the room with err: it is forgotten by the client, its
// publishes fail with err, and its reader gets err after the buffer.
func (r *Room) endLocked(err error) {
	if !r.buf.endLocked(err) {
		return
	}
	if r.c.rooms[r.name] == r {
		delete(r.c.rooms, r.name)
	}
	if r.retry != nil {
		r.retry.Stop()
	}
	for _, p := range r.pubs {
		p.finishLocked(Ack{}, err)
	}
	if !r.joined {
		close(r.ready)
	}
}
