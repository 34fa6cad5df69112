package natsbroker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/wsroom/wsroom"
)

// position is where a room's history ends.
type position struct {
	sseq  uint64 // stream sequence of the room's last message; 0 if none
	seq   uint64 // its room sequence
	epoch string // its epoch; for an empty room, the epoch to start
}

// appender serialises one room's appends on this Broker and remembers the
// room's last known position.
type appender struct {
	refs int        // guarded by Broker.mu
	mu   sync.Mutex // held for a whole Append

	// unsure is the last message whose Append failed after it was sent to
	// JetStream, so that may have been stored; guarded by mu.
	unsure *unsureAppend

	// epoch is the room's epoch as won last found it; guarded by mu.
	epoch string

	posMu sync.Mutex
	pos   position
	known bool
}

// unsureAppend is a message that may have been stored although its Append
// failed: a publish whose acknowledgement did not come in time (one sent
// while the connection was down, say, is sent on reconnection, after its
// caller gave up). An Append of the same message again (the same From,
// Time and Data: a caller's retry) reuses its Nats-Msg-Id, so that
// JetStream's duplicate detection returns the stored one rather than
// storing it twice.
type unsureAppend struct {
	from string
	time time.Time
	data []byte
	id   string
}

func (u *unsureAppend) matches(m wsroom.Message) bool {
	return u != nil && u.from == m.From && u.time.Equal(m.Time) && bytes.Equal(u.data, m.Data)
}

// maxIdleAppenders bounds how many rooms' positions a Broker remembers
// between appends.
const maxIdleAppenders = 4096

// sseqHeader carries a stored message's stream sequence in its announcement.
const sseqHeader = "Wsroom-Stream-Seq"

// prevHeader carries, in a stored message, the stream sequence of the room's
// previous message, or 0 for the first message of an epoch, so that a room's
// recent history can be read backwards from its last message.
const prevHeader = "Wsroom-Prev-Seq"

// directMax is the most messages a read takes one by one with direct gets;
// longer reads go through a short-lived consumer from their first message.
const directMax = 64

func (b *Broker) acquireAppender(room string) (*appender, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrClosed
	}
	a := b.appenders[room]
	if a == nil {
		a = &appender{}
		b.appenders[room] = a
	}
	a.refs++
	return a, nil
}

func (b *Broker) releaseAppender(room string, a *appender) {
	b.mu.Lock()
	defer b.mu.Unlock()
	a.refs--
	if a.refs == 0 && len(b.appenders) > maxIdleAppenders {
		delete(b.appenders, room)
	}
}

// notePosition records a room position learnt from a received message.
func (b *Broker) notePosition(room string, p position) {
	b.mu.Lock()
	a := b.appenders[room]
	b.mu.Unlock()
	if a != nil {
		a.posMu.Lock()
		if !a.known || p.sseq > a.pos.sseq {
			a.pos, a.known = p, true
		}
		a.posMu.Unlock()
	}
}

// Append implements wsroom.Store: it numbers m, stores it in the stream and
// announces it to the room's subscribers, exactly as Publish does for a
// message that is not ephemeral. The returned message has Seq, Epoch and
// Time (to the millisecond) set, Ephemeral false and Except empty.
//
// A publish is sent only while the connection is up: during a
// reconnection, Append waits for it (or for ctx), rather than leaving the
// message in the connection's reconnect buffer, to be stored after the
// caller gave up. An Append that fails after sending the message may have
// stored it all the same; if the caller appends the same message again
// (the same From, Time and Data), it is not stored twice: Append returns
// the stored one.
func (b *Broker) Append(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	a, err := b.acquireAppender(room)
	if err != nil {
		return wsroom.Message{}, err
	}
	defer b.releaseAppender(room, a)
	a.mu.Lock()
	defer a.mu.Unlock()

	if m.Time.IsZero() {
		m.Time = time.Now()
	}
	// The same for every attempt, and for an Append again of a message
	// that may have been stored, so that a retried publish is deduplicated.
	id := newID()
	if a.unsure.matches(m) {
		id = a.unsure.id
	}
	key := unsureAppend{from: m.From, time: m.Time, data: m.Data}
	m.Time = time.UnixMilli(m.Time.UnixMilli())
	m.Ephemeral, m.Except = false, ""
	sent, first := false, true
	out, _, err := b.appendLoop(ctx, a, room, m, func() string {
		// A message that lost its position (see won) was deleted, and
		// its ID is spent: the next attempt takes another.
		if !first {
			id = newID()
		}
		first = false
		return id
	}, &sent, false)
	key.id = id
	switch {
	case err == nil:
		a.unsure = nil
	case sent:
		key.data = bytes.Clone(key.data) // the caller may reuse m.Data
		a.unsure = &key
	}
	return out, err
}

