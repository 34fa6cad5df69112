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
)

var (
	_ wsroom.Broker = (*Broker)(nil)
	_ wsroom.Store  = (*Broker)(nil)
)

// Broker is a wsroom.Broker and a wsroom.Store that keeps rooms' history in
// Redis and carries their messages between nodes through Redis pub/sub. See
// the package documentation for how it orders, stores and delivers messages.
//
// A Broker is safe for concurrent use by multiple goroutines. New starts one
// goroutine, which reads the Broker's pub/sub connection and calls the
// subscribers' deliver functions; call Close to stop it. Closing a Broker
// does not close the go-redis client it was made with.
type Broker struct {
	client redis.UniversalClient
	cfg    config
	err    error // set when client cannot serve the Broker's pub/sub

	ps        *redis.PubSub
	done      chan struct{} // closed by Close
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error

	// subMu serialises SUBSCRIBE and UNSUBSCRIBE with the changes to topics
	// that call for them, so that Redis sees them in the same order.
	subMu  sync.Mutex
	mu     sync.Mutex        // guards topics and each topic's subs
	topics map[string]*topic // by channel name

	pingSeq atomic.Uint64 // number of the last barrier ping sent
	syncMu  sync.Mutex
	synced  uint64        // number of the last barrier ping answered
	syncCh  chan struct{} // closed and replaced when synced grows

	received atomic.Uint64 // messages read from the pub/sub connection
}

type topic struct {
	subs []*subscription // never modified in place, so it can be read without mu
}

type subscription struct {
	deliver func(wsroom.Message)
	dead    atomic.Bool
}

// New returns a Broker that uses client, which may be a *redis.Client, a
// failover client or a *redis.ClusterClient (a *redis.Ring is not supported:
// Publish and Subscribe then return an error). New starts the goroutine that
// reads the Broker's pub/sub connection; call Close to stop it. The client
// must stay open until then.
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
	}
	if _, ok := client.(*redis.Ring); ok {
		b.err = errRing
		return b
	}
	b.ps = client.Subscribe(context.Background())
	b.wg.Go(b.run)
	return b
}

// Close stops the Broker's goroutine, closes its pub/sub connection and ends
// every subscription: no deliver function is called once Close returns.
// Publish and Subscribe then return ErrClosed; the Store methods keep working
// as long as the client does. Close does not close the client, and must not
// be called from a deliver function. Calling Close again has no effect and
// returns the first call's result.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		close(b.done)
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
	if b.err != nil {
		return b.err
	}
	if b.closed() {
		return ErrClosed
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
		_, err = b.append(ctx, room, m, b.channel(room))
	}
	if err != nil {
		return fmt.Errorf("redisbroker: publish to room %q: %w", room, err)
	}
	return nil
}

// Subscribe implements wsroom.Broker. The first subscription of a room on a
// Broker subscribes to the room's channel; Subscribe returns once Redis has
// confirmed it, so every message published afterwards is delivered, or when
// ctx ends.
//
// The returned function ends the subscription; after the last subscription
// of a room ends, the Broker unsubscribes from its channel. It may be called
// more than once, and from within deliver. Once it returns, deliver is not
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
	s := &subscription{deliver: deliver}
	b.subMu.Lock()
	b.mu.Lock()
	t := b.topics[ch]
	first := t == nil
	if first {
		t = &topic{}
		b.topics[ch] = t
	}
	t.subs = append(slices.Clip(t.subs), s)
	b.mu.Unlock()
	if first {
		// go-redis remembers the channel even if this write fails, and
		// subscribes again on its next connection; sync waits for that.
		if err := b.ps.Subscribe(context.Background(), ch); err != nil && !b.closed() {
			b.report(fmt.Errorf("redisbroker: subscribe to room %q: %w", room, err))
		}
	}
	b.subMu.Unlock()
	var once sync.Once
	unsubscribe := func() { once.Do(func() { b.unsubscribe(ch, s) }) }
	if err := b.sync(ctx); err != nil {
		unsubscribe()
		return nil, fmt.Errorf("redisbroker: subscribe to room %q: %w", room, err)
	}
	return unsubscribe, nil
}

func (b *Broker) unsubscribe(ch string, s *subscription) {
	s.dead.Store(true)
	b.subMu.Lock()
	defer b.subMu.Unlock()
	b.mu.Lock()
	last := false
	if t := b.topics[ch]; t != nil {
		if i := slices.Index(t.subs, s); i >= 0 {
			t.subs = slices.Delete(slices.Clone(t.subs), i, i+1)
			if len(t.subs) == 0 {
				delete(b.topics, ch)
				last = true
			}
		}
	}
	b.mu.Unlock()
	if last && !b.closed() {
		if err := b.ps.Unsubscribe(context.Background(), ch); err != nil && !b.closed() {
			b.report(fmt.Errorf("redisbroker: unsubscribe from channel %q: %w", ch, err))
		}
	}
}

// sync returns once Redis has processed every SUBSCRIBE sent on the pub/sub
// connection before sync was called. It sends a PING with a numbered
// payload and waits for its reply, which Redis sends after handling the
// earlier commands of the connection; if the connection was replaced in
// between, go-redis subscribed the new one to every channel before the PING.
func (b *Broker) sync(ctx context.Context) error {
	for {
		n := b.pingSeq.Add(1)
		// A failed write makes go-redis reconnect; the retry pings again.
		_ = b.ps.Ping(context.Background(), syncPrefix+strconv.FormatUint(n, 10))
		retry := time.NewTimer(syncRetry)
	wait:
		for {
			b.syncMu.Lock()
			ok, changed := b.synced >= n, b.syncCh
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

// run reads the pub/sub connection until Close.
func (b *Broker) run() {
	ctx := context.Background()
	var backoff time.Duration
	awaiting := false // a health-check ping is unanswered
	for {
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
				if err := b.ps.Ping(ctx); err != nil {
					awaiting = false
					b.report(fmt.Errorf("redisbroker: pub/sub health check: %w", err))
				}
				continue
			}
			if awaiting && isTimeout(err) {
				err = fmt.Errorf("no reply to ping within %v", b.cfg.pingTimeout)
			}
			awaiting = false
			b.report(fmt.Errorf("redisbroker: pub/sub connection failed, reconnecting: %w", err))
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

// dispatch hands a message read from the pub/sub connection to the
// subscribers of its channel.
func (b *Broker) dispatch(msg *redis.Message) {
	b.received.Add(1)
	b.mu.Lock()
	var subs []*subscription
	if t := b.topics[msg.Channel]; t != nil {
		subs = t.subs
	}
	b.mu.Unlock()
	if len(subs) == 0 {
		return
	}
	m, err := decodePayload(msg.Payload)
	if err != nil {
		b.report(fmt.Errorf("redisbroker: message on channel %q: %w", msg.Channel, err))
		return
	}
	for _, s := range subs {
		if !s.dead.Load() {
			s.deliver(m)
		}
	}
}

// pong records the reply to a barrier ping.
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
	b.syncMu.Unlock()
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
