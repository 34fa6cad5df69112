package redisbroker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"github.com/wsroom/wsroom"
)

// ErrClosed is returned by Publish and Subscribe after Close.
var ErrClosed = errors.New("redisbroker: broker closed")

var errRing = errors.New("redisbroker: a *redis.Ring cannot carry one pub/sub connection for every room; use a *redis.Client, a failover client or a *redis.ClusterClient")

var errPrefixTag = errors.New(`redisbroker: on a Redis Cluster the prefix must not hold "{}" before any other "{": a room's keys would not share a hash slot`)

// Timings of the pub/sub connections' recovery.
const (
	syncRetry  = time.Second            // re-send a subscription barrier after this long
	maxBackoff = 2 * time.Second        // longest pause between failed reads
	minBackoff = 50 * time.Millisecond  // pause after the second failed read in a row
	syncPrefix = "wsroom-subscription-" // payload prefix of barrier pings
	// callTimeout bounds each command the Broker's own goroutines send on
	// a pub/sub connection (SUBSCRIBE, UNSUBSCRIBE, PING), a reconnection
	// go-redis makes for it included, and each read of a cluster's slot
	// map.
	callTimeout = 5 * time.Second
)

var (
	_ wsroom.Broker       = (*Broker)(nil)
	_ wsroom.Store        = (*Broker)(nil)
	_ wsroom.Presence     = (*Broker)(nil)
	_ wsroom.UserPresence = (*Broker)(nil)
	_ wsroom.Sequencer    = (*Broker)(nil)
	_ wsroom.Deduplicator = (*Broker)(nil)
)

// Broker is a wsroom.Broker, a wsroom.Store and a wsroom.Presence that keeps
// rooms' history and members in Redis and carries their messages between
// nodes through Redis pub/sub. See the package documentation for how it
// orders, stores and delivers messages, and how it keeps presence.
//
// A Broker is safe for concurrent use by multiple goroutines. It holds one
// pub/sub connection, or, on a Redis Cluster, one per master that owns the
// slot of a room it subscribed to. Each connection has two goroutines: one
// reads it and queues each message for its room, one sends the SUBSCRIBE,
// UNSUBSCRIBE and barrier PING commands the subscriptions call for on it
// (so that no Subscribe or unsubscribe call waits on the network, or on
// another room's call). They end with the connection: at Close, or, on a
// cluster, when no room of the Broker is left on its master. New also starts
// a goroutine that refreshes the presence entries of the members joined
// through this Broker. Each room with subscriptions on the Broker has a
// goroutine of its own, which calls their deliver and lost functions, so
// that a room whose subscribers are slow delays no other; it ends after the
// room's last subscription. Close stops them all and waits for them.
// Closing a Broker does not close the go-redis client it was made with.
type Broker struct {
	client  redis.UniversalClient
	cluster *redis.ClusterClient // client, when it is one
	sharded bool                 // SSUBSCRIBE and SPUBLISH instead of SUBSCRIBE and PUBLISH
	cfg     config
	err     error // set when client cannot serve the Broker's pub/sub

	done      chan struct{}      // closed by Close
	ctx       context.Context    // ends at Close; bounds presence refreshes
	cancel    context.CancelFunc // ends ctx
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error

	mu     sync.Mutex        // guards topics, shards, the shards' fields so marked, each topic's sh, gen and subs; Close closes done under it
	topics map[string]*topic // by channel name
	main   *shard            // the pub/sub connection of a client that is not a cluster
	shards map[string]*shard // on a cluster: by master address

	slotsMu sync.Mutex
	slots   []slotRange // the cluster's slot map, as last read

	nodesMu sync.Mutex
	nodes   map[string]*redis.Client // WithReplicaAcks: clients of masters, by address ("" off a cluster); closed by Close

	received atomic.Uint64 // messages read from the pub/sub connections

	reads chan struct{} // a slot for each history read under way (WithReadConcurrency)

	presMu     sync.Mutex
	present    map[string]map[string]localMember // this node's members: room, ID
	presClosed bool                              // set by Close
	presHalt   chan struct{}                     // closed by stopRenewing
}

// shard is one pub/sub connection of a Broker, and the rooms subscribed on
// it: the Broker's only one, or, on a cluster, that of one master. Its
// goroutines are run and write.
type shard struct {
	addr string        // the master's address, on a cluster
	node *redis.Client // client of addr, made for the connection, on a cluster
	ps   *redis.PubSub
	quit chan struct{} // closed, under Broker.mu, when the shard ends
	psMu sync.Once     // closes ps

	// Guarded by Broker.mu.
	topics map[string]*topic // the rooms subscribed on this connection, by channel
	sent   map[string]bool   // channels subscribed, as last told Redis
	unsubs map[string]int    // on a cluster: SUNSUBSCRIBE replies still to come
	moved  map[string]error  // on a cluster: channels to tell lost once subscribed again here
	ended  bool              // quit is closed
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
	// lostCause, when not nil, is why the connection's subscriptions may
	// have missed messages; they are told once the barrier ping lostAfter
	// is answered.
	lostCause error
	lostAfter uint64
	// tells are the rooms to tell, each once the barrier ping after is
	// answered: on a cluster, those subscribed again on this connection.
	tells []tell
}

