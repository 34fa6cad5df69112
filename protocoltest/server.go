package protocoltest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// Subprotocol is the subprotocol the kit offers and checks: the version of
// PROTOCOL.md it is written to.
const Subprotocol = "wsroom.v3"

// Config tells the kit what it cannot learn from the server.
type Config struct {
	// ServerPublish, if not nil, publishes data to the room called room
	// from server code, as the application would (for wsroom, a Registry's
	// Publish). Subtests that need it skip when it is nil.
	ServerPublish func(ctx context.Context, room string, data []byte) error

	// Header is sent with every handshake (a cookie or a token, say).
	Header http.Header

	// Compression is the permessage-deflate mode the kit's client offers
	// (default websocket.CompressionDisabled: it offers none).
	Compression websocket.CompressionMode

	// RequireCompression, with Compression set, makes the kit check that
	// the server negotiated permessage-deflate.
	RequireCompression bool

	// Limits, if not nil, are the limits the server's hello must announce.
	Limits *Limits

	// BadRooms are room names the server's name rule refuses (default:
	// "", ".hidden", "a b", "a/b" and 65 letters, which the default rule
	// of PROTOCOL.md refuses).
	BadRooms []string

	// RoomPrefix starts the name of every room the kit uses (default "pt"
	// and random hex digits, unique to the Run). The rest is "-" and a
	// number.
	RoomPrefix string

	// Wait bounds each wait for an event: a reply, a message, a close
	// (default 20s).
	Wait time.Duration
}

// Limits are the members of hello.limits (PROTOCOL.md, section 1.3), with
// their names there.
type Limits struct {
	ReadLimit      int64   `json:"readLimit"`
	Rooms          int     `json:"rooms"`
	Inflight       int     `json:"inflight"`
	SendBuffer     int     `json:"sendBuffer"`
	Presence       int     `json:"presence"`
	PublishRetryMs int64   `json:"publishRetryMs"`
	Rate           float64 `json:"rate"`
	Burst          int     `json:"burst"`
	PingMs         int64   `json:"pingMs"`
	PongTimeoutMs  int64   `json:"pongTimeoutMs"`
	AckTTLMs       int64   `json:"ackTTLMs"`
	AcksPerRoom    int     `json:"acksPerRoom"`
}

// DefaultLimits returns the default limits PROTOCOL.md lists.
func DefaultLimits() Limits {
	return Limits{
		ReadLimit: 32768, Rooms: 100, Inflight: 64, SendBuffer: 256, Presence: 0,
		PublishRetryMs: 10000, Rate: 20, Burst: 40, PingMs: 30000, PongTimeoutMs: 10000,
		AckTTLMs: 120000, AcksPerRoom: 1024,
	}
}

// limitNames are the members every hello.limits has.
var limitNames = []string{"readLimit", "rooms", "inflight", "sendBuffer", "presence", "publishRetryMs",
	"rate", "burst", "pingMs", "pongTimeoutMs", "ackTTLMs", "acksPerRoom"}

// Run runs the conformance subtests against the server of the protocol at
// url (ws:// or wss://), one per claim of PROTOCOL.md.
func Run(t *testing.T, url string, cfg Config) {
	if cfg.Wait <= 0 {
		cfg.Wait = 20 * time.Second
	}
	if cfg.RoomPrefix == "" {
		b := make([]byte, 4)
		rand.Read(b)
		cfg.RoomPrefix = "pt" + hex.EncodeToString(b)
	}
	k := &kit{url: url, cfg: cfg}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, k) })
	}
}

var cases = []struct {
	name string
	fn   func(*testing.T, *kit)
}{
	{"1.1/SubprotocolRequired", testSubprotocol},
	{"1.1/Compression", testCompression},
	{"1.2/BinaryFrame1003", testBinary},
	{"1.2/NotObject1007", testNotObject},
	{"1.2/ReadLimit1009", testReadLimit},
	{"1.3/HelloFirst", testHello},
	{"1.3/HelloConnIsFrom", testHelloConn},
	{"2.1/MemberNamesExact", testMemberNames},
	{"2.1/DuplicateMember", testDuplicateMember},
	{"2.1/NullIsAbsent", testNull},
	{"2.1/UnknownMembersIgnored", testUnknownMembers},
	{"2.2/Op", testOp},
	{"2.3/Room", testRoom},
	{"2.4/ID", testID},
	{"2.5/ResumeValidation", testResumeValidation},
	{"2.5/ResumeFromHistory", testResume},
	{"2.5/ResumeCurrentEpoch", testResumeColonZero},
	{"2.5/ResumePastEnd", testResumePastEnd},
	{"2.5/ResumeOtherEpoch", testResumeOtherEpoch},
	{"2.6/Last", testLast},
	{"2.6/LastValidation", testLastValidation},
	{"2.7/MembersValidation", testMembersValidation},
	{"2.8/DuplicateJoin", testDuplicateJoin},
	{"2.8/TooManyRooms", testTooManyRooms},
	{"2.9/Leave", testLeave},
	{"2.10/PubAck", testPubAck},
	{"2.10/PubNotJoined", testPubNotJoined},
	{"2.10/PubWithoutID", testPubWithoutID},
	{"2.10/Ephemeral", testEphemeral},
	{"3.2/JoinedEmptyRoom", testJoinedEmpty},
	{"3.2/JoinedMembers", testJoinedMembers},
	{"3.2/JoinedPositionBusy", testJoinedBusy},
	{"3.3/MsgDataFromClient", testMsgData},
	{"3.3/MsgPayloadFromServer", testMsgPayload},
	{"3.7/PresenceCountDrop", testPresenceCount},
	{"4.1/PipelinedJoins", testPipelined},
	{"4.4/PingAnswered", testPing},
	{"5/RetrySameID", testRetry},
	{"6.3/RequestsBeforeClose", testBeforeClose},
}

// kit is one Run.
type kit struct {
	url   string
	cfg   Config
	rooms atomic.Int64
	ids   atomic.Int64
}

// room returns a new room name.
func (k *kit) room() string {
	return fmt.Sprintf("%s-%d", k.cfg.RoomPrefix, k.rooms.Add(1))
}

// frame is a frame the server sent.
type frame struct {
	n       int    // its place among the connection's frames, from 0
	raw     string // as sent
	bad     string // why it is not a frame of the protocol
	members map[string]json.RawMessage

	Op      string          `json:"op"`
	Conn    string          `json:"conn"`
	Limits  json.RawMessage `json:"limits"`
	ID      *string         `json:"id"`
	Room    *string         `json:"room"`
	Epoch   *string         `json:"epoch"`
	Seq     *uint64         `json:"seq"`
	Time    *int64          `json:"time"`
	From    *string         `json:"from"`
	Data    json.RawMessage `json:"data"`
	Text    *string         `json:"text"`
	Bytes   *string         `json:"bytes"`
	Code    string          `json:"code"`
	Message *string         `json:"message"`
	Reason  string          `json:"reason"`
	Resume  *string         `json:"resume"`
	Members []member        `json:"members"`
	Count   *int            `json:"count"`
	Join    []member        `json:"join"`
	Leave   []string        `json:"leave"`
}

type member struct {
	ID   string          `json:"id"`
	Info json.RawMessage `json:"info"`
}

