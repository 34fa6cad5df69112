package redisbroker

import (
	"log/slog"
	"time"

	"github.com/wsroom/wsroom"
)

// Option configures a Broker made by New.
type Option func(*config)

type config struct {
	prefix  string
	limit   int
	maxAge  time.Duration
	onError func(error)
	logger  *slog.Logger

	presenceTTL time.Duration

	healthInterval time.Duration // ping when nothing arrived for this long
	pingTimeout    time.Duration // reconnect when a ping is unanswered for this long

	roomQueue int // messages a room's queue holds before its backlog is dropped

	readConcurrency int // history reads (After, Last) under way at once

	sharded        bool          // sharded pub/sub on a single Redis
	replicas       int           // WithReplicaAcks: replicas each stored publish waits for
	replicaTimeout time.Duration // and for how long at most
	dedupWindow    time.Duration // how long PublishOnce remembers a key
}

// DefaultPrefix is the prefix of the Redis keys and channels a Broker uses
// unless WithPrefix says otherwise.
const DefaultPrefix = "wsroom:"

// DefaultMaxAge is how long a Broker keeps a message unless WithMaxAge says
// otherwise.
const DefaultMaxAge = 24 * time.Hour

// DefaultPresenceTTL is how long a presence entry outlives the last refresh
// by its Broker unless WithPresenceTTL says otherwise.
const DefaultPresenceTTL = 30 * time.Second

// DefaultRoomQueue is how many received messages a room's queue holds, on
// each node, while the room's subscribers are busy: one more drops the
// backlog, and the room's subscriptions are told through their lost
// function.
const DefaultRoomQueue = 1024

// DefaultReadConcurrency is how many history reads (After and Last) a
// Broker has under way at once unless WithReadConcurrency says otherwise.
const DefaultReadConcurrency = 8

func defaultConfig() config {
	return config{
		prefix: DefaultPrefix,
		limit:  wsroom.DefaultHistoryLimit,
		maxAge: DefaultMaxAge,
		logger: slog.New(slog.DiscardHandler),

		presenceTTL: DefaultPresenceTTL,

		healthInterval: 3 * time.Second,
		pingTimeout:    5 * time.Second,

		roomQueue: DefaultRoomQueue,

		readConcurrency: DefaultReadConcurrency,

		dedupWindow: wsroom.DedupWindow,
	}
}

// WithReadConcurrency sets how many history reads (After and Last) the
// Broker sends to Redis at once; more wait their turn, for as long as their
// context allows. After a reconnection every room with subscribers on the
// Broker is told it may have missed messages and reads them from the
// history at once: the bound spreads that burst, so that it takes no more
// than n of the go-redis client's connections (its pool holds ten per CPU
// by default) and publishes keep theirs. n < 1 selects
// DefaultReadConcurrency, the default. If given more than once, the last
// one wins.
func WithReadConcurrency(n int) Option {
	return func(c *config) {
		if n < 1 {
			n = DefaultReadConcurrency
		}
		c.readConcurrency = n
	}
}

// WithPrefix sets the prefix of every Redis key and channel the Broker uses,
// so that several applications can share one Redis. Brokers of one cluster
// must use the same prefix. The default is DefaultPrefix; an empty prefix
// selects the default. If given more than once, the last one wins.
func WithPrefix(prefix string) Option {
	return func(c *config) {
		if prefix == "" {
			prefix = DefaultPrefix
		}
		c.prefix = prefix
	}
}

// WithHistoryLimit sets how many messages per room the Broker keeps: older
// ones are trimmed away when a new one is published. n < 1 selects
// wsroom.DefaultHistoryLimit, the default. If given more than once, the last
// one wins.
func WithHistoryLimit(n int) Option {
	return func(c *config) {
		if n < 1 {
			n = wsroom.DefaultHistoryLimit
		}
		c.limit = n
	}
}

// WithMaxAge sets how long the Broker keeps a message, by its Time. Expired
// messages are trimmed when the room's next message is published and are
// never returned by After or Last; a room's keys expire d after its last
// message. d <= 0 keeps messages, and rooms, regardless of age. The default
// is DefaultMaxAge. If given more than once, the last one wins.
func WithMaxAge(d time.Duration) Option {
	return func(c *config) {
		c.maxAge = max(d, 0)
	}
}

