package natsbroker

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/wsroom/wsroom"
)

// ErrClosed is returned by the methods of a Broker after Close.
var ErrClosed = errors.New("natsbroker: broker closed")

// Broker is a wsroom.Broker, a wsroom.Store and a wsroom.Presence backed by
// NATS JetStream; see the package documentation for how it orders and
// stores messages and keeps track of members.
//
// A Broker is safe for concurrent use by multiple goroutines. For each room
// with subscribers it runs one goroutine, which calls the deliver and lost
// functions of that room's subscriptions one at a time; they must not block
// for long and must not call their own unsubscribe function. One more
// goroutine watches the connection's status, and one rewrites the presence
// entries of its members. Call Close to stop them all.
type Broker struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
	cfg    config
	name   string // stream name
	verify bool   // the stream has replicas: see won
	hist   string // prefix of stored subjects, "wsroom.h."
	live   string // prefix of announcement subjects, "wsroom.l."

	// ensure looks up the stream, creating it if it is missing; see
	// checkStream.
	ensure func(context.Context) (jetstream.Stream, error)

	// checking is held (a value in it) by the one checkStream under way,
	// and guards created, when the stream this Broker knows was created;
	// gen counts the times checkStream found the stream created anew (a
	// server back without its store).
	checking chan struct{}
	created  time.Time
	gen      atomic.Uint64

	// stop ends with Close, and the calls the watcher makes with it.
	stop       context.Context
	cancelStop context.CancelFunc

	status      chan nats.Status
	watcherDone chan struct{}
	pres        *presence

	// fetched counts the stored messages read from the server by the
	// Store methods and the rooms' catch-ups.
	fetched atomic.Uint64

	mu        sync.Mutex
	closed    bool
	topics    map[string]*topic
	appenders map[string]*appender
}

var (
	_ wsroom.Broker = (*Broker)(nil)
	_ wsroom.Store  = (*Broker)(nil)
)

// New returns a Broker that carries and stores messages through nc. It
// creates the stream (see WithPrefix), or updates the limits of an existing
// one if they differ from the options, and starts a goroutine that watches
// nc's status. Nodes may start at the same moment: the one that loses the
// race to create the stream uses the one that won.
//
// The caller keeps ownership of nc: Close does not close it, and nc must stay
// open until Close returns. nc should reconnect forever (nats.MaxReconnects
// with -1) if the Broker is to outlive long outages.
func New(ctx context.Context, nc *nats.Conn, opts ...Option) (*Broker, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if !validPrefix(cfg.prefix) {
		return nil, fmt.Errorf("natsbroker: invalid prefix %q: want dot-separated subject tokens without wildcards or spaces", cfg.prefix)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("natsbroker: %w", err)
	}
	b := &Broker{
		nc:          nc,
		js:          js,
		cfg:         cfg,
		name:        streamName(cfg.prefix),
		hist:        cfg.prefix + ".h.",
		live:        cfg.prefix + ".l.",
		watcherDone: make(chan struct{}),
		checking:    make(chan struct{}, 1),
		topics:      make(map[string]*topic),
		appenders:   make(map[string]*appender),
		pres:        newPresence(cfg.prefix, cfg.presenceTTL),
		verify:      cfg.replicas > 1,
	}
	want := jetstream.StreamConfig{
		Name:              b.name,
		Description:       "wsroom room history",
		Subjects:          []string{b.hist + "*"},
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardOld,
		Storage:           jetstream.FileStorage,
		MaxMsgsPerSubject: int64(cfg.limit),
		MaxAge:            cfg.maxAge,
		Duplicates:        dupWindow(cfg),
		Replicas:          cfg.replicas,
		// A direct get may be answered by any replica, and a follower may
		// not have applied the last messages yet: with replicas, reads go
		// to the stream's leader, which has applied every message it
		// acknowledged.
		AllowDirect: cfg.replicas == 1,
	}
	b.ensure = func(ctx context.Context) (jetstream.Stream, error) {
		return ensureStream(ctx, js, b.name,
			func(c jetstream.StreamConfig) bool {
				return c.Description == want.Description && slices.Equal(c.Subjects, want.Subjects) &&
					c.Retention == want.Retention && c.Discard == want.Discard && c.Storage == want.Storage &&
					c.MaxMsgsPerSubject == want.MaxMsgsPerSubject && c.MaxAge == want.MaxAge &&
					c.Duplicates == want.Duplicates && c.Replicas == want.Replicas && c.AllowDirect == want.AllowDirect
			},
			func(ctx context.Context) error {
				_, err := js.CreateStream(ctx, want)
				return err
			},
			func(ctx context.Context) error {
				_, err := js.UpdateStream(ctx, want)
				return err
			})
	}
	b.pres.replicas = cfg.replicas
	b.stream, err = b.ensure(ctx)
	if err != nil {
		if isReplicasError(err) {
			return nil, fmt.Errorf("natsbroker: creating stream %s with %d replicas (WithReplicas): %w", b.name, cfg.replicas, err)
		}
		return nil, fmt.Errorf("natsbroker: creating stream %s: %w", b.name, err)
	}
	b.created = b.stream.CachedInfo().Created
	b.stop, b.cancelStop = context.WithCancel(context.Background())
	b.status = nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CONNECTED, nats.CLOSED)
	go b.watch()
	go b.refresher()
	return b, nil
}