func (f *frame) has(name string) bool { _, ok := f.members[name]; return ok }
func (f *frame) id() string           { return deref(f.ID) }
func (f *frame) room() string         { return deref(f.Room) }
func (f *frame) epoch() string        { return deref(f.Epoch) }
func (f *frame) seq() uint64 {
	if f.Seq == nil {
		return 0
	}
	return *f.Seq
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func (f *frame) String() string {
	if len(f.raw) > 300 {
		return f.raw[:300] + "..."
	}
	return f.raw
}

func parseFrame(typ websocket.MessageType, b []byte) *frame {
	f := &frame{raw: string(b)}
	switch {
	case typ != websocket.MessageText:
		f.bad = "a binary frame"
	case !utf8.Valid(b):
		f.bad = "not UTF-8"
	default:
		if err := json.Unmarshal(b, &f.members); err != nil {
			f.bad = "not a JSON object: " + err.Error()
		} else if err := json.Unmarshal(b, f); err != nil {
			f.bad = "a member of the wrong type: " + err.Error()
		}
	}
	return f
}

// isReply reports whether f is a reply (PROTOCOL.md, section 3.1) to a
// request.
func isReply(f *frame) bool {
	switch f.Op {
	case "joined", "ack", "error", "left", "resync":
		return true
	}
	return false
}

// client is a connection of the kit, reading all the time.
type client struct {
	t      *testing.T
	k      *kit
	ws     *websocket.Conn
	resp   *http.Response
	hello  *frame
	limits Limits
	ctx    context.Context
	cancel context.CancelFunc
	keep   func(*frame) bool // frames to queue; nil: all

	mu       sync.Mutex
	queue    []*frame
	seen     []string // the last frames read, for failure messages
	count    int
	err      error // why reading ended
	done     bool
	notify   chan struct{}
	readDone chan struct{}
}

// dialOpts returns the options of a handshake offering protos.
func (k *kit) dialOpts(protos ...string) *websocket.DialOptions {
	h := k.cfg.Header.Clone()
	if h == nil {
		h = http.Header{}
	}
	return &websocket.DialOptions{HTTPHeader: h, Subprotocols: protos, CompressionMode: k.cfg.Compression}
}

// dial opens a connection and reads its hello.
func (k *kit) dial(t *testing.T) *client {
	t.Helper()
	c := k.dialRaw(t)
	f := c.take("hello", func(f *frame) bool { return true })
	if f.Op != "hello" {
		t.Fatalf("first frame %s, want hello (section 1.3)", f)
	}
	c.hello = f
	if err := json.Unmarshal(f.Limits, &c.limits); err != nil {
		t.Fatalf("hello %s: limits: %v", f, err)
	}
	return c
}

// dialRaw opens a connection, without reading anything.
func (k *kit) dialRaw(t *testing.T) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), k.cfg.Wait)
	ws, resp, err := websocket.Dial(ctx, k.url, k.dialOpts(Subprotocol))
	cancel()
	if err != nil {
		status := 0
		body := ""
		if resp != nil {
			status = resp.StatusCode
			if resp.Body != nil {
				b, _ := io.ReadAll(resp.Body)
				body = string(b)
			}
		}
		t.Fatalf("dial offering %q: %v (HTTP %d %q)", Subprotocol, err, status, body)
	}
	if ws.Subprotocol() != Subprotocol {
		ws.CloseNow()
		t.Fatalf("server selected subprotocol %q, want %q", ws.Subprotocol(), Subprotocol)
	}
	ws.SetReadLimit(-1)
	c := &client{t: t, k: k, ws: ws, resp: resp, notify: make(chan struct{}), readDone: make(chan struct{})}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	go c.readLoop()
	t.Cleanup(c.close)
	return c
}

func (c *client) close() {
	c.cancel()
	c.ws.CloseNow()
	<-c.readDone
}

func (c *client) readLoop() {
	defer close(c.readDone)
	for {
		typ, b, err := c.ws.Read(context.Background())
		c.mu.Lock()
		if err != nil {
			c.err, c.done = err, true
			close(c.notify)
			c.mu.Unlock()
			return
		}
		f := parseFrame(typ, b)
		f.n = c.count
		c.count++
		c.seen = append(c.seen, f.String())
		if len(c.seen) > 8 {
			c.seen = c.seen[1:]
		}
		if f.bad != "" || c.keep == nil || c.keep(f) {
			c.queue = append(c.queue, f)
			close(c.notify)
			c.notify = make(chan struct{})
		}
		c.mu.Unlock()
	}
}

// takeErr removes the first queued frame that match accepts, waiting up to
// the kit's Wait for it.
func (c *client) takeErr(what string, match func(*frame) bool) (*frame, error) {
	timer := time.NewTimer(c.k.cfg.Wait)
	defer timer.Stop()
	for {
		c.mu.Lock()
		for i, f := range c.queue {
			if f.bad != "" {
				c.mu.Unlock()
				return nil, fmt.Errorf("waiting for %s: the server sent %s (%s)", what, f.bad, f)
			}
			if match(f) {
				c.queue = append(c.queue[:i:i], c.queue[i+1:]...)
				c.mu.Unlock()
				return f, nil
			}
		}
		if c.done {
			err := c.err
			c.mu.Unlock()
			return nil, fmt.Errorf("waiting for %s: the connection ended: %s", what, describe(err))
		}
		ch := c.notify
		seen := strings.Join(c.seen, "\n\t")
		c.mu.Unlock()
		select {
		case <-ch:
		case <-timer.C:
			return nil, fmt.Errorf("waiting for %s: nothing within %v; last frames read:\n\t%s", what, c.k.cfg.Wait, seen)
		}
	}
}

func (c *client) take(what string, match func(*frame) bool) *frame {
	c.t.Helper()
	f, err := c.takeErr(what, match)
	if err != nil {
		c.t.Fatal(err)
	}
	return f
}

// reply returns the next reply.
func (c *client) reply() *frame {
	c.t.Helper()
	return c.take("a reply", isReply)
}

// msg returns the next msg of room.
func (c *client) msg(room string) *frame {
	c.t.Helper()
	return c.take("a msg of room "+room, func(f *frame) bool { return f.Op == "msg" && f.room() == room })
}

// queued returns the queued frames match accepts, leaving them queued.
func (c *client) queued(match func(*frame) bool) []*frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*frame
	for _, f := range c.queue {
		if match(f) {
			out = append(out, f)
		}
	}
	return out
}

func describe(err error) string {
	if s := websocket.CloseStatus(err); s != -1 {
		var ce websocket.CloseError
		errors.As(err, &ce)
		return fmt.Sprintf("close %d %q", int(s), ce.Reason)
	}
	return fmt.Sprintf("%v (no close frame)", err)
}

// waitClose waits for the connection to end and returns its close status
// (-1 without a close frame).
func (c *client) waitClose() websocket.StatusCode {
	c.t.Helper()
	select {
	case <-c.readDone:
	case <-time.After(c.k.cfg.Wait):
		c.t.Fatalf("the connection is still open after %v, want it closed", c.k.cfg.Wait)
	}
	return websocket.CloseStatus(c.err)
}

// writeErr sends a text frame.
func (c *client) writeErr(typ websocket.MessageType, b []byte) error {
	ctx, cancel := context.WithTimeout(c.ctx, c.k.cfg.Wait)
	defer cancel()
	return c.ws.Write(ctx, typ, b)
}

// send sends a request.
func (c *client) send(req string) {
	c.t.Helper()
	if err := c.writeErr(websocket.MessageText, []byte(req)); err != nil {
		c.t.Fatalf("write %s: %v", req, err)
	}
}

// sendf sends a request built with fmt.Sprintf, quoting %q arguments as JSON
// strings do for the names and ids the kit uses.
func (c *client) sendf(format string, args ...any) {
	c.t.Helper()
	c.send(fmt.Sprintf(format, args...))
}

// join joins room and returns the joined reply.
func (c *client) join(room string) *frame {
	c.t.Helper()
	id := fmt.Sprintf("j%d", c.k.ids.Add(1))
	c.sendf(`{"op":"join","room":%q,"id":%q}`, room, id)
	return c.expectJoined(id, room)
}

func (c *client) expectJoined(id, room string) *frame {
	c.t.Helper()
	f := c.reply()
	if f.Op != "joined" || f.id() != id || f.room() != room {
		c.t.Fatalf("reply %s, want joined of room %q with id %q", f, room, id)
	}
	if !f.has("epoch") || !f.has("seq") || f.Epoch == nil || f.Seq == nil {
		c.t.Fatalf("joined %s: want epoch and seq (section 3.2)", f)
	}
	return f
}

// pub publishes data to room with id, and returns the ack.
func (c *client) pub(room, id, data string) *frame {
	c.t.Helper()
	c.sendf(`{"op":"pub","room":%q,"id":%q,"data":%s}`, room, id, data)
	return c.expectAck(id, room)
}

func (c *client) expectAck(id, room string) *frame {
	c.t.Helper()
	f := c.reply()
	if f.Op != "ack" || f.id() != id || f.room() != room {
		c.t.Fatalf("reply %s, want ack of room %q with id %q", f, room, id)
	}
	if f.has("seq") != f.has("epoch") {
		c.t.Fatalf("ack %s: epoch and seq come together or not at all (section 3.4)", f)
	}
	return f
}

// expectError reads the next reply and checks it is an error with code.
// id "" means the error must have no id; "*" accepts any.
func (c *client) expectError(req, code, id string) *frame {
	c.t.Helper()
	f := c.reply()
	if f.Op != "error" || f.Code != code {
		// Errorf, not Fatalf: each request has one reply, so the next
		// ones still pair up, and every fault is listed.
		c.t.Errorf("request %s: reply %s, want error %q", req, f, code)
		return f
	}
	if f.Message == nil || *f.Message == "" {
		c.t.Errorf("request %s: error %s has no message (section 6.1)", req, f)
	}
	switch id {
	case "*":
	case "":
		if f.has("id") {
			c.t.Errorf("request %s: error %s has an id, want none (section 2.4: an invalid id is never echoed)", req, f)
		}
	default:
		if f.id() != id {
			c.t.Errorf("request %s: error %s, want id %q", req, f, id)
		}
	}
	return f
}