// appendLoop stores m for Append and PublishOnce, with the message ID
// nextID returns (called once first, then each time a stored attempt lost
// its position; see won), setting *sent once a publish is sent. dup reports that JetStream answered
// that a message with id was stored already (within the stream's duplicate
// window); the stored one is returned. It is announced again unless once is
// set and this call sent no earlier attempt (a publish of PublishOnce that
// another call stored, and announced).
func (b *Broker) appendLoop(ctx context.Context, a *appender, room string, m wsroom.Message, nextID func() string, sent *bool, once bool) (out wsroom.Message, dup bool, err error) {
	subj := b.hist + roomToken(room)
	id := nextID()
	transient, conflicts := 0, 0
	// lost makes the next attempt read the room's position again and take
	// a new message ID, after a conflict with a message that took pos.
	lost := func(pos position) error {
		a.posMu.Lock()
		if a.pos == pos {
			a.known = false
		}
		a.posMu.Unlock()
		conflicts++
		if conflicts > 2 {
			return sleep(ctx, time.Duration(rand.Int64N(int64(min(conflicts, 20))*int64(time.Millisecond))))
		}
		return nil
	}
	for {
		if err := ctx.Err(); err != nil {
			return wsroom.Message{}, false, err
		}
		a.posMu.Lock()
		pos, known := a.pos, a.known
		a.posMu.Unlock()
		if !known {
			var err error
			if pos, err = b.lastPosition(ctx, subj); err != nil {
				if isTransient(ctx, err) && transient < maxTransient {
					transient++
					if streamMissing(err) {
						b.checkStream(ctx, err)
					}
					if err := sleep(ctx, backoff(transient)); err != nil {
						return wsroom.Message{}, false, err
					}
					continue
				}
				return wsroom.Message{}, false, fmt.Errorf("natsbroker: reading last message of room %q: %w", room, err)
			}
			a.posMu.Lock()
			a.pos, a.known = pos, true
			a.posMu.Unlock()
		}
		m.Seq, m.Epoch = pos.seq+1, pos.epoch
		data, _ := m.MarshalBinary()
		// The expected last sequence makes pos.sseq the room's previous
		// message in the stream, or none if 0.
		hdr := nats.Header{prevHeader: []string{strconv.FormatUint(pos.sseq, 10)}}
		if err := b.awaitConnected(ctx); err != nil {
			return wsroom.Message{}, false, fmt.Errorf("natsbroker: storing message in room %q: waiting for the connection to NATS: %w", room, err)
		}
		earlier := *sent
		*sent = true
		ack, err := b.js.PublishMsg(ctx, &nats.Msg{Subject: subj, Data: data, Header: hdr},
			jetstream.WithMsgID(id),
			jetstream.WithExpectStream(b.name),
			jetstream.WithExpectLastSequencePerSubject(pos.sseq))
		switch {
		case err == nil && ack.Duplicate:
			// Stored by an earlier attempt, maybe with another position:
			// what was stored is the answer.
			got, ok, err := b.getMessage(ctx, subj, ack.Sequence, false)
			switch {
			case err != nil && isTransient(ctx, err) && transient < maxTransient:
				transient++
				if err := sleep(ctx, backoff(transient)); err != nil {
					return wsroom.Message{}, false, err
				}
				continue
			case err != nil:
				return wsroom.Message{}, false, fmt.Errorf("natsbroker: reading message %d of room %q, stored already: %w", ack.Sequence, room, err)
			case !ok:
				return wsroom.Message{}, false, fmt.Errorf("natsbroker: message %d of room %q was stored already and is gone", ack.Sequence, room)
			}
			if b.verify {
				won, err := b.won(ctx, a, subj, position{sseq: got.prev, seq: got.m.Seq - 1, epoch: got.m.Epoch}, got.sseq)
				if err != nil {
					return wsroom.Message{}, false, fmt.Errorf("natsbroker: checking message %d of room %q, stored already: %w", ack.Sequence, room, err)
				}
				if !won {
					// It lost its position: its publisher stores it anew.
					id = nextID()
					if err := lost(pos); err != nil {
						return wsroom.Message{}, false, err
					}
					continue
				}
			}
			a.posMu.Lock()
			if !a.known || got.sseq > a.pos.sseq {
				a.pos, a.known = position{sseq: got.sseq, seq: got.m.Seq, epoch: got.m.Epoch}, true
			}
			a.posMu.Unlock()
			if !once || earlier {
				// Its first attempt's caller may have given up before
				// announcing it; subscribers drop a second announcement.
				data, _ := got.m.MarshalBinary()
				b.announce(room, got.m, data, got.sseq)
			}
			return got.m, true, nil
		case err == nil:
			if b.verify {
				won, err := b.won(ctx, a, subj, pos, ack.Sequence)
				if err != nil {
					// Unknown: a retry with the same ID tells.
					return wsroom.Message{}, false, fmt.Errorf("natsbroker: checking message %d of room %q: %w", ack.Sequence, room, err)
				}
				if !won {
					// Stored, but it lost its position: it stays in the
					// stream, where readers skip it, and the message is
					// stored anew. Its ID is spent.
					id = nextID()
					if err := lost(pos); err != nil {
						return wsroom.Message{}, false, err
					}
					continue
				}
			}
			a.posMu.Lock()
			if !a.known || ack.Sequence > a.pos.sseq {
				a.pos, a.known = position{sseq: ack.Sequence, seq: m.Seq, epoch: m.Epoch}, true
			}
			a.posMu.Unlock()
			b.announce(room, m, data, ack.Sequence)
			return m, false, nil
		case isConflict(err):
			// Another node stored a message first: read the room again.
			// The ID was not used.
			if err := lost(pos); err != nil {
				return wsroom.Message{}, false, err
			}
		case isTransient(ctx, err) && transient < maxTransient:
			// Retry with the same position and message ID: if the first
			// attempt was stored, JetStream acknowledges it as a duplicate.
			transient++
			if streamMissing(err) && b.checkStream(ctx, err) {
				// Maybe a new stream: the room's position is not the same.
				a.posMu.Lock()
				a.known = false
				a.posMu.Unlock()
			}
			if err := sleep(ctx, backoff(transient)); err != nil {
				return wsroom.Message{}, false, err
			}
		default:
			return wsroom.Message{}, false, fmt.Errorf("natsbroker: storing message in room %q: %w", room, err)
		}
	}
}

