package natsbroker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
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

	posMu sync.Mutex
	pos   position
	known bool
}

// maxIdleAppenders bounds how many rooms' positions a Broker remembers
// between appends.
const maxIdleAppenders = 4096

// sseqHeader carries a stored message's stream sequence in its announcement.
const sseqHeader = "Wsroom-Stream-Seq"

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
	m.Time = time.UnixMilli(m.Time.UnixMilli())
	m.Ephemeral, m.Except = false, ""
	subj := b.hist + roomToken(room)
	id := newID() // the same for every attempt, so a retried publish is deduplicated
	transient, conflicts := 0, 0
	for {
		if err := ctx.Err(); err != nil {
			return wsroom.Message{}, err
		}
		a.posMu.Lock()
		pos, known := a.pos, a.known
		a.posMu.Unlock()
		if !known {
			var err error
			if pos, err = b.lastPosition(ctx, subj); err != nil {
				if isTransient(ctx, err) && transient < maxTransient {
					transient++
					if err := sleep(ctx, backoff(transient)); err != nil {
						return wsroom.Message{}, err
					}
					continue
				}
				return wsroom.Message{}, fmt.Errorf("natsbroker: reading last message of room %q: %w", room, err)
			}
			a.posMu.Lock()
			a.pos, a.known = pos, true
			a.posMu.Unlock()
		}
		m.Seq, m.Epoch = pos.seq+1, pos.epoch
		data, _ := m.MarshalBinary()
		ack, err := b.js.PublishMsg(ctx, &nats.Msg{Subject: subj, Data: data},
			jetstream.WithMsgID(id),
			jetstream.WithExpectStream(b.name),
			jetstream.WithExpectLastSequencePerSubject(pos.sseq))
		switch {
		case err == nil:
			a.posMu.Lock()
			if !a.known || ack.Sequence > a.pos.sseq {
				a.pos, a.known = position{sseq: ack.Sequence, seq: m.Seq, epoch: m.Epoch}, true
			}
			a.posMu.Unlock()
			b.announce(room, m, data, ack.Sequence)
			return m, nil
		case isConflict(err):
			// Another node stored a message first: read the room again.
			a.posMu.Lock()
			if a.pos == pos {
				a.known = false
			}
			a.posMu.Unlock()
			conflicts++
			if conflicts > 2 {
				if err := sleep(ctx, time.Duration(rand.Int64N(int64(min(conflicts, 20))*int64(time.Millisecond)))); err != nil {
					return wsroom.Message{}, err
				}
			}
		case isTransient(ctx, err) && transient < maxTransient:
			// Retry with the same position and message ID: if the first
			// attempt was stored, JetStream acknowledges it as a duplicate.
			transient++
			if err := sleep(ctx, backoff(transient)); err != nil {
				return wsroom.Message{}, err
			}
		default:
			return wsroom.Message{}, fmt.Errorf("natsbroker: storing message in room %q: %w", room, err)
		}
	}
}

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
	raw, err := b.stream.GetLastMsgForSubject(ctx, subj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return position{epoch: newID()}, nil
	}
	if err != nil {
		return position{}, err
	}
	var m wsroom.Message
	if err := m.UnmarshalBinary(raw.Data); err != nil {
		return position{}, fmt.Errorf("natsbroker: stream %s message %d: %w", b.name, raw.Sequence, err)
	}
	return position{sseq: raw.Sequence, seq: m.Seq, epoch: m.Epoch}, nil
}

// After implements wsroom.Store.
func (b *Broker) After(ctx context.Context, room, epoch string, seq uint64, limit int) ([]wsroom.Message, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	subj := b.hist + roomToken(room)
	last, err := b.lastPosition(ctx, subj)
	if err != nil {
		return nil, fmt.Errorf("natsbroker: reading last message of room %q: %w", room, err)
	}
	if last.sseq == 0 {
		if epoch == "" && seq == 0 {
			return nil, nil
		}
		return nil, wsroom.ErrGap
	}
	if epoch == "" && seq == 0 {
		epoch = last.epoch
	}
	if epoch != last.epoch || seq > last.seq {
		return nil, wsroom.ErrGap
	}
	if seq == last.seq {
		return nil, nil
	}
	var out []wsroom.Message
	gap := false
	err = b.readRoom(ctx, subj, 0, func(_ uint64, m wsroom.Message) bool {
		if m.Epoch != epoch {
			return false
		}
		if m.Seq <= seq {
			return true
		}
		if m.Seq != seq+uint64(len(out))+1 {
			gap = true
			return false
		}
		out = append(out, m)
		return limit <= 0 || len(out) < limit
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
	var out []wsroom.Message
	err := b.readRoom(ctx, b.hist+roomToken(room), 0, func(_ uint64, m wsroom.Message) bool {
		if len(out) > 0 && m.Epoch != out[0].Epoch {
			out = out[:0]
		}
		out = append(out, m)
		if len(out) > 2*n {
			out = append(out[:0], out[len(out)-n:]...)
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("natsbroker: reading history of room %q: %w", room, err)
	}
	return out[max(0, len(out)-n):], nil
}

// fetchBatch is the most messages readRoom asks for at once.
const fetchBatch = 256

// readRoom calls fn with the stored messages on subj, oldest first, from
// stream sequence from on (all if from is 0), until fn returns false or the
// messages stored when readRoom started have all been read.
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
