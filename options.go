package wsroom

import (
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// Option configures a Room or a Registry. Options are applied in order, so
// when the same option is passed twice the later value wins.
//
// Each option's documentation says which connections it serves: a Room
// made by New and the rooms of a Registry (Room.Handler,
// Registry.Handler), and the connections of many rooms of
// Registry.MuxHandler. Options that serve a Registry only (WithIdleTimeout,
// WithNameValidator, WithMaxRooms, WithJoinCheck and the options of
// connections of many rooms) make New panic, as a lone Room would ignore
// them.
type Option func(*config)

// SlowPolicy says what a room does with a client whose send buffer is full.
type SlowPolicy int

const (
	// CloseSlow closes the client with websocket.StatusPolicyViolation (1008)
	// and the reason "wsroom: send buffer full", so it can reconnect and
	// resume. It is the default: no message is silently lost.
	CloseSlow SlowPolicy = iota
	// DropOldest discards the oldest queued message to make room for the new
	// one. For streams where only the latest state matters.
	DropOldest
	// DropNewest discards the new message and keeps the queue as it is.
	DropNewest
)

// RatePolicy says what a room does with a client that sends faster than its
// rate limit.
type RatePolicy int

const (
	// Throttle stops reading from the client until it is within its limit
	// again. The client's own messages wait; nobody else notices. It is the
	// default policy.
	Throttle RatePolicy = iota
	// CloseOverLimit closes the client with websocket.StatusPolicyViolation
	// (1008) and the reason "wsroom: rate limit exceeded".
	CloseOverLimit
)

// The defaults of the options, in one place. Each option's documentation
// states its default in words, and TestDefaultsInDocs checks that the two
// agree.
const (
	defaultSendBuffer             = 256
	defaultReadLimit              = 32 << 10
	defaultWriteTimeout           = 10 * time.Second
	defaultPingInterval           = 30 * time.Second
	defaultPongTimeout            = 10 * time.Second
	defaultIdleTimeout            = time.Minute
	defaultPublishRetry           = 10 * time.Second
	defaultMaxRooms               = 10000
	defaultMaxRoomsPerClient      = 100
	defaultMaxNewRoomsPerConn     = 1000
	defaultMaxNewRoomsPerIdentity = 1000
	defaultRateLimit              = 20 // messages a second, with the Throttle policy
	defaultRateBurst              = 40
)

type config struct {
	codec        Codec
	sendBuffer   int
	readLimit    int64
	writeTimeout time.Duration
	pingInterval time.Duration
	pongTimeout  time.Duration
	slowPolicy   SlowPolicy
	compression  websocket.CompressionMode
	origins      []string
	originCheck  func(*http.Request) bool // see WithOriginCheck (auth.go)
	subprotocols []string                 // see WithSubprotocols (auth.go)
	authorize    func(*http.Request) (any, error)
	admit        func(*Client) error
	onJoin       func(*Client)
	onLeave      func(*Client, error)
	onMessage    func(*Client, []byte) error
	onError      func(*Client, error)
	maxClients   int
	rateLimit    float64
	rateBurst    int
	ratePolicy   RatePolicy
	logger       *slog.Logger
	observer     Observer
	store        Store
	broker       Broker
	history      int
	publishRetry time.Duration
	// presenceByUser keys presence members by user (WithPresenceByUser).
	presenceByUser bool

	set optionSet // the options given that serve a Registry only

	// Registry only.
	idleTimeout time.Duration
	validName   func(string) error
	maxRooms    int
	// Caps on the rooms a connection and an identity made (0: none).
	maxNewRoomsPerConn, maxNewRoomsPerIdentity int

	// Connections of many rooms only.
	joinCheck         func(*Client, string) error
	maxRoomsPerClient int
	presenceEvents    int
	events            *eventLog // WithEvents; shared by a registry's rooms
	onRoomJoin        func(*Client, *Room)
	onRoomLeave       func(*Client, *Room, string)
	onPublish         func(*Client, *Room, []byte) ([]byte, error)
}

func defaultConfig() config {
	return config{
		codec:                  Text(),
		sendBuffer:             defaultSendBuffer,
		readLimit:              defaultReadLimit,
		writeTimeout:           defaultWriteTimeout,
		pingInterval:           defaultPingInterval,
		pongTimeout:            defaultPongTimeout,
		logger:                 slog.New(slog.DiscardHandler),
		idleTimeout:            defaultIdleTimeout,
		validName:              ValidRoomName,
		maxRooms:               defaultMaxRooms,
		maxRoomsPerClient:      defaultMaxRoomsPerClient,
		maxNewRoomsPerConn:     defaultMaxNewRoomsPerConn,
		maxNewRoomsPerIdentity: defaultMaxNewRoomsPerIdentity,
		rateLimit:              defaultRateLimit,
		rateBurst:              defaultRateBurst,
		publishRetry:           defaultPublishRetry,
	}
}

// mustConfig returns the configuration opts make, and panics if they cannot
// work together: a programming error, like registering one pattern twice
// with an http.ServeMux.
func mustConfig(opts []Option) config {
	cfg, err := newConfig(opts)
	if err != nil {
		panic(err)
	}
	return cfg
}

// optionSet records which options a configuration was given, of those that
// serve a Registry only, so that New refuses them rather than ignore them.
type optionSet uint16

const (
	setIdleTimeout optionSet = 1 << iota
	setNameValidator
	setMaxRooms
	setJoinCheck
	setMaxRoomsPerClient
	setPresenceEvents
	setOnRoomJoin
	setOnRoomLeave
	setOnPublish
	setMaxNewRooms
	setEvents
)

// registryOptions names the options of an optionSet, in the order of its
// bits.
var registryOptions = [...]string{
	"WithIdleTimeout", "WithNameValidator", "WithMaxRooms", "WithJoinCheck",
	"WithMaxRoomsPerClient", "WithPresenceEvents", "WithOnRoomJoin",
	"WithOnRoomLeave", "WithOnPublish", "WithMaxNewRooms", "WithEvents",
}

// names returns the names of the options in s.
func (s optionSet) names() []string {
	var out []string
	for i, name := range registryOptions {
		if s&(1<<i) != 0 {
			out = append(out, name)
		}
	}
	return out
}

// mustRoomConfig is mustConfig for New, which also panics if opts hold an
// option that serves a Registry only: a lone Room would ignore it.
func mustRoomConfig(opts []Option) config {
	cfg := mustConfig(opts)
	if cfg.set != 0 {
		panic("wsroom: New(" + strings.Join(cfg.set.names(), ", ") + "): " +
			"these options serve a Registry (its rooms by name, its idle rooms, its connections of many rooms); " +
			"a Room made by New would ignore them: drop them, or use NewRegistry")
	}
	return cfg
}

// errSplitHistory is the error of a Store that is not the one the Broker
// numbers messages in.
var errSplitHistory = errors.New("wsroom: WithStore names a different Store than the one the Broker numbers messages in; " +
	"the room would replay a history the Broker never writes: drop WithStore, or give the Broker that Store")

func newConfig(opts []Option) (config, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	own := storeOf(cfg.broker)
	if cfg.store != nil && own != nil && !sameStore(own, cfg.store) {
		return config{}, errSplitHistory
	}
	if cfg.store == nil {
		cfg.store = own
	}
	if cfg.store == nil {
		cfg.store = NewMemoryStore(0, DefaultHistoryAge)
	}
	if cfg.broker == nil {
		cfg.broker = NewLocalBroker(cfg.store)
	}
	return cfg, nil
}

// storeOf returns the Store a Broker numbers messages in, when it says:
// the Broker itself if it is a Store, or what its Store method returns
// (LocalBroker's, also when another Broker embeds it).
func storeOf(b Broker) Store {
	switch b := b.(type) {
	case Store:
		return b
	case interface{ Store() Store }:
		return b.Store()
	}
	return nil
}

// sameStore reports whether a and b are one Store. Stores of types that
// cannot be compared are taken to differ.
func sameStore(a, b Store) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}

