package natsbroker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/wsroom/wsroom"
)

// gapWait is how long a room waits for a missing announcement before it
// reads the missing messages from the stream.
const gapWait = 100 * time.Millisecond

// probeDelay is how long after its start a room checks that it has missed
// nothing; see behind.
const probeDelay = time.Second

// setupTimeout bounds a room's setup when Subscribe's context has no
// deadline.
const setupTimeout = 10 * time.Second

// fillTimeout bounds one read from the stream by a room's goroutine.
const fillTimeout = 10 * time.Second

// topic is one room subscribed on this Broker: a core subscription to the
// room's announcements, and a goroutine that puts them in order and hands
// them to the local subscribers.
type topic struct {
	b    *Broker
	room string

	refs int // guarded by Broker.mu

	ready chan struct{} // closed when start is done
	err   error         // set by start, read after ready

	sub    *nats.Subscription
	in     chan *nats.Msg
	wake   chan struct{} // asks the loop to catch up from the stream
	ctx    context.Context
	cancel context.CancelFunc
	quit   chan struct{}
	done   chan struct{} // closed when the loop has ended
	once   sync.Once

	mu      sync.Mutex // held while delivering
	subs    map[*subscriber]struct{}
	stopped bool

	lostMu  sync.Mutex
	lostErr error // why catchUp was called, for the loop to take

	// Owned by the loop.
	gen     uint64 // the Broker's gen when sseq was set
	epoch   string // "" while the room has no history
	next    uint64 // sequence number of the next message to deliver
	sseq    uint64 // stream sequence of the last message delivered or seen at start
	seen    uint64 // highest sequence number announced so far
	held    map[uint64]heldMsg
	ephs    []ephMsg
	failed  int   // consecutive failed reads from the stream
	cause   error // a possible loss, reported to lost after the next good read
	dropped int   // announcements the subscription dropped so far
}

type subscriber struct {
	deliver func(wsroom.Message)
	lost    func(error)
}

type heldMsg struct {
	m    wsroom.Message
	sseq uint64
}

// ephMsg is an ephemeral message waiting for the stored messages announced
// before it: it is delivered once every sequence number up to after is.
type ephMsg struct {
	m     wsroom.Message
	after uint64
}

func newTopic(b *Broker, room string) *topic {
	return &topic{
		b:     b,
		room:  room,
		ready: make(chan struct{}),
		in:    make(chan *nats.Msg, 256),
		wake:  make(chan struct{}, 1),
		quit:  make(chan struct{}),
		done:  make(chan struct{}),
		subs:  make(map[*subscriber]struct{}),
		held:  make(map[uint64]heldMsg),
	}
}

// start subscribes to the room's announcements, reads where its history
// ends and starts the loop. It sets t.err on failure.
func (t *topic) start(ctx context.Context) {
	defer close(t.ready)
	b := t.b
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, setupTimeout)
		defer cancel()
	}
	sub, err := b.nc.Subscribe(b.live+roomToken(t.room), t.receive)
	if err != nil {
		t.err = fmt.Errorf("natsbroker: subscribing to room %q: %w", t.room, err)
		return
	}
	// The server must know of the subscription before the history is
	// read, so that every message stored afterwards is announced to it.
	if err := b.nc.FlushWithContext(ctx); err != nil {
		sub.Unsubscribe()
		t.err = fmt.Errorf("natsbroker: subscribing to room %q: %w", t.room, err)
		return
	}
	pos, err := b.lastPosition(ctx, b.hist+roomToken(t.room))
	if err != nil {
		sub.Unsubscribe()
		t.err = fmt.Errorf("natsbroker: reading last message of room %q: %w", t.room, err)
		return
	}
	if pos.sseq > 0 {
		t.epoch, t.sseq = pos.epoch, pos.sseq
	}
	t.next, t.seen = pos.seq+1, pos.seq
	t.gen = b.gen.Load()
	t.sub = sub
	t.ctx, t.cancel = context.WithCancel(context.Background())
	go t.loop()
}

// stop ends the subscription and the loop and waits for the loop. Deliver
// functions are not called once stop returns.
func (t *topic) stop() {
	t.once.Do(func() {
		<-t.ready
		t.mu.Lock()
		t.stopped = true
		t.mu.Unlock()
		if t.sub == nil {
			return
		}
		t.sub.Unsubscribe()
		t.cancel()
		close(t.quit)
		<-t.done
	})
}

