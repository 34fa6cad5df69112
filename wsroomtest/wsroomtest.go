// Package wsroomtest helps test applications built on wsroom: it connects
// WebSocket clients to a handler (Room.Handler, Registry.Handler,
// Registry.MuxHandler, or a mux in front of them) in memory, over
// net.Pipe, with no socket and no server, and reads what they receive.
//
// Everything runs in the calling process and waits only on channels and
// timers, so tests that use it may run inside a testing/synctest bubble,
// where time is virtual: a token that expires in an hour expires at once,
// and a test that waits for something that never happens fails after
// Timeout of virtual time instead of hanging.
//
//	func TestChat(t *testing.T) {
//		room := wsroom.New(wsroom.WithCodec(wsroom.JSON()))
//		defer room.Close()
//		ana := wsroomtest.Dial(t, room.Handler(), "/chat")
//		ben := wsroomtest.Dial(t, room.Handler(), "/chat")
//		wsroomtest.WaitClients(t, room, 2)
//		ana.Send(`"hi"`)
//		ben.ExpectData(`"hi"`)
//	}
//
// Every function takes the test's testing.TB, registers the clean-up of
// what it makes with its Cleanup method, and fails the test with a message
// that says what was expected and what came. Like t.Fatal, they must be
// called from the goroutine running the test; to read on another goroutine,
// use the connection's WebSocket method.
package wsroomtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/internal/wspipe"
)

// Timeout bounds every wait of the package: a handshake, a read, a write,
// WaitClients. Inside a testing/synctest bubble it is virtual time.
const Timeout = 10 * time.Second

// Host is the host of a URL given to Dial as a path alone: "/rooms/lobby"
// is "ws://room.test/rooms/lobby". The handler gets the request as a
// server would, with this Host, so a handshake whose Origin header is
// "http://room.test" is same-origin.
const Host = "room.test"

// Conn is a client connected to a handler in memory. Its methods fail the
// test that dialed it.
type Conn struct {
	t    testing.TB
	ws   *websocket.Conn
	resp *http.Response
}

// Dial connects a client to h with a WebSocket handshake for url, and
// fails t if the handshake fails. url is a ws:// URL, or a path alone (see
// Host). The connection is closed at once when the test ends (t.Cleanup).
func Dial(t testing.TB, h http.Handler, url string) *Conn {
	t.Helper()
	return DialWith(t, h, url, nil)
}

// DialWith is Dial with options: headers such as a cookie or an Origin
// (opts.HTTPHeader), subprotocols to offer (opts.Subprotocols). Its
// HTTPClient is replaced by the in-memory one. opts may be nil.
func DialWith(t testing.TB, h http.Handler, url string, opts *websocket.DialOptions) *Conn {
	t.Helper()
	ws, resp, err := dial(h, url, opts)
	if err != nil {
		t.Fatalf("wsroomtest: Dial(%s): %v%s", fullURL(url), err, describe(resp))
	}
	t.Cleanup(func() { ws.CloseNow() })
	return &Conn{t: t, ws: ws, resp: resp}
}

// DialStatus performs a handshake for url that must be refused, and returns
// the HTTP status it was refused with. It fails t if the handshake
// succeeds, or fails without an HTTP answer. opts may be nil.
func DialStatus(t testing.TB, h http.Handler, url string, opts *websocket.DialOptions) int {
	t.Helper()
	ws, resp, err := dial(h, url, opts)
	if err == nil {
		ws.CloseNow()
		t.Fatalf("wsroomtest: Dial(%s) succeeded, want it refused", fullURL(url))
	}
	if resp == nil {
		t.Fatalf("wsroomtest: Dial(%s): %v, without an HTTP answer", fullURL(url), err)
	}
	return resp.StatusCode
}

func dial(h http.Handler, url string, opts *websocket.DialOptions) (*websocket.Conn, *http.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	return wspipe.Dial(ctx, asServer(h), fullURL(url), opts)
}