// won reports whether the message of subj stored at stream sequence sseq,
// published after the room's position pos, holds that position: whether it
// is the room's next message, pos.seq+1 in pos.epoch.
//
// On a single server JetStream ensures it, by the expected last subject
// sequence of the publish. With replicas, JetStream checks that sequence
// before it proposes the message to the replicas, so that two publishes
// sent at the same moment after the same position may both be stored
// (NATS servers before 2.9.21 do so readily; later ones still may across a
// change of the stream's leader). Of such messages the first stored holds
// the position and the others lost it: they stay in the stream, but every
// reader skips them, and their publishers store their messages anew. The
// rule is that of the readers: reading a room's messages in stream order, a
// message is the room's if it is the next of the room's epoch (the
// sequence number after the last one taken); one that repeats a sequence
// number taken, or is of another epoch while the room's first stored
// message is of this one, lost its position. Since JetStream proposes
// messages in order, the messages that lost a position are stored before
// any message that follows the one that took it; and those that lost the
// first position of an epoch (two first messages of an empty room) are
// stored right after the first message, which holds the room's epoch.
//
// It costs one direct get, a few more when other messages were stored
// between pos and sseq, and one more for the first publish in each epoch
// on each node; they are made only with replicas. a.mu must be held.
func (b *Broker) won(ctx context.Context, a *appender, subj string, pos position, sseq uint64) (bool, error) {
	for from := pos.sseq + 1; from < sseq; {
		f, ok, err := b.getMessage(ctx, subj, from, true)
		if err != nil {
			return false, err
		}
		if !ok || f.sseq >= sseq {
			break
		}
		if pos.sseq == 0 || f.m.Epoch == pos.epoch && f.m.Seq == pos.seq+1 {
			// The room was not empty, or another message took the
			// position.
			return false, nil
		}
		from = f.sseq + 1
	}
	if pos.sseq == 0 || a.epoch == pos.epoch {
		a.epoch = pos.epoch
		return true, nil
	}
	f, ok, err := b.getMessage(ctx, subj, 1, true)
	if err != nil {
		return false, err
	}
	if ok && f.m.Epoch != pos.epoch {
		return false, nil // pos lost the start of its epoch
	}
	a.epoch = pos.epoch
	return true, nil
}