// catchUp asks the loop to read what it may have missed from the stream,
// and then to tell the subscribers that it may have missed messages, for
// the given cause.
func (t *topic) catchUp(cause error) {
	t.lostMu.Lock()
	if t.lostErr == nil {
		t.lostErr = cause
	}
	t.lostMu.Unlock()
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// receive runs on the subscription's goroutine and hands msg to the loop.
func (t *topic) receive(msg *nats.Msg) {
	select {
	case t.in <- msg:
	case <-t.quit:
	}
}

func (t *topic) loop() {
	defer close(t.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	armed := false
	probe := time.NewTimer(probeDelay)
	defer probe.Stop()
	for {
		fill := false
		select {
		case <-t.quit:
			timer.Stop()
			return
		case <-probe.C:
			fill = t.behind()
		case msg := <-t.in:
			fill = t.take(msg)
			fill = t.checkDropped() || fill
			// A stored message announced while reads fail: JetStream
			// answers again (a stream with replicas has a new leader, say),
			// so the read is not left to the backoff.
			fill = fill || t.failed > 0 && msg.Header.Get(sseqHeader) != ""
		case <-t.wake:
			t.lostMu.Lock()
			t.addCause(t.lostErr)
			t.lostErr = nil
			t.lostMu.Unlock()
			fill = true
		case <-timer.C:
			armed = false
			fill = true
		}
		if fill {
			t.fill()
		}
		t.drain()
		if t.cause != nil && t.failed == 0 {
			t.lose(t.cause)
			t.cause = nil
		}
		switch waiting := len(t.held) > 0 || len(t.ephs) > 0 || t.failed > 0; {
		case waiting && !armed:
			d := gapWait
			if t.failed > 0 {
				d = min(gapWait<<min(t.failed, 6), 5*time.Second)
			}
			timer.Reset(d)
			armed = true
		case !waiting && armed:
			timer.Stop()
			armed = false
		}
	}
}

// behind reports whether the stream holds a message this room has not
// seen. In a NATS cluster, a new subscription takes a moment to reach every
// server, so a message published meanwhile on another server is not
// announced here; the loop checks once, probeDelay after the start.
func (t *topic) behind() bool {
	ctx, cancel := context.WithTimeout(t.ctx, fillTimeout)
	defer cancel()
	pos, err := t.b.lastPosition(ctx, t.b.hist+roomToken(t.room))
	if err != nil {
		return true // let fill retry and report
	}
	return pos.sseq > 0 && (pos.epoch != t.epoch || pos.seq > t.seen)
}

// take handles one announcement and reports whether the stream must be read
// right away.
func (t *topic) take(msg *nats.Msg) bool {
	var m wsroom.Message
	if err := m.UnmarshalBinary(msg.Data); err != nil {
		t.b.report(fmt.Errorf("natsbroker: room %q: dropping malformed announcement: %w", t.room, err))
		return false
	}
	if m.Ephemeral {
		t.ephs = append(t.ephs, ephMsg{m: m, after: t.seen})
		return false
	}
	sseq, _ := strconv.ParseUint(msg.Header.Get(sseqHeader), 10, 64)
	if t.epoch == "" {
		t.epoch = m.Epoch
	}
	if m.Epoch != t.epoch {
		// A late message of an old epoch or the first of a new one: the
		// stream tells which.
		return true
	}
	t.hold(m, sseq)
	return false
}

// hold keeps m until its turn. Of two messages with one sequence number,
// it keeps the first: the second lost its position (see Broker.won) and is
// about to be deleted.
func (t *topic) hold(m wsroom.Message, sseq uint64) {
	if m.Seq < t.next {
		return
	}
	if h, ok := t.held[m.Seq]; ok && h.sseq > 0 && (sseq == 0 || sseq > h.sseq) {
		return
	}
	t.held[m.Seq] = heldMsg{m: m, sseq: sseq}
	t.seen = max(t.seen, m.Seq)
	if sseq > 0 {
		t.b.notePosition(t.room, position{sseq: sseq, seq: m.Seq, epoch: m.Epoch})
	}
}

// drain delivers what is due: stored messages in sequence order, each
// ephemeral message after the stored messages announced before it.
func (t *topic) drain() {
	for {
		for len(t.ephs) > 0 && t.ephs[0].after < t.next {
			t.deliver(t.ephs[0].m)
			t.ephs[0] = ephMsg{}
			t.ephs = t.ephs[1:]
		}
		h, ok := t.held[t.next]
		if !ok {
			return
		}
		delete(t.held, t.next)
		t.deliver(h.m)
		t.next++
		if h.sseq > 0 {
			t.sseq = h.sseq
		}
	}
}

// addCause records a possible loss, to be reported to the subscribers once
// the stream has been read.
func (t *topic) addCause(err error) {
	if err != nil {
		t.cause = errors.Join(t.cause, err)
	}
}

// checkDropped reports whether NATS dropped announcements of the room since
// the last check, because the loop did not take them fast enough (a slow
// consumer); the stream must then be read, and the subscribers told.
func (t *topic) checkDropped() bool {
	n, err := t.sub.Dropped()
	if err != nil || n <= t.dropped {
		return false
	}
	err = fmt.Errorf("natsbroker: room %q: NATS dropped %d announcements (slow consumer)", t.room, n-t.dropped)
	t.dropped = n
	t.b.report(err)
	t.addCause(err)
	return true
}

// lose tells every subscriber that messages may have been missed.
func (t *topic) lose(cause error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for s := range t.subs {
		if s.lost != nil {
			s.lost(cause)
		}
	}
}

func (t *topic) deliver(m wsroom.Message) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for s := range t.subs {
		s.deliver(m)
	}
}

// fill reads the messages stored after the last one delivered and takes
// them as announcements. Whatever the stream no longer holds is skipped. It
// reads them one by one with direct gets from the first one missing, and
// through a consumer only when many are missing.
func (t *topic) fill() {
	ctx, cancel := context.WithTimeout(t.ctx, fillTimeout)
	defer cancel()
	if g := t.b.gen.Load(); g != t.gen {
		// The stream was created anew: its sequences start again.
		t.gen, t.sseq = g, 0
	}
	var fetched []heldMsg
	want := uint64(1)
	if t.seen >= t.next {
		want = t.seen - t.next + 1
	}
	err := t.b.readForward(ctx, t.b.hist+roomToken(t.room), t.sseq+1, want, func(sseq uint64, m wsroom.Message) bool {
		fetched = append(fetched, heldMsg{m: m, sseq: sseq})
		return true
	})
	if err != nil {
		if t.ctx.Err() == nil {
			t.failed++
			err = fmt.Errorf("natsbroker: room %q: reading missed messages: %w", t.room, err)
			t.b.report(err)
			if t.cause == nil {
				t.cause = err
			}
		}
		return
	}
	t.failed = 0
	for _, h := range fetched {
		if h.m.Epoch != t.epoch && t.epoch != "" && t.b.verify {
			_, lost, err := t.b.lostStart(ctx, t.b.hist+roomToken(t.room), stored{m: h.m, sseq: h.sseq})
			if err == nil && lost {
				continue // not the room's: see Broker.won
			}
		}
		if h.m.Epoch != t.epoch {
			// The stream holds a new epoch: the room's history was lost or
			// reset. Start over from its first message.
			t.epoch, t.next, t.seen = h.m.Epoch, h.m.Seq, h.m.Seq-1
			clear(t.held)
			for i := range t.ephs {
				t.ephs[i].after = 0
			}
		}
		t.hold(h.m, h.sseq)
	}
	// What is still held after the next one missing was stored but is no
	// longer in the stream: skip it.
	if _, ok := t.held[t.next]; !ok && len(t.held) > 0 {
		first := t.seen
		for seq := range t.held {
			first = min(first, seq)
		}
		err := fmt.Errorf("natsbroker: room %q: messages %d to %d are no longer in the stream", t.room, t.next, first-1)
		t.b.report(err)
		t.addCause(err)
		t.next = first
	}
	if len(t.held) == 0 {
		for i := range t.ephs {
			t.ephs[i].after = 0
		}
	}
}