// WithCodec sets how frames from clients become payloads and how messages
// become frames. The default is Text(): text frames carried as they are.
// A nil codec selects the default. The codec frames the messages of
// clients of one room (Room.Handler, Registry.Handler); clients of many
// rooms (Registry.MuxHandler) get wsroom.v1 frames instead, and the data
// they publish is decoded by the codec all the same.
func WithCodec(c Codec) Option {
	return func(cfg *config) {
		if c == nil {
			c = Text()
		}
		cfg.codec = c
	}
}

// WithSendBuffer sets how many messages may wait to be written to one
// client (default 256; n < 1 selects the default), of either kind: a
// client of many rooms has one buffer for all its rooms. When a client's
// buffer is full, the SlowPolicy applies. Memory for the buffer is taken
// only as messages queue up.
func WithSendBuffer(n int) Option {
	return func(cfg *config) {
		if n < 1 {
			n = defaultSendBuffer
		}
		cfg.sendBuffer = n
	}
}

// WithReadLimit sets the largest message, in bytes, a client of either
// kind may send (default 32 KiB; n < 1 selects the default). A client that
// sends a larger one is closed with websocket.StatusMessageTooBig (1009).
func WithReadLimit(n int64) Option {
	return func(cfg *config) {
		if n < 1 {
			n = defaultReadLimit
		}
		cfg.readLimit = n
	}
}