// Close stops the Broker: it ends every subscription (their deliver and lost
// functions are not called once Close returns), stops the goroutines the
// Broker started and waits for them, and removes the presence entries of
// this node's members (waiting at most 2 seconds for it; entries it cannot
// remove expire after the presence TTL). Methods called afterwards return
// ErrClosed; unsubscribe functions stay harmless. Close does not close the
// connection and does not delete the stream or the presence bucket. It
// always returns nil.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	topics := b.topics
	b.topics = make(map[string]*topic)
	b.mu.Unlock()
	b.cancelStop()
	b.nc.RemoveStatusListener(b.status)
	<-b.watcherDone
	for _, t := range topics {
		t.stop()
	}
	b.closePresence()
	return nil
}

// Publish implements wsroom.Broker. A message that is not ephemeral is
// numbered and stored as by Append before it is announced; Publish returns
// once JetStream has stored it. An ephemeral message is only announced.
//
// An error does not always mean that the message was not stored: if the
// connection fails after JetStream stored it and before the acknowledgement
// arrives, Publish may return an error for a message that subscribers
// receive.
func (b *Broker) Publish(ctx context.Context, room string, m wsroom.Message) error {
	_, err := b.PublishSeq(ctx, room, m)
	return err
}

// PublishSeq is Publish, returning the message as numbered and stored (as
// Append returns it), as subscribers receive it. An ephemeral message is
// returned as announced: with Seq 0, no epoch, and its Time set to the
// current time if it was zero. It implements wsroom.Sequencer, so that the
// acks of connections of many rooms carry the message's position.
func (b *Broker) PublishSeq(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	if !m.Ephemeral {
		return b.Append(ctx, room, m)
	}
	if err := b.checkOpen(); err != nil {
		return wsroom.Message{}, err
	}
	m.Seq, m.Epoch = 0, ""
	if m.Time.IsZero() {
		m.Time = time.Now()
	}
	data, _ := m.MarshalBinary()
	if err := b.nc.Publish(b.live+roomToken(room), data); err != nil {
		return wsroom.Message{}, fmt.Errorf("natsbroker: publishing to room %q: %w", room, err)
	}
	return m, nil
}

