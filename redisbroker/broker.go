package redisbroker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wsroom/wsroom"
)

// ErrClosed is returned by Publish and Subscribe after Close.
var ErrClosed = errors.New("redisbroker: broker closed")

var errRing = errors.New("redisbroker: a *redis.Ring cannot carry one pub/sub connection for every room; use a *redis.Client, a failover client or a *redis.ClusterClient")

// Timings of the pub/sub connection's recovery.
const (
	syncRetry  = time.Second            // re-send a subscription barrier after this long
	maxBackoff = 2 * time.Second        // longest pause between failed reads
	minBackoff = 50 * time.Millisecond  // pause after the second failed read in a row
	syncPrefix = "wsroom-subscription-" // payload prefix of barrier pings
	// callTimeout bounds each command the Broker's own goroutines send on
	// the pub/sub connection (SUBSCRIBE, UNSUBSCRIBE, PING), a reconnection
	// go-redis makes for it included.
	callTimeout = 5 * time.Second
)

var (
	_ wsroom.Broker       = (*Broker)(nil)
	_ wsroom.Store        = (*Broker)(nil)
	_ wsroom.Presence     = (*Broker)(nil)
	_ wsroom.UserPresence = (*Broker)(nil)
)

// Broker is a wsroom.Broker, a wsroom.Store and a wsroom.Presence that keeps
// rooms' history and members in Redis and carries their messages between
// nodes through Redis pub/sub. See the package documentation for how it
// orders, stores and delivers messages, and how it keeps presence.
//
// A Broker is safe for concurrent use by multiple goroutines. New starts
// three goroutines: one reads the Broker's pub/sub connection and queues
// each message for its room, one sends the SUBSCRIBE, UNSUBSCRIBE and
// barrier PING commands the subscriptions call for on that connection (so
// that no Subscribe or unsubscribe call waits on the network, or on
// another room's call), and one refreshes the presence entries of the
// members joined through this Broker. Each room with subscriptions on the
// Broker has a goroutine of its own, which calls their deliver and lost
// functions, so that a room whose subscribers are slow delays no other; it
// ends after the room's last subscription. Close stops them all and waits
// for them. Closing a Broker does not close the go-redis client it was made
// with.
type Broker struct {
	client redis.UniversalClient
	cfg    config
	err    error // set when client cannot serve the Broker's pub/sub

	ps        *redis.PubSub
	done      chan struct{}      // closed by Close
	ctx       context.Context    // ends at Close; bounds presence refreshes
	cancel    context.CancelFunc // ends ctx
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error

	mu     sync.Mutex        // guards topics, each topic's subs, and the fields below; Close closes done under it
	topics map[string]*topic // by channel name
	// changed holds the channels whose topic came or went since the writer
	// last looked; queued counts those changes, and written is the count
	// the writer had taken when it last finished sending what they call
	// for. writtenCh is closed and replaced when written grows.
	changed   map[string]struct{}
	queued    uint64
	written   uint64
	writtenCh chan struct{}

	wake      chan struct{} // signalled when changed or pingAsked has news for the writer
	pingAsked atomic.Bool   // a sync waits for a barrier ping the writer sends

	pingSeq atomic.Uint64 // number of the last barrier ping sent
	syncMu  sync.Mutex
	synced  uint64        // number of the last barrier ping answered
	syncCh  chan struct{} // closed and replaced when synced grows
	// lostCause, when not nil, is why the subscriptions may have missed
	// messages; they are told once the barrier ping lostAfter is answered.
	lostCause error
	lostAfter uint64

	received atomic.Uint64 // messages read from the pub/sub connection

	reads chan struct{} // a slot for each history read under way (WithReadConcurrency)

	presMu     sync.Mutex
	present    map[string]map[string]localMember // this node's members: room, ID
	presClosed bool                              // set by Close
	presHalt   chan struct{}                     // closed by stopRenewing
}