// tell is a room to tell that it may have missed messages.
type tell struct {
	t     *topic
	cause error
	after uint64
}

// topic is a room's channel subscribed on this Broker: its subscriptions,
// and the queue of messages read from the pub/sub connection that its
// goroutine, serve, hands to them.
type topic struct {
	ch   string
	room string
	sh   *shard          // the connection it is subscribed on; guarded by Broker.mu
	gen  uint64          // sh.queued when the topic came to sh: sent once sh.written reaches it
	subs []*subscription // never modified in place; guarded by Broker.mu
	quit chan struct{}   // closed, under Broker.mu, when the last subscription ends
	wake chan struct{}   // signalled when the queue or lost has something new

	qmu      sync.Mutex
	queue    []string // payloads read from the channel, oldest first
	spare    []string // the backing array serve last emptied, for reuse
	lost     error    // to tell the subscriptions before the queued messages
	overflow bool     // lost holds a dropped backlog
	drops    atomic.Uint64

	// Owned by serve: the last message delivered, to check after a fault
	// that the history still holds it (see checkHistory).
	last     wsroom.Message
	lastBody string
}

type subscription struct {
	deliver func(wsroom.Message)
	lost    func(error) // may be nil
	dead    atomic.Bool
}

// New returns a Broker that uses client, which may be a *redis.Client, a
// failover client or a *redis.ClusterClient (a *redis.Ring is not supported:
// Publish, Subscribe and the Presence methods then return an error). On a
// *redis.ClusterClient the Broker uses sharded pub/sub (SSUBSCRIBE and
// SPUBLISH, Redis 7.0 or later; see the package documentation). New starts
// the goroutines that read the Broker's pub/sub connection and refresh its
// presence entries; call Close to stop them. The client must stay open
// until then.
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
		shards: make(map[string]*shard),

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
	b.cluster, _ = client.(*redis.ClusterClient)
	b.sharded = b.cluster != nil || cfg.sharded
	if b.cluster != nil && !prefixKeepsSlot(b.cfg.prefix) {
		b.err = errPrefixTag
		return b
	}
	if b.cluster == nil {
		var ps *redis.PubSub
		if b.sharded {
			ps = client.SSubscribe(context.Background())
		} else {
			ps = client.Subscribe(context.Background())
		}
		b.main = b.newShard("", nil, ps)
	}
	b.wg.Go(b.refreshLoop)
	return b
}

// newShard returns a shard on ps, started. It is called under b.mu, or by
// New.
func (b *Broker) newShard(addr string, node *redis.Client, ps *redis.PubSub) *shard {
	sh := &shard{
		addr: addr, node: node, ps: ps,
		quit:      make(chan struct{}),
		topics:    make(map[string]*topic),
		sent:      make(map[string]bool),
		unsubs:    make(map[string]int),
		moved:     make(map[string]error),
		changed:   make(map[string]struct{}),
		writtenCh: make(chan struct{}),
		wake:      make(chan struct{}, 1),
		syncCh:    make(chan struct{}),
	}
	b.wg.Go(func() { b.run(sh) })
	b.wg.Go(func() { b.write(sh) })
	return sh
}

// shardFor returns the shard of the master at addr (or the Broker's only
// one), making it if needed, or nil after Close. It is called under b.mu.
func (b *Broker) shardFor(addr string) *shard {
	if b.closed() {
		return nil
	}
	if b.cluster == nil {
		return b.main
	}
	if sh := b.shards[addr]; sh != nil {
		return sh
	}
	node := redis.NewClient(nodeOptions(b.cluster.Options(), addr))
	sh := b.newShard(addr, node, node.SSubscribe(context.Background()))
	b.shards[addr] = sh
	return sh
}