// badRequests sends each request and checks the error code of each reply,
// in order, then checks that none of them joined room.
func (c *client) badRequests(room string, reqs []badReq) {
	c.t.Helper()
	for _, r := range reqs {
		c.send(r.req)
		c.expectError(r.req, r.code, r.id)
	}
	if room != "" {
		c.join(room) // not "already in room": no bad request joined it
	}
}

type badReq struct{ req, code, id string }

// seed publishes n messages to room from a connection of its own and
// returns the room's epoch and last seq.
func (k *kit) seed(t *testing.T, room string, n int) (epoch string, last uint64) {
	t.Helper()
	p := k.dial(t)
	p.join(room)
	for i := range n {
		p.pub(room, fmt.Sprintf("seed-%d", i), fmt.Sprintf(`{"seed":%d}`, i))
	}
	for range n {
		m := p.msg(room)
		if m.Epoch == nil || m.Seq == nil {
			t.Fatalf("msg %s: want epoch and seq", m)
		}
		epoch, last = *m.Epoch, *m.Seq
	}
	return epoch, last
}

// expectSeqs reads msgs of room and checks their positions are epoch:from,
// epoch:from+1, ... epoch:to, each arriving after joined.
func (c *client) expectSeqs(room string, joined *frame, epoch string, from, to uint64) {
	c.t.Helper()
	for s := from; s <= to; s++ {
		m := c.msg(room)
		if m.n < joined.n {
			c.t.Fatalf("msg %s came before joined %s (section 3.2)", m, joined)
		}
		if m.epoch() != epoch || m.seq() != s {
			c.t.Fatalf("msg %s: position %s:%d, want %s:%d (no gap, no duplicate)", m, m.epoch(), m.seq(), epoch, s)
		}
	}
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

// 1.1: the subprotocol is wsroom.v3, matched exactly; without it, 400 with
// a body naming it.
func testSubprotocol(t *testing.T, k *kit) {
	for _, offer := range [][]string{nil, {"WSROOM.V3"}, {"wsroom.v1"}, {"Wsroom.v2", "wsroom.v3x"}} {
		ctx, cancel := context.WithTimeout(context.Background(), k.cfg.Wait)
		ws, resp, err := websocket.Dial(ctx, k.url, k.dialOpts(offer...))
		cancel()
		if err == nil {
			ws.CloseNow()
			t.Errorf("offering %q: handshake accepted (subprotocol %q), want HTTP 400", offer, ws.Subprotocol())
			continue
		}
		if resp == nil {
			t.Errorf("offering %q: %v, want HTTP 400", offer, err)
			continue
		}
		body := ""
		if resp.Body != nil {
			b, _ := io.ReadAll(resp.Body)
			body = string(b)
		}
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("offering %q: HTTP %d %q, want 400", offer, resp.StatusCode, body)
		}
		if !strings.Contains(body, Subprotocol) {
			t.Errorf("offering %q: body %q does not name %s", offer, body, Subprotocol)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), k.cfg.Wait)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, k.url, k.dialOpts("token.abc", Subprotocol))
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("offering [token.abc %s]: %v (HTTP %d)", Subprotocol, err, status)
	}
	defer ws.CloseNow()
	if ws.Subprotocol() != Subprotocol {
		t.Errorf("offering [token.abc %s]: server selected %q", Subprotocol, ws.Subprotocol())
	}
}

// 1.1: permessage-deflate only when the client offers it.
func testCompression(t *testing.T, k *kit) {
	c := k.dial(t)
	ext := c.resp.Header.Get("Sec-WebSocket-Extensions")
	deflate := strings.Contains(ext, "permessage-deflate")
	switch {
	case k.cfg.Compression == websocket.CompressionDisabled && deflate:
		t.Errorf("the client offered no compression, the server negotiated %q", ext)
	case k.cfg.Compression != websocket.CompressionDisabled && k.cfg.RequireCompression && !deflate:
		t.Errorf("the client offered permessage-deflate, the server negotiated %q", ext)
	}
	// Frames larger than a compression window still go both ways.
	room := k.room()
	c.join(room)
	big := `"` + strings.Repeat("abcdefgh", int(min(1000, c.limits.ReadLimit/32))) + `"`
	c.pub(room, "big", big)
	if m := c.msg(room); !jsonEqual(m.Data, []byte(big)) {
		t.Errorf("msg %s: data is not what was published", m)
	}
}

// 1.2: a binary frame closes with 1003.
func testBinary(t *testing.T, k *kit) {
	c := k.dial(t)
	if err := c.writeErr(websocket.MessageBinary, []byte(`{"op":"join","room":"x"}`)); err != nil {
		t.Fatalf("write: %v", err)
	}
	if s := c.waitClose(); s != websocket.StatusUnsupportedData {
		t.Errorf("after a binary frame: %s, want close 1003", describe(c.err))
	}
}

// 1.2: a frame that is not UTF-8 or not one JSON object closes with 1007.
func testNotObject(t *testing.T, k *kit) {
	for _, b := range []string{`[1]`, `"join"`, `1`, `null`, `true`, ``, `   `, `{"op":"join"`, `{"op":"join","room":"a"} {}`, `{"op":"join","room":"a"}x`, "{\"op\":\"join\",\"room\":\"a\xff\"}", "\xff\xfe"} {
		c := k.dial(t)
		if err := c.writeErr(websocket.MessageText, []byte(b)); err != nil {
			t.Fatalf("write %q: %v", b, err)
		}
		if s := c.waitClose(); s != websocket.StatusInvalidFramePayloadData {
			t.Errorf("after frame %q: %s, want close 1007", b, describe(c.err))
		}
	}
}

// 1.2: a frame of readLimit bytes is read; one longer closes with 1009.
func testReadLimit(t *testing.T, k *kit) {
	c := k.dial(t)
	n := int(c.limits.ReadLimit)
	if n > 16<<20 {
		t.Skipf("limits.readLimit %d is too large to send", n)
	}
	room := k.room()
	frameOf := func(size int) []byte {
		head := fmt.Sprintf(`{"op":"join","room":%q,"id":"rl","pad":"`, room)
		if size < len(head)+2 {
			t.Skipf("limits.readLimit %d is too small for a join", n)
		}
		return []byte(head + strings.Repeat("x", size-len(head)-2) + `"}`)
	}
	if err := c.writeErr(websocket.MessageText, frameOf(n)); err != nil {
		t.Fatalf("write: %v", err)
	}
	c.expectJoined("rl", room)
	if err := c.writeErr(websocket.MessageText, frameOf(n+1)); err != nil {
		t.Fatalf("write: %v", err)
	}
	if s := c.waitClose(); s != websocket.StatusMessageTooBig {
		t.Errorf("after a frame of readLimit+1 = %d bytes: %s, want close 1009", n+1, describe(c.err))
	}
}

// 1.3: hello is the first frame, before the replies to requests sent
// before it was read, with the connection's id and every limit.
func testHello(t *testing.T, k *kit) {
	c := k.dialRaw(t)
	room := k.room()
	c.sendf(`{"op":"join","room":%q,"id":"early"}`, room)
	f := c.take("the first frame", func(*frame) bool { return true })
	if f.Op != "hello" || f.n != 0 {
		t.Fatalf("first frame %s, want hello", f)
	}
	if f.Conn == "" {
		t.Errorf("hello %s: conn is missing or empty", f)
	}
	var lim map[string]json.RawMessage
	if err := json.Unmarshal(f.Limits, &lim); err != nil {
		t.Fatalf("hello %s: limits is not an object: %v", f, err)
	}
	for _, name := range limitNames {
		v, ok := lim[name]
		if !ok {
			t.Errorf("hello %s: limits.%s is missing", f, name)
			continue
		}
		var x float64
		if err := json.Unmarshal(v, &x); err != nil || x < 0 {
			t.Errorf("hello: limits.%s = %s, want a number >= 0", name, v)
			continue
		}
		if name != "rate" && x != float64(int64(x)) {
			t.Errorf("hello: limits.%s = %s, want an integer", name, v)
		}
	}
	var got Limits
	if err := json.Unmarshal(f.Limits, &got); err != nil {
		t.Fatalf("hello limits %s: %v", f.Limits, err)
	}
	for name, v := range map[string]int64{"readLimit": got.ReadLimit, "rooms": int64(got.Rooms), "inflight": int64(got.Inflight), "sendBuffer": int64(got.SendBuffer)} {
		if v < 1 {
			t.Errorf("hello: limits.%s = %d, want at least 1", name, v)
		}
	}
	if got.Rate > 0 && got.Burst < 1 {
		t.Errorf("hello: limits.rate %v with burst %d, want a burst of at least 1", got.Rate, got.Burst)
	}
	if want := k.cfg.Limits; want != nil && got != *want {
		t.Errorf("hello limits %+v, want %+v", got, *want)
	}
	c.expectJoined("early", room)
}