// asServer hands h the client's request as a server receives it: with its
// Host (which the same-origin rule compares with the Origin), its
// RequestURI and a path-only URL, and a remote address.
func asServer(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.Clone(r.Context())
		if r.Host == "" {
			r.Host = r.URL.Host
		}
		r.RequestURI = r.URL.RequestURI()
		if u, err := neturl.ParseRequestURI(r.RequestURI); err == nil {
			r.URL = u
		}
		r.RemoteAddr = "192.0.2.1:1234"
		h.ServeHTTP(w, r)
	})
}

func fullURL(url string) string {
	if strings.HasPrefix(url, "/") {
		return "ws://" + Host + url
	}
	return url
}

// describe returns the status and body of a refused handshake's answer.
func describe(resp *http.Response) string {
	if resp == nil {
		return ""
	}
	var body []byte
	if resp.Body != nil {
		body, _ = io.ReadAll(io.LimitReader(resp.Body, 512))
	}
	return fmt.Sprintf(" (HTTP %s: %q)", resp.Status, bytes.TrimSpace(body))
}

// WebSocket returns the client's connection, to read or write as the
// package does not, or on another goroutine.
func (c *Conn) WebSocket() *websocket.Conn { return c.ws }

// Response returns the server's answer to the handshake (status 101), with
// its headers.
func (c *Conn) Response() *http.Response { return c.resp }

// Subprotocol returns the subprotocol the server selected, or "".
func (c *Conn) Subprotocol() string { return c.ws.Subprotocol() }

// Send sends msg as a text message.
func (c *Conn) Send(msg string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		c.t.Fatalf("wsroomtest: Send(%q): %v", msg, err)
	}
}

// SendJSON sends v, encoded as JSON, as a text message: a request of the
// wsroom.v3 protocol, say.
func (c *Conn) SendJSON(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatalf("wsroomtest: SendJSON: %v", err)
	}
	c.Send(string(b))
}

// Read returns the next message the client receives, text or binary. It
// fails the test if the connection ends first, with its close code and
// reason, or if nothing comes within Timeout.
func (c *Conn) Read() string {
	c.t.Helper()
	msg, err := c.read()
	if err != nil {
		c.t.Fatalf("wsroomtest: Read: %v", err)
	}
	return msg
}

func (c *Conn) read() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	_, b, err := c.ws.Read(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("nothing received within %v", Timeout)
		}
		var ce websocket.CloseError
		if errors.As(err, &ce) {
			return "", fmt.Errorf("connection closed with %d %q", int(ce.Code), ce.Reason)
		}
		return "", fmt.Errorf("connection lost: %v", err)
	}
	return string(b), nil
}

// Expect reads len(want) messages and fails the test unless they are want,
// in that order.
func (c *Conn) Expect(want ...string) {
	c.t.Helper()
	var got []string
	for i, w := range want {
		msg, err := c.read()
		if err != nil {
			c.t.Fatalf("wsroomtest: Expect: message %d of %d: %v; got %q, want %q", i+1, len(want), err, got, want)
		}
		got = append(got, msg)
		if msg != w {
			c.t.Fatalf("wsroomtest: Expect: message %d of %d is %q, want %q; got %q, want %q", i+1, len(want), msg, w, got, want)
		}
	}
}

// ExpectClose reads the end of the connection and fails the test unless it
// is a close frame with code; it returns the close reason. A message that
// comes first fails the test too.
func (c *Conn) ExpectClose(code websocket.StatusCode) (reason string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	_, b, err := c.ws.Read(ctx)
	var ce websocket.CloseError
	switch {
	case err == nil:
		c.t.Fatalf("wsroomtest: ExpectClose(%d): got the message %q", int(code), b)
	case ctx.Err() != nil:
		c.t.Fatalf("wsroomtest: ExpectClose(%d): still open after %v", int(code), Timeout)
	case !errors.As(err, &ce):
		c.t.Fatalf("wsroomtest: ExpectClose(%d): connection lost without a close frame: %v", int(code), err)
	case ce.Code != code:
		c.t.Fatalf("wsroomtest: ExpectClose(%d): closed with %d %q", int(code), int(ce.Code), ce.Reason)
	}
	return ce.Reason
}

// Close closes the connection normally (1000) and waits for the server's
// close frame, as a well-behaved client does.
func (c *Conn) Close() {
	c.ws.Close(websocket.StatusNormalClosure, "")
}