// nodeOptions returns the options of a client of one node of the cluster
// that opt describes.
func nodeOptions(opt *redis.ClusterOptions, addr string) *redis.Options {
	return &redis.Options{
		Addr:                         addr,
		ClientName:                   opt.ClientName,
		Dialer:                       opt.Dialer,
		OnConnect:                    opt.OnConnect,
		Protocol:                     opt.Protocol,
		Username:                     opt.Username,
		Password:                     opt.Password,
		CredentialsProvider:          opt.CredentialsProvider,
		CredentialsProviderContext:   opt.CredentialsProviderContext,
		StreamingCredentialsProvider: opt.StreamingCredentialsProvider,
		DialTimeout:                  opt.DialTimeout,
		ReadTimeout:                  opt.ReadTimeout,
		WriteTimeout:                 opt.WriteTimeout,
		TLSConfig:                    opt.TLSConfig,
		PoolSize:                     1,
		DisableIdentity:              opt.DisableIdentity,
		// Off: a connection taken out of the client (Client.Conn, for
		// WithReplicaAcks) would share the setting go-redis writes when
		// Redis refuses the notifications.
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
}

// nodeClient returns the Broker's client of the cluster node at addr, or,
// off a cluster, a copy of its client, making it if needed: WithReplicaAcks
// takes connections out of it (Client.Conn). Close closes it.
func (b *Broker) nodeClient(addr string) *redis.Client {
	b.nodesMu.Lock()
	defer b.nodesMu.Unlock()
	if c := b.nodes[addr]; c != nil {
		return c
	}
	if b.nodes == nil {
		b.nodes = make(map[string]*redis.Client)
	}
	var o *redis.Options
	if b.cluster != nil {
		o = nodeOptions(b.cluster.Options(), addr)
		o.PoolSize = 0 // go-redis' default
	} else {
		c := *b.client.(*redis.Client).Options()
		c.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
		o = &c
	}
	c := redis.NewClient(o)
	b.nodes[addr] = c
	return c
}

// closePS closes the shard's pub/sub connection, once.
func (sh *shard) closePS() {
	sh.psMu.Do(func() { sh.ps.Close() })
}

// Close stops the Broker's goroutines, closes its pub/sub connections and
// ends every subscription: no deliver or lost function is called once Close
// returns. It waits for the deliver and lost calls under way. It then
// removes from Redis the presence entries of the members still joined
// through this Broker, so that other nodes stop listing them at once; if it
// cannot, they expire after the presence TTL.
//
// Publish, Subscribe and Join then return ErrClosed; the Store methods, Leave
// and Members keep working as long as the client does. Close does not close
// the client, and must not be called from a deliver or lost function.
// Calling Close again has no effect and returns the first call's result.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.mu.Lock()
		close(b.done) // under mu: Subscribe starts no room goroutine, and no shard starts, afterwards
		shards := slices.Collect(maps.Values(b.shards))
		if b.main != nil {
			shards = append(shards, b.main)
		}
		b.mu.Unlock()
		b.cancel()
		for _, sh := range shards {
			sh.closePS()
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
		b.nodesMu.Lock()
		for _, c := range b.nodes {
			c.Close()
		}
		b.nodesMu.Unlock()
		if b.err == nil {
			b.closeErr = b.removePresence()
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
			if b.sharded {
				err = b.client.SPublish(ctx, b.channel(room), payload).Err()
			} else {
				err = b.client.Publish(ctx, b.channel(room), payload).Err()
			}
		}
	} else {
		m, _, err = b.append(ctx, room, m, b.channel(room), "")
	}
	if err != nil {
		return wsroom.Message{}, fmt.Errorf("redisbroker: publish to room %q: %w", room, err)
	}
	return m, nil
}

// PublishOnce implements wsroom.Deduplicator. The script that numbers,
// stores and publishes m also sets the key "P{R}:once:<hash of key>", in the
// room's slot, to the message's position, unless it is there: then it
// stores and publishes nothing and returns the position it holds, with dup
// true. The key expires after the de-duplication window (WithDedupWindow,
// wsroom.DedupWindow by default), so a retry within it, through any Broker
// on the same Redis or cluster, is not stored twice; one after it is stored
// again. m must not be ephemeral.
func (b *Broker) PublishOnce(ctx context.Context, room, key string, m wsroom.Message) (wsroom.Message, bool, error) {
	if b.err != nil {
		return wsroom.Message{}, false, b.err
	}
	if b.closed() {
		return wsroom.Message{}, false, ErrClosed
	}
	if m.Ephemeral {
		return wsroom.Message{}, false, fmt.Errorf("redisbroker: publish to room %q: PublishOnce of an ephemeral message", room)
	}
	out, dup, err := b.append(ctx, room, m, b.channel(room), key)
	if err != nil {
		return wsroom.Message{}, false, fmt.Errorf("redisbroker: publish to room %q: %w", room, err)
	}
	return out, dup, nil
}