// lostStart reports whether last, a room's first message of an epoch, lost
// that position (see won) to first, the first message of the room still
// stored. With replicas only.
func (b *Broker) lostStart(ctx context.Context, subj string, last stored) (first stored, lost bool, err error) {
	if !b.verify || last.m.Seq != 1 {
		return stored{}, false, nil
	}
	first, ok, err := b.getMessage(ctx, subj, 1, true)
	if err != nil {
		return stored{}, false, err
	}
	return first, ok && first.sseq < last.sseq && first.m.Epoch != last.m.Epoch, nil
}

// awaitConnected waits until the connection is up, or ctx ends.
func (b *Broker) awaitConnected(ctx context.Context) error {
	for !b.nc.IsConnected() {
		if b.nc.IsClosed() {
			return nats.ErrConnectionClosed
		}
		if err := sleep(ctx, connectedPoll); err != nil {
			return err
		}
	}
	return nil
}

// connectedPoll is how often a publish waiting for the connection looks at
// it.
const connectedPoll = 10 * time.Millisecond

// announce sends a stored message to the room's subscribers on every node.
func (b *Broker) announce(room string, m wsroom.Message, data []byte, sseq uint64) {
	msg := &nats.Msg{Subject: b.live + roomToken(room), Data: data, Header: nats.Header{}}
	msg.Header.Set(sseqHeader, strconv.FormatUint(sseq, 10))
	if err := b.nc.PublishMsg(msg); err != nil {
		// Stored anyway: subscribers read it from the stream when they
		// notice the gap.
		b.report(fmt.Errorf("natsbroker: announcing seq %d of room %q: %w", m.Seq, room, err))
	}
}

const maxTransient = 4

func backoff(attempt int) time.Duration {
	return min(50*time.Millisecond<<attempt, time.Second)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// isTransient reports whether err may go away if the request is repeated.
func isTransient(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	return errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrConnectionReconnecting) ||
		errors.Is(err, nats.ErrDisconnected)
}