// Envelope is a message of a room with the wsroom.JSON codec, as a client
// of one room receives it.
type Envelope struct {
	Seq   uint64          `json:"seq,omitempty"`   // 0 for ephemeral messages
	Epoch string          `json:"epoch,omitempty"` // with Seq, the message's position
	Time  int64           `json:"time,omitempty"`  // milliseconds since 1970
	From  string          `json:"from,omitempty"`  // the sender's Client.ID, if a client
	Data  json.RawMessage `json:"data"`
}

// Position returns the envelope's position, "EPOCH:SEQ", as a client that
// reconnects sends it in its resume parameter.
func (e Envelope) Position() string { return e.Epoch + ":" + strconv.FormatUint(e.Seq, 10) }

// ReadEnvelope reads the next message, which must be an envelope of the
// JSON codec.
func (c *Conn) ReadEnvelope() Envelope {
	c.t.Helper()
	msg := c.Read()
	var e Envelope
	if err := json.Unmarshal([]byte(msg), &e); err != nil || e.Data == nil {
		c.t.Fatalf("wsroomtest: ReadEnvelope: %q is not an envelope of the JSON codec", msg)
	}
	return e
}

// ExpectData reads len(want) envelopes of the JSON codec and fails the test
// unless their data are want, in that order (compared as compact JSON), and
// the numbered ones among them follow each other (seq 1, 2, 3 ... within an
// epoch): no gap, no repeat. It returns the envelopes.
func (c *Conn) ExpectData(want ...string) []Envelope {
	c.t.Helper()
	var envs []Envelope
	var got []string
	for i, w := range want {
		e := c.ReadEnvelope()
		if e.Seq != 0 {
			if prev := lastNumbered(envs); prev != nil && prev.Epoch == e.Epoch && e.Seq != prev.Seq+1 {
				c.t.Fatalf("wsroomtest: ExpectData: message %d of %d has seq %d after %d", i+1, len(want), e.Seq, prev.Seq)
			}
		}
		envs = append(envs, e)
		got = append(got, compact(e.Data))
		if got[i] != compact([]byte(w)) {
			c.t.Fatalf("wsroomtest: ExpectData: message %d of %d is %s, want %s; got %s, want %s", i+1, len(want), got[i], w, list(got), list(want))
		}
	}
	return envs
}

func lastNumbered(envs []Envelope) *Envelope {
	for i := len(envs) - 1; i >= 0; i-- {
		if envs[i].Seq != 0 {
			return &envs[i]
		}
	}
	return nil
}

func compact(b []byte) string {
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return string(b)
	}
	return buf.String()
}

func list(s []string) string { return "[" + strings.Join(s, " ") + "]" }

// Frame is a frame of the wsroom.v3 protocol (PROTOCOL.md), as a client of
// many rooms (Registry.MuxHandler) receives it. Members absent from a
// frame are zero.
type Frame struct {
	Op      string          `json:"op"`
	Room    string          `json:"room,omitempty"`
	ID      string          `json:"id,omitempty"`
	Seq     uint64          `json:"seq,omitempty"`
	Epoch   string          `json:"epoch,omitempty"`
	Time    int64           `json:"time,omitempty"`
	From    string          `json:"from,omitempty"`
	Data    json.RawMessage `json:"data,omitempty"`
	Text    *string         `json:"text,omitempty"`  // a payload that is text but not JSON
	Bytes   []byte          `json:"bytes,omitempty"` // a payload that is not text
	Code    string          `json:"code,omitempty"`
	Message string          `json:"message,omitempty"`
	Reason  string          `json:"reason,omitempty"`
	Resume  string          `json:"resume,omitempty"`
	Members []wsroom.Member `json:"members,omitempty"`
	Join    []wsroom.Member `json:"join,omitempty"`
	Leave   []string        `json:"leave,omitempty"`
	Count   *int            `json:"count,omitempty"`
	Conn    string          `json:"conn,omitempty"`   // hello: the connection's id
	Limits  map[string]any  `json:"limits,omitempty"` // hello: the server's limits
}