// WithWriteTimeout bounds each write to a client of either kind (default
// 10s; d <= 0 selects the default). A client that cannot take a write in
// time is dropped.
func WithWriteTimeout(d time.Duration) Option {
	return func(cfg *config) {
		if d <= 0 {
			d = defaultWriteTimeout
		}
		cfg.writeTimeout = d
	}
}

// WithPing makes the room ping each client, of either kind, every interval
// and drop a client that has not answered within timeout, so a dead peer
// is gone within interval + timeout (defaults 30s and 10s). interval <= 0
// turns pings off; timeout <= 0 selects the default.
func WithPing(interval, timeout time.Duration) Option {
	return func(cfg *config) {
		if timeout <= 0 {
			timeout = defaultPongTimeout
		}
		cfg.pingInterval, cfg.pongTimeout = interval, timeout
	}
}

// WithSlowPolicy sets what happens when a client's send buffer is full
// (default CloseSlow), for clients of either kind.
func WithSlowPolicy(p SlowPolicy) Option {
	return func(cfg *config) { cfg.slowPolicy = p }
}

// WithCompression sets the permessage-deflate mode offered to clients of
// either kind (default websocket.CompressionDisabled). Compression costs
// CPU and memory per client; it pays off for large, repetitive text.
func WithCompression(mode websocket.CompressionMode) Option {
	return func(cfg *config) { cfg.compression = mode }
}

// WithOriginPatterns allows cross-origin handshakes from origins whose host
// matches one of patterns (path.Match syntax, e.g. "*.example.com"; a
// pattern with "://" matches "scheme://host"). By default only same-origin
// handshakes are accepted and others get 403. Later calls add patterns. It
// serves every handler.
func WithOriginPatterns(patterns ...string) Option {
	return func(cfg *config) { cfg.origins = append(cfg.origins, patterns...) }
}

// WithAuthorize sets a hook run on every handshake request before the
// upgrade. It returns the client's identity (see Client.Identity) or an
// error: an *HTTPError answers with its status and message, any other error
// with 403 Forbidden. The hook runs on the request's goroutine, for every
// handler. Default: none, every request is accepted with a nil identity.
func WithAuthorize(fn func(r *http.Request) (identity any, err error)) Option {
	return func(cfg *config) { cfg.authorize = fn }
}

// WithAdmit sets a hook that decides, after the upgrade and before the client
// joins, whether it may join: a place to claim per-client resources, such as
// a unique name, that the leave hook then releases. A non-nil error refuses
// the client: it is closed with the error's code and reason if the error is a
// websocket.CloseError, else with websocket.StatusPolicyViolation and the
// error's text; it receives no message, and neither the join nor the leave
// hook runs for it. For an admitted client the leave hook always runs once,
// even if the room closes before the client could join. The hook runs on
// the client's own goroutine. It serves every handler: for a client of
// many rooms it runs once, when the connection opens, before it joins any
// room.
func WithAdmit(fn func(c *Client) error) Option {
	return func(cfg *config) { cfg.admit = fn }
}

// WithOnJoin sets a hook called when a client has joined, before any message
// is written to it. It runs on the client's own goroutine. A client of
// many rooms joins when its connection opens (the rooms it then joins are
// for WithOnRoomJoin).
func WithOnJoin(fn func(c *Client)) Option {
	return func(cfg *config) { cfg.onJoin = fn }
}