// lastPosition reads where the history on subj ends. For an empty room it
// returns a fresh epoch.
func (b *Broker) lastPosition(ctx context.Context, subj string) (position, error) {
	last, ok, err := b.lastMessage(ctx, subj)
	if err != nil {
		return position{}, err
	}
	if !ok {
		return position{epoch: newID()}, nil
	}
	pos := position{sseq: last.sseq, seq: last.m.Seq, epoch: last.m.Epoch}
	first, lost, err := b.lostStart(ctx, subj, last)
	if err != nil {
		return position{}, err
	}
	if lost {
		// The room's last message is its first: the next one follows
		// it, after the one that lost.
		pos.seq, pos.epoch = first.m.Seq, first.m.Epoch
	}
	return pos, nil
}

// lastOfRoom reads the room's last message, as lastMessage, skipping one
// that lost the start of an epoch (see won).
func (b *Broker) lastOfRoom(ctx context.Context, subj string) (stored, bool, error) {
	last, ok, err := b.lastMessage(ctx, subj)
	if err != nil || !ok {
		return last, ok, err
	}
	first, lost, err := b.lostStart(ctx, subj, last)
	if err != nil {
		return stored{}, false, err
	}
	if lost {
		return first, true, nil
	}
	return last, true, nil
}

// firstOfSeq returns the first message stored with m's epoch and sequence
// number: m, or, with replicas, one stored before it that took the
// position m lost (see won).
func (b *Broker) firstOfSeq(ctx context.Context, subj string, m stored) (stored, error) {
	if !b.verify || !m.link {
		return m, nil
	}
	f, ok, err := b.getMessage(ctx, subj, m.prev+1, true)
	if err != nil {
		return stored{}, err
	}
	if ok && f.sseq < m.sseq && f.m.Epoch == m.m.Epoch && f.m.Seq == m.m.Seq {
		return f, nil
	}
	return m, nil
}

// stored is a message read from the stream.
type stored struct {
	m    wsroom.Message
	sseq uint64 // its stream sequence
	prev uint64 // the stream sequence of the room's previous message; 0 if none
	link bool   // prev is known: the message has prevHeader
}

// lastMessage reads the last message on subj with a direct get; ok is false
// if there is none.
func (b *Broker) lastMessage(ctx context.Context, subj string) (last stored, ok bool, err error) {
	raw, err := b.direct(ctx, func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
		return b.stream.GetLastMsgForSubject(ctx, subj)
	})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return stored{}, false, nil
	}
	if err != nil {
		return stored{}, false, err
	}
	last, err = b.decodeRaw(raw)
	return last, err == nil, err
}

// getMessage reads, with a direct get, the message at stream sequence sseq,
// or with next the first message on subj at or after it. ok is false if
// there is none.
func (b *Broker) getMessage(ctx context.Context, subj string, sseq uint64, next bool) (msg stored, ok bool, err error) {
	var opts []jetstream.GetMsgOpt
	if next {
		opts = append(opts, jetstream.WithGetMsgSubject(subj))
	}
	raw, err := b.direct(ctx, func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
		return b.stream.GetMsg(ctx, sseq, opts...)
	})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return stored{}, false, nil
	}
	if err != nil {
		return stored{}, false, err
	}
	if raw.Subject != subj {
		// Another room's message took the place of one that is gone.
		return stored{}, false, nil
	}
	msg, err = b.decodeRaw(raw)
	return msg, err == nil, err
}

// directTimeout bounds one direct get. A server without the stream (back
// without its store) does not answer direct gets at all.
const directTimeout = 2 * time.Second

// direct makes one direct get with get, bounded by directTimeout within
// ctx. When the server does not answer, it checks that the stream exists
// (see checkStream) before it returns the error.
func (b *Broker) direct(ctx context.Context, get func(context.Context) (*jetstream.RawStreamMsg, error)) (*jetstream.RawStreamMsg, error) {
	dctx, cancel := context.WithTimeout(ctx, directTimeout)
	defer cancel()
	raw, err := get(dctx)
	if err != nil && dctx.Err() != nil && ctx.Err() == nil {
		b.checkStream(ctx, err)
	}
	return raw, err
}