// 1.3: hello.conn is the from of the connection's messages and its member
// id.
func testHelloConn(t *testing.T, k *kit) {
	a, b := k.dial(t), k.dial(t)
	if a.hello.Conn == b.hello.Conn {
		t.Errorf("two connections have the same id %q", a.hello.Conn)
	}
	room := k.room()
	a.join(room)
	a.pub(room, "p", `"from me"`)
	if m := a.msg(room); m.From == nil || *m.From != a.hello.Conn {
		t.Errorf("msg %s: from, want %q (hello.conn)", m, a.hello.Conn)
	}
	b.sendf(`{"op":"join","room":%q,"id":"m","members":true}`, room)
	j := b.expectJoined("m", room)
	if j.Count != nil {
		return // over the presence bound
	}
	ids := map[string]bool{}
	for _, m := range j.Members {
		ids[m.ID] = true
	}
	if !ids[a.hello.Conn] || !ids[b.hello.Conn] {
		t.Errorf("joined %s: members, want ids %q and %q", j, a.hello.Conn, b.hello.Conn)
	}
}

// 2.1: member names are exact; case variants are unknown members.
func testMemberNames(t *testing.T, k *kit) {
	c := k.dial(t)
	room := k.room()
	c.badRequests("", []badReq{
		{fmt.Sprintf(`{"OP":"join","room":%q,"id":"n1"}`, room), "bad_request", "n1"},
		{fmt.Sprintf(`{"Op":"join","room":%q,"id":"n2"}`, room), "bad_request", "n2"},
		{fmt.Sprintf(`{"op":"join","Room":%q,"id":"n3"}`, room), "bad_request", "n3"},
		{fmt.Sprintf(`{"op":"JOIN","room":%q,"id":"n4"}`, room), "unknown_op", "n4"},
	})
	// "ID" is not "id": the join has no id, and joins.
	c.sendf(`{"op":"join","room":%q,"ID":"n5"}`, room)
	f := c.reply()
	if f.Op != "joined" || f.room() != room || f.has("id") {
		t.Fatalf("reply %s, want joined of %q without id (\"ID\" is an unknown member)", f, room)
	}
	// "Resume" and "Last" are ignored: no history, no error.
	room2 := k.room()
	k.seed(t, room2, 2)
	c.sendf(`{"op":"join","room":%q,"id":"n6","Resume":"bad","Last":5,"LAST":"x"}`, room2)
	j := c.expectJoined("n6", room2)
	c.sendf(`{"op":"pub","room":%q,"id":"n7","Data":1,"data":2}`, room2)
	c.expectAck("n7", room2)
	if m := c.msg(room2); m.n < j.n || m.seq() != j.seq()+1 || string(m.Data) != "2" {
		t.Errorf("first msg after joined %s: %s, want the live data 2 at seq %d (no history: \"Last\" is not last)", j, m, j.seq()+1)
	}
	// "Ephemeral" is not "ephemeral": the message is numbered.
	c.sendf(`{"op":"pub","room":%q,"id":"n8","Ephemeral":true,"data":3}`, room2)
	c.expectAck("n8", room2)
	if m := c.msg(room2); m.Seq == nil || string(m.Data) != "3" {
		t.Errorf("msg %s: want data 3 with a seq (\"Ephemeral\" is unknown)", m)
	}
}

// 2.1: a member twice at the top level is bad_request; nested ones are
// data.
func testDuplicateMember(t *testing.T, k *kit) {
	c := k.dial(t)
	room, other := k.room(), k.room()
	c.badRequests(room, []badReq{
		{fmt.Sprintf(`{"op":"join","room":%q,"room":%q,"id":"d1"}`, room, other), "bad_request", "*"},
		{fmt.Sprintf(`{"op":"join","op":"join","room":%q,"id":"d2"}`, room), "bad_request", "*"},
		{fmt.Sprintf(`{"op":"join","room":%q,"id":"d3","id":"d3"}`, room), "bad_request", "*"},
		{fmt.Sprintf(`{"op":"join","room":%q,"id":"d4","last":1,"last":2}`, room), "bad_request", "*"},
		{fmt.Sprintf(`{"op":"join","room":%q,"id":"d5","x":1,"x":2}`, room), "bad_request", "*"},
	})
	// Neither room was joined by the duplicates: the other one joins too.
	c.join(other)
	c.badRequests("", []badReq{
		{fmt.Sprintf(`{"op":"pub","room":%q,"id":"d6","data":1,"data":2}`, room), "bad_request", "*"},
	})
	c.sendf(`{"op":"pub","room":%q,"id":"d7","data":{"a":1,"a":2}}`, room)
	c.expectAck("d7", room)
	m := c.msg(room)
	if !strings.Contains(string(m.Data), `"a"`) {
		t.Errorf("msg %s: want the nested object published", m)
	}
	c.sendf(`{"op":"leave","room":%q,"id":"d8","id":"d9"}`, room)
	c.expectError("leave with two ids", "bad_request", "*")
	c.sendf(`{"op":"leave","room":%q,"id":"d10"}`, room)
	if f := c.reply(); f.Op != "left" || f.id() != "d10" {
		t.Errorf("reply %s, want left d10 (the duplicate leave did not leave)", f)
	}
}

// 2.1: a null member is absent.
func testNull(t *testing.T, k *kit) {
	c := k.dial(t)
	room := k.room()
	c.badRequests("", []badReq{
		{fmt.Sprintf(`{"op":null,"room":%q,"id":"u1"}`, room), "bad_request", "u1"},
		{`{"op":"join","room":null,"id":"u2"}`, "bad_request", "u2"},
	})
	c.sendf(`{"op":"join","room":%q,"id":null,"resume":null,"last":null,"members":null}`, room)
	f := c.reply()
	if f.Op != "joined" || f.room() != room || f.has("id") || f.has("members") {
		t.Fatalf("reply %s, want joined of %q without id and members", f, room)
	}
	c.badRequests("", []badReq{
		{fmt.Sprintf(`{"op":"pub","room":%q,"id":"u3","data":null}`, room), "bad_request", "u3"},
		{fmt.Sprintf(`{"op":"pub","room":%q,"id":"u4"}`, room), "bad_request", "u4"},
	})
	c.sendf(`{"op":"pub","room":%q,"id":"u5","data":5,"ephemeral":null}`, room)
	c.expectAck("u5", room)
	if m := c.msg(room); m.Seq == nil || string(m.Data) != "5" {
		t.Errorf("msg %s: want data 5 with a seq (ephemeral null is absent)", m)
	}
	c.sendf(`{"op":"leave","room":%q,"id":null}`, room)
	if f := c.reply(); f.Op != "left" || f.has("id") {
		t.Errorf("reply %s, want left without id", f)
	}
}

// 2.1: unknown members are ignored, wherever they are.
func testUnknownMembers(t *testing.T, k *kit) {
	c := k.dial(t)
	room := k.room()
	c.sendf(`{"x":1,"op":"join","room":%q,"id":"k1","future":{"a":[1,null]},"z":null}`, room)
	c.expectJoined("k1", room)
	c.sendf(`{"op":"pub","room":%q,"id":"k2","data":"d","priority":"high"}`, room)
	c.expectAck("k2", room)
	c.sendf(`{"op":"leave","room":%q,"id":"k3","why":"done"}`, room)
	if f := c.reply(); f.Op != "left" || f.id() != "k3" || f.Reason != "requested" {
		t.Errorf("reply %s, want left k3 requested", f)
	}
}

