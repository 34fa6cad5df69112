// Package wsclient is a Go client of wsroom servers. Dial opens a
// connection of many rooms in the wsroom.v3 protocol (PROTOCOL.md, served
// by wsroom.Registry.MuxHandler): the client joins rooms, reads each room's
// messages, publishes and waits for acks, and reconnects by itself when the
// connection is lost, resuming every room where it stopped and sending
// again every publish that had no ack yet, with the same request id, so
// that it is published once. DialStream follows one room of a server of one
// room per connection (wsroom.Room.Handler, wsroom.Registry.Handler) with
// the JSON codec, resuming with the "resume" URL parameter.
//
// A room's messages are read with Room.Next or Room.Messages. Each room
// buffers up to WithBuffer messages for its reader; a reader that falls
// further behind never slows the connection or the other rooms: the room
// stops taking messages, and once its reader has emptied the buffer it
// reads what it missed from the server's history, so that it still gets
// every message once, in order. When the server's history can no longer
// give a room every message after its position, the room reports a
// *ResyncError to its reader and rejoins.
//
// Everything the client holds is bounded: the publishes waiting for an ack
// (WithMaxPending, and the server's idempotency window per room), the
// frames waiting to be written (WithQueue; a Publish past either bound
// returns ErrQueueFull), and each write's time (WithWriteTimeout). The
// client writes no faster than the server's rate limit (the "rate" and
// "burst" of its hello frame, see Client.Limits), so that the rejoins after
// a reconnect go out paced, not all rooms at once.
package wsclient

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Subprotocol is the WebSocket subprotocol Dial offers, the same as
// wsroom.Subprotocol.
const Subprotocol = "wsroom.v3"

// ErrClosed is returned by the methods of a Client and its Rooms, or of a
// Stream, once it is closed.
var ErrClosed = errors.New("wsclient: closed")

// Option configures Dial and DialStream.
type Option func(*config)

type config struct {
	header       http.Header
	httpClient   *http.Client
	minDelay     time.Duration
	maxDelay     time.Duration
	onError      func(error)
	buffer       int
	readLimit    int64
	maxPending   int
	queue        int
	writeTimeout time.Duration
}

// DefaultBuffer is how many messages a room buffers for its reader by
// default (see WithBuffer).
const DefaultBuffer = 256