func (b *Broker) decodeRaw(raw *jetstream.RawStreamMsg) (stored, error) {
	b.fetched.Add(1)
	s := stored{sseq: raw.Sequence}
	if err := s.m.UnmarshalBinary(raw.Data); err != nil {
		return stored{}, fmt.Errorf("natsbroker: stream %s message %d: %w", b.name, raw.Sequence, err)
	}
	if v := raw.Header.Get(prevHeader); v != "" {
		prev, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return stored{}, fmt.Errorf("natsbroker: stream %s message %d: header %s: %w", b.name, raw.Sequence, prevHeader, err)
		}
		s.prev, s.link = prev, true
	}
	return s, nil
}

// How a walk back through a room's history ended.
const (
	walkDone  = iota // it read as many messages as asked
	walkStart        // it reached the oldest message still stored
	walkBlind        // a message without prevHeader, stored by an older version
)

// readBack reads the n messages of a room that end with last, walking back
// from message to message with one direct get each, and returns them oldest
// first, with how the walk ended: with fewer than n messages when the
// room's older ones are no longer stored, or are stored without a link to
// their predecessor.
func (b *Broker) readBack(ctx context.Context, subj string, last stored, n int) ([]wsroom.Message, int, error) {
	out := make([]wsroom.Message, 0, n)
	cur, how := last, walkDone
	for {
		out = append(out, cur.m)
		if len(out) == n {
			break
		}
		if !cur.link {
			how = walkBlind
			break
		}
		if cur.prev == 0 || cur.m.Seq <= 1 {
			how = walkStart
			break
		}
		prev, ok, err := b.getMessage(ctx, subj, cur.prev, false)
		if err != nil {
			return nil, 0, err
		}
		if !ok || prev.m.Epoch != cur.m.Epoch || prev.m.Seq+1 != cur.m.Seq {
			// Trimmed away meanwhile.
			how = walkStart
			break
		}
		cur = prev
	}
	slices.Reverse(out)
	return out, how, nil
}

// locate returns the first message on subj, in last's epoch, whose room
// sequence is seq or more, given the room's last message, which is one of
// them. It probes the stream with direct gets of the next message on subj
// from a stream sequence. Until it has found a message before the one it
// looks for, it gallops down from the closest one after it: the first probe
// is where the message is if no other room's message was stored in between
// (so one probe finds it in a stream of one room), and each further one
// goes twice as far down. Then it guesses from the room's density in the
// stream, halving the range every other probe. So it takes a few gets, as
// many as the logarithm of the distance, and at most about twice the
// logarithm of the stream's length.
func (b *Broker) locate(ctx context.Context, subj string, last stored, seq uint64) (stored, error) {
	best := last // the first known message with a sequence of seq or more
	var below *stored
	// The answer is best, or lies in [lo, hi): no message on subj before lo
	// has a sequence of seq or more, and no message on subj lies in
	// [hi, best.sseq).
	lo, hi := uint64(1), best.sseq
	var step uint64 // how far below hi the galloping probe went
	for i := 0; best.m.Seq > seq && lo < hi; i++ {
		var x uint64
		switch {
		case below == nil:
			// The messages seq to best's are at least that many apart.
			step = max(2*step, best.m.Seq-seq)
			if hi > step {
				x = hi - step
			}
		case i%2 == 1:
			x = lo + (hi-lo)/2
		default:
			x = below.sseq + (seq-below.m.Seq)*(best.sseq-below.sseq)/(best.m.Seq-below.m.Seq)
		}
		x = min(max(x, lo), hi-1)
		m, ok, err := b.getMessage(ctx, subj, x, true)
		switch {
		case err != nil:
			return stored{}, err
		case !ok || m.sseq >= hi:
			hi = x
		case m.m.Epoch != last.m.Epoch || m.m.Seq < seq:
			lo = m.sseq + 1
			if m.m.Epoch == last.m.Epoch {
				lo = m.sseq + (seq - m.m.Seq)
				below = &m
			}
		default:
			best, hi = m, x
		}
	}
	return best, nil
}