// WithOnLeave sets a hook called once when a client has left, with the
// reason (a *websocket.CloseError, ErrClosed, or another error). It runs on
// the client's own goroutine, after the client has stopped receiving. A
// client of many rooms leaves when its connection ends (the rooms it
// leaves before are for WithOnRoomLeave).
func WithOnLeave(fn func(c *Client, reason error)) Option {
	return func(cfg *config) { cfg.onLeave = fn }
}

// WithOnMessage sets a hook that receives every message from a client, after
// the codec decoded it, instead of publishing it. The hook decides: publish
// it (perhaps changed) with Room.Publish, answer with Client.Send, or drop it.
// A non-nil error is passed to the error hook and closes the client with
// websocket.StatusPolicyViolation. The hook runs on the client's reading
// goroutine: the client's next message waits for it, nobody else does.
// Default: none; each message is published to the room as it is. It serves
// clients of one room (Room.Handler, Registry.Handler); Registry.MuxHandler
// answers its clients' requests as the wsroom.v1 protocol says, and shows
// what they publish to WithOnPublish instead.
func WithOnMessage(fn func(c *Client, data []byte) error) Option {
	return func(cfg *config) { cfg.onMessage = fn }
}

// WithOnError sets a hook that receives errors the room handles by itself:
// a client's bad input, failed writes, broker and store failures (c is nil
// for errors that belong to no client). It may be called concurrently. It
// serves every handler.
func WithOnError(fn func(c *Client, err error)) Option {
	return func(cfg *config) { cfg.onError = fn }
}

// WithMaxClients caps the number of clients of a room, of either kind
// (default 0, no cap). Handshakes beyond it are answered 503 Service
// Unavailable, and join requests of clients of many rooms the error code
// "unavailable".
func WithMaxClients(n int) Option {
	return func(cfg *config) { cfg.maxClients = max(n, 0) }
}

// WithRateLimit limits each client to perSecond messages per second on
// average, with bursts of up to burst messages (burst < 1 means 1), and sets
// what happens beyond it, for clients of either kind (a client of many
// rooms counts its requests). The default is 20 a second with bursts of 40
// and the Throttle policy, so that one client cannot flood a room;
// perSecond <= 0 removes the limit.
func WithRateLimit(perSecond float64, burst int, p RatePolicy) Option {
	return func(cfg *config) {
		cfg.rateLimit, cfg.rateBurst, cfg.ratePolicy = perSecond, max(burst, 1), p
	}
}

// WithLogger sets where the room logs joins, leaves and handled errors, at
// debug and warn levels (default: nowhere), for every handler.
func WithLogger(l *slog.Logger) Option {
	return func(cfg *config) {
		if l == nil {
			l = slog.New(slog.DiscardHandler)
		}
		cfg.logger = l
	}
}

// WithStore sets where the room keeps its history (default: a MemoryStore
// keeping 1,000 messages per room for DefaultHistoryAge, or the Broker
// itself if it is a Store). When the Broker is the default LocalBroker, it
// numbers messages in this Store.
//
// A Broker that numbers messages in a Store of its own (one that is itself
// a Store, such as redisbroker's and natsbroker's, or a LocalBroker made
// with another Store) cannot be given a different Store: the room would
// replay a history the Broker never writes. New and NewRegistry panic on
// that mix.
func WithStore(s Store) Option {
	return func(cfg *config) { cfg.store = s }
}

// WithBroker sets how published messages reach every node's copy of the room
// (default: a LocalBroker over the room's Store, for a single process). A
// Broker that is also a Store serves as the room's Store too, unless
// WithStore says otherwise.
func WithBroker(b Broker) Option {
	return func(cfg *config) { cfg.broker = b }
}

// WithHistory makes the room send each joining client of one room the last
// n messages of its history before live ones (default 0: none). A client
// that resumes (see the package documentation) gets what it missed
// instead. A client of many rooms asks for history in each join request.
func WithHistory(n int) Option {
	return func(cfg *config) { cfg.history = max(n, 0) }
}

// WithIdleTimeout sets how long a Registry keeps a room without clients
// before it closes and forgets it (default one minute; d <= 0 selects the
// default). It serves a Registry only: New panics on it.
func WithIdleTimeout(d time.Duration) Option {
	return func(cfg *config) {
		cfg.set |= setIdleTimeout
		if d <= 0 {
			d = defaultIdleTimeout
		}
		cfg.idleTimeout = d
	}
}