// topic is a room's channel subscribed on this Broker: its subscriptions,
// and the queue of messages read from the pub/sub connection that its
// goroutine, serve, hands to them.
type topic struct {
	ch   string
	gen  uint64          // Broker.queued when the topic was made: sent once written reaches it
	subs []*subscription // never modified in place; guarded by Broker.mu
	quit chan struct{}   // closed, under Broker.mu, when the last subscription ends
	wake chan struct{}   // signalled when the queue or lost has something new

	qmu      sync.Mutex
	queue    []string // payloads read from the channel, oldest first
	spare    []string // the backing array serve last emptied, for reuse
	lost     error    // to tell the subscriptions before the queued messages
	overflow bool     // lost holds a dropped backlog
	drops    atomic.Uint64
}

type subscription struct {
	deliver func(wsroom.Message)
	lost    func(error) // may be nil
	dead    atomic.Bool
}

// New returns a Broker that uses client, which may be a *redis.Client, a
// failover client or a *redis.ClusterClient (a *redis.Ring is not supported:
// Publish, Subscribe and the Presence methods then return an error). New
// starts the goroutines that read the Broker's pub/sub connection and
// refresh its presence entries; call Close to stop them. The client must
// stay open until then.
func New(client redis.UniversalClient, opts ...Option) *Broker {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	b := &Broker{
		client: client,
		cfg:    cfg,
		done:   make(chan struct{}),
		topics: make(map[string]*topic),
		syncCh: make(chan struct{}),

		changed:   make(map[string]struct{}),
		writtenCh: make(chan struct{}),
		wake:      make(chan struct{}, 1),

		present:  make(map[string]map[string]localMember),
		presHalt: make(chan struct{}),
		reads:    make(chan struct{}, cfg.readConcurrency),
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	if cfg.roomQueue < 1 {
		b.cfg.roomQueue = DefaultRoomQueue
	}
	if _, ok := client.(*redis.Ring); ok {
		b.err = errRing
		return b
	}
	b.ps = client.Subscribe(context.Background())
	b.wg.Go(b.run)
	b.wg.Go(b.write)
	b.wg.Go(b.refreshLoop)
	return b
}

// Close stops the Broker's goroutines, closes its pub/sub connection and
// ends every subscription: no deliver or lost function is called once Close
// returns. It waits for the deliver and lost calls under way. It then removes from Redis the presence entries of the members
// still joined through this Broker, so that other nodes stop listing them at
// once; if it cannot, they expire after the presence TTL.
//
// Publish, Subscribe and Join then return ErrClosed; the Store methods, Leave
// and Members keep working as long as the client does. Close does not close
// the client, and must not be called from a deliver or lost function.
// Calling Close again has no effect and returns the first call's result.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.mu.Lock()
		close(b.done) // under mu: Subscribe starts no room goroutine afterwards
		b.mu.Unlock()
		b.cancel()
		if b.ps != nil {
			b.closeErr = b.ps.Close()
		}
		b.wg.Wait()
		b.mu.Lock()
		for _, t := range b.topics {
			for _, s := range t.subs {
				s.dead.Store(true)
			}
		}
		clear(b.topics)
		b.mu.Unlock()
		if b.err == nil {
			b.closeErr = errors.Join(b.closeErr, b.removePresence())
		}
	})
	return b.closeErr
}

func (b *Broker) closed() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

// Publish implements wsroom.Broker. A non-ephemeral message is numbered,
// stored and published by one script run (see the package documentation);
// its Except is cleared, and its Time is set to the current time if zero. An
// ephemeral message is published as it is, with Seq 0 and no epoch.
func (b *Broker) Publish(ctx context.Context, room string, m wsroom.Message) error {
	_, err := b.PublishSeq(ctx, room, m)
	return err
}

