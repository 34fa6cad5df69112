package wsroom_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/go-cmp/cmp"
	"github.com/wsroom/wsroom"
)

// fixture is a room served over real loopback connections.
type fixture struct {
	room *wsroom.Room
	srv  *httptest.Server
	url  string
}

func newFixture(t *testing.T, opts ...wsroom.Option) *fixture {
	t.Helper()
	room := wsroom.New(opts...)
	srv := httptest.NewServer(room.Handler())
	t.Cleanup(func() {
		room.Close()
		srv.Close()
	})
	return &fixture{room: room, srv: srv, url: "ws" + strings.TrimPrefix(srv.URL, "http")}
}

// dial connects a client and waits until the room counts it.
func (f *fixture) dial(t *testing.T, query string) *websocket.Conn {
	t.Helper()
	want := f.room.Len() + 1
	c := dialURL(t, f.url+query)
	waitUntil(t, fmt.Sprintf("room has %d clients", want), func() bool { return f.room.Len() >= want })
	return c
}

func dialURL(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.Dial(t.Context(), url, nil)
	if err != nil {
		t.Fatalf("Dial(%s) error: %v", url, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// waitUntil polls cond until it holds, failing t after 10 seconds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func read(t *testing.T, c *websocket.Conn) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("Read error: %v", err)
	}
	return string(b)
}

func write(t *testing.T, c *websocket.Conn, s string) {
	t.Helper()
	if err := c.Write(t.Context(), websocket.MessageText, []byte(s)); err != nil {
		t.Fatalf("Write(%q) error: %v", s, err)
	}
}

// closeStatus reads until the connection ends and returns its close error.
func closeStatus(t *testing.T, c *websocket.Conn) (websocket.StatusCode, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for {
		_, _, err := c.Read(ctx)
		if err == nil {
			continue
		}
		var ce websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code, ce.Reason
		}
		return -1, err.Error()
	}
}

type envelope struct {
	Seq   uint64          `json:"seq"`
	Epoch string          `json:"epoch"`
	From  string          `json:"from"`
	Data  json.RawMessage `json:"data"`
}

func readEnvelope(t *testing.T, c *websocket.Conn) envelope {
	t.Helper()
	var e envelope
	s := read(t, c)
	if err := json.Unmarshal([]byte(s), &e); err != nil {
		t.Fatalf("envelope %q: %v", s, err)
	}
	return e
}