// readForward calls fn with the messages on subj from stream sequence from
// on, oldest first, until fn returns false or there are no more. If about
// want messages are wanted, want <= directMax, they are read with direct
// gets, up to directMax of them, the others through readRoom; if more are
// wanted, all are read through readRoom.
func (b *Broker) readForward(ctx context.Context, subj string, from uint64, want uint64, fn func(sseq uint64, m wsroom.Message) bool) error {
	if want > directMax {
		return b.readRoom(ctx, subj, from, fn)
	}
	for range directMax {
		m, ok, err := b.getMessage(ctx, subj, from, true)
		if err != nil || !ok {
			return err
		}
		if !fn(m.sseq, m.m) {
			return nil
		}
		from = m.sseq + 1
	}
	return b.readRoom(ctx, subj, from, fn)
}

// After implements wsroom.Store.
func (b *Broker) After(ctx context.Context, room, epoch string, seq uint64, limit int) ([]wsroom.Message, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	subj := b.hist + roomToken(room)
	last, ok, err := b.lastOfRoom(ctx, subj)
	if err != nil {
		return nil, fmt.Errorf("natsbroker: reading last message of room %q: %w", room, err)
	}
	if !ok {
		if epoch == "" && seq == 0 {
			return nil, nil
		}
		return nil, wsroom.ErrGap
	}
	if epoch == "" && seq == 0 {
		epoch = last.m.Epoch
	}
	if epoch != last.m.Epoch || seq > last.m.Seq {
		return nil, wsroom.ErrGap
	}
	if seq == last.m.Seq {
		return nil, nil
	}
	span := last.m.Seq - seq
	want := span
	if limit > 0 {
		want = min(want, uint64(limit))
	}
	// Walking back reads every message after seq; with a smaller limit,
	// finding the first one and reading on costs fewer gets.
	// With replicas, a walk back could take a message that lost its
	// position (see won) for the one that took it: reads go forward.
	if span <= directMax && want == span && !b.verify {
		out, how, err := b.readBack(ctx, subj, last, int(span))
		if err != nil {
			return nil, fmt.Errorf("natsbroker: reading history of room %q: %w", room, err)
		}
		switch how {
		case walkDone:
			if limit > 0 && len(out) > limit {
				out = out[:limit]
			}
			return out, nil
		case walkStart:
			return nil, wsroom.ErrGap // message seq+1 is no longer stored
		}
	}
	first, err := b.locate(ctx, subj, last, seq+1)
	if err == nil && first.m.Seq == seq+1 {
		first, err = b.firstOfSeq(ctx, subj, first)
	}
	if err != nil {
		return nil, fmt.Errorf("natsbroker: reading history of room %q: %w", room, err)
	}
	if first.m.Seq != seq+1 {
		return nil, wsroom.ErrGap
	}
	out := []wsroom.Message{first.m}
	if want == 1 {
		return out, nil
	}
	gap := false
	err = b.readForward(ctx, subj, first.sseq+1, want-1, func(_ uint64, m wsroom.Message) bool {
		if b.verify && (m.Epoch != epoch || m.Seq <= out[len(out)-1].Seq) {
			return true // one that lost its position: see won
		}
		if m.Epoch != epoch || m.Seq != seq+uint64(len(out))+1 {
			gap = true
			return false
		}
		out = append(out, m)
		return uint64(len(out)) < want
	})
	if err != nil {
		return nil, fmt.Errorf("natsbroker: reading history of room %q: %w", room, err)
	}
	if gap || len(out) == 0 {
		// The history moved on (expired or reset) since it was looked at.
		return nil, wsroom.ErrGap
	}
	return out, nil
}