func newConfig(opts []Option) config {
	cfg := config{minDelay: 250 * time.Millisecond, maxDelay: 30 * time.Second, buffer: DefaultBuffer, readLimit: 1 << 20,
		maxPending: DefaultMaxPending, writeTimeout: 10 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	return cfg
}

// WithHeader sets HTTP headers sent with every handshake, such as
// Authorization or Cookie.
func WithHeader(h http.Header) Option {
	return func(cfg *config) { cfg.header = h.Clone() }
}

// WithHTTPClient sets the HTTP client of the handshakes (default
// http.DefaultClient), for its transport, TLS settings or cookie jar.
func WithHTTPClient(hc *http.Client) Option {
	return func(cfg *config) { cfg.httpClient = hc }
}

// WithBackoff sets the bounds of the wait between reconnection attempts
// (default 250ms and 30s). The n-th attempt in a row waits a random time
// between half and all of min(hi, lo×2ⁿ); a connection that lasted 5s
// resets n.
func WithBackoff(lo, hi time.Duration) Option {
	return func(cfg *config) {
		if lo > 0 {
			cfg.minDelay = lo
		}
		cfg.maxDelay = max(cfg.minDelay, hi)
	}
}

// WithOnError sets a function called with each error the client recovers
// from by reconnecting (a lost connection, a failed handshake), and with
// the error that ends it, if any. It is called on the client's own
// goroutine, one call at a time; it must not block for long.
func WithOnError(fn func(error)) Option {
	return func(cfg *config) { cfg.onError = fn }
}

// WithBuffer sets how many messages each room buffers for its reader
// (default DefaultBuffer; n < 1 selects the default).
func WithBuffer(n int) Option {
	return func(cfg *config) {
		if n < 1 {
			n = DefaultBuffer
		}
		cfg.buffer = n
	}
}

// WithReadLimit sets the largest frame the client accepts from the server
// (default 1 MiB); a larger one ends the connection, which is then
// reconnected.
func WithReadLimit(n int64) Option {
	return func(cfg *config) { cfg.readLimit = n }
}

// DefaultMaxPending is how many publishes may wait for their ack at once
// by default (see WithMaxPending).
const DefaultMaxPending = 1024

// WithMaxPending sets how many publishes of a Client may wait for their
// ack at once, in all its rooms (default DefaultMaxPending; n < 1 selects
// the default). Past it, and past the server's idempotency window of a
// room (the acksPerRoom of its hello: a publish retried after more than
// that many others of the room could be published twice), Publish returns
// ErrQueueFull at once.
func WithMaxPending(n int) Option {
	return func(cfg *config) {
		if n < 1 {
			n = DefaultMaxPending
		}
		cfg.maxPending = n
	}
}

// WithQueue sets how many frames may wait to be written on the connection
// before Publish returns ErrQueueFull (joins and leaves are always queued;
// there are at most two per room). The default, n < 1, is the server's
// inflight plus its burst from the hello frame (64 + 40 by default, 104
// before any hello): the server reads no more than that ahead, so more
// frames would only wait in the client.
func WithQueue(n int) Option {
	return func(cfg *config) { cfg.queue = max(n, 0) }
}

// WithWriteTimeout sets how long one frame's write may take (default 10s;
// d <= 0 selects the default). A write that takes longer ends the
// connection, which is then reconnected.
func WithWriteTimeout(d time.Duration) Option {
	return func(cfg *config) {
		if d <= 0 {
			d = 10 * time.Second
		}
		cfg.writeTimeout = d
	}
}

// ErrQueueFull is returned by Publish and PublishEphemeral, at once and
// with nothing sent, when the Client has as many publishes waiting for an
// ack as it allows (WithMaxPending, or the server's acksPerRoom in the
// room) or as many frames waiting to be written (WithQueue). Try again
// once some publishes have returned.
var ErrQueueFull = errors.New("wsclient: too many publishes waiting")

// DialError is the error of a handshake the server refused with an HTTP
// status. A Client stops reconnecting after a DialError with a status
// 400, 401, 403 or 404.
type DialError struct {
	StatusCode int
	Err        error
}

// Error returns the status and the handshake's error.
func (e *DialError) Error() string {
	return fmt.Sprintf("wsclient: handshake refused with HTTP %d: %v", e.StatusCode, e.Err)
}

// Unwrap returns the handshake's error.
func (e *DialError) Unwrap() error { return e.Err }

// permanent reports whether err from a handshake means that trying again
// is pointless.
func permanent(err error) bool {
	var de *DialError
	if !errors.As(err, &de) {
		return false
	}
	switch de.StatusCode {
	case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
		return true
	}
	return false
}

// dial opens one WebSocket connection to url, offering protocol if it is
// not empty.
func dial(ctx context.Context, cfg *config, url, protocol string) (*websocket.Conn, error) {
	do := &websocket.DialOptions{HTTPClient: cfg.httpClient, HTTPHeader: cfg.header}
	if protocol != "" {
		do.Subprotocols = []string{protocol}
	}
	conn, resp, err := websocket.Dial(ctx, url, do)
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, &DialError{StatusCode: resp.StatusCode, Err: err}
		}
		return nil, err
	}
	if protocol != "" && conn.Subprotocol() != protocol {
		conn.Close(websocket.StatusProtocolError, "wsclient: want subprotocol "+protocol)
		return nil, fmt.Errorf("wsclient: the server did not select the %s subprotocol", protocol)
	}
	conn.SetReadLimit(cfg.readLimit)
	return conn, nil
}

// backoff returns the wait before the n-th reconnection attempt in a row.
func (cfg *config) backoff(n int) time.Duration {
	d := cfg.minDelay
	for range n {
		if d >= cfg.maxDelay/2 {
			d = cfg.maxDelay
			break
		}
		d *= 2
	}
	d = min(d, cfg.maxDelay)
	return d/2 + rand.N(d/2+1)
}

// stableAfter is how long a connection must last to reset the backoff.
const stableAfter = 5 * time.Second

