package wsroom_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
)

// This file tests features where they meet: compression with the protocol,
// slow policies with replies, pipelined requests, joins with live traffic,
// pings with publish retries, and the protocol's exact parsing.

// dialCompressed dials a connection of many rooms offering compression.
func (f *muxFixture) dialWith(t *testing.T, opts *websocket.DialOptions) *websocket.Conn {
	t.Helper()
	opts.Subprotocols = []string{wsroom.Subprotocol}
	c, _, err := websocket.Dial(t.Context(), f.url, opts)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.CloseNow() })
	expectHello(t, c)
	return c
}

// roomsServer serves reg's rooms at /rooms/{name} and returns the URL of
// the room called name.
func roomsServer(t *testing.T, reg *wsroom.Registry, name string) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("GET /rooms/{name}", reg.Handler(nil))
	srv := newServer(t, mux)
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/rooms/" + name
}

// The protocol's frames are framed once whether compression is negotiated
// or not: every frame a client reads is one JSON object.
func TestMuxCompressionFramesOnce(t *testing.T) {
	for _, offer := range []websocket.CompressionMode{websocket.CompressionDisabled, websocket.CompressionContextTakeover} {
		t.Run(fmt.Sprint("client offers ", offer), func(t *testing.T) {
			f := newMux(t, wsroom.WithCompression(websocket.CompressionContextTakeover))
			c := f.dialWith(t, &websocket.DialOptions{CompressionMode: offer})
			send(t, c, `{"op":"join","room":"a","id":"j"}`)
			if j := expect(t, c, "joined"); j.ID != "j" {
				t.Fatalf("joined = %+v", j)
			}
			big := strings.Repeat("x", 600) // compressed when negotiated
			send(t, c, `{"op":"pub","room":"a","id":"p","data":"`+big+`"}`)
			got := map[string]frame{}
			for range 2 {
				fr := recv(t, c)
				got[fr.Op] = fr
			}
			if got["ack"].ID != "p" || string(got["msg"].Data) != `"`+big+`"` {
				t.Fatalf("frames = %+v", got)
			}
		})
	}
}

// stalledReader fills a client's socket so that what the server sends next
// waits in the client's queue.
func fill(t *testing.T, reg *wsroom.Registry, room string, n int) {
	t.Helper()
	payload := []byte(`"` + strings.Repeat("y", 16<<10) + `"`)
	for range n {
		if err := reg.Publish(t.Context(), room, payload); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
}

// readUntil reads frames until one satisfies ok, failing after 10 s or if
// the connection ends first; it returns the frames read.
func readUntil(t *testing.T, c *websocket.Conn, ok func(frame) bool) []frame {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var seen []frame
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("read after %d frames: %v", len(seen), err)
		}
		var fr frame
		if err := json.Unmarshal(b, &fr); err != nil {
			t.Fatalf("frame %.60q: %v", b, err)
		}
		seen = append(seen, fr)
		if ok(fr) {
			return seen
		}
	}
}

// The drop policies drop room messages only: replies to the client's own
// requests arrive however far behind the client is, the oldest or the
// newest frame of its queue.
func TestMuxDropPoliciesKeepReplies(t *testing.T) {
	for _, p := range []wsroom.SlowPolicy{wsroom.DropOldest, wsroom.DropNewest} {
		t.Run(fmt.Sprint(p), func(t *testing.T) {
			store := wsroom.NewMemoryStore(0, 0)
			f := newMux(t, wsroom.WithSlowPolicy(p), wsroom.WithSendBuffer(8), wsroom.WithBroker(wsroom.NewLocalBroker(store)))
			// A small receive buffer, so that the server's queue for c fills.
			c := f.dialWith(t, &websocket.DialOptions{HTTPClient: &http.Client{Transport: &http.Transport{
				DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
					conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
					if tc, ok := conn.(*net.TCPConn); ok {
						tc.SetReadBuffer(64 << 10)
					}
					return conn, err
				},
			}}})
			c.SetReadLimit(1 << 20)
			send(t, c, `{"op":"join","room":"a"}`)
			expect(t, c, "joined")
			fill(t, f.reg, "a", 600) // the client reads nothing meanwhile
			send(t, c, `{"op":"join","room":"b","id":"j"}`)
			send(t, c, `{"op":"pub","room":"a","id":"p","data":"mine"}`)
			// Once the message is stored, its ack is about to be queued for
			// c: more room messages then make it the oldest frame.
			waitUntil(t, "the pub is stored", func() bool {
				last, _ := store.Last(t.Context(), "a", 1)
				return len(last) == 1 && string(last[0].Data) == `"mine"`
			})
			time.Sleep(50 * time.Millisecond)
			fill(t, f.reg, "a", 600)
			waitUntil(t, "the policy drops room messages", func() bool { return f.reg.Stats().Dropped > 0 })
			var joined bool
			readUntil(t, c, func(fr frame) bool {
				joined = joined || fr.Op == "joined" && fr.ID == "j"
				return fr.Op == "ack" && fr.ID == "p"
			})
			if !joined {
				t.Fatal("no joined reply before the ack")
			}
		})
	}
}