// 2.2: op missing or not a string: bad_request; another string: unknown_op.
func testOp(t *testing.T, k *kit) {
	c := k.dial(t)
	room := k.room()
	c.badRequests(room, []badReq{
		{fmt.Sprintf(`{"room":%q,"id":"o1"}`, room), "bad_request", "o1"},
		{fmt.Sprintf(`{"op":1,"room":%q,"id":"o2"}`, room), "bad_request", "o2"},
		{fmt.Sprintf(`{"op":["join"],"room":%q,"id":"o3"}`, room), "bad_request", "o3"},
		{fmt.Sprintf(`{"op":{"join":true},"room":%q,"id":"o4"}`, room), "bad_request", "o4"},
		{fmt.Sprintf(`{"op":"subscribe","room":%q,"id":"o5"}`, room), "unknown_op", "o5"},
		{fmt.Sprintf(`{"op":"Join","room":%q,"id":"o6"}`, room), "unknown_op", "o6"},
		{fmt.Sprintf(`{"op":"","room":%q,"id":"o7"}`, room), "unknown_op", "o7"},
		{fmt.Sprintf(`{"op":"hello","room":%q,"id":"o8"}`, room), "unknown_op", "o8"},
	})
}

// 2.3: room missing or not a string: bad_request; refused by the name
// rule: bad_room.
func testRoom(t *testing.T, k *kit) {
	c := k.dial(t)
	bad := k.cfg.BadRooms
	if bad == nil {
		bad = []string{"", ".hidden", "a b", "a/b", strings.Repeat("a", 65)}
	}
	for i, name := range bad {
		b, _ := json.Marshal(name)
		req := fmt.Sprintf(`{"op":"join","room":%s,"id":"br%d"}`, b, i)
		c.send(req)
		c.expectError(req, "bad_room", fmt.Sprintf("br%d", i))
	}
	c.badRequests("", []badReq{
		{`{"op":"join","id":"r1"}`, "bad_request", "r1"},
		{`{"op":"join","room":5,"id":"r2"}`, "bad_request", "r2"},
		{`{"op":"join","room":["a"],"id":"r3"}`, "bad_request", "r3"},
		{`{"op":"leave","id":"r4"}`, "bad_request", "r4"},
		{`{"op":"leave","room":true,"id":"r5"}`, "bad_request", "r5"},
		{`{"op":"pub","data":1,"id":"r6"}`, "bad_request", "r6"},
		{`{"op":"pub","room":1,"data":1,"id":"r7"}`, "bad_request", "r7"},
	})
	name := k.room() + "-"
	c.join(name + strings.Repeat("b", 64-len(name)))
}

// 2.4: an id is 1 to 64 bytes; an invalid one is refused and not echoed.
func testID(t *testing.T, k *kit) {
	c := k.dial(t)
	room := k.room()
	c.badRequests(room, []badReq{
		{fmt.Sprintf(`{"op":"join","room":%q,"id":""}`, room), "bad_request", ""},
		{fmt.Sprintf(`{"op":"join","room":%q,"id":%q}`, room, strings.Repeat("i", 65)), "bad_request", ""},
		{fmt.Sprintf(`{"op":"join","room":%q,"id":7}`, room), "bad_request", ""},
		{fmt.Sprintf(`{"op":"join","room":%q,"id":["x"]}`, room), "bad_request", ""},
		{fmt.Sprintf(`{"op":"join","room":%q,"id":true}`, room), "bad_request", ""},
	})
	id := strings.Repeat("i", 64)
	c.sendf(`{"op":"leave","room":%q,"id":%q}`, room, id)
	if f := c.reply(); f.Op != "left" || f.id() != id {
		t.Errorf("reply %s, want left with the 64-byte id echoed", f)
	}
	// A multi-byte id counts bytes: 22 × "é" is 44 bytes, 33 is 66.
	c.sendf(`{"op":"join","room":%q,"id":%q}`, room, strings.Repeat("é", 33))
	c.expectError("join with a 66-byte id", "bad_request", "")
	c.sendf(`{"op":"join","room":%q,"id":%q}`, room, strings.Repeat("é", 22))
	c.expectJoined(strings.Repeat("é", 22), room)
}

// 2.5: resume's forms; every other one is bad_request.
func testResumeValidation(t *testing.T, k *kit) {
	room := k.room()
	epoch, _ := k.seed(t, room, 1)
	c := k.dial(t)
	var reqs []badReq
	for i, r := range []string{`""`, `"abc"`, `":5"`, `":"`, `"` + epoch + `:"`, `"` + epoch + `:-1"`, `"` + epoch + `:+1"`,
		`"` + epoch + `:1.5"`, `"` + epoch + `: 1"`, `"` + epoch + `:x"`, `"` + epoch + `:18446744073709551616"`, `5`, `true`, `["` + epoch + `:0"]`} {
		reqs = append(reqs, badReq{fmt.Sprintf(`{"op":"join","room":%q,"id":"v%d","resume":%s}`, room, i, r), "bad_request", fmt.Sprintf("v%d", i)})
	}
	c.badRequests(room, reqs)
}

// 2.5: resume gets every message after the position, after joined, then
// live ones.
func testResume(t *testing.T, k *kit) {
	room := k.room()
	epoch, last := k.seed(t, room, 5)
	p := k.dial(t)
	p.join(room)
	for _, from := range []uint64{0, 2, last} {
		c := k.dial(t)
		id := fmt.Sprintf("r%d", from)
		c.sendf(`{"op":"join","room":%q,"id":%q,"resume":"%s:%d"}`, room, id, epoch, from)
		j := c.expectJoined(id, room)
		if j.epoch() != epoch || j.seq() != last {
			t.Errorf("joined %s: position %s:%d, want %s:%d", j, j.epoch(), j.seq(), epoch, last)
		}
		c.expectSeqs(room, j, epoch, from+1, last)
		live := p.pub(room, "live-"+id, `"live"`)
		last++
		if live.Seq != nil && live.seq() != last {
			t.Fatalf("ack %s: seq, want %d", live, last)
		}
		c.expectSeqs(room, j, epoch, last, last)
	}
}

// 2.5: ":0" gets every message of the current epoch.
func testResumeColonZero(t *testing.T, k *kit) {
	room := k.room()
	epoch, last := k.seed(t, room, 3)
	c := k.dial(t)
	c.sendf(`{"op":"join","room":%q,"id":"z","resume":":0"}`, room)
	j := c.expectJoined("z", room)
	c.expectSeqs(room, j, epoch, 1, last)
	// On a room without history, ":0" joins with nothing to replay.
	empty := k.room()
	c.sendf(`{"op":"join","room":%q,"id":"z2","resume":":0"}`, empty)
	j = c.expectJoined("z2", empty)
	if j.seq() != 0 {
		t.Errorf("joined %s of a room without history: seq, want 0", j)
	}
	c.pub(empty, "first", `"first"`)
	if m := c.msg(empty); m.seq() != 1 || string(m.Data) != `"first"` {
		t.Errorf("msg %s: want the first message, seq 1", m)
	}
}

// 2.5: a position past the end of the current epoch: resync without
// resume; the connection is not in the room.
func testResumePastEnd(t *testing.T, k *kit) {
	room := k.room()
	epoch, last := k.seed(t, room, 2)
	c := k.dial(t)
	for _, seq := range []uint64{last + 1, last + 1000} {
		id := fmt.Sprintf("pe%d", seq)
		c.sendf(`{"op":"join","room":%q,"id":%q,"resume":"%s:%d"}`, room, id, epoch, seq)
		f := c.expectError("resume past the end", "resync", id)
		if f.has("resume") {
			t.Errorf("error %s: want no resume member (section 2.5)", f)
		}
	}
	c.join(room)
}

// 2.5: a position in an epoch the history does not hold: resync, with
// resume "CURRENT:0" when given.
func testResumeOtherEpoch(t *testing.T, k *kit) {
	room := k.room()
	epoch, _ := k.seed(t, room, 2)
	c := k.dial(t)
	c.sendf(`{"op":"join","room":%q,"id":"oe","resume":"nosuchepoch%s:1"}`, room, epoch)
	f := c.expectError("resume of another epoch", "resync", "oe")
	if f.Resume != nil && *f.Resume != epoch+":0" {
		t.Errorf("error %s: resume, want %q or none", f, epoch+":0")
	}
	if f.Resume != nil {
		c.sendf(`{"op":"join","room":%q,"id":"oe2","resume":%q}`, room, *f.Resume)
		j := c.expectJoined("oe2", room)
		c.expectSeqs(room, j, epoch, 1, 2)
	} else {
		c.join(room)
	}
}