// reconnector runs connections one after the other, with backoff between
// them, until ctx is done or a handshake fails for good. serve runs one
// connection and returns why it ended, or nil when the client is closed.
func reconnector(ctx context.Context, cfg *config, conn *websocket.Conn, open func(context.Context) (*websocket.Conn, error), serve func(*websocket.Conn) error) error {
	attempt := 0
	for {
		start := time.Now()
		err := serve(conn)
		if err == nil || ctx.Err() != nil {
			return nil // closed
		}
		if time.Since(start) > stableAfter {
			attempt = 0
		}
		cfg.report(err)
		for {
			t := time.NewTimer(cfg.backoff(attempt))
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
			attempt++
			if conn, err = open(ctx); err == nil {
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			if permanent(err) {
				return err
			}
			cfg.report(err)
		}
	}
}

func (cfg *config) report(err error) {
	if cfg.onError != nil && err != nil {
		cfg.onError(err)
	}
}

// Client is a connection of many rooms to a wsroom server (see Dial),
// reconnected whenever it is lost until Close is called.
//
// Client and its Rooms are safe for concurrent use by multiple goroutines.
type Client struct {
	cfg    config
	prefix string // of request ids
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	done   chan struct{}

	mu      sync.Mutex
	closed  bool
	err     error // why the client ended
	sess    *session
	rooms   map[string]*Room
	pending map[string]*pending // publishes by id
	nextID  uint64
	hello   bool   // a hello was read
	connID  string // of the last hello
	limits  Limits // of the last hello
}

// session is one connection of a Client.
type session struct {
	conn *websocket.Conn
	out  [][]byte      // frames to write, under the Client's mu
	wake chan struct{} // the writer has frames
}

// Limits are the server's limits, as its hello frame gives them
// (PROTOCOL.md, section 2 of wsroom.v3). A zero Rate means no rate limit,
// a zero Ping that the server does not ping.
type Limits struct {
	ReadLimit    int64         // bytes per frame the server reads
	Rooms        int           // rooms per connection
	Inflight     int           // replies the server queues unread before it stops reading
	SendBuffer   int           // room messages queued for a slow reader
	Presence     int           // the presence bound (0: no presence events)
	PublishRetry time.Duration // how long a pub may wait for the engine
	Rate         int           // frames a second (0: no limit)
	Burst        int
	Ping         time.Duration
	PongTimeout  time.Duration
	AckTTL       time.Duration // how long publish ids are remembered
	AcksPerRoom  int           // publish ids remembered per room
	// AckScope is where a publish retried with its id gets its original
	// ack: "cluster" on any node of the server's cluster, "node" on the
	// node that took it first (hello's ackScope; empty from a wsroom.v2
	// server, which remembers ids per node).
	AckScope string
}

// wireLimits is the limits member of hello.
type wireLimits struct {
	ReadLimit      int64 `json:"readLimit"`
	Rooms          int   `json:"rooms"`
	Inflight       int   `json:"inflight"`
	SendBuffer     int   `json:"sendBuffer"`
	Presence       int   `json:"presence"`
	PublishRetryMs int64 `json:"publishRetryMs"`
	Rate           int   `json:"rate"`
	Burst          int   `json:"burst"`
	PingMs         int64 `json:"pingMs"`
	PongTimeoutMs  int64 `json:"pongTimeoutMs"`
	AckTTLMs       int64 `json:"ackTTLMs"`
	AcksPerRoom    int   `json:"acksPerRoom"`
}

func (w *wireLimits) limits() Limits {
	ms := func(n int64) time.Duration { return time.Duration(n) * time.Millisecond }
	return Limits{ReadLimit: w.ReadLimit, Rooms: w.Rooms, Inflight: w.Inflight, SendBuffer: w.SendBuffer,
		Presence: w.Presence, PublishRetry: ms(w.PublishRetryMs), Rate: w.Rate, Burst: w.Burst,
		Ping: ms(w.PingMs), PongTimeout: ms(w.PongTimeoutMs), AckTTL: ms(w.AckTTLMs), AcksPerRoom: w.AcksPerRoom}
}

// Limits returns the limits of the last hello frame the server sent, and
// false before the first one.
func (c *Client) Limits() (Limits, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.limits, c.hello
}

// ConnID returns the connection id of the last hello frame (the From of
// this client's messages, its member id), or "" before the first one. It
// changes at each reconnection.
func (c *Client) ConnID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connID
}

// queueLimitLocked returns how many frames may wait to be written before
// Publish refuses (see WithQueue).
func (c *Client) queueLimitLocked() int {
	if c.cfg.queue > 0 {
		return c.cfg.queue
	}
	if c.hello && c.limits.Inflight+c.limits.Burst > 0 {
		return max(c.limits.Inflight+c.limits.Burst, 16)
	}
	return 104
}