// WithErrorHandler sets a function that is told of every error the Broker
// recovers from by itself: a lost pub/sub connection, a failed
// resubscription, a message it cannot decode, the backlog of a room whose
// subscribers fell too far behind. It is called from the Broker's
// goroutines, possibly concurrently, and must not block for long. The default
// is none. If given more than once, the last one wins.
func WithErrorHandler(f func(error)) Option {
	return func(c *config) { c.onError = f }
}

// WithLogger sets a logger that records, at level Warn, every error the
// Broker recovers from by itself (those WithErrorHandler is told of). The
// default discards them; nil selects the default. If given more than once,
// the last one wins.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l == nil {
			l = slog.New(slog.DiscardHandler)
		}
		c.logger = l
	}
}

// WithPresenceTTL sets how long the presence entry of a member joined
// through the Broker lasts without being refreshed: the Broker refreshes its
// entries every d/3, so a node that stops without Close (a crash, a lost
// network) leaves its members listed by the other nodes for at most d.
// The leases of a node that stops so end within d, and a surviving node's
// sweep announces their users' leaves (wsroom.UserPresence). A room's
// presence keys also expire 2d after their last write. A shorter d
// forgets dead nodes sooner at the cost of more frequent refreshes. Every
// Broker of a cluster should use the same d, and the nodes' clocks should
// agree to well within d. d <= 0 selects DefaultPresenceTTL, the default. If
// given more than once, the last one wins.
func WithPresenceTTL(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			d = DefaultPresenceTTL
		}
		c.presenceTTL = d
	}
}

// WithShardedPubSub makes a Broker on a single Redis (7.0 or later) use
// sharded pub/sub, SSUBSCRIBE and SPUBLISH, as it always does on a Redis
// Cluster. On a single Redis it changes nothing but the commands; it lets
// Brokers share the channels of Brokers that use a cluster's sharded
// pub/sub through a proxy. The default is plain pub/sub.
func WithShardedPubSub() Option {
	return func(c *config) { c.sharded = true }
}

// WithReplicaAcks makes every stored publish wait until n replicas of the
// room's master have it (Redis' WAIT, sent on the script's connection right
// after it), for at most timeout, before the message is sent to the
// subscribers. A message reaches subscribers only once it is on n
// replicas, so a failover that promotes one of them loses no message a
// subscriber saw or a publisher was acknowledged; without it, the writes a
// master had not yet passed on are lost with it (see the package
// documentation, Redis Cluster). When fewer replicas acknowledge it in
// time, the publish returns an error wrapping ErrNotReplicated: the message
// is stored, and is sent to subscribers with the room's next acknowledged
// message, unless a failover loses it first; a client that retries it
// without PublishOnce stores it twice. So choose timeout long enough to
// cover a shard's time without replicas after a failover (until the old
// master, restarted, has synchronised as a replica of the new one): a
// publish then waits rather than fails. Once a message is stored, its
// publish waits for it to reach the replicas, or to be found lost at a
// failover (then it fails, and a retry stores it once), even past the
// end of its context, for up to ten times timeout: failing while the
// message may yet surface on a promoted replica would have a retry store
// it twice. Each stored publish costs two
// more round trips (WAIT, and the publish script). n < 1 turns the option
// off, the default; timeout <= 0 waits up to one second. If given more than
// once, the last one wins.
func WithReplicaAcks(n int, timeout time.Duration) Option {
	return func(c *config) {
		if timeout <= 0 {
			timeout = time.Second
		}
		c.replicas, c.replicaTimeout = max(n, 0), timeout
	}
}

// WithDedupWindow sets how long PublishOnce remembers a publish's key: a
// retry within d returns the first publish's position, one after it is
// stored again. wsroom.Deduplicator asks for at least wsroom.DedupWindow,
// the default; a shorter d is for tests, and lets retries that come later
// be stored twice. d <= 0 selects the default. If given more than once, the
// last one wins.
func WithDedupWindow(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			d = wsroom.DedupWindow
		}
		c.dedupWindow = d
	}
}