// WithNameValidator sets the check a Registry applies to room names (default
// ValidRoomName), in Registry.Room, Registry.Handler, Registry.MuxHandler
// and Client.Join. It serves a Registry only: New panics on it.
func WithNameValidator(valid func(name string) error) Option {
	return func(cfg *config) {
		cfg.set |= setNameValidator
		if valid == nil {
			valid = ValidRoomName
		}
		cfg.validName = valid
	}
}

// WithPublishRetry sets how long a room retries publishing a message a
// client of either kind sent while the Broker fails (default 10s; d <= 0
// selects the default). Meanwhile the client's next messages wait
// (its reads stop), so nothing it sent is lost; past d the client is closed
// with websocket.StatusTryAgainLater (1013) and ErrUnavailable, and should
// send the message again. Retries are counted in Stats.PublishRetries.
func WithPublishRetry(d time.Duration) Option {
	return func(cfg *config) {
		if d <= 0 {
			d = defaultPublishRetry
		}
		cfg.publishRetry = d
	}
}

// WithMaxRooms caps the number of rooms a Registry holds at once (default
// 10,000; n < 1 selects the default). Beyond it, a handshake for a new
// room gets 503 Service Unavailable, a join request for one the error code
// "unavailable", and Registry.Room an error; rooms that exist still serve.
// It serves a Registry only: New panics on it.
func WithMaxRooms(n int) Option {
	return func(cfg *config) {
		cfg.set |= setMaxRooms
		if n < 1 {
			n = defaultMaxRooms
		}
		cfg.maxRooms = n
	}
}

// WithMaxNewRooms caps how many of a Registry's rooms one client may make,
// so that a client that joins room after room cannot fill the registry
// (WithMaxRooms) and lock everyone else out of new rooms (defaults 1,000 and
// 1,000; 0 selects the default, a negative value removes the cap). A room
// counts against the connection whose join made it, perConn at most, and
// against that connection's identity, counting every connection of the
// identity (one-room handshakes of Registry.Handler included), perIdentity
// at most, for as long as the registry holds the room: until the idle
// timeout after its last client left. An identity counts when it is a
// string or a fmt.Stringer (as Member.Info shows it), equal strings being
// one identity; other identities, and none, are capped per connection
// only. A join that would make a room over a cap gets the error code
// "too_many_rooms" (Registry.MuxHandler) or 503 Service Unavailable
// (Registry.Handler); joining a room that exists is never capped, nor is a
// room server code makes (Registry.Room, Registry.Publish). Client.Join
// counts as the client's join. It serves a Registry only: New panics on it.
func WithMaxNewRooms(perConn, perIdentity int) Option {
	return func(cfg *config) {
		cfg.set |= setMaxNewRooms
		cfg.maxNewRoomsPerConn = bound(perConn, defaultMaxNewRoomsPerConn)
		cfg.maxNewRoomsPerIdentity = bound(perIdentity, defaultMaxNewRoomsPerIdentity)
	}
}

// bound returns the bound an option was given: n, def if n is 0, or 0 (no
// bound) if n is negative.
func bound[T int | int64](n, def T) T {
	switch {
	case n == 0:
		return def
	case n < 0:
		return 0
	}
	return n
}

// WithJoinCheck sets a hook that decides whether a client may join the
// room called room, in both kinds of a Registry's connection. A panic is
// reported to the error hook and refuses the join. Default: none, every
// join is allowed. It serves a Registry only: New panics on it.
//
// With Registry.Handler it checks the room picked from the URL, on the
// request's goroutine, after every other check of the handshake (the
// authorize hook last), before the upgrade and before the room is made. c
// is then the client to be: its ID, which the connection keeps, and its
// Identity are set, its Close does nothing, and nothing else of it may be
// used yet. A non-nil
// error refuses the handshake with 403 Forbidden and the error's text, or
// with an *HTTPError's status and message; a panic with 500.
//
// With Registry.MuxHandler it runs on the client's reading goroutine, for
// joins the client asks for, not for Client.Join, after the connection's
// own checks (the name, the number of rooms). A non-nil error refuses the
// join with the error code "forbidden" and the error's text. The join may
// still fail after it (the room is not available), so it should claim
// nothing: claim in WithOnRoomJoin and release in WithOnRoomLeave.
func WithJoinCheck(fn func(c *Client, room string) error) Option {
	return func(cfg *config) {
		cfg.set |= setJoinCheck
		cfg.joinCheck = fn
	}
}

