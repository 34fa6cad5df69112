package natsbroker

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

	replicas  int           // replicas of the stream and the presence bucket
	dupWindow time.Duration // the stream's duplicate window
}

// DefaultPrefix is the prefix of a Broker's subjects when WithPrefix is not
// given; the stream is named after it in upper case.
const DefaultPrefix = "wsroom"

func defaultConfig() config {
	return config{
		prefix: DefaultPrefix,
		limit:  wsroom.DefaultHistoryLimit,
		logger: slog.New(slog.DiscardHandler),

		presenceTTL: DefaultPresenceTTL,
		replicas:    1,
		dupWindow:   wsroom.DedupWindow,
	}
}

// WithPrefix sets the prefix of the Broker's subjects, "wsroom" by default.
// The stream is named after the prefix in upper case, with '.', '/' and '\'
// replaced by '_' ("wsroom" gives "WSROOM"). Every node of a cluster must use
// the same prefix; different prefixes make independent clusters on one NATS
// system. An empty prefix selects the default. Later values win.
func WithPrefix(prefix string) Option {
	return func(c *config) {
		if prefix == "" {
			prefix = DefaultPrefix
		}
		c.prefix = prefix
	}
}

// WithHistoryLimit sets how many messages the stream keeps per room (its
// MaxMsgsPerSubject). n < 1 selects wsroom.DefaultHistoryLimit, the default.
// Later values win.
func WithHistoryLimit(n int) Option {
	return func(c *config) {
		if n < 1 {
			n = wsroom.DefaultHistoryLimit
		}
		c.limit = n
	}
}

// WithMaxAge sets how long the stream keeps a message (its MaxAge). A room
// whose every message has expired starts a new epoch. d <= 0, the default,
// keeps messages regardless of age. Later values win.
func WithMaxAge(d time.Duration) Option {
	return func(c *config) {
		c.maxAge = max(d, 0)
	}
}

// WithErrorHandler sets a function called with every error the Broker meets
// outside a method call: lost and closed connections, failed catch-ups from
// the stream, malformed messages. It may be called concurrently from the
// Broker's goroutines and must not block for long: a room's messages wait
// while it runs. By default such errors only reach the logger. Later values
// win.
func WithErrorHandler(f func(error)) Option {
	return func(c *config) { c.onError = f }
}

// WithLogger sets the logger for errors (as with WithErrorHandler) and for
// reconnections. The default discards everything; nil selects the default.
// Later values win.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l == nil {
			l = slog.New(slog.DiscardHandler)
		}
		c.logger = l
	}
}

// WithPresenceTTL sets the presence lease: how long a connection's presence
// entry outlives the last renewal by its node. A Broker renews its
// connections' leases every third of d, so the leases of a node that stops
// without Close end between 2/3 d and d after it stopped, and a surviving
// node's sweep then announces their users' leaves (wsroom.UserPresence).
// The presence bucket's age limit (MaxAge) is 10 d. d <= 0 selects
// DefaultPresenceTTL (30 seconds); d below MinPresenceTTL (one second) is
// raised to it. Every node of a cluster must use the same value: a node
// sets the bucket's age limit when it first uses presence. Later values
// win.
func WithPresenceTTL(d time.Duration) Option {
	return func(c *config) {
		switch {
		case d <= 0:
			d = DefaultPresenceTTL
		case d < MinPresenceTTL:
			d = MinPresenceTTL
		}
		c.presenceTTL = d
	}
}

// WithReplicas sets how many servers of a NATS cluster hold a copy of the
// stream and of the presence bucket (their Replicas): 1, the default, for a
// single server; 3 for a cluster of three servers or more, so that the
// rooms go on when one server fails (see the package documentation). n must
// not exceed the servers of the cluster; a single server takes only 1. n < 1
// selects 1. A Broker changes the replicas of a stream or bucket that exists
// with another count (JetStream moves it to the new count), so every node of
// a cluster must use the same value. Later values win.
func WithReplicas(n int) Option {
	return func(c *config) {
		c.replicas = max(n, 1)
	}
}