// 2.6: last gets the last messages of the history, after joined, then live
// ones; with resume it is ignored.
func testLast(t *testing.T, k *kit) {
	room := k.room()
	epoch, last := k.seed(t, room, 5)
	p := k.dial(t)
	p.join(room)
	for _, tc := range []struct {
		req   func(last uint64) string
		first func(last uint64) uint64 // of the history sent
	}{
		{func(uint64) string { return `"last":2` }, func(last uint64) uint64 { return last - 1 }},
		{func(uint64) string { return `"last":0` }, func(last uint64) uint64 { return last + 1 }},
		{func(uint64) string { return `"last":5000` }, func(uint64) uint64 { return 1 }},
		{func(last uint64) string { return fmt.Sprintf(`"last":1,"resume":"%s:%d"`, epoch, last-3) }, func(last uint64) uint64 { return last - 2 }},
	} {
		c := k.dial(t)
		req := tc.req(last)
		c.sendf(`{"op":"join","room":%q,"id":"l",%s}`, room, req)
		j := c.expectJoined("l", room)
		if j.epoch() != epoch || j.seq() != last {
			t.Errorf("join with %s: joined %s, want position %s:%d", req, j, epoch, last)
		}
		c.expectSeqs(room, j, epoch, tc.first(last), last)
		p.pub(room, fmt.Sprintf("live%d", last), `"live"`)
		last++
		c.expectSeqs(room, j, epoch, last, last)
	}
}

// 2.6: last is an integer written as digits; anything else is bad_request,
// also with resume.
func testLastValidation(t *testing.T, k *kit) {
	room := k.room()
	epoch, _ := k.seed(t, room, 1)
	c := k.dial(t)
	var reqs []badReq
	for i, v := range []string{`-1`, `2.5`, `2.0`, `2e0`, `"2"`, `true`, `[2]`, `{}`} {
		reqs = append(reqs, badReq{fmt.Sprintf(`{"op":"join","room":%q,"id":"lv%d","last":%s}`, room, i, v), "bad_request", fmt.Sprintf("lv%d", i)})
	}
	reqs = append(reqs, badReq{fmt.Sprintf(`{"op":"join","room":%q,"id":"lvr","resume":"%s:0","last":-1}`, room, epoch), "bad_request", "lvr"})
	c.badRequests(room, reqs)
}

// 2.7, 2.10: members and ephemeral are booleans.
func testMembersValidation(t *testing.T, k *kit) {
	c := k.dial(t)
	room := k.room()
	c.badRequests(room, []badReq{
		{fmt.Sprintf(`{"op":"join","room":%q,"id":"mv1","members":"yes"}`, room), "bad_request", "mv1"},
		{fmt.Sprintf(`{"op":"join","room":%q,"id":"mv2","members":1}`, room), "bad_request", "mv2"},
		{fmt.Sprintf(`{"op":"join","room":%q,"id":"mv3","members":{}}`, room), "bad_request", "mv3"},
	})
	c.badRequests("", []badReq{
		{fmt.Sprintf(`{"op":"pub","room":%q,"id":"ev1","data":1,"ephemeral":"yes"}`, room), "bad_request", "ev1"},
		{fmt.Sprintf(`{"op":"pub","room":%q,"id":"ev2","data":1,"ephemeral":1}`, room), "bad_request", "ev2"},
	})
	c.pub(room, "ev3", `"after"`)
	if m := c.msg(room); string(m.Data) != `"after"` {
		t.Errorf("msg %s: want only the valid pub published", m)
	}
}

// 2.8: a join of a room the connection is in or is joining: bad_request
// "already in room", membership unchanged.
func testDuplicateJoin(t *testing.T, k *kit) {
	room := k.room()
	c := k.dial(t)
	// Back to back: the second arrives while the first may be under way.
	c.sendf(`{"op":"join","room":%q,"id":"dj1"}`, room)
	c.sendf(`{"op":"join","room":%q,"id":"dj2","last":5}`, room)
	c.expectJoined("dj1", room)
	f := c.expectError("second join", "bad_request", "dj2")
	if !strings.Contains(deref(f.Message), "already in room") {
		t.Errorf("error %s: message, want \"already in room\"", f)
	}
	c.sendf(`{"op":"join","room":%q,"id":"dj3","members":true}`, room)
	c.expectError("third join", "bad_request", "dj3")
	// Still in the room: its messages come, once each.
	p := k.dial(t)
	p.join(room)
	a1 := p.pub(room, "dj-a", `"a"`)
	a2 := p.pub(room, "dj-b", `"b"`)
	m1, m2 := c.msg(room), c.msg(room)
	if string(m1.Data) != `"a"` || string(m2.Data) != `"b"` {
		t.Errorf("msgs %s, %s: want a then b", m1, m2)
	}
	if a1.Seq != nil && (m1.seq() != a1.seq() || m2.seq() != a2.seq()) {
		t.Errorf("msgs %s, %s: want seqs %d, %d", m1, m2, a1.seq(), a2.seq())
	}
	c.sendf(`{"op":"leave","room":%q,"id":"dj4"}`, room)
	if f := c.reply(); f.Op != "left" || f.id() != "dj4" {
		t.Errorf("reply %s, want left dj4", f)
	}
	if dup := c.queued(func(f *frame) bool { return f.Op == "msg" && f.room() == room }); len(dup) > 0 {
		t.Errorf("more msgs of the room than published: %s", dup[0])
	}
}

// 2.8: a join beyond limits.rooms: too_many_rooms.
func testTooManyRooms(t *testing.T, k *kit) {
	c := k.dial(t)
	n := c.limits.Rooms
	if n > 300 {
		t.Skipf("limits.rooms %d: too many rooms to fill", n)
	}
	rooms := make([]string, n+1)
	for i := range rooms {
		rooms[i] = k.room()
	}
	for i := range n {
		c.sendf(`{"op":"join","room":%q,"id":"t%d"}`, rooms[i], i)
	}
	for i := range n {
		c.expectJoined(fmt.Sprintf("t%d", i), rooms[i])
	}
	c.sendf(`{"op":"join","room":%q,"id":"over"}`, rooms[n])
	c.expectError("join over limits.rooms", "too_many_rooms", "over")
	c.sendf(`{"op":"leave","room":%q,"id":"out"}`, rooms[0])
	if f := c.reply(); f.Op != "left" || f.id() != "out" {
		t.Fatalf("reply %s, want left out", f)
	}
	c.sendf(`{"op":"join","room":%q,"id":"again"}`, rooms[n])
	c.expectJoined("again", rooms[n])
}

// 2.9: leave of a room not joined: not_joined; else left "requested", and
// no message of the room after it.
func testLeave(t *testing.T, k *kit) {
	room := k.room()
	c := k.dial(t)
	c.sendf(`{"op":"leave","room":%q,"id":"lv0"}`, room)
	c.expectError("leave of a room not joined", "not_joined", "lv0")
	c.join(room)
	p := k.dial(t)
	p.join(room)
	p.pub(room, "before", `"before"`)
	c.sendf(`{"op":"leave","room":%q,"id":"lv1"}`, room)
	left := c.reply()
	if left.Op != "left" || left.id() != "lv1" || left.room() != room || left.Reason != "requested" {
		t.Fatalf("reply %s, want left of %q, id lv1, reason requested", left, room)
	}
	p.pub(room, "after", `"after"`)
	c.sendf(`{"op":"join","room":%q,"id":"lv2"}`, room)
	j := c.expectJoined("lv2", room)
	for _, m := range c.queued(func(f *frame) bool { return f.Op == "msg" && f.room() == room }) {
		if m.n > left.n && m.n < j.n {
			t.Errorf("msg %s between left and the next joined", m)
		}
	}
	c.sendf(`{"op":"pub","room":%q,"id":"lv3","data":1}`, k.room())
	c.expectError("pub to a room not joined", "not_joined", "lv3")
}

// 2.10, 3.4: a pub is acked; the own msg matches the ack's seq.
func testPubAck(t *testing.T, k *kit) {
	room := k.room()
	a, b := k.dial(t), k.dial(t)
	a.join(room)
	b.join(room)
	ack := a.pub(room, "pa", `{"k":[1,2,3]}`)
	ma, mb := a.msg(room), b.msg(room)
	for _, m := range []*frame{ma, mb} {
		if !jsonEqual(m.Data, []byte(`{"k":[1,2,3]}`)) || m.From == nil || *m.From != a.hello.Conn {
			t.Errorf("msg %s: want data {\"k\":[1,2,3]} from %q", m, a.hello.Conn)
		}
		if m.Time == nil || *m.Time <= 0 {
			t.Errorf("msg %s: want time > 0", m)
		}
		if m.Seq == nil || m.Epoch == nil || m.epoch() == "" {
			t.Errorf("msg %s: want epoch and seq", m)
		}
	}
	if ma.seq() != mb.seq() || ma.epoch() != mb.epoch() {
		t.Errorf("the members got %s and %s: want one position", ma, mb)
	}
	if ack.Seq != nil && (ack.seq() != ma.seq() || ack.epoch() != ma.epoch()) {
		t.Errorf("ack %s and own msg %s: want the same epoch and seq", ack, ma)
	}
}