// Dial connects to the wsroom.v3 endpoint at url (ws:// or wss://, see
// wsroom.Registry.MuxHandler) and returns a Client in no room. The first
// handshake is made before Dial returns, bounded by ctx, and its failure is
// Dial's error; later ones, after a lost connection, are made in the
// background with backoff (WithBackoff) until Close. ctx does not bound
// the Client's life.
func Dial(ctx context.Context, url string, opts ...Option) (*Client, error) {
	c := &Client{
		cfg:     newConfig(opts),
		done:    make(chan struct{}),
		rooms:   make(map[string]*Room),
		pending: make(map[string]*pending),
	}
	var b [8]byte
	crand.Read(b[:])
	c.prefix = hex.EncodeToString(b[:]) + "-"
	conn, err := dial(ctx, &c.cfg, url, Subprotocol)
	if err != nil {
		return nil, err
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.wg.Go(func() {
		err := reconnector(c.ctx, &c.cfg, conn, func(ctx context.Context) (*websocket.Conn, error) {
			return dial(ctx, &c.cfg, url, Subprotocol)
		}, c.serve)
		if err != nil {
			c.cfg.report(err)
			c.mu.Lock()
			c.endLocked(err)
			c.mu.Unlock()
		}
	})
	return c, nil
}

// Close closes the connection with 1000 (normal closure), stops
// reconnecting, and ends every Room: their readers get ErrClosed once
// their buffers are read, and waiting Publish and Join calls return it.
// It returns once every goroutine of the Client has ended.
func (c *Client) Close() error {
	c.mu.Lock()
	s := c.sess
	first := !c.closed
	c.closed = true
	c.mu.Unlock()
	if first && s != nil {
		s.conn.Close(websocket.StatusNormalClosure, "")
	}
	c.cancel()
	c.wg.Wait()
	c.mu.Lock()
	c.endLocked(ErrClosed)
	c.mu.Unlock()
	return nil
}

// Done returns a channel closed when the Client has ended: closed, or
// refused for good by the server (see DialError).
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the Client ended (ErrClosed after Close, or a
// *DialError), or nil while it runs.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// endLocked ends the client, its rooms and its publishes with err.
func (c *Client) endLocked(err error) {
	if c.err != nil {
		return
	}
	c.err = err
	c.closed = true
	for _, r := range c.rooms {
		r.endLocked(err)
	}
	for _, p := range c.pending {
		p.finishLocked(Ack{}, err)
	}
	close(c.done)
}

// newIDLocked returns a request id unique to the client: a random prefix
// and a counter.
func (c *Client) newIDLocked() string {
	c.nextID++
	return c.prefix + strconv.FormatUint(c.nextID, 36)
}

// sendLocked queues a frame for the current connection; it reports false
// when there is none.
func (c *Client) sendLocked(f *outFrame) bool {
	if c.sess == nil {
		return false
	}
	b, err := json.Marshal(f)
	if err != nil {
		panic(err) // only strings, numbers and valid JSON
	}
	c.sess.out = append(c.sess.out, b)
	select {
	case c.sess.wake <- struct{}{}:
	default:
	}
	return true
}

// serve runs one connection until it ends: it rejoins every room, sends
// what waits, and reads frames.
func (c *Client) serve(conn *websocket.Conn) error {
	s := &session{conn: conn, wake: make(chan struct{}, 1)}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		conn.CloseNow()
		return ErrClosed
	}
	c.sess = s
	for _, r := range c.rooms {
		c.joinLocked(r)
	}
	c.mu.Unlock()

	ctx, cancel := context.WithCancel(c.ctx)
	var wg sync.WaitGroup
	wg.Go(func() { c.write(ctx, s) })
	var err error
	for {
		var b []byte
		if _, b, err = conn.Read(ctx); err != nil {
			break
		}
		var f inFrame
		if json.Unmarshal(b, &f) != nil {
			continue // not this protocol's; ignored like unknown members
		}
		c.mu.Lock()
		c.handleLocked(&f)
		c.mu.Unlock()
	}
	cancel()
	conn.CloseNow()
	wg.Wait()

	c.mu.Lock()
	c.sess = nil
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	// A frame the server closes for cannot be sent again as it is.
	code := websocket.CloseStatus(err)
	refused := code == websocket.StatusUnsupportedData || code == websocket.StatusInvalidFramePayloadData || code == websocket.StatusMessageTooBig
	for _, p := range c.pending {
		switch {
		case p.ephemeral && p.sent:
			p.finishLocked(Ack{}, ErrDisconnected)
		case refused && p.sent:
			p.finishLocked(Ack{}, fmt.Errorf("wsclient: the server closed the connection after this publish: %w", err))
		}
		p.sent = false
	}
	for _, r := range c.rooms {
		r.disconnectedLocked()
	}
	c.mu.Unlock()
	return fmt.Errorf("wsclient: connection lost: %w", err)
}

// write writes the session's frames until ctx is done or a write fails,
// each within the write timeout, and no faster than the server's rate
// limit (the last hello's: the rejoins of a new connection are paced by
// the previous one's until its own hello comes).
func (c *Client) write(ctx context.Context, s *session) {
	var tokens float64
	var last time.Time
	for {
		c.mu.Lock()
		var b []byte
		if len(s.out) > 0 {
			b = s.out[0]
			s.out[0] = nil
			s.out = s.out[1:]
		}
		rate, burst := c.limits.Rate, c.limits.Burst
		c.mu.Unlock()
		if b == nil {
			select {
			case <-ctx.Done():
				return
			case <-s.wake:
			}
			continue
		}
		if rate > 0 {
			burst = max(burst, 1)
			now := time.Now()
			if last.IsZero() {
				tokens = float64(burst)
			} else {
				tokens = min(float64(burst), tokens+now.Sub(last).Seconds()*float64(rate))
			}
			last = now
			if tokens < 1 {
				wait := time.Duration((1 - tokens) / float64(rate) * float64(time.Second))
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
				last = time.Now()
				tokens = 1
			}
			tokens--
		}
		wctx, cancel := context.WithTimeout(ctx, c.cfg.writeTimeout)
		err := s.conn.Write(wctx, websocket.MessageText, b)
		cancel()
		if err != nil {
			s.conn.CloseNow()
			return
		}
	}
}

// inFrame is any frame from the server (PROTOCOL.md, section 3).
type inFrame struct {
	Op      string          `json:"op"`
	ID      string          `json:"id"`
	Room    string          `json:"room"`
	Epoch   string          `json:"epoch"`
	Seq     uint64          `json:"seq"`
	Time    int64           `json:"time"`
	From    string          `json:"from"`
	Data    json.RawMessage `json:"data"`
	Text    *string         `json:"text"`
	Bytes   *string         `json:"bytes"`
	Conn    string          `json:"conn"`
	Limits  *wireLimits     `json:"limits"`
	Scope   string          `json:"ackScope"`
	Code    string          `json:"code"`
	Message string          `json:"message"`
	Reason  string          `json:"reason"`
	Resume  string          `json:"resume"`
	Members []Member        `json:"members"`
}

// outFrame is any request to the server (PROTOCOL.md, section 2).
type outFrame struct {
	Op        string          `json:"op"`
	Room      string          `json:"room"`
	ID        string          `json:"id,omitempty"`
	Resume    string          `json:"resume,omitempty"`
	Last      int             `json:"last,omitempty"`
	Members   bool            `json:"members,omitempty"`
	Data      json.RawMessage `json:"data,omitempty"`
	Ephemeral bool            `json:"ephemeral,omitempty"`
}

// handleLocked acts on a frame from the server.
func (c *Client) handleLocked(f *inFrame) {
	if f.Op == "hello" {
		c.hello, c.connID = true, f.Conn
		if f.Limits != nil {
			c.limits = f.Limits.limits()
		}
		c.limits.AckScope = f.Scope
		return
	}
	if f.Op == "ack" || f.Op == "error" {
		if p := c.pending[f.ID]; p != nil && f.ID != "" {
			c.pubReplyLocked(p, f)
			return
		}
	}
	r := c.rooms[f.Room]
	if r == nil {
		return // a room left meanwhile, or an unknown op's
	}
	switch f.Op {
	case "msg":
		r.msgLocked(f)
	case "joined":
		if f.ID == r.joinID {
			r.joinedLocked(f)
		}
	case "error":
		switch f.ID {
		case r.joinID:
			r.joinFailedLocked(f)
		case r.leaveID:
			if r.leaving {
				r.endLocked(&LeftError{Room: r.name, Reason: "requested"})
			}
		}
	case "left":
		switch {
		case f.ID != "" && f.ID == r.leaveID:
			if r.leaving {
				r.endLocked(&LeftError{Room: r.name, Reason: f.Reason})
			} // else: the leave before a catch-up
		case r.joinID == "" && r.onServer:
			r.endLocked(&LeftError{Room: r.name, Reason: f.Reason})
		}
	case "resync":
		if r.joinID == "" && r.onServer {
			r.resyncLocked(f.Reason, f.Resume)
		} // else: of a membership before the join in flight
	}
}