// Subscribe implements wsroom.Broker. The first subscription of a room on a
// Broker subscribes to the room's channel; Subscribe returns once Redis has
// confirmed it, so every message published afterwards is delivered, or when
// ctx ends.
//
// When a pub/sub connection fails (Redis restarted, the connection was
// killed or went silent), the Broker reconnects and subscribes again to
// every channel it carried; once Redis has confirmed that, it calls the lost
// function of every subscription of those rooms, if not nil, once, with the
// error that broke the connection: messages published in between were not
// delivered. On a cluster, only the rooms of the failed connection's master
// are told, and those whose slot moved to another master (a failover, or a
// slot migration) are subscribed again on the new owner and told. lost is
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
// themselves (but for reading a cluster's slot map, once): the Broker's
// writer goroutines send the SUBSCRIBE and UNSUBSCRIBE commands, batched,
// each bounded by a timeout, so a slow or unreachable Redis holds a
// Subscribe call only until its ctx ends, and never holds another room's
// call.
//
// The returned function ends the subscription; after the last subscription
// of a room ends, the Broker unsubscribes from its channel, without waiting
// for Redis. It may be called more than once, and from within deliver. Once
// it returns, deliver is not called again, though a call already under way
// may still be running.
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
	var addr string
	if b.cluster != nil {
		var err error
		if addr, err = b.owner(ctx, ch); err != nil {
			return nil, fmt.Errorf("redisbroker: subscribe to room %q: %w", room, err)
		}
	}
	s := &subscription{deliver: deliver, lost: lost}
	b.mu.Lock()
	t := b.topics[ch]
	first := t == nil
	if first {
		sh := b.shardFor(addr)
		if sh == nil {
			b.mu.Unlock()
			return nil, ErrClosed
		}
		sh.queued++
		t = &topic{ch: ch, room: room, sh: sh, gen: sh.queued, quit: make(chan struct{}), wake: make(chan struct{}, 1)}
		b.topics[ch] = t
		sh.topics[ch] = t
		sh.changed[ch] = struct{}{}
		b.wg.Go(func() { b.serve(t) })
	}
	t.subs = append(slices.Clip(t.subs), s)
	sh, gen := t.sh, t.gen
	b.mu.Unlock()
	if first {
		signal(sh.wake)
	}
	var once sync.Once
	unsubscribe := func() { once.Do(func() { b.unsubscribe(ch, s) }) }
	if err := b.sync(ctx, sh, gen); err != nil {
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
	var sh *shard
	if t := b.topics[ch]; t != nil {
		if i := slices.Index(t.subs, s); i >= 0 {
			t.subs = slices.Delete(slices.Clone(t.subs), i, i+1)
			if len(t.subs) == 0 {
				delete(b.topics, ch)
				close(t.quit)
				sh = t.sh
				delete(sh.topics, ch)
				delete(sh.moved, ch)
				sh.queued++
				sh.changed[ch] = struct{}{}
			}
		}
	}
	b.mu.Unlock()
	if sh != nil {
		signal(sh.wake)
	}
}

// write is the goroutine that sends a connection's SUBSCRIBE and
// UNSUBSCRIBE commands, and the barrier pings sync asks for, until the
// shard ends. It brings each changed channel's subscription in line with
// whether the channel has a topic on the shard now, in one command for all
// the channels to subscribe and one for those to unsubscribe (on a
// cluster, one of each per hash slot), so that a channel's commands reach
// Redis in the order of its changes, and a room that comes and goes before
// the writer looks costs no command. Each command is bounded by
// callTimeout.
func (b *Broker) write(sh *shard) {
	var backoff time.Duration
	for {
		select {
		case <-sh.wake:
		case <-sh.quit:
			return
		case <-b.done:
			return
		}
		b.mu.Lock()
		changed, gen := sh.changed, sh.queued
		sh.changed = make(map[string]struct{})
		var subs, unsubs []string
		for ch := range changed {
			want := sh.topics[ch] != nil
			if want != sh.sent[ch] {
				if want {
					subs = append(subs, ch)
					sh.sent[ch] = true
				} else {
					unsubs = append(unsubs, ch)
					delete(sh.sent, ch)
					if b.cluster != nil {
						sh.unsubs[ch]++
					}
				}
			}
		}
		b.mu.Unlock()
		slices.Sort(subs)
		slices.Sort(unsubs)
		failed := false
		if len(unsubs) > 0 {
			if err := b.call(func(ctx context.Context) error { return b.unsubscribeCmd(ctx, sh, unsubs) }); err != nil && !b.closed() {
				err = fmt.Errorf("redisbroker: unsubscribe from channel %s: %w", channelList(unsubs), err)
				b.report(err)
				if b.cluster == nil {
					b.lose(sh, err)
				}
			}
		}
		if len(subs) > 0 {
			if err := b.call(func(ctx context.Context) error { return b.subscribeCmd(ctx, sh, subs) }); err != nil && !b.closed() {
				err = fmt.Errorf("redisbroker: subscribe to channel %s: %w", channelList(subs), err)
				b.report(err)
				if b.cluster != nil {
					// Send them again, after a pause, and tell their
					// rooms once they are confirmed.
					b.resend(sh, subs, err)
					failed = true
				} else {
					b.lose(sh, err)
					// go-redis adds the channels to the ones it subscribes
					// each new connection to only after this write, so a
					// connection it opened on the failure lacks them: send
					// them again. If this write fails too, the next
					// connection has them; sync waits for that.
					_ = b.call(func(ctx context.Context) error { return b.subscribeCmd(ctx, sh, subs) })
				}
			} else if b.cluster != nil {
				b.tellAfterPing(sh, subs)
			}
		}
		b.mu.Lock()
		if gen > sh.written {
			sh.written = gen
			close(sh.writtenCh)
			sh.writtenCh = make(chan struct{})
		}
		b.mu.Unlock()
		if sh.pingAsked.Swap(false) {
			// A failed write makes go-redis reconnect; sync asks again.
			if _, err := b.ping(sh); err != nil && !b.closed() && b.cluster == nil {
				b.lose(sh, fmt.Errorf("redisbroker: pub/sub ping: %w", err))
			}
		}
		if failed {
			backoff = min(max(2*backoff, minBackoff), maxBackoff)
			select {
			case <-time.After(backoff):
			case <-sh.quit:
				return
			case <-b.done:
				return
			}
			signal(sh.wake)
		} else {
			backoff = 0
		}
	}
}