// 2.10: a pub to a room not joined: not_joined.
func testPubNotJoined(t *testing.T, k *kit) {
	c := k.dial(t)
	room := k.room()
	c.sendf(`{"op":"pub","room":%q,"id":"nj","data":1}`, room)
	c.expectError("pub to a room not joined", "not_joined", "nj")
	c.sendf(`{"op":"pub","room":%q,"data":1}`, room)
	f := c.expectError("pub without id to a room not joined", "not_joined", "")
	if f.room() != room {
		t.Errorf("error %s: room, want %q", f, room)
	}
}

// 5: a pub without id gets no ack.
func testPubWithoutID(t *testing.T, k *kit) {
	c := k.dial(t)
	room := k.room()
	c.join(room)
	c.sendf(`{"op":"pub","room":%q,"data":"no id"}`, room)
	c.pub(room, "with", `"with id"`) // fails if an ack without id comes first
	m1, m2 := c.msg(room), c.msg(room)
	if string(m1.Data) != `"no id"` || string(m2.Data) != `"with id"` {
		t.Errorf("msgs %s, %s: want both published, in order", m1, m2)
	}
}

// 2.10, 3.4, 4.2: an ephemeral message has no epoch or seq, takes no number
// and is not replayed.
func testEphemeral(t *testing.T, k *kit) {
	room := k.room()
	a, b := k.dial(t), k.dial(t)
	a.join(room)
	b.join(room)
	a.pub(room, "n1", `"one"`)
	m1 := b.msg(room)
	a.sendf(`{"op":"pub","room":%q,"id":"e1","ephemeral":true,"data":"typing"}`, room)
	ack := a.expectAck("e1", room)
	if ack.has("seq") || ack.has("epoch") {
		t.Errorf("ack %s of an ephemeral pub: want no epoch/seq", ack)
	}
	e := b.msg(room)
	if string(e.Data) != `"typing"` || e.has("seq") || e.has("epoch") || e.From == nil || *e.From != a.hello.Conn {
		t.Errorf("msg %s: want the ephemeral data without epoch/seq, from %q", e, a.hello.Conn)
	}
	a.pub(room, "n2", `"two"`)
	m2 := b.msg(room)
	if m2.seq() != m1.seq()+1 || m2.epoch() != m1.epoch() {
		t.Errorf("numbered msgs %s then %s around an ephemeral one: want consecutive seqs", m1, m2)
	}
	c := k.dial(t)
	c.sendf(`{"op":"join","room":%q,"id":"er","resume":"%s:%d"}`, room, m1.epoch(), m1.seq()-1)
	j := c.expectJoined("er", room)
	c.expectSeqs(room, j, m1.epoch(), m1.seq(), m2.seq())
}

// 3.2: the joined position of a room without history is "" and 0.
func testJoinedEmpty(t *testing.T, k *kit) {
	c := k.dial(t)
	room := k.room()
	j := c.join(room)
	if j.epoch() != "" || j.seq() != 0 {
		t.Errorf("joined %s of a room without history: want epoch \"\" and seq 0", j)
	}
	c.pub(room, "first", `1`)
	if m := c.msg(room); m.seq() != 1 || m.epoch() == "" {
		t.Errorf("first msg %s: want seq 1 of a new epoch", m)
	}
}

// 3.2: joined.members includes the joiner.
func testJoinedMembers(t *testing.T, k *kit) {
	room := k.room()
	a, b := k.dial(t), k.dial(t)
	a.join(room)
	b.sendf(`{"op":"join","room":%q,"id":"jm","members":true}`, room)
	j := b.expectJoined("jm", room)
	if bound := b.limits.Presence; bound > 0 && 2 > bound {
		if j.Count == nil || *j.Count != 2 || j.has("members") {
			t.Errorf("joined %s: want count 2 and no members (presence bound %d)", j, bound)
		}
		return
	}
	ids := map[string]int{}
	for _, m := range j.Members {
		ids[m.ID]++
	}
	if len(j.Members) != 2 || ids[a.hello.Conn] != 1 || ids[b.hello.Conn] != 1 {
		t.Errorf("joined %s: members, want exactly %q and %q (the joiner included)", j, a.hello.Conn, b.hello.Conn)
	}
	// Without members: true, none.
	c := k.dial(t)
	if j := c.join(room); j.has("members") || j.has("count") {
		t.Errorf("joined %s without members: true: want no members and no count", j)
	}
}

// 3.2: while another connection publishes all the time, the first live
// msg after joined is joined.seq+1, for each of 8 joiners, and the next
// ones follow with no gap.
func testJoinedBusy(t *testing.T, k *kit) {
	room := k.room()
	p := k.dial(t)
	p.mu.Lock()
	p.keep = func(f *frame) bool { return f.Op != "msg" }
	p.mu.Unlock()
	p.join(room)
	stop := make(chan struct{})
	pubErr := make(chan error, 1)
	acked := make(chan struct{})
	go func() {
		const window = 8
		var err error
		defer func() { pubErr <- err }()
		sent, got := 0, 0
		for {
			select {
			case <-stop:
				return
			default:
			}
			for sent-got < window {
				if err = p.writeErr(websocket.MessageText, fmt.Appendf(nil, `{"op":"pub","room":%q,"id":"b%d","data":%d}`, room, sent, sent)); err != nil {
					return
				}
				sent++
			}
			var f *frame
			if f, err = p.takeErr("an ack", isReply); err != nil {
				return
			}
			if f.Op != "ack" || f.id() != fmt.Sprintf("b%d", got) {
				err = fmt.Errorf("publisher: reply %s, want ack b%d", f, got)
				return
			}
			if got == 0 {
				close(acked)
			}
			got++
		}
	}()
	select {
	case <-acked:
	case err := <-pubErr:
		t.Fatalf("publisher: %v", err)
	}
	for i := range 8 {
		c := k.dial(t)
		id := fmt.Sprintf("busy%d", i)
		c.sendf(`{"op":"join","room":%q,"id":%q}`, room, id)
		j := c.expectJoined(id, room)
		prev, epoch := j.seq(), j.epoch()
		for n := range 10 {
			m := c.msg(room)
			if m.n < j.n {
				t.Fatalf("joiner %d: msg %s before joined %s", i, m, j)
			}
			if m.seq() != prev+1 || (epoch != "" && m.epoch() != epoch) {
				t.Fatalf("joiner %d: joined %s, then msg %d %s: want seq %d of epoch %q (no gap, no duplicate)", i, j, n, m, prev+1, epoch)
			}
			prev, epoch = m.seq(), m.epoch()
		}
		c.close()
	}
	close(stop)
	if err := <-pubErr; err != nil {
		t.Errorf("publisher: %v", err)
	}
}

// 3.3: data published by a client is a msg's data, as it is.
func testMsgData(t *testing.T, k *kit) {
	c := k.dial(t)
	room := k.room()
	c.join(room)
	for i, d := range []string{`"a string"`, `12.5`, `[1,"two",{"three":3}]`, `{"text":"not the text member"}`, `false`} {
		c.pub(room, fmt.Sprintf("md%d", i), d)
		m := c.msg(room)
		if !jsonEqual(m.Data, []byte(d)) || m.has("text") || m.has("bytes") {
			t.Errorf("msg %s: want data %s and no text or bytes", m, d)
		}
	}
}