// PublishSeq is Publish, returning the message as numbered and stored: with
// its Seq, Epoch and Time (to the millisecond), as subscribers receive it.
// An ephemeral message is returned as published, with Seq 0 and no epoch.
// It implements wsroom.Sequencer, so that the acks of connections of many
// rooms carry the message's position.
func (b *Broker) PublishSeq(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	if b.err != nil {
		return wsroom.Message{}, b.err
	}
	if b.closed() {
		return wsroom.Message{}, ErrClosed
	}
	var err error
	if m.Ephemeral {
		m.Seq, m.Epoch = 0, ""
		var body []byte
		if body, err = m.MarshalBinary(); err == nil {
			payload := append([]byte("0  "), body...)
			err = b.client.Publish(ctx, b.channel(room), payload).Err()
		}
	} else {
		m, err = b.append(ctx, room, m, b.channel(room))
	}
	if err != nil {
		return wsroom.Message{}, fmt.Errorf("redisbroker: publish to room %q: %w", room, err)
	}
	return m, nil
}

// Subscribe implements wsroom.Broker. The first subscription of a room on a
// Broker subscribes to the room's channel; Subscribe returns once Redis has
// confirmed it, so every message published afterwards is delivered, or when
// ctx ends.
//
// When the pub/sub connection fails (Redis restarted, the connection was
// killed or went silent), the Broker reconnects and subscribes again to
// every channel; once Redis has confirmed that, it calls the lost function
// of every subscription, if not nil, once, with the error that broke the
// connection: messages published in between were not delivered. lost is
// called from the goroutine that calls deliver, before the deliveries that
// follow the reconnection.
//
// Each room's messages wait in a queue of their own, on this Broker, for the
// room's goroutine to hand them to its subscriptions, so that a room whose
// deliver functions block delays no other room. When a room's queue already
// holds DefaultRoomQueue messages, the Broker drops them, reports the error
// to WithErrorHandler and WithLogger, and calls the lost function of each of
// the room's subscriptions, if not nil, once, before the deliveries that
// follow; the messages still arrive in order, and those dropped are in the
// history.
//
// Subscribe and the function it returns never wait on the network
// themselves: the Broker's writer goroutine sends the SUBSCRIBE and
// UNSUBSCRIBE commands, batched, each bounded by a timeout, so a slow or
// unreachable Redis holds a Subscribe call only until its ctx ends, and
// never holds another room's call.
//
// The returned function ends the subscription; after the last subscription
// of a room ends, the Broker unsubscribes from its channel, without waiting
// for Redis. It may be called more than once, and from within deliver. Once it returns, deliver is not
// called again, though a call already under way may still be running.
func (b *Broker) Subscribe(ctx context.Context, room string, deliver func(wsroom.Message), lost func(error)) (func(), error) {
	if b.err != nil {
		return nil, b.err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if b.closed() {
		return nil, ErrClosed
	}
	ch := b.channel(room)
	s := &subscription{deliver: deliver, lost: lost}
	b.mu.Lock()
	if b.closed() {
		b.mu.Unlock()
		return nil, ErrClosed
	}
	t := b.topics[ch]
	first := t == nil
	if first {
		b.queued++
		t = &topic{ch: ch, gen: b.queued, quit: make(chan struct{}), wake: make(chan struct{}, 1)}
		b.topics[ch] = t
		b.changed[ch] = struct{}{}
		b.wg.Go(func() { b.serve(t) })
	}
	t.subs = append(slices.Clip(t.subs), s)
	b.mu.Unlock()
	if first {
		signal(b.wake)
	}
	var once sync.Once
	unsubscribe := func() { once.Do(func() { b.unsubscribe(ch, s) }) }
	if err := b.sync(ctx, t.gen); err != nil {
		unsubscribe()
		return nil, fmt.Errorf("redisbroker: subscribe to room %q: %w", room, err)
	}
	return unsubscribe, nil
}

// unsubscribe ends s. After the last subscription of ch it has the writer
// unsubscribe from ch; it does not wait for that.
func (b *Broker) unsubscribe(ch string, s *subscription) {
	s.dead.Store(true)
	b.mu.Lock()
	last := false
	if t := b.topics[ch]; t != nil {
		if i := slices.Index(t.subs, s); i >= 0 {
			t.subs = slices.Delete(slices.Clone(t.subs), i, i+1)
			if len(t.subs) == 0 {
				delete(b.topics, ch)
				close(t.quit)
				b.queued++
				b.changed[ch] = struct{}{}
				last = true
			}
		}
	}
	b.mu.Unlock()
	if last {
		signal(b.wake)
	}
}

// write is the goroutine that sends the pub/sub connection's SUBSCRIBE and
// UNSUBSCRIBE commands, and the barrier pings sync asks for, until Close.
// It brings each changed channel's subscription in line with whether the
// channel has a topic now, in one command for all the channels to
// subscribe and one for those to unsubscribe, so that a channel's commands
// reach Redis in the order of its changes, and a room that comes and goes
// before the writer looks costs no command. Each command is bounded by
// callTimeout.
func (b *Broker) write() {
	sent := make(map[string]bool) // channels subscribed, as last told Redis
	for {
		select {
		case <-b.wake:
		case <-b.done:
			return
		}
		b.mu.Lock()
		changed, gen := b.changed, b.queued
		b.changed = make(map[string]struct{})
		var subs, unsubs []string
		for ch := range changed {
			want := b.topics[ch] != nil
			if want != sent[ch] {
				if want {
					subs = append(subs, ch)
					sent[ch] = true
				} else {
					unsubs = append(unsubs, ch)
					delete(sent, ch)
				}
			}
		}
		b.mu.Unlock()
		slices.Sort(subs)
		slices.Sort(unsubs)
		if len(unsubs) > 0 {
			if err := b.call(func(ctx context.Context) error { return b.ps.Unsubscribe(ctx, unsubs...) }); err != nil && !b.closed() {
				err = fmt.Errorf("redisbroker: unsubscribe from channel %s: %w", channelList(unsubs), err)
				b.report(err)
				b.lose(err)
			}
		}
		if len(subs) > 0 {
			if err := b.call(func(ctx context.Context) error { return b.ps.Subscribe(ctx, subs...) }); err != nil && !b.closed() {
				err = fmt.Errorf("redisbroker: subscribe to channel %s: %w", channelList(subs), err)
				b.report(err)
				b.lose(err)
				// go-redis adds the channels to the ones it subscribes each
				// new connection to only after this write, so a connection
				// it opened on the failure lacks them: send them again. If
				// this write fails too, the next connection has them; sync
				// waits for that.
				_ = b.call(func(ctx context.Context) error { return b.ps.Subscribe(ctx, subs...) })
			}
		}
		b.mu.Lock()
		if gen > b.written {
			b.written = gen
			close(b.writtenCh)
			b.writtenCh = make(chan struct{})
		}
		b.mu.Unlock()
		if b.pingAsked.Swap(false) {
			// A failed write makes go-redis reconnect; sync asks again.
			if _, err := b.ping(); err != nil && !b.closed() {
				b.lose(fmt.Errorf("redisbroker: pub/sub ping: %w", err))
			}
		}
	}
}

// call runs a command on the pub/sub connection, bounded by callTimeout
// and by Close.
func (b *Broker) call(f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(b.ctx, callTimeout)
	defer cancel()
	return f(ctx)
}

// channelList names the first of channels, and how many follow.
func channelList(channels []string) string {
	if len(channels) == 1 {
		return strconv.Quote(channels[0])
	}
	return fmt.Sprintf("%q and %d more", channels[0], len(channels)-1)
}

// signal puts a token in c, a channel of one slot, unless one is there.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// sync returns once Redis has processed the SUBSCRIBE of the topic made
// as change gen, and every one sent before it on the pub/sub connection,
// or when ctx ends. It waits for the writer to have sent the command, then
// for the reply to a barrier ping (a PING with a numbered payload) sent
// after it: Redis replies once it has handled the earlier commands of the
// connection; if the connection was replaced in between, go-redis
// subscribed the new one to every channel before the PING. It asks the
// writer for the ping, and again after syncRetry without a reply.
func (b *Broker) sync(ctx context.Context, gen uint64) error {
	for {
		b.mu.Lock()
		ok, changed := b.written >= gen, b.writtenCh
		b.mu.Unlock()
		if ok {
			break
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-b.done:
			return ErrClosed
		}
	}
	// Any ping numbered after this one is sent after the SUBSCRIBE.
	after := b.pingSeq.Load()
	for {
		b.pingAsked.Store(true)
		signal(b.wake)
		retry := time.NewTimer(syncRetry)
	wait:
		for {
			b.syncMu.Lock()
			ok, changed := b.synced > after, b.syncCh
			b.syncMu.Unlock()
			if ok {
				retry.Stop()
				return nil
			}
			select {
			case <-changed:
			case <-retry.C:
				break wait
			case <-ctx.Done():
				retry.Stop()
				return ctx.Err()
			case <-b.done:
				retry.Stop()
				return ErrClosed
			}
		}
	}
}

// ping sends a barrier ping, numbered n, on the pub/sub connection, bounded
// by callTimeout. Its reply, read by run, tells that Redis has handled
// every command sent on the connection before it.
func (b *Broker) ping() (n uint64, err error) {
	n = b.pingSeq.Add(1)
	return n, b.call(func(ctx context.Context) error {
		return b.ps.Ping(ctx, syncPrefix+strconv.FormatUint(n, 10))
	})
}

// lose records that the subscriptions may miss messages because the pub/sub
// connection failed with cause. When Redis answers a barrier ping sent after
// this call, on a connection go-redis has subscribed again to every channel,
// pong tells every subscription.
func (b *Broker) lose(cause error) {
	b.syncMu.Lock()
	b.lostCause = cause
	b.lostAfter = b.pingSeq.Load() + 1
	b.syncMu.Unlock()
}

// run reads the pub/sub connection until Close.
func (b *Broker) run() {
	ctx := b.ctx // ends at Close, which a reconnection under way need not outlast
	var backoff time.Duration
	awaiting := false // a health-check ping is unanswered
	barrier := false  // a barrier ping must follow a failure
	for {
		if barrier {
			// A failed write reconnects; the next read tells how it went.
			_, err := b.ping()
			barrier = err != nil
		}
		var msg any
		var err error
		if awaiting {
			// With no timeout argument, go-redis treats a read that
			// outlives ctx as a broken connection and reconnects.
			rctx, cancel := context.WithTimeout(ctx, b.cfg.pingTimeout)
			msg, err = b.ps.Receive(rctx)
			cancel()
		} else {
			msg, err = b.ps.ReceiveTimeout(ctx, b.cfg.healthInterval)
		}
		if b.closed() {
			return
		}
		if err != nil {
			if !awaiting && isTimeout(err) {
				awaiting = true
				if _, err := b.ping(); err != nil {
					awaiting = false
					err = fmt.Errorf("redisbroker: pub/sub health check: %w", err)
					b.report(err)
					b.lose(err)
					barrier = true
				}
				continue
			}
			if awaiting && isTimeout(err) {
				err = fmt.Errorf("no reply to ping within %v", b.cfg.pingTimeout)
			}
			awaiting = false
			err = fmt.Errorf("redisbroker: pub/sub connection failed, reconnecting: %w", err)
			b.report(err)
			b.lose(err)
			barrier = true
			if backoff > 0 {
				select {
				case <-time.After(backoff):
				case <-b.done:
					return
				}
			}
			backoff = min(max(2*backoff, minBackoff), maxBackoff)
			continue
		}
		backoff = 0
		awaiting = false
		switch v := msg.(type) {
		case *redis.Message:
			b.dispatch(v)
		case *redis.Pong:
			b.pong(v.Payload)
		}
	}
}

// dispatch queues a message read from the pub/sub connection for the
// goroutine of its channel's topic. It never blocks: when the topic's queue
// is full, the queued messages are dropped and the subscriptions told.
func (b *Broker) dispatch(msg *redis.Message) {
	b.received.Add(1)
	b.mu.Lock()
	t := b.topics[msg.Channel]
	b.mu.Unlock()
	if t == nil {
		return
	}
	t.qmu.Lock()
	var dropped error
	if len(t.queue) >= b.cfg.roomQueue {
		clear(t.queue)
		t.queue = t.queue[:0]
		t.drops.Add(1)
		if !t.overflow {
			// Told once until serve takes the news.
			dropped = fmt.Errorf("redisbroker: channel %q: its subscribers fell %d messages behind; dropped them", t.ch, b.cfg.roomQueue)
			t.lost = errors.Join(t.lost, dropped)
			t.overflow = true
		}
	}
	t.queue = append(t.queue, msg.Payload)
	t.qmu.Unlock()
	t.signal()
	if dropped != nil {
		b.report(dropped)
	}
}

// signal wakes the topic's goroutine.
func (t *topic) signal() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// tell records that the topic's subscriptions may have missed messages, for
// its goroutine to tell them before the messages queued afterwards.
func (t *topic) tell(cause error) {
	t.qmu.Lock()
	if t.lost == nil {
		t.lost = cause
	}
	t.qmu.Unlock()
	t.signal()
}

// serve is the goroutine of a topic: it hands the queued messages to the
// topic's subscriptions, in order, until the last of them ends or the
// Broker closes. After an overflow it abandons the messages it has taken
// and not delivered yet, which are dropped as well.
func (b *Broker) serve(t *topic) {
	for {
		select {
		case <-t.wake:
		case <-t.quit:
			return
		case <-b.done:
			return
		}
		t.qmu.Lock()
		batch, cause := t.queue, t.lost
		t.queue, t.spare = t.spare, nil
		t.lost, t.overflow = nil, false
		drops := t.drops.Load()
		t.qmu.Unlock()

		// Read after taking the batch, so that a subscription whose
		// Subscribe returned before a message was queued receives it.
		b.mu.Lock()
		subs := t.subs
		b.mu.Unlock()
		if cause != nil {
			for _, s := range subs {
				if s.lost != nil && !s.dead.Load() && !b.closed() {
					s.lost(cause)
				}
			}
		}
		for _, payload := range batch {
			if t.drops.Load() != drops || b.closed() {
				break
			}
			m, err := decodePayload(payload)
			if err != nil {
				b.report(fmt.Errorf("redisbroker: message on channel %q: %w", t.ch, err))
				continue
			}
			for _, s := range subs {
				if !s.dead.Load() {
					s.deliver(m)
				}
			}
		}
		clear(batch)
		t.qmu.Lock()
		t.spare = batch[:0]
		t.qmu.Unlock()
	}
}

// pong records the reply to a barrier ping, and tells the subscriptions
// that they may have missed messages if the ping was sent after a failure.
func (b *Broker) pong(payload string) {
	s, ok := strings.CutPrefix(payload, syncPrefix)
	if !ok {
		return
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return
	}
	b.syncMu.Lock()
	if n > b.synced {
		b.synced = n
		close(b.syncCh)
		b.syncCh = make(chan struct{})
	}
	cause := b.lostCause
	if cause != nil && n >= b.lostAfter {
		b.lostCause = nil
	} else {
		cause = nil
	}
	b.syncMu.Unlock()
	if cause == nil {
		return
	}
	b.mu.Lock()
	for _, t := range b.topics {
		t.tell(cause)
	}
	b.mu.Unlock()
}

// report passes an error the Broker recovered from to the error handler and
// the logger.
func (b *Broker) report(err error) {
	if b.cfg.onError != nil {
		b.cfg.onError(err)
	}
	b.cfg.logger.Warn(err.Error())
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