// Subscribe implements wsroom.Broker. The first subscription to a room on
// this Broker subscribes to the room's core NATS subject and starts the
// room's goroutine; the last unsubscribe ends both.
//
// The room's goroutine calls lost, if not nil, after a reconnection, after a
// read from the stream failed, after NATS dropped announcements of the room
// because they were not consumed fast enough, and when messages were no
// longer in the stream when they were found missing: each time once it has
// read the stream again and delivered what it found, so that lost means
// "look in the Store for anything still missing". See the package
// documentation.
func (b *Broker) Subscribe(ctx context.Context, room string, deliver func(wsroom.Message), lost func(error)) (func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, ErrClosed
	}
	t := b.topics[room]
	create := t == nil
	if create {
		t = newTopic(b, room)
		b.topics[room] = t
	}
	t.refs++
	b.mu.Unlock()

	if create {
		t.start(ctx)
	} else {
		select {
		case <-t.ready:
		case <-ctx.Done():
			b.release(t)
			return nil, ctx.Err()
		}
	}
	if t.err != nil {
		b.release(t)
		return nil, t.err
	}
	s := &subscriber{deliver: deliver, lost: lost}
	t.mu.Lock()
	if t.stopped {
		t.mu.Unlock()
		b.release(t)
		return nil, ErrClosed
	}
	t.subs[s] = struct{}{}
	t.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			t.mu.Lock()
			delete(t.subs, s)
			t.mu.Unlock()
			b.release(t)
		})
	}, nil
}

// release drops one reference to t and stops it after the last.
func (b *Broker) release(t *topic) {
	b.mu.Lock()
	t.refs--
	last := t.refs == 0
	if last && b.topics[t.room] == t {
		delete(b.topics, t.room)
	}
	b.mu.Unlock()
	if last {
		t.stop()
	}
}

func (b *Broker) checkOpen() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	return nil
}

// watch reports changes of the connection's status and, after a
// reconnection, makes every subscribed room catch up and the presence
// entries be refreshed. It ends when Close removes the status listener.
func (b *Broker) watch() {
	defer close(b.watcherDone)
	lost := false
	for s := range b.status {
		switch s {
		case nats.DISCONNECTED, nats.RECONNECTING:
			if !lost {
				lost = true
				b.report(errors.New("natsbroker: connection to NATS lost, reconnecting"))
			}
		case nats.CONNECTED:
			if lost {
				lost = false
				b.cfg.logger.Info("natsbroker: reconnected to NATS", "url", b.nc.ConnectedUrlRedacted())
				cause := errors.New("natsbroker: connection to NATS was lost and is restored")
				// A server back without its store has neither the stream
				// nor the presence bucket, and answers no direct get:
				// create them again before the rooms read the stream.
				ctx, cancel := context.WithTimeout(b.stop, setupTimeout)
				b.checkStream(ctx, cause)
				cancel()
				b.pres.dropKV()
				b.mu.Lock()
				for _, t := range b.topics {
					t.catchUp(cause)
				}
				b.mu.Unlock()
				b.pres.refreshSoon()
			}
		case nats.CLOSED:
			b.report(errors.New("natsbroker: connection to NATS closed"))
		}
	}
}

// streamMissing reports whether err may mean that the stream is gone: a
// publish or a direct get that no stream answered, or a stream that is not
// found. A server that lost its store (restarted on an empty store
// directory, say) comes back without the stream.
func streamMissing(err error) bool {
	return errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrStreamNotFound)
}

// checkStream looks the stream up, and creates it again if it is gone, so
// that a server that came back without its store takes messages again: the
// rooms then start new epochs. A stream created anew, by this Broker or
// another node, makes the Broker forget the rooms' positions and the rooms
// read the stream from its start. It reports whether the stream exists.
//
// One check runs at a time; another waits for it within its ctx.
func (b *Broker) checkStream(ctx context.Context, cause error) bool {
	select {
	case b.checking <- struct{}{}:
	case <-ctx.Done():
		return false
	}
	defer func() { <-b.checking }()
	// A stream with replicas answers no lookup while it elects a leader:
	// the check gives up soon, and the next failed read checks again.
	lctx, cancel := context.WithTimeout(ctx, directTimeout)
	s, err := b.js.Stream(lctx, b.name)
	cancel()
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		b.report(fmt.Errorf("natsbroker: stream %s is gone (%v); creating it again: the rooms' history starts anew", b.name, cause))
		s, err = b.ensure(ctx)
		if err != nil {
			b.report(fmt.Errorf("natsbroker: creating stream %s again: %w", b.name, err))
			return false
		}
	}
	if err != nil {
		return false
	}
	if c := s.CachedInfo().Created; !c.Equal(b.created) {
		if !b.created.IsZero() {
			b.report(fmt.Errorf("natsbroker: stream %s was created anew (created %v, known %v): the rooms' history starts anew", b.name, c, b.created))
		}
		b.created = c
		b.gen.Add(1)
		b.forgetPositions()
	}
	return true
}