// 3.3: data server code publishes is data (JSON), text (UTF-8, not JSON)
// or bytes (not UTF-8).
func testMsgPayload(t *testing.T, k *kit) {
	if k.cfg.ServerPublish == nil {
		t.Skip("Config.ServerPublish is nil: the kit cannot publish from server code")
	}
	c := k.dial(t)
	room := k.room()
	c.join(room)
	publish := func(data string) error {
		ctx, cancel := context.WithTimeout(context.Background(), k.cfg.Wait)
		defer cancel()
		return k.cfg.ServerPublish(ctx, room, []byte(data))
	}
	check := func(m *frame, member string) {
		t.Helper()
		n := 0
		for _, name := range []string{"data", "text", "bytes"} {
			if m.has(name) {
				n++
			}
		}
		if n != 1 || !m.has(member) {
			t.Errorf("msg %s: want exactly one payload member, %s", m, member)
		}
		if m.has("from") {
			t.Errorf("msg %s from server code: want no from", m)
		}
		if m.Seq == nil {
			t.Errorf("msg %s: want a seq", m)
		}
	}
	if err := publish(`{"server":[1,2]}`); err != nil {
		t.Fatalf("ServerPublish(JSON): %v", err)
	}
	m := c.msg(room)
	check(m, "data")
	if !jsonEqual(m.Data, []byte(`{"server":[1,2]}`)) {
		t.Errorf("msg %s: data, want {\"server\":[1,2]}", m)
	}
	const text = `plain text, not JSON {`
	if err := publish(text); err != nil {
		t.Fatalf("ServerPublish(text): %v", err)
	}
	m = c.msg(room)
	check(m, "text")
	if deref(m.Text) != text {
		t.Errorf("msg %s: text, want %q", m, text)
	}
	if err := publish("\xff\x00\xfe"); err != nil {
		t.Logf("ServerPublish of bytes that are not UTF-8: %v; the bytes member is not checked", err)
		return
	}
	m = c.msg(room)
	check(m, "bytes")
	if deref(m.Bytes) != "/wD+" {
		t.Errorf("msg %s: bytes, want %q (standard base64 of ff 00 fe)", m, "/wD+")
	}
}

// 3.7: over the presence bound count comes; once more when the room drops
// back to the bound; then leave events again.
func testPresenceCount(t *testing.T, k *kit) {
	a := k.dial(t)
	bound := a.limits.Presence
	if bound == 0 {
		t.Skip("limits.presence is 0: presence events are off")
	}
	if bound > 16 {
		t.Skipf("limits.presence %d: too many connections to go over it", bound)
	}
	room := k.room()
	j := a.join(room)
	a.take("the own presence join", func(f *frame) bool {
		return f.Op == "presence" && f.room() == room && len(f.Join) == 1 && f.Join[0].ID == a.hello.Conn && f.n > j.n
	})
	others := make([]*client, bound)
	for i := range others {
		others[i] = k.dial(t)
		others[i].join(room)
	}
	countIs := func(n int) func(*frame) bool {
		return func(f *frame) bool { return f.Op == "presence" && f.room() == room && f.Count != nil && *f.Count == n }
	}
	a.take(fmt.Sprintf("presence count %d", bound+1), countIs(bound+1))
	others[0].close()
	a.take(fmt.Sprintf("presence count %d once the room is back at the bound", bound), countIs(bound))
	if bound < 2 {
		return
	}
	o := others[1]
	o.sendf(`{"op":"leave","room":%q,"id":"pl"}`, room)
	if f := o.reply(); f.Op != "left" {
		t.Fatalf("reply %s, want left", f)
	}
	a.take("a presence leave event below the bound", func(f *frame) bool {
		return f.Op == "presence" && f.room() == room && len(f.Leave) == 1 && f.Leave[0] == o.hello.Conn
	})
}

// 4.1, 4.3: 300 pipelined joins, read all the time: every one answered, in
// order, and the connection stays open.
func testPipelined(t *testing.T, k *kit) {
	c := k.dial(t)
	const n = 300
	rooms := make([]string, n)
	for i := range rooms {
		rooms[i] = k.room()
	}
	writeErr := make(chan error, 1)
	go func() {
		for i, r := range rooms {
			if err := c.writeErr(websocket.MessageText, fmt.Appendf(nil, `{"op":"join","room":%q,"id":"pj%d"}`, r, i)); err != nil {
				writeErr <- fmt.Errorf("write join %d: %w", i, err)
				return
			}
		}
		writeErr <- nil
	}()
	limit := c.limits.Rooms
	for i := range n {
		id := fmt.Sprintf("pj%d", i)
		if i < limit {
			c.expectJoined(id, rooms[i])
		} else {
			c.expectError("join over limits.rooms", "too_many_rooms", id)
		}
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	c.sendf(`{"op":"leave","room":%q,"id":"end"}`, rooms[0])
	if f := c.reply(); f.Op != "left" || f.id() != "end" {
		t.Errorf("reply %s, want left end", f)
	}
}

// 4.4: pings are answered, also after a burst beyond the rate limit.
func testPing(t *testing.T, k *kit) {
	c := k.dial(t)
	ping := func() {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), k.cfg.Wait)
		defer cancel()
		if err := c.ws.Ping(ctx); err != nil {
			t.Fatalf("ping: %v", err)
		}
	}
	ping()
	if c.limits.Rate <= 0 {
		return
	}
	room := k.room()
	c.join(room)
	n := c.limits.Burst + 10
	if n > 200 {
		n = 200
	}
	for i := range n {
		c.sendf(`{"op":"pub","room":%q,"data":%d}`, room, i)
	}
	ping()
	for i := range n {
		if m := c.msg(room); string(m.Data) != fmt.Sprint(i) {
			t.Fatalf("msg %s: want data %d", m, i)
		}
	}
}

// 5: a retry with the same id gets the original ack and is not published
// again, also while the first is under way.
func testRetry(t *testing.T, k *kit) {
	room := k.room()
	a, b := k.dial(t), k.dial(t)
	a.join(room)
	b.join(room)
	first := a.pub(room, "once", `"once"`)
	again := a.pub(room, "once", `"once"`)
	if first.has("seq") != again.has("seq") || first.seq() != again.seq() || first.epoch() != again.epoch() {
		t.Errorf("acks %s and %s of one id: want the original ack", first, again)
	}
	// Back to back.
	a.sendf(`{"op":"pub","room":%q,"id":"twice","data":"twice"}`, room)
	a.sendf(`{"op":"pub","room":%q,"id":"twice","data":"twice"}`, room)
	x, y := a.expectAck("twice", room), a.expectAck("twice", room)
	if x.seq() != y.seq() || x.epoch() != y.epoch() {
		t.Errorf("acks %s and %s of one id sent back to back: want the same", x, y)
	}
	a.pub(room, "end", `"end"`)
	var got []string
	for {
		m := b.msg(room)
		got = append(got, string(m.Data))
		if string(m.Data) == `"end"` {
			break
		}
	}
	if want := []string{`"once"`, `"twice"`, `"end"`}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("the other member got %v, want %v (each id published once)", got, want)
	}
}

// 6.3: requests sent before a protocol error, and after it before the
// client's close frame, are carried out.
func testBeforeClose(t *testing.T, k *kit) {
	for _, tc := range []struct {
		name string
		typ  websocket.MessageType
		b    string
		code websocket.StatusCode
	}{
		{"binary", websocket.MessageBinary, `{"op":"pub"}`, websocket.StatusUnsupportedData},
		{"not an object", websocket.MessageText, `[1,2]`, websocket.StatusInvalidFramePayloadData},
	} {
		// The pub after the bad frame must be written before the
		// server's close frame arrives; try a few times.
		var room, before, after string
		var a, b *client
		sentAfter := false
		for try := 0; try < 5 && !sentAfter; try++ {
			room = k.room()
			a, b = k.dial(t), k.dial(t)
			a.join(room)
			b.join(room)
			before, after = fmt.Sprintf(`"before %s"`, tc.name), fmt.Sprintf(`"after %s"`, tc.name)
			a.sendf(`{"op":"pub","room":%q,"id":"b1","data":%s}`, room, before)
			if err := a.writeErr(tc.typ, []byte(tc.b)); err != nil {
				t.Fatalf("write: %v", err)
			}
			sentAfter = a.writeErr(websocket.MessageText, fmt.Appendf(nil, `{"op":"pub","room":%q,"id":"b2","data":%s}`, room, after)) == nil
		}
		if s := a.waitClose(); s != tc.code {
			t.Errorf("after a %s frame: %s, want close %d", tc.name, describe(a.err), tc.code)
		}
		isMsg := func(f *frame) bool { return f.Op == "msg" && f.room() == room }
		if m, err := b.takeErr("the pub sent before the "+tc.name+" frame", isMsg); err != nil {
			t.Errorf("the pub sent before the %s frame was not carried out: %v", tc.name, err)
			continue
		} else if string(m.Data) != before {
			t.Errorf("the other member got %s, want the pub sent before the %s frame", m, tc.name)
		}
		if !sentAfter {
			t.Logf("the pub after the %s frame could not be written: not checked", tc.name)
			continue
		}
		if m, err := b.takeErr("the pub sent after the "+tc.name+" frame", isMsg); err != nil {
			t.Errorf("the pub sent after the %s frame, before the client's close frame, was not carried out: %v", tc.name, err)
		} else if string(m.Data) != after {
			t.Errorf("the other member got %s, want the pub sent after the %s frame, before the client's close", m, tc.name)
		}
	}
}