// WithMaxRoomsPerClient sets how many rooms a client of many rooms (see
// Registry.MuxHandler) may be in at once (default 100; n < 1 selects the
// default); a join beyond it gets the error code "too_many_rooms". It
// serves a Registry only: New panics on it.
func WithMaxRoomsPerClient(n int) Option {
	return func(cfg *config) {
		cfg.set |= setMaxRoomsPerClient
		if n < 1 {
			n = defaultMaxRoomsPerClient
		}
		cfg.maxRoomsPerClient = n
	}
}

// WithPresenceEvents makes rooms tell their members of many rooms (see
// Registry.MuxHandler) who joins and leaves, as "presence" frames of the
// wsroom.v3 protocol, on every node: a join or leave is published through
// the Broker as an ephemeral message. Joins and leaves of clients of one
// room count too. In a room with more than limit members, joins and leaves
// are not sent, since their traffic grows with the square of the room's
// size; instead each node sends its members of many rooms the number of
// members, at most once a second, when it changed. The number is the
// Broker's count when it is a UserPresence (its engine counts, without
// reading the member list), else the length of its Presence's list, else
// the node's, asked once a second per room with members on the node. Once
// a second too, each such room sweeps a UserPresence's entries whose lease
// ended (a node that died) and announces their users' leaves. Members are
// connections, or users with WithPresenceByUser. limit <= 0 turns presence
// events off (the default). It serves a Registry only, whose members of
// many rooms get the events: New panics on it.
func WithPresenceEvents(limit int) Option {
	return func(cfg *config) {
		cfg.set |= setPresenceEvents
		cfg.presenceEvents = max(limit, 0)
	}
}

// WithPresenceByUser makes a room's presence members users rather than
// connections: a client's user is its identity (what the authorize hook
// returned) when that is a string or a fmt.Stringer, and a client without
// one is its own user. A user with many connections in a room, on any
// nodes, is one member: Members lists it once, Count counts it once, and
// presence events (WithPresenceEvents) tell one join, when its first
// connection joins, and one leave, when its last one leaves. Across nodes
// this needs a Broker that implements UserPresence, which counts each
// user's connections in its engine; with any other Broker, a node counts
// only its own connections, so a user on two nodes joins once on each.
//
// Without it, each connection is a member of its own, as before: apps that
// list tabs, or that key members by connection ID, keep working. The
// events' members carry a "user" either way (PROTOCOL.md, section 3.7),
// so a client written for per-user presence works with both.
func WithPresenceByUser() Option {
	return func(cfg *config) { cfg.presenceByUser = true }
}

// WithOnRoomJoin sets a hook called when a client of many rooms (see
// Registry.MuxHandler) has joined room r, before the room's messages are
// written to it. It runs on the goroutine that joined the client: its
// reading goroutine, or the caller of Client.Join. It serves a Registry
// only: New panics on it.
func WithOnRoomJoin(fn func(c *Client, r *Room)) Option {
	return func(cfg *config) {
		cfg.set |= setOnRoomJoin
		cfg.onRoomJoin = fn
	}
}

// WithOnRoomLeave sets a hook called once when a client of many rooms has
// left room r, with the reason: "requested" (it asked), "removed"
// (Client.Leave), "closed" (the room closed), "resync" (the room lost
// messages it owed the client), or "disconnected" (the connection ended).
// It may run on the client's goroutines or on one of the room's. It serves
// a Registry only: New panics on it.
func WithOnRoomLeave(fn func(c *Client, r *Room, reason string)) Option {
	return func(cfg *config) {
		cfg.set |= setOnRoomLeave
		cfg.onRoomLeave = fn
	}
}

// WithOnPublish sets a hook that sees every message a client of many rooms
// publishes, before it is published: it returns the data to publish (the
// same, or changed; it must suit the room's codec) or an error, which
// refuses the publish with the error code "forbidden" and the error's
// text. The acknowledgement is for what the hook returned. It runs on the
// client's reading goroutine: the client's next request waits for it,
// nobody else does. Default: none. It serves a Registry only (New panics on
// it); clients of one room have WithOnMessage.
func WithOnPublish(fn func(c *Client, r *Room, data []byte) ([]byte, error)) Option {
	return func(cfg *config) {
		cfg.set |= setOnPublish
		cfg.onPublish = fn
	}
}