// subscribeCmd subscribes the connection to channels: on a cluster, with
// one SSUBSCRIBE per hash slot, as Redis requires.
func (b *Broker) subscribeCmd(ctx context.Context, sh *shard, channels []string) error {
	if !b.sharded {
		return sh.ps.Subscribe(ctx, channels...)
	}
	if b.cluster == nil {
		return sh.ps.SSubscribe(ctx, channels...)
	}
	var errs []error
	for _, group := range bySlot(channels) {
		errs = append(errs, sh.ps.SSubscribe(ctx, group...))
	}
	return errors.Join(errs...)
}

// unsubscribeCmd is subscribeCmd's converse.
func (b *Broker) unsubscribeCmd(ctx context.Context, sh *shard, channels []string) error {
	if !b.sharded {
		return sh.ps.Unsubscribe(ctx, channels...)
	}
	if b.cluster == nil {
		return sh.ps.SUnsubscribe(ctx, channels...)
	}
	var errs []error
	for _, group := range bySlot(channels) {
		errs = append(errs, sh.ps.SUnsubscribe(ctx, group...))
	}
	return errors.Join(errs...)
}

// bySlot groups channels by hash slot, in the order of their first
// appearance.
func bySlot(channels []string) [][]string {
	idx := make(map[int]int)
	var out [][]string
	for _, ch := range channels {
		s := slot(ch)
		i, ok := idx[s]
		if !ok {
			i = len(out)
			idx[s] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], ch)
	}
	return out
}

// resend has the writer of sh send the subscriptions of channels again, and
// tell their rooms once Redis confirms them, with cause.
func (b *Broker) resend(sh *shard, channels []string, cause error) {
	b.mu.Lock()
	for _, ch := range channels {
		if sh.topics[ch] == nil {
			continue
		}
		delete(sh.sent, ch)
		sh.changed[ch] = struct{}{}
		if sh.moved[ch] == nil {
			sh.moved[ch] = cause
		}
	}
	b.mu.Unlock()
}

// tellAfterPing arranges for the rooms of channels that were subscribed
// again on sh, just now, to be told that they may have missed messages once
// a barrier ping sent after their SSUBSCRIBE is answered.
func (b *Broker) tellAfterPing(sh *shard, channels []string) {
	var ts []tell
	b.mu.Lock()
	for _, ch := range channels {
		cause, ok := sh.moved[ch]
		if !ok {
			continue
		}
		delete(sh.moved, ch)
		if t := sh.topics[ch]; t != nil {
			ts = append(ts, tell{t: t, cause: cause})
		}
	}
	b.mu.Unlock()
	if len(ts) == 0 {
		return
	}
	// Any ping numbered after the last one sent goes after the SSUBSCRIBE.
	after := sh.pingSeq.Load() + 1
	sh.syncMu.Lock()
	for i := range ts {
		ts[i].after = after
	}
	sh.tells = append(sh.tells, ts...)
	sh.syncMu.Unlock()
	sh.pingAsked.Store(true)
}

// call runs a command on a pub/sub connection, bounded by callTimeout
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
// as change gen of sh, and every one sent before it on the connection,
// or when ctx ends. It waits for the writer to have sent the command, then
// for the reply to a barrier ping (a PING with a numbered payload) sent
// after it: Redis replies once it has handled the earlier commands of the
// connection; if the connection was replaced in between, go-redis
// subscribed the new one to every channel before the PING (on a cluster,
// the writer subscribes them again, and their rooms are told). It asks the
// writer for the ping, and again after syncRetry without a reply.
func (b *Broker) sync(ctx context.Context, sh *shard, gen uint64) error {
	for {
		b.mu.Lock()
		ok, changed := sh.written >= gen, sh.writtenCh
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
		case <-sh.quit:
			return nil // the room moved to another master, which tells it
		}
	}
	// Any ping numbered after this one is sent after the SUBSCRIBE.
	after := sh.pingSeq.Load()
	for {
		sh.pingAsked.Store(true)
		signal(sh.wake)
		retry := time.NewTimer(syncRetry)
	wait:
		for {
			sh.syncMu.Lock()
			ok, changed := sh.synced > after, sh.syncCh
			sh.syncMu.Unlock()
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
			case <-sh.quit:
				retry.Stop()
				return nil
			}
		}
	}
}