// Last implements wsroom.Store.
func (b *Broker) Last(ctx context.Context, room string, n int) ([]wsroom.Message, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	if n <= 0 {
		return nil, nil
	}
	subj := b.hist + roomToken(room)
	last, ok, err := b.lastOfRoom(ctx, subj)
	if err != nil {
		return nil, fmt.Errorf("natsbroker: reading last message of room %q: %w", room, err)
	}
	if !ok {
		return nil, nil
	}
	// A room's sequence numbers start at 1 in each epoch.
	n = int(min(uint64(n), last.m.Seq))
	if n <= directMax && !b.verify {
		out, how, err := b.readBack(ctx, subj, last, n)
		if err != nil {
			return nil, fmt.Errorf("natsbroker: reading history of room %q: %w", room, err)
		}
		if how != walkBlind {
			return out, nil
		}
	}
	first, err := b.locate(ctx, subj, last, last.m.Seq-uint64(n)+1)
	if err == nil {
		first, err = b.firstOfSeq(ctx, subj, first)
	}
	if err != nil {
		return nil, fmt.Errorf("natsbroker: reading history of room %q: %w", room, err)
	}
	out := make([]wsroom.Message, 0, last.m.Seq-first.m.Seq+1)
	err = b.readForward(ctx, subj, first.sseq, last.m.Seq-first.m.Seq+1, func(_ uint64, m wsroom.Message) bool {
		if b.verify && (m.Epoch != last.m.Epoch || len(out) > 0 && m.Seq <= out[len(out)-1].Seq) {
			return true // one that lost its position: see won
		}
		if m.Epoch != last.m.Epoch {
			return false
		}
		out = append(out, m)
		return m.Seq < last.m.Seq
	})
	if err != nil {
		return nil, fmt.Errorf("natsbroker: reading history of room %q: %w", room, err)
	}
	return out, nil
}

// fetchBatch is the most messages readRoom asks for at once.
const fetchBatch = 256

// readRoom calls fn with the stored messages on subj, oldest first, from
// stream sequence from on (all if from is 0), until fn returns false or the
// messages stored when readRoom started have all been read. It reads them
// through a consumer made for the call.
func (b *Broker) readRoom(ctx context.Context, subj string, from uint64, fn func(sseq uint64, m wsroom.Message) bool) error {
	cfg := jetstream.ConsumerConfig{
		FilterSubject:     subj,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		MemoryStorage:     true,
		InactiveThreshold: 10 * time.Second,
	}
	if from > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from
	}
	cons, err := b.stream.CreateConsumer(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		// A consumer left behind is removed by the server after
		// InactiveThreshold.
		_ = b.stream.DeleteConsumer(dctx, cons.CachedInfo().Name)
	}()
	pending := cons.CachedInfo().NumPending
	var got uint64
	empty := 0
	for got < pending {
		if err := ctx.Err(); err != nil {
			return err
		}
		batch, err := cons.FetchNoWait(int(min(pending-got, fetchBatch)))
		if err != nil {
			return err
		}
		n, stop := 0, false
		var bad error
		for msg := range batch.Messages() {
			n++
			b.fetched.Add(1)
			if stop {
				continue
			}
			md, err := msg.Metadata()
			if err != nil {
				bad, stop = err, true
				continue
			}
			var m wsroom.Message
			if err := m.UnmarshalBinary(msg.Data()); err != nil {
				bad, stop = fmt.Errorf("stream %s message %d: %w", b.name, md.Sequence.Stream, err), true
				continue
			}
			stop = !fn(md.Sequence.Stream, m)
		}
		if bad != nil {
			return bad
		}
		if err := batch.Error(); err != nil {
			return err
		}
		if stop {
			return nil
		}
		got += uint64(n)
		if n == 0 {
			// Nothing came: either messages expired meanwhile or the
			// request was lost. Ask the consumer which.
			empty++
			info, err := cons.Info(ctx)
			if err != nil {
				return err
			}
			if info.NumPending == 0 {
				return nil
			}
			if empty == 3 {
				return errors.New("no messages received from the stream")
			}
		}
	}
	return nil
}