// Guarantee 1: every message reaches every client, sender included, in one
// order, with a per-room sequence number.
func TestPublishReachesEveryClientInOneOrder(t *testing.T) {
	f := newFixture(t, wsroom.WithCodec(wsroom.JSON()))
	const clients, each = 4, 25
	var conns []*websocket.Conn
	for range clients {
		conns = append(conns, f.dial(t, ""))
	}
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			for j := range each {
				if err := c.Write(context.Background(), websocket.MessageText, fmt.Appendf(nil, `"c%d-%d"`, i, j)); err != nil {
					t.Errorf("client %d Write: %v", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	var first []string
	for i, c := range conns {
		var got []string
		own := 0
		for k := range clients * each {
			e := readEnvelope(t, c)
			if e.Seq != uint64(k+1) {
				t.Fatalf("client %d message %d has seq %d, want %d", i, k, e.Seq, k+1)
			}
			if strings.HasPrefix(string(e.Data), fmt.Sprintf(`"c%d-`, i)) {
				own++
			}
			got = append(got, string(e.Data))
		}
		if own != each {
			t.Errorf("client %d received %d of its own messages, want %d", i, own, each)
		}
		if first == nil {
			first = got
		} else if diff := cmp.Diff(first, got); diff != "" {
			t.Errorf("client %d order differs from client 0 (-0 +%d):\n%s", i, i, diff)
		}
	}
}

func TestTextCodecSendsPayloadAsIs(t *testing.T) {
	f := newFixture(t)
	a, b := f.dial(t, ""), f.dial(t, "")
	write(t, a, "héllo <b>")
	for _, c := range []*websocket.Conn{a, b} {
		if got := read(t, c); got != "héllo <b>" {
			t.Errorf("read %q, want %q", got, "héllo <b>")
		}
	}
}

// Guarantee 8: a broadcast is encoded once, whatever the number of clients.
func TestBroadcastEncodesOnce(t *testing.T) {
	codec := &countingCodec{Codec: wsroom.Text()}
	f := newFixture(t, wsroom.WithCodec(codec))
	var conns []*websocket.Conn
	for range 5 {
		conns = append(conns, f.dial(t, ""))
	}
	for i := range 3 {
		if err := f.room.Publish(t.Context(), fmt.Appendf(nil, "m%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range conns {
		for i := range 3 {
			if got, want := read(t, c), fmt.Sprintf("m%d", i); got != want {
				t.Errorf("read %q, want %q", got, want)
			}
		}
	}
	if got := codec.encodes.Load(); got != 3 {
		t.Errorf("Encode called %d times for 3 messages to 5 clients, want 3", got)
	}
	// Counted once each write returns, which may be after the client read it.
	waitUntil(t, "Stats().MessagesOut == 15", func() bool { return f.room.Stats().MessagesOut == 15 })
}

type countingCodec struct {
	wsroom.Codec
	encodes atomic.Int64
}

func (c *countingCodec) Encode(m wsroom.Message) ([]byte, error) {
	c.encodes.Add(1)
	return c.Codec.Encode(m)
}

// Guarantee 4: bad input closes only the sender, with the right code.
func TestBadInputClosesSender(t *testing.T) {
	tests := []struct {
		name     string
		opts     []wsroom.Option
		typ      websocket.MessageType
		msg      []byte
		wantCode websocket.StatusCode
	}{
		{"over read limit", []wsroom.Option{wsroom.WithReadLimit(64)}, websocket.MessageText, []byte(strings.Repeat("x", 100)), websocket.StatusMessageTooBig},
		{"invalid UTF-8", nil, websocket.MessageText, []byte("ok\xff\xfe"), websocket.StatusInvalidFramePayloadData},
		{"malformed JSON", []wsroom.Option{wsroom.WithCodec(wsroom.JSON())}, websocket.MessageText, []byte(`{"a":`), websocket.StatusInvalidFramePayloadData},
		{"binary in text room", nil, websocket.MessageBinary, []byte("bin"), websocket.StatusUnsupportedData},
		{"text in binary room", []wsroom.Option{wsroom.WithCodec(wsroom.Binary())}, websocket.MessageText, []byte("txt"), websocket.StatusUnsupportedData},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hookErrs atomic.Int64
			opts := append([]wsroom.Option{wsroom.WithOnError(func(*wsroom.Client, error) { hookErrs.Add(1) })}, tt.opts...)
			f := newFixture(t, opts...)
			bad, good := f.dial(t, ""), f.dial(t, "")
			if err := bad.Write(t.Context(), tt.typ, tt.msg); err != nil {
				t.Fatal(err)
			}
			if code, reason := closeStatus(t, bad); code != tt.wantCode {
				t.Errorf("bad client closed with %v (%q), want %v", code, reason, tt.wantCode)
			}
			waitUntil(t, "bad client left", func() bool { return f.room.Len() == 1 })
			typ, ok := websocket.MessageText, "\"still here\""
			if tt.typ == websocket.MessageText && tt.wantCode == websocket.StatusUnsupportedData {
				typ = websocket.MessageBinary
			}
			if err := good.Write(t.Context(), typ, []byte(ok)); err != nil {
				t.Fatal(err)
			}
			got := read(t, good)
			if strings.HasPrefix(got, "{") {
				var e envelope
				json.Unmarshal([]byte(got), &e)
				got = string(e.Data)
			}
			if got != ok {
				t.Errorf("good client read %q, want %q", got, ok)
			}
			if got := f.room.Stats().ClosedInvalid; got != 1 {
				t.Errorf("Stats().ClosedInvalid = %d, want 1", got)
			}
			if tt.wantCode != websocket.StatusMessageTooBig && hookErrs.Load() == 0 {
				t.Errorf("error hook not called")
			}
		})
	}
}

func TestRateLimitCloseOverLimit(t *testing.T) {
	f := newFixture(t, wsroom.WithRateLimit(1, 3, wsroom.CloseOverLimit))
	bad, good := f.dial(t, ""), f.dial(t, "")
	for i := range 10 {
		if err := bad.Write(t.Context(), websocket.MessageText, fmt.Appendf(nil, "%d", i)); err != nil {
			break // closed already
		}
	}
	code, reason := closeStatus(t, bad)
	if code != websocket.StatusPolicyViolation || reason != "wsroom: rate limit exceeded" {
		t.Errorf("flooding client closed with %v %q, want 1008 %q", code, reason, "wsroom: rate limit exceeded")
	}
	for i := range 3 { // the burst went through
		if got := read(t, good); got != fmt.Sprint(i) {
			t.Errorf("good client read %q, want %q", got, fmt.Sprint(i))
		}
	}
	if got := f.room.Stats().ClosedRateLimit; got != 1 {
		t.Errorf("Stats().ClosedRateLimit = %d, want 1", got)
	}
}

func TestHandshakeRefusals(t *testing.T) {
	auth := wsroom.WithAuthorize(func(r *http.Request) (any, error) {
		switch r.URL.Query().Get("token") {
		case "good":
			return "ana", nil
		case "":
			return nil, &wsroom.HTTPError{Code: http.StatusUnauthorized, Message: "token required"}
		default:
			return nil, errors.New("bad token")
		}
	})
	f := newFixture(t, auth, wsroom.WithMaxClients(1))

	resp, err := http.Get(f.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUpgradeRequired {
		t.Errorf("plain GET status = %d, want 426", resp.StatusCode)
	}

	for _, tt := range []struct {
		name, query string
		header      http.Header
		want        int
	}{
		{"no token", "", nil, http.StatusUnauthorized},
		{"bad token", "?token=bad", nil, http.StatusForbidden},
		{"cross origin", "?token=good", http.Header{"Origin": {"http://evil.example"}}, http.StatusForbidden},
		{"bad resume", "?token=good&resume=nonsense", nil, http.StatusBadRequest},
	} {
		_, resp, err := websocket.Dial(t.Context(), f.url+tt.query, &websocket.DialOptions{HTTPHeader: tt.header})
		if err == nil {
			t.Errorf("%s: Dial succeeded, want status %d", tt.name, tt.want)
			continue
		}
		if resp == nil || resp.StatusCode != tt.want {
			t.Errorf("%s: Dial response %v, err %v; want status %d", tt.name, resp, err, tt.want)
		}
	}

	c := f.dial(t, "?token=good")
	if got := f.room.Clients()[0].Identity(); got != "ana" {
		t.Errorf("Identity() = %v, want ana", got)
	}
	_, resp, err = websocket.Dial(t.Context(), f.url+"?token=good", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("Dial beyond max clients: resp %v, err %v; want 503", resp, err)
	}
	c.CloseNow()
}

func TestOriginPatternsAllowCrossOrigin(t *testing.T) {
	f := newFixture(t, wsroom.WithOriginPatterns("*.example.com"))
	c, _, err := websocket.Dial(t.Context(), f.url, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://app.example.com"}}})
	if err != nil {
		t.Fatalf("Dial from allowed origin: %v", err)
	}
	c.CloseNow()
	_, resp, err := websocket.Dial(t.Context(), f.url, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://example.org"}}})
	if err == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("Dial from other origin: resp %v, err %v; want 403", resp, err)
	}
}

// Guarantee 6: Shutdown drains queues, sends 1001, refuses new work, and
// leaves no goroutine behind.
func TestShutdown(t *testing.T) {
	done := leakCheck(t)
	room := wsroom.New()
	srv := httptest.NewServer(room.Handler())
	defer srv.Close()
	url := "ws" + strings.TrimPrefix(srv.URL, "http")
	var conns []*websocket.Conn
	for range 3 {
		conns = append(conns, dialURL(t, url))
	}
	waitUntil(t, "3 clients", func() bool { return room.Len() == 3 })
	for i := range 50 {
		if err := room.Publish(t.Context(), fmt.Appendf(nil, "m%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	// Clients read as real ones do, while Shutdown waits for them.
	results := make([]string, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			for j := range 50 {
				_, b, err := c.Read(context.Background())
				if want := fmt.Sprintf("m%d", j); err != nil || string(b) != want {
					results[i] = fmt.Sprintf("read %q, %v; want %q (queued messages come before the close)", b, err, want)
					return
				}
			}
			_, _, err := c.Read(context.Background())
			if code := websocket.CloseStatus(err); code != websocket.StatusGoingAway {
				results[i] = fmt.Sprintf("closed with %v, want 1001", err)
			}
		})
	}
	if err := room.Shutdown(t.Context()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	wg.Wait()
	for i, res := range results {
		if res != "" {
			t.Errorf("client %d: %s", i, res)
		}
	}
	if err := room.Publish(t.Context(), []byte("late")); !errors.Is(err, wsroom.ErrClosed) {
		t.Errorf("Publish after Shutdown = %v, want ErrClosed", err)
	}
	_, resp, err := websocket.Dial(t.Context(), url, nil)
	if err == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("Dial after Shutdown: resp %v, err %v; want 503", resp, err)
	}
	if err := room.Shutdown(t.Context()); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if err := room.Close(); err != nil {
		t.Errorf("Close after Shutdown: %v", err)
	}
	srv.Close()
	done()
}

func TestShutdownReturnsContextError(t *testing.T) {
	block := make(chan struct{})
	f := newFixture(t, wsroom.WithOnMessage(func(*wsroom.Client, []byte) error {
		<-block // a hook that does not return holds the client
		return nil
	}))
	c := f.dial(t, "")
	write(t, c, "x")
	waitUntil(t, "message read", func() bool { return f.room.Stats().MessagesIn == 1 })
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := f.room.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with a stuck client = %v, want context.DeadlineExceeded", err)
	}
	close(block)
}

// Guarantee 7: no goroutine outlives its client.
func TestNoGoroutineOutlivesClients(t *testing.T) {
	f := newFixture(t, wsroom.WithPing(time.Hour, time.Second))
	_ = f.room.Len()
	done := leakCheck(t)
	var conns []*websocket.Conn
	for range 10 {
		conns = append(conns, f.dial(t, ""))
	}
	write(t, conns[0], "hello")
	for _, c := range conns {
		read(t, c)
		c.Close(websocket.StatusNormalClosure, "")
	}
	waitUntil(t, "all clients left", func() bool { return f.room.Len() == 0 })
	done()
}

func TestHooksAndClient(t *testing.T) {
	var mu sync.Mutex
	var events []string
	add := func(s string) { mu.Lock(); events = append(events, s); mu.Unlock() }
	left := make(chan error, 1)
	f := newFixture(t,
		wsroom.WithOnJoin(func(c *wsroom.Client) { add("join") }),
		wsroom.WithOnMessage(func(c *wsroom.Client, data []byte) error {
			add("message " + string(data))
			if string(data) == "quit" {
				return errors.New("asked to quit")
			}
			return c.Send(c.Context(), append([]byte("echo "), data...))
		}),
		wsroom.WithOnLeave(func(c *wsroom.Client, reason error) {
			add("leave")
			left <- context.Cause(c.Context())
		}),
	)
	c := f.dial(t, "")
	write(t, c, "hi")
	if got := read(t, c); got != "echo hi" {
		t.Errorf("read %q, want %q", got, "echo hi")
	}
	write(t, c, "quit")
	if code, reason := closeStatus(t, c); code != websocket.StatusPolicyViolation || reason != "asked to quit" {
		t.Errorf("closed with %v %q, want 1008 %q", code, reason, "asked to quit")
	}
	if cause := <-left; cause == nil || cause.Error() != "asked to quit" {
		t.Errorf("client context cause = %v, want the hook's error", cause)
	}
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff([]string{"join", "message hi", "message quit", "leave"}, events); diff != "" {
		t.Errorf("hook events (-want +got):\n%s", diff)
	}
}

func TestPublishOptions(t *testing.T) {
	f := newFixture(t, wsroom.WithCodec(wsroom.JSON()))
	a, b, c := f.dial(t, ""), f.dial(t, ""), f.dial(t, "")
	clients := map[*websocket.Conn]*wsroom.Client{}
	// Match server-side clients to connections through Send.
	for _, sc := range f.room.Clients() {
		if err := sc.Send(t.Context(), fmt.Appendf(nil, "%q", sc.ID())); err != nil {
			t.Fatal(err)
		}
	}
	ids := map[string]*wsroom.Client{}
	for _, sc := range f.room.Clients() {
		ids[sc.ID()] = sc
	}
	for _, conn := range []*websocket.Conn{a, b, c} {
		var id string
		json.Unmarshal(readEnvelope(t, conn).Data, &id)
		clients[conn] = ids[id]
	}
	ctx := t.Context()
	if err := f.room.Publish(ctx, []byte(`"not for a"`), wsroom.Except(clients[a])); err != nil {
		t.Fatal(err)
	}
	if err := f.room.Publish(ctx, []byte(`"only c"`), wsroom.Filter(func(x *wsroom.Client) bool { return x == clients[c] })); err != nil {
		t.Fatal(err)
	}
	if err := f.room.Publish(ctx, []byte(`"typing"`), wsroom.Ephemeral(), wsroom.From(clients[b])); err != nil {
		t.Fatal(err)
	}
	if err := f.room.Publish(ctx, []byte(`"stored"`)); err != nil {
		t.Fatal(err)
	}
	if err := f.room.Publish(ctx, []byte(`{"bad json`)); err == nil {
		t.Errorf("Publish of invalid JSON in a JSON room succeeded")
	}
	got := func(conn *websocket.Conn, n int) []string {
		var out []string
		for range n {
			e := readEnvelope(t, conn)
			out = append(out, fmt.Sprintf("%s seq=%d from=%v", e.Data, e.Seq, e.From == clients[b].ID()))
		}
		return out
	}
	for _, tt := range []struct {
		conn *websocket.Conn
		want []string
	}{
		{a, []string{`"typing" seq=0 from=true`, `"stored" seq=1 from=false`}},
		{b, []string{`"not for a" seq=0 from=false`, `"typing" seq=0 from=true`, `"stored" seq=1 from=false`}},
		{c, []string{`"not for a" seq=0 from=false`, `"only c" seq=0 from=false`, `"typing" seq=0 from=true`, `"stored" seq=1 from=false`}},
	} {
		if diff := cmp.Diff(tt.want, got(tt.conn, len(tt.want))); diff != "" {
			t.Errorf("client %s received (-want +got):\n%s", clients[tt.conn].ID(), diff)
		}
	}
}

func TestHistoryOnJoin(t *testing.T) {
	f := newFixture(t, wsroom.WithHistory(3))
	observer := f.dial(t, "")
	for _, m := range []string{"m0", "m1", "m2", "eph", "m3", "m4"} {
		var opts []wsroom.PublishOption
		if m == "eph" {
			opts = append(opts, wsroom.Ephemeral())
		}
		if err := f.room.Publish(t.Context(), []byte(m), opts...); err != nil {
			t.Fatal(err)
		}
	}
	// Once the observer has m4, the room has handed out everything before it.
	for read(t, observer) != "m4" {
	}
	c := f.dial(t, "")
	var got []string
	for range 3 {
		got = append(got, read(t, c))
	}
	if err := f.room.Publish(t.Context(), []byte("live")); err != nil {
		t.Fatal(err)
	}
	got = append(got, read(t, c))
	if diff := cmp.Diff([]string{"m2", "m3", "m4", "live"}, got); diff != "" {
		t.Errorf("newcomer received (-want +got):\n%s", diff)
	}
}

// With compression the room hands payloads to coder/websocket, which frames
// and compresses them per connection.
func TestCompression(t *testing.T) {
	f := newFixture(t, wsroom.WithCompression(websocket.CompressionContextTakeover), wsroom.WithHistory(1))
	publishAll(t, f.room, "history "+strings.Repeat("abc", 100))
	var conns []*websocket.Conn
	for _, mode := range []websocket.CompressionMode{websocket.CompressionContextTakeover, websocket.CompressionDisabled} {
		c, _, err := websocket.Dial(t.Context(), f.url, &websocket.DialOptions{CompressionMode: mode})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.CloseNow() })
		conns = append(conns, c)
	}
	waitUntil(t, "2 clients", func() bool { return f.room.Len() == 2 })
	big := strings.Repeat("compress me ", 200)
	write(t, conns[0], big)
	for i, c := range conns {
		if got := read(t, c); !strings.HasPrefix(got, "history ") {
			t.Errorf("client %d first read %.20q, want the history message", i, got)
		}
		if got := read(t, c); got != big {
			t.Errorf("client %d read %d bytes, want the %d bytes sent", i, len(got), len(big))
		}
	}
}

// An idle client of a room costs one goroutine on the server: the
// handler's, which reads. Its history and any writer run only while they
// have work.
func TestIdleClientHasOneGoroutine(t *testing.T) {
	f := newFixture(t, wsroom.WithPing(0, 0), wsroom.WithHistory(10))
	if err := f.room.Publish(t.Context(), []byte("history")); err != nil {
		t.Fatal(err)
	}
	const n = 20
	for range n {
		c := f.dial(t, "")
		if got := read(t, c); got != "history" {
			t.Fatalf("history: got %q", got)
		}
	}
	// Goroutines serving clients, these and any other test's that are
	// still ending, have a frame of a Client method.
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := 0
		for _, g := range ours() {
			if strings.Contains(g, "wsroom.(*Client).") {
				got++
			}
		}
		if got == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines serving %d idle clients, want %d", got, n, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