// ping sends a barrier ping, numbered n, on sh's connection, bounded by
// callTimeout. Its reply, read by run, tells that Redis has handled every
// command sent on the connection before it.
func (b *Broker) ping(sh *shard) (n uint64, err error) {
	n = sh.pingSeq.Add(1)
	return n, b.call(func(ctx context.Context) error {
		return sh.ps.Ping(ctx, syncPrefix+strconv.FormatUint(n, 10))
	})
}

// lose records that the subscriptions of sh may miss messages because its
// connection failed with cause. When Redis answers a barrier ping sent
// after this call, on a connection go-redis has subscribed again to every
// channel, pong tells every subscription of the connection.
func (b *Broker) lose(sh *shard, cause error) {
	sh.syncMu.Lock()
	sh.lostCause = cause
	sh.lostAfter = sh.pingSeq.Load() + 1
	sh.syncMu.Unlock()
}

// run reads sh's connection until the shard ends.
func (b *Broker) run(sh *shard) {
	defer func() {
		sh.closePS()
		if sh.node != nil {
			sh.node.Close()
		}
	}()
	ctx := b.ctx // ends at Close, which a reconnection under way need not outlast
	var backoff time.Duration
	awaiting := false // a health-check ping is unanswered
	barrier := false  // a barrier ping must follow a failure
	for {
		if barrier {
			// A failed write reconnects; the next read tells how it went.
			_, err := b.ping(sh)
			barrier = err != nil
		}
		var msg any
		var err error
		if awaiting {
			// With no timeout argument, go-redis treats a read that
			// outlives ctx as a broken connection and reconnects.
			rctx, cancel := context.WithTimeout(ctx, b.cfg.pingTimeout)
			msg, err = sh.ps.Receive(rctx)
			cancel()
		} else {
			msg, err = sh.ps.ReceiveTimeout(ctx, b.cfg.healthInterval)
		}
		if b.closed() {
			return
		}
		select {
		case <-sh.quit:
			return
		default:
		}
		if err != nil {
			if !awaiting && isTimeout(err) {
				awaiting = true
				if _, err := b.ping(sh); err != nil {
					awaiting = false
					err = fmt.Errorf("redisbroker: pub/sub health check: %w", err)
					b.report(err)
					if b.fail(sh, err) {
						return
					}
					barrier = true
				}
				continue
			}
			if b.cluster != nil && isRedisError(err) {
				// A reply to a command, the connection is fine.
				awaiting = false
				if b.redirected(sh, err) {
					return
				}
				continue
			}
			if awaiting && isTimeout(err) {
				err = fmt.Errorf("no reply to ping within %v", b.cfg.pingTimeout)
			}
			awaiting = false
			err = fmt.Errorf("redisbroker: pub/sub connection failed, reconnecting: %w", err)
			b.report(err)
			if b.fail(sh, err) {
				return
			}
			barrier = true
			if backoff > 0 {
				select {
				case <-time.After(backoff):
				case <-b.done:
					return
				case <-sh.quit:
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
			b.dispatch(sh, v)
		case *redis.Pong:
			b.pong(sh, v.Payload)
		case *redis.Subscription:
			if v.Kind == "sunsubscribe" && b.cluster != nil && b.unsubscribed(sh, v.Channel) {
				return
			}
		}
	}
}

// fail handles the failure of sh's connection with cause. Off a cluster,
// every room of the connection is told once go-redis has subscribed a new
// one again. On a cluster, the rooms whose slot another master owns now
// move to that master's connection, and the others are subscribed again on
// this one; each room is told once its new subscription is confirmed. It
// reports whether the shard ended, its rooms all gone elsewhere.
func (b *Broker) fail(sh *shard, cause error) (ended bool) {
	if b.cluster == nil {
		b.lose(sh, cause)
		return false
	}
	b.mu.Lock()
	clear(sh.unsubs)
	b.mu.Unlock()
	return b.relocate(sh, nil, cause)
}

// redirected handles a reply of Redis' to an SSUBSCRIBE or SUNSUBSCRIBE of
// sh: a MOVED or ASK error when the slot of the channels is not (or no
// longer only) the master's. It reports whether the shard ended.
func (b *Broker) redirected(sh *shard, err error) (ended bool) {
	msg := err.Error()
	kind, rest, _ := strings.Cut(msg, " ")
	if kind != "MOVED" && kind != "ASK" {
		if kind != "CROSSSLOT" {
			// go-redis subscribes a new connection to every channel in one
			// command, which Redis refuses across slots; the writer
			// subscribes them again, slot by slot.
			b.report(fmt.Errorf("redisbroker: pub/sub on %s: %w", sh.addr, err))
		}
		return false
	}
	slotStr, _, _ := strings.Cut(rest, " ")
	n, perr := strconv.Atoi(slotStr)
	if perr != nil {
		return false
	}
	b.mu.Lock()
	var chs []string
	for ch := range sh.topics {
		if slot(ch) == n {
			chs = append(chs, ch)
		}
	}
	b.mu.Unlock()
	if len(chs) == 0 {
		return false
	}
	if kind == "ASK" {
		// The slot is migrating: wait for it to settle before subscribing
		// again on whichever master owns it then.
		select {
		case <-time.After(minBackoff):
		case <-b.done:
		}
	}
	return b.relocate(sh, chs, fmt.Errorf("redisbroker: channel %s: %w", channelList(chs), err))
}

// unsubscribed handles an SUNSUBSCRIBE that the Broker did not send: Redis
// sends one when the slot of a channel moved to another master. It reports
// whether the shard ended.
func (b *Broker) unsubscribed(sh *shard, ch string) (ended bool) {
	b.mu.Lock()
	if n := sh.unsubs[ch]; n > 0 {
		if n == 1 {
			delete(sh.unsubs, ch)
		} else {
			sh.unsubs[ch] = n - 1
		}
		b.mu.Unlock()
		return false
	}
	ours := sh.topics[ch] != nil
	b.mu.Unlock()
	if !ours {
		return false
	}
	return b.relocate(sh, []string{ch}, fmt.Errorf("redisbroker: channel %q: unsubscribed by Redis: its slot moved", ch))
}

// relocate reads the cluster's slot map, moves the rooms of channels on sh
// (all of them when channels is nil) whose slot another master owns to
// that master's connection, and has sh's writer subscribe the others
// again; each of them is told, with cause, once its new subscription is
// confirmed. A shard left without rooms ends: relocate reports whether sh
// did.
func (b *Broker) relocate(sh *shard, channels []string, cause error) (ended bool) {
	ctx, cancel := context.WithTimeout(b.ctx, callTimeout)
	err := b.loadSlots(ctx)
	cancel()
	if err != nil && !b.closed() {
		b.report(fmt.Errorf("redisbroker: read the cluster's slot map: %w", err))
	}
	var woken []*shard
	b.mu.Lock()
	defer func() {
		b.mu.Unlock()
		for _, d := range woken {
			signal(d.wake)
		}
		if ended {
			sh.closePS()
		}
	}()
	if sh.ended || b.closed() {
		return sh.ended
	}
	if channels == nil {
		channels = slices.Collect(maps.Keys(sh.topics))
	}
	for _, ch := range channels {
		t := sh.topics[ch]
		if t == nil {
			continue
		}
		dst := sh
		if addr := b.ownerKnown(ch); addr != "" && addr != sh.addr {
			if d := b.shardFor(addr); d != nil {
				dst = d
			}
		}
		if dst == sh {
			delete(sh.sent, ch)
			sh.changed[ch] = struct{}{}
			if sh.moved[ch] == nil {
				sh.moved[ch] = cause
			}
			continue
		}
		delete(sh.topics, ch)
		delete(sh.moved, ch)
		sh.changed[ch] = struct{}{}
		dst.queued++
		t.sh, t.gen = dst, dst.queued
		dst.topics[ch] = t
		dst.changed[ch] = struct{}{}
		dst.moved[ch] = cause
		woken = append(woken, dst)
	}
	woken = append(woken, sh)
	if len(sh.topics) == 0 {
		sh.ended = true
		close(sh.quit)
		delete(b.shards, sh.addr)
		return true
	}
	return false
}

// slotRange is a range of hash slots, and the address of their master.
type slotRange struct {
	start, end int
	addr       string
}

// slotMap returns the slot ranges of a cluster's shards, from CLUSTER
// SHARDS, each with the address of its master (the one that is online,
// when there are two).
func slotMap(shards []redis.ClusterShard) []slotRange {
	var out []slotRange
	for _, sh := range shards {
		addr := ""
		for _, n := range sh.Nodes {
			if n.Role != "master" || (addr != "" && n.Health != "online") {
				continue
			}
			host := n.IP
			if host == "" {
				host = n.Endpoint
			}
			addr = net.JoinHostPort(host, strconv.FormatInt(n.Port, 10))
		}
		if addr == "" {
			continue
		}
		for _, r := range sh.Slots {
			out = append(out, slotRange{int(r.Start), int(r.End), addr})
		}
	}
	slices.SortFunc(out, func(a, b slotRange) int { return a.start - b.start })
	return out
}

// loadSlots reads the cluster's slot map.
func (b *Broker) loadSlots(ctx context.Context) error {
	shards, err := b.cluster.ClusterShards(ctx).Result()
	if err != nil {
		return err
	}
	slots := slotMap(shards)
	if len(slots) == 0 {
		return errors.New("empty slot map")
	}
	b.slotsMu.Lock()
	changed := !slices.Equal(b.slots, slots)
	b.slots = slots
	b.slotsMu.Unlock()
	if changed {
		// go-redis reads the map again on a MOVED reply, or when told:
		// tell it, so that publishes go to the new masters at once.
		b.cluster.ReloadState(ctx)
	}
	return nil
}

// owner returns the address of the master that owns ch's slot, reading the
// slot map first if the Broker has none.
func (b *Broker) owner(ctx context.Context, ch string) (string, error) {
	if a := b.ownerKnown(ch); a != "" {
		return a, nil
	}
	if err := b.loadSlots(ctx); err != nil {
		return "", fmt.Errorf("read the cluster's slot map: %w", err)
	}
	if a := b.ownerKnown(ch); a != "" {
		return a, nil
	}
	return "", fmt.Errorf("no master owns slot %d", slot(ch))
}

// ownerKnown returns the address of the master that owns ch's slot in the
// slot map last read, or "".
func (b *Broker) ownerKnown(ch string) string {
	s := slot(ch)
	b.slotsMu.Lock()
	defer b.slotsMu.Unlock()
	for _, r := range b.slots {
		if r.start <= s && s <= r.end {
			return r.addr
		}
	}
	return ""
}

// dispatch queues a message read from sh's connection for the goroutine
// of its channel's topic. It drops a message of a topic subscribed on
// another connection: on a cluster, the late messages of a master the room
// moved away from (a master stopped, then continued after its replica took
// over, may still publish writes that its successor never had). It never
// blocks: when the topic's queue is full, the queued messages are dropped
// and the subscriptions told.
func (b *Broker) dispatch(sh *shard, msg *redis.Message) {
	b.received.Add(1)
	b.mu.Lock()
	t := b.topics[msg.Channel]
	ours := t != nil && t.sh == sh
	b.mu.Unlock()
	if !ours {
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
// and not delivered yet, which are dropped as well. Before telling the
// subscriptions they may have missed messages, it checks that the history
// still holds the last message delivered (checkHistory). Within an epoch,
// it delivers no message whose Seq is not above the last one delivered;
// one with such a Seq that is not the last message again has it check the
// history too, and tell the subscriptions if the room got a new epoch.
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
		suspect := false

		// Read after taking the batch, so that a subscription whose
		// Subscribe returned before a message was queued receives it.
		b.mu.Lock()
		subs := t.subs
		b.mu.Unlock()
		if cause != nil {
			b.checkHistory(t)
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
			m, body, err := decodePayload(payload)
			if err != nil {
				b.report(fmt.Errorf("redisbroker: message on channel %q: %w", t.ch, err))
				continue
			}
			if m.Seq != 0 {
				if m.Epoch == t.last.Epoch && m.Seq <= t.last.Seq {
					// Already delivered, or a number used again: after a
					// failover, the old master's last writes (sent to the
					// new one over the cluster bus) and the new master's
					// messages can both carry it.
					if m.Seq != t.last.Seq || body != t.lastBody {
						suspect = true
					}
					continue
				}
				t.last, t.lastBody = m, body
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
		if suspect && b.checkHistory(t) {
			t.tell(errHistoryBack)
		}
	}
}

// errHistoryBack is the cause a room's subscriptions are told when a
// message reused a number already delivered for another message, and the
// room got a new epoch (checkHistory).
var errHistoryBack = errors.New("redisbroker: the room's history went back (a failover): new epoch")

// pong records the reply to a barrier ping of sh, and tells the
// subscriptions that they may have missed messages if the ping was sent
// after a failure.
func (b *Broker) pong(sh *shard, payload string) {
	s, ok := strings.CutPrefix(payload, syncPrefix)
	if !ok {
		return
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return
	}
	sh.syncMu.Lock()
	if n > sh.synced {
		sh.synced = n
		close(sh.syncCh)
		sh.syncCh = make(chan struct{})
	}
	cause := sh.lostCause
	if cause != nil && n >= sh.lostAfter {
		sh.lostCause = nil
	} else {
		cause = nil
	}
	var due []tell
	kept := sh.tells[:0]
	for _, tl := range sh.tells {
		if n >= tl.after {
			due = append(due, tl)
		} else {
			kept = append(kept, tl)
		}
	}
	clear(sh.tells[len(kept):])
	sh.tells = kept
	sh.syncMu.Unlock()
	for _, tl := range due {
		tl.t.tell(tl.cause)
	}
	if cause == nil {
		return
	}
	b.mu.Lock()
	for _, t := range sh.topics {
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

// isRedisError reports whether err is an error reply of Redis'.
func isRedisError(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && !isTimeout(err)
}