// forgetPositions makes the next Append of every room read where the
// room's history ends.
func (b *Broker) forgetPositions() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, a := range b.appenders {
		a.posMu.Lock()
		a.known = false
		a.posMu.Unlock()
	}
}

// ensureCreateAttempts bounds how many times ensureStream tries to create a
// stream that other nodes are creating at the same moment.
const ensureCreateAttempts = 5

// ensureStream returns the stream called name, creating it with create if
// it does not exist, and updating it with update if matches rejects its
// configuration. A stream that already matches is left alone, so that nodes
// starting together do not update it all at once. When a create fails
// because another node created the stream meanwhile ("stream name already
// in use", or "subjects overlap with an existing stream" when the other
// creation was under way), ensureStream looks the stream up again.
func ensureStream(ctx context.Context, js jetstream.JetStream, name string, matches func(jetstream.StreamConfig) bool, create, update func(context.Context) error) (jetstream.Stream, error) {
	for attempt := 1; ; attempt++ {
		s, err := js.Stream(ctx, name)
		if err == nil {
			if matches(s.CachedInfo().Config) {
				return s, nil
			}
			if err := update(ctx); err != nil {
				return nil, err
			}
			return js.Stream(ctx, name)
		}
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, err
		}
		err = create(ctx)
		if err == nil {
			return js.Stream(ctx, name)
		}
		if !isCreateRace(err) || attempt == ensureCreateAttempts {
			return nil, err
		}
		if err := sleep(ctx, time.Duration(mrand.Int64N(int64(10*time.Millisecond)))); err != nil {
			return nil, err
		}
	}
}

// dupWindow is the stream's duplicate window: the configured one, or the
// stream's MaxAge if shorter, since JetStream takes no longer window.
func dupWindow(cfg config) time.Duration {
	if cfg.maxAge > 0 && cfg.maxAge < cfg.dupWindow {
		return cfg.maxAge
	}
	return cfg.dupWindow
}

// JetStream error codes of a replica count the servers cannot hold:
// "replicas > 1 not supported in non-clustered mode", and "no suitable
// peers for placement" (fewer servers than replicas).
const (
	jsErrReplicasNotSupported jetstream.ErrorCode = 10074
	jsErrNoPeers              jetstream.ErrorCode = 10005
)

// isReplicasError reports whether a stream could not be created or updated
// because of its replica count.
func isReplicasError(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jsErrReplicasNotSupported || apiErr.ErrorCode == jsErrNoPeers)
}

// jsErrSubjectOverlap is the JetStream error code of "subjects overlap with
// an existing stream".
const jsErrSubjectOverlap jetstream.ErrorCode = 10065

// isCreateRace reports whether a stream creation failed because another
// client created the stream at the same moment.
func isCreateRace(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) ||
		errors.Is(err, jetstream.ErrBucketExists) ||
		errors.As(err, &apiErr) && (apiErr.ErrorCode == jsErrSubjectOverlap || apiErr.ErrorCode == jetstream.JSErrCodeStreamNameInUse)
}

// report hands err to the error handler and the logger.
func (b *Broker) report(err error) {
	b.cfg.logger.Error(err.Error())
	if b.cfg.onError != nil {
		b.cfg.onError(err)
	}
}

// roomToken encodes a room name as one subject token.
func roomToken(room string) string {
	return "r" + base64.RawURLEncoding.EncodeToString([]byte(room))
}

func validPrefix(p string) bool {
	if p == "" || strings.ContainsAny(p, "*> \t\r\n\f\v") {
		return false
	}
	for tok := range strings.SplitSeq(p, ".") {
		if tok == "" {
			return false
		}
	}
	return true
}

func streamName(prefix string) string {
	return strings.NewReplacer(".", "_", "/", "_", `\`, "_").Replace(strings.ToUpper(prefix))
}

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// newID returns a random 16-character identifier.
func newID() string {
	var b [10]byte
	rand.Read(b[:])
	return idEncoding.EncodeToString(b[:])
}