// A client that pipelines many requests and reads all the time is never
// closed for its replies, however small its send buffer.
func TestMuxPipelinedJoinsNotClosed(t *testing.T) {
	const n = 300
	f := newMux(t, wsroom.WithSendBuffer(4), wsroom.WithRateLimit(0, 0, wsroom.Throttle), wsroom.WithMaxRoomsPerClient(n), wsroom.WithMaxNewRooms(-1, -1))
	c := f.dial(t)
	done := make(chan error, 1)
	go func() {
		for i := range n {
			if err := c.Write(t.Context(), websocket.MessageText, fmt.Appendf(nil, `{"op":"join","room":"r%d","id":"%d"}`, i, i)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for i := range n {
		j := expect(t, c, "joined")
		if j.ID != fmt.Sprint(i) {
			t.Fatalf("reply %d is for %q: replies out of order", i, j.ID)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A plain join into a room being published to: after joined, the first
// numbered message is joined.seq+1, and none is missing or repeated.
func TestMuxBusyJoinNoGapNoDuplicate(t *testing.T) {
	f := newMux(t, wsroom.WithRateLimit(0, 0, wsroom.Throttle))
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			f.reg.Publish(ctx, "busy", fmt.Appendf(nil, "%d", i))
			time.Sleep(100 * time.Microsecond) // a busy room, not a flood
		}
	})
	defer wg.Wait()
	defer cancel()
	for j := range 8 {
		c := f.dial(t)
		send(t, c, `{"op":"join","room":"busy"}`)
		joined := expect(t, c, "joined")
		want := joined.Seq + 1
		for range 20 {
			m := expect(t, c, "msg")
			if m.Seq != want || m.Epoch != joined.Epoch {
				t.Fatalf("joiner %d: joined at %d, then msg %d, want %d", j, joined.Seq, m.Seq, want)
			}
			want++
		}
		c.CloseNow()
	}
}

// A client of one room with history gets the messages published once it is
// counted, whatever its history read finds: none is lost between the two.
func TestHistoryJoinLosesNoLiveMessage(t *testing.T) {
	for i := range 30 {
		reg := wsroom.NewRegistry(wsroom.WithHistory(2))
		url := roomsServer(t, reg, "h")
		r, _ := reg.Room("h")
		c := dialURL(t, url)
		waitUntil(t, "client counted", func() bool { return r.Len() == 1 })
		for k := range 4 {
			if err := reg.Publish(t.Context(), "h", fmt.Appendf(nil, "m%d", k)); err != nil {
				t.Fatal(err)
			}
		}
		for k := range 4 {
			if got, want := read(t, c), fmt.Sprintf("m%d", k); got != want {
				t.Fatalf("run %d: read %q, want %q", i, got, want)
			}
		}
		c.CloseNow()
		reg.Close()
	}
}

// Member names are exact, and a member given twice is a bad request.
func TestMuxExactMemberNames(t *testing.T) {
	f := newMux(t)
	c := f.dial(t)
	send(t, c, `{"op":"join","room":"a","OP":"leave","Room":"b","ID":"x","id":"j"}`)
	if j := expect(t, c, "joined"); j.Room != "a" || j.ID != "j" {
		t.Fatalf("joined = %+v, want room a, id j", j)
	}
	for _, req := range []string{
		`{"op":"join","room":"b","room":"c"}`,
		`{"op":"pub","room":"a","data":1,"data":2}`,
		`{"op":"join","op":"leave","room":"a"}`,
	} {
		send(t, c, req)
		if e := expect(t, c, "error"); e.Code != "bad_request" {
			t.Errorf("%s: code %q, want bad_request", req, e.Code)
		}
	}
	send(t, c, `{"op":"pub","room":"a","Data":5,"data":6}`)
	if m := expect(t, c, "msg"); string(m.Data) != "6" {
		t.Errorf("published %s, want 6", m.Data)
	}
}

// Every malformed request gets the code PROTOCOL.md gives it.
func TestMuxErrorCodes(t *testing.T) {
	f := newMux(t, wsroom.WithOnPublish(func(c *wsroom.Client, r *wsroom.Room, data []byte) ([]byte, error) {
		if string(data) == `"boom"` {
			panic("publish hook")
		}
		return data, nil
	}))
	c := f.dial(t)
	send(t, c, `{"op":"join","room":"a"}`)
	expect(t, c, "joined")
	long := strings.Repeat("i", 100)
	for _, tc := range []struct{ req, code, id string }{
		{`{"op":"join"}`, "bad_request", ""},
		{`{"op":"join","room":null,"id":"1"}`, "bad_request", "1"},
		{`{"op":"leave","id":"2"}`, "bad_request", "2"},
		{`{"op":"pub","data":1}`, "bad_request", ""},
		{`{"op":"join","room":"b","resume":""}`, "bad_request", ""},
		{`{"op":"join","room":"b","resume":":5"}`, "bad_request", ""},
		{`{"op":"join","room":"b","last":-1}`, "bad_request", ""},
		{`{"op":"join","room":"b","last":2.5}`, "bad_request", ""},
		{`{"op":"join","room":"b","members":"yes"}`, "bad_request", ""},
		{`{"room":"a"}`, "bad_request", ""},
		{`{"op":null,"room":"a"}`, "bad_request", ""},
		{`{"op":1,"room":"a"}`, "bad_request", ""},
		{`{"op":"nope","room":"a"}`, "unknown_op", ""},
		{`{"op":"join","room":"a","id":"` + long + `"}`, "bad_request", ""},
		{`{"op":"join","room":"a","id":7}`, "bad_request", ""},
		{`{"op":"join","room":"a"}`, "bad_request", ""}, // already in it
		{`{"op":"join","room":"bad name"}`, "bad_room", ""},
		{`{"op":"pub","room":"zz","data":1}`, "not_joined", ""},
		{`{"op":"pub","room":"a","id":"h","data":"boom"}`, "internal", "h"},
	} {
		send(t, c, tc.req)
		e := expect(t, c, "error")
		if e.Code != tc.code || e.ID != tc.id {
			t.Errorf("%.70s: error %q id %q, want %q id %q", tc.req, e.Code, e.ID, tc.code, tc.id)
		}
	}
	// A null member is absent: this is a plain join.
	send(t, c, `{"op":"join","room":"n","resume":null,"last":null,"id":null}`)
	if j := expect(t, c, "joined"); j.Room != "n" {
		t.Errorf("joined = %+v", j)
	}
}

// Requests a client sent before it got the server's close frame are
// carried out, also after a protocol error.
func TestMuxRequestsBeforeProtocolErrorClose(t *testing.T) {
	f := newMux(t)
	watcher := f.dial(t)
	send(t, watcher, `{"op":"join","room":"a"}`)
	expect(t, watcher, "joined")
	c := f.dial(t)
	send(t, c, `{"op":"join","room":"a"}`)
	expect(t, c, "joined")
	if err := c.Write(t.Context(), websocket.MessageBinary, []byte("x")); err != nil {
		t.Fatal(err)
	}
	send(t, c, `{"op":"pub","room":"a","data":"after"}`)
	if m := expect(t, watcher, "msg"); string(m.Data) != `"after"` {
		t.Fatalf("watcher got %s", m.Data)
	}
	if code, _ := closeStatus(t, c); code != websocket.StatusUnsupportedData {
		t.Errorf("close %v, want 1003", code)
	}
}

// seqFailBroker fails every publish, numbered or not, while down is set.
type seqFailBroker struct {
	*wsroom.LocalBroker
	down atomic.Bool
}

var errEngineDown = errors.New("engine unreachable")

func (b *seqFailBroker) Publish(ctx context.Context, room string, m wsroom.Message) error {
	if b.down.Load() {
		return errEngineDown
	}
	return b.LocalBroker.Publish(ctx, room, m)
}

func (b *seqFailBroker) PublishSeq(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	if b.down.Load() {
		return wsroom.Message{}, errEngineDown
	}
	return b.LocalBroker.PublishSeq(ctx, room, m)
}

// A pub that retries through an engine outage for longer than the pong
// timeout ends with its "unavailable" reply, not a dropped connection: the
// server's liveness check does not depend on its reader being free.
func TestMuxPublishRetryOutlivesPongTimeout(t *testing.T) {
	b := &seqFailBroker{LocalBroker: wsroom.NewLocalBroker(wsroom.NewMemoryStore(0, 0))}
	f := newMux(t, wsroom.WithBroker(b), wsroom.WithPing(100*time.Millisecond, 100*time.Millisecond), wsroom.WithPublishRetry(1500*time.Millisecond))
	c := f.dial(t)
	send(t, c, `{"op":"join","room":"a"}`)
	expect(t, c, "joined")
	b.down.Store(true)
	send(t, c, `{"op":"pub","room":"a","id":"p","data":1}`)
	if e := expect(t, c, "error"); e.Code != "unavailable" || e.ID != "p" {
		t.Fatalf("error = %+v, want unavailable for p", e)
	}
	b.down.Store(false)
	send(t, c, `{"op":"pub","room":"a","id":"p","data":1}`)
	readUntil(t, c, func(fr frame) bool { return fr.Op == "ack" && fr.ID == "p" })
}

// The same in one room: a publish retry longer than the pong timeout keeps
// the connection, and the client is closed with 1013 once it gives up.
func TestPublishRetryOutlivesPongTimeout(t *testing.T) {
	b := &seqFailBroker{LocalBroker: wsroom.NewLocalBroker(wsroom.NewMemoryStore(0, 0))}
	f := newFixture(t, wsroom.WithBroker(b), wsroom.WithPing(100*time.Millisecond, 100*time.Millisecond), wsroom.WithPublishRetry(1500*time.Millisecond))
	c := f.dial(t, "")
	b.down.Store(true)
	write(t, c, "lost")
	if code, _ := closeStatus(t, c); code != websocket.StatusTryAgainLater {
		t.Fatalf("close %v, want 1013", code)
	}
}

// Server code joining a client to a room while the client publishes to it
// is safe, and a Leave during the join takes effect.
func TestMuxServerJoinRacesClient(t *testing.T) {
	clients := make(chan *wsroom.Client, 1)
	f := newMux(t, wsroom.WithOnJoin(func(c *wsroom.Client) { clients <- c }), wsroom.WithRateLimit(0, 0, wsroom.Throttle))
	c := f.dial(t)
	sc := <-clients
	var wg sync.WaitGroup
	wg.Go(func() {
		for range 50 {
			send(t, c, `{"op":"pub","room":"x","data":1}`)
		}
	})
	wg.Go(func() {
		for i := range 20 {
			name := fmt.Sprint("x", i%2)
			if i%2 == 0 {
				name = "x"
			}
			if err := sc.Join(t.Context(), name); err == nil {
				sc.Leave(name)
			}
		}
	})
	wg.Wait()
	waitUntil(t, "the client is in no room", func() bool { return len(sc.Rooms()) == 0 })
}

// Clients whose identities are not strings do not share an id space: one
// client's id does not suppress another's publish.
func TestMuxIdempotencyPerIdentity(t *testing.T) {
	type user struct{ n int }
	var next atomic.Int64
	f := newMux(t, wsroom.WithAuthorize(func(*http.Request) (any, error) { return user{int(next.Add(1))}, nil }))
	a, b := f.dial(t), f.dial(t)
	for _, c := range []*websocket.Conn{a, b} {
		send(t, c, `{"op":"join","room":"r"}`)
		expect(t, c, "joined")
	}
	send(t, a, `{"op":"pub","room":"r","id":"1","data":"a"}`)
	readUntil(t, a, func(fr frame) bool { return fr.Op == "ack" })
	send(t, b, `{"op":"pub","room":"r","id":"1","data":"b"}`)
	var acked bool
	var got []string
	readUntil(t, b, func(fr frame) bool {
		if fr.Op == "msg" {
			got = append(got, string(fr.Data))
		}
		acked = acked || fr.Op == "ack"
		return acked && len(got) == 2
	})
	if strings.Join(got, " ") != `"a" "b"` {
		t.Fatalf("b saw messages %v, want \"a\" \"b\"", got)
	}
}

// A long replay with live messages coming in meanwhile, more than the send
// buffer holds, does not close the client as slow: it gets the history,
// then every live message, in order.
func TestReplayOutlastsSendBuffer(t *testing.T) {
	const history, live = 200, 40
	reg := wsroom.NewRegistry(wsroom.WithHistory(history), wsroom.WithSendBuffer(8), wsroom.WithCodec(wsroom.JSON()))
	url := roomsServer(t, reg, "r")
	t.Cleanup(func() { reg.Close() })
	big := `"` + strings.Repeat("z", 16<<10) + `"`
	for i := range history {
		reg.Publish(t.Context(), "r", fmt.Appendf(nil, `{"n":%d,"pad":%s}`, i, big))
	}
	r, _ := reg.Room("r")
	c := dialURL(t, url)
	c.SetReadLimit(1 << 20)
	waitUntil(t, "client counted", func() bool { return r.Len() == 1 })
	for i := range live {
		reg.Publish(t.Context(), "r", fmt.Appendf(nil, `{"n":%d}`, history+i))
	}
	for i := range history + live {
		e := readEnvelope(t, c)
		var d struct{ N int }
		json.Unmarshal(e.Data, &d)
		if d.N != i {
			t.Fatalf("message %d is n=%d", i, d.N)
		}
	}
}

// The same for a connection of many rooms joining with "last".
func TestMuxReplayOutlastsSendBuffer(t *testing.T) {
	const history, live = 200, 40
	f := newMux(t, wsroom.WithSendBuffer(8), wsroom.WithReadLimit(1<<20))
	big := `"` + strings.Repeat("z", 16<<10) + `"`
	for i := range history {
		f.reg.Publish(t.Context(), "r", fmt.Appendf(nil, `{"n":%d,"pad":%s}`, i, big))
	}
	c := f.dial(t)
	c.SetReadLimit(1 << 20)
	send(t, c, fmt.Sprintf(`{"op":"join","room":"r","last":%d}`, history))
	expect(t, c, "joined")
	for i := range live {
		f.reg.Publish(t.Context(), "r", fmt.Appendf(nil, `{"n":%d}`, history+i))
	}
	for i := range history + live {
		m := expect(t, c, "msg")
		var d struct{ N int }
		json.Unmarshal(m.Data, &d)
		if d.N != i {
			t.Fatalf("message %d is n=%d", i, d.N)
		}
	}
}

// gatedPresence is a LocalBroker with a Presence whose Members waits for
// its gate, so that a join with "members" can be held between the room's
// join and the client's "joined".
type gatedPresence struct {
	*wsroom.LocalBroker
	gate, asked chan struct{}
}

func (b *gatedPresence) Join(context.Context, string, wsroom.Member) error { return nil }
func (b *gatedPresence) Leave(context.Context, string, string) error       { return nil }
func (b *gatedPresence) Members(ctx context.Context, room string) ([]wsroom.Member, error) {
	b.asked <- struct{}{}
	<-b.gate
	return nil, nil
}

// A room that closes while a client is joining it fails the join: the
// client is never told it joined a room it is not in.
func TestMuxRoomClosedDuringJoin(t *testing.T) {
	b := &gatedPresence{LocalBroker: wsroom.NewLocalBroker(wsroom.NewMemoryStore(0, 0)), gate: make(chan struct{}), asked: make(chan struct{}, 1)}
	f := newMux(t, wsroom.WithBroker(b))
	c := f.dial(t)
	send(t, c, `{"op":"join","room":"a","id":"j","members":true}`)
	<-b.asked
	r, err := f.reg.Room("a")
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	close(b.gate)
	got := recv(t, c)
	if got.Op != "error" || got.Code != "unavailable" || got.ID != "j" {
		t.Fatalf("after the room closed during the join, got %+v, want error unavailable for j", got)
	}
	send(t, c, `{"op":"pub","room":"a","data":1}`)
	if e := expect(t, c, "error"); e.Code != "not_joined" {
		t.Errorf("pub after the failed join: %+v, want not_joined", e)
	}
}

// A crowded room's count is sent once more when the room drops back to the
// presence bound.
func TestMuxPresenceCountBelowBound(t *testing.T) {
	f := newMux(t, wsroom.WithPresenceEvents(1))
	a := f.dial(t)
	send(t, a, `{"op":"join","room":"r"}`)
	expect(t, a, "joined")
	b := f.dial(t)
	send(t, b, `{"op":"join","room":"r"}`)
	expect(t, b, "joined")
	readUntil(t, a, func(fr frame) bool { return fr.Op == "presence" && fr.Count != nil && *fr.Count == 2 })
	b.Close(websocket.StatusNormalClosure, "")
	readUntil(t, a, func(fr frame) bool { return fr.Op == "presence" && fr.Count != nil && *fr.Count == 1 })
}

// A client throttled by a tiny rate limit for longer than the pong timeout
// is slowed, not dropped: its messages are all published, in order.
func TestThrottleOutlivesPongTimeout(t *testing.T) {
	f := newMux(t, wsroom.WithRateLimit(4, 1, wsroom.Throttle), wsroom.WithPing(100*time.Millisecond, 100*time.Millisecond))
	c := f.dial(t)
	send(t, c, `{"op":"join","room":"a"}`)
	expect(t, c, "joined")
	for i := range 5 { // about a second of throttling
		send(t, c, fmt.Sprintf(`{"op":"pub","room":"a","id":"%d","data":%d}`, i, i))
	}
	acks := 0
	readUntil(t, c, func(fr frame) bool {
		if fr.Op == "ack" {
			acks++
		}
		return acks == 5
	})
}

// hangingBroker's publishes hang until their context ends while down is
// set, as an engine that does not answer.
type hangingBroker struct {
	*wsroom.LocalBroker
	down atomic.Bool
}

func (b *hangingBroker) Publish(ctx context.Context, room string, m wsroom.Message) error {
	if b.down.Load() {
		<-ctx.Done()
		return ctx.Err()
	}
	return b.LocalBroker.Publish(ctx, room, m)
}

func (b *hangingBroker) PublishSeq(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	return m, b.Publish(ctx, room, m) // not a Sequencer's numbering: acks without seq
}

// An engine that hangs, then comes back within the publish retry time,
// takes the message at the next attempt: an attempt that hung does not
// use up the retry time.
func TestPublishAttemptsEndWithinRetry(t *testing.T) {
	b := &hangingBroker{LocalBroker: wsroom.NewLocalBroker(wsroom.NewMemoryStore(0, 0))}
	f := newFixture(t, wsroom.WithBroker(b), wsroom.WithCodec(wsroom.Text()), wsroom.WithPublishRetry(10*time.Second))
	c := f.dial(t, "")
	watcher := f.dial(t, "")
	b.down.Store(true)
	write(t, c, "during the outage")
	time.Sleep(1500 * time.Millisecond) // the first attempt hangs meanwhile
	b.down.Store(false)
	if got := read(t, watcher); got != "during the outage" {
		t.Fatalf("watcher read %q", got)
	}
}