// String returns the frame in one line of what is the same from run to
// run, for comparisons: the op and room, then those of id, seq, code,
// reason, count, members and join (their Info), leave (how many) and data
// (compact JSON), text (quoted) or bytes (hex) that it has, such as
//
//	hello
//	joined chat id=j1
//	msg chat seq=1 {"text":"hi"}
//	ack chat id=p1 seq=1
//	error chat id=j2 code=forbidden
//	presence chat join=[ana]
//
// Epoch, time, from, message, resume, conn and limits are left out.
func (f Frame) String() string {
	var b strings.Builder
	b.WriteString(f.Op)
	if f.Room != "" {
		b.WriteString(" " + f.Room)
	}
	if f.ID != "" {
		b.WriteString(" id=" + f.ID)
	}
	if f.Seq != 0 {
		fmt.Fprintf(&b, " seq=%d", f.Seq)
	}
	if f.Code != "" {
		b.WriteString(" code=" + f.Code)
	}
	if f.Reason != "" {
		b.WriteString(" reason=" + f.Reason)
	}
	if f.Count != nil {
		fmt.Fprintf(&b, " count=%d", *f.Count)
	}
	if f.Members != nil {
		b.WriteString(" members=" + infos(f.Members))
	}
	if f.Join != nil {
		b.WriteString(" join=" + infos(f.Join))
	}
	if f.Leave != nil {
		fmt.Fprintf(&b, " leave=%d", len(f.Leave))
	}
	if f.Data != nil {
		b.WriteString(" " + compact(f.Data))
	}
	if f.Text != nil {
		fmt.Fprintf(&b, " text=%q", *f.Text)
	}
	if f.Bytes != nil {
		fmt.Fprintf(&b, " bytes=%x", f.Bytes)
	}
	return b.String()
}

func infos(ms []wsroom.Member) string {
	s := make([]string, len(ms))
	for i, m := range ms {
		s[i] = m.Info
	}
	return list(s)
}

// ReadFrame reads the next message, which must be a frame of the wsroom.v3
// protocol.
func (c *Conn) ReadFrame() Frame {
	c.t.Helper()
	msg := c.Read()
	var f Frame
	if err := json.Unmarshal([]byte(msg), &f); err != nil || f.Op == "" {
		c.t.Fatalf("wsroomtest: ReadFrame: %q is not a frame of the %s protocol", msg, wsroom.Subprotocol)
	}
	return f
}

// ExpectFrames reads len(want) frames of the wsroom.v3 protocol and fails
// the test unless they are want, in that order, as Frame.String writes
// them. The protocol orders the frames of each room, not an ack and the
// message it acknowledges, nor the frames of different rooms: read those
// with ReadFrame.
func (c *Conn) ExpectFrames(want ...string) []Frame {
	c.t.Helper()
	var frames []Frame
	var got []string
	for i, w := range want {
		f := c.ReadFrame()
		frames = append(frames, f)
		got = append(got, f.String())
		if got[i] != w {
			c.t.Fatalf("wsroomtest: ExpectFrames: frame %d of %d is %q, want %q; got %q, want %q", i+1, len(want), got[i], w, got, want)
		}
	}
	return frames
}

// WaitClients waits until room has n clients on this node (Room.Len, which
// counts the connections of many rooms in it too), and fails t if it has
// not within Timeout. A client counts from when it joins, before its join
// hook runs. n may be 0, to wait until every client has left.
func WaitClients(t testing.TB, room *wsroom.Room, n int) {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for room.Len() != n {
		if time.Now().After(deadline) {
			t.Fatalf("wsroomtest: room %q has %d clients after %v, want %d", room.Name(), room.Len(), Timeout, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// WaitRoom waits until rooms holds a room called name with n clients on
// this node, as WaitClients, without making the room as Registry.Room
// would. With n 0 it also returns when rooms holds no such room.
func WaitRoom(t testing.TB, rooms *wsroom.Registry, name string, n int) {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for {
		have := 0
		for _, r := range rooms.Rooms() {
			if r.Name() == name {
				have = r.Len()
			}
		}
		if have == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("wsroomtest: room %q has %d clients after %v, want %d", name, have, Timeout, n)
		}
		time.Sleep(time.Millisecond)
	}
}
