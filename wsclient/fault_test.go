package wsclient_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom/protocoltest"
	"github.com/wsroom/wsroom/wsclient"
)

// faultFixture is a protocoltest.FaultServer over loopback.
type faultFixture struct {
	fs  *protocoltest.FaultServer
	url string // of the server, without path
}

func newFaultFixture(t *testing.T) *faultFixture {
	t.Helper()
	fs := protocoltest.NewFaultServer()
	srv := httptest.NewServer(fs)
	t.Cleanup(srv.Close)
	return &faultFixture{fs: fs, url: "ws" + strings.TrimPrefix(srv.URL, "http")}
}

// dial connects to the scenario, in the session "s", with the query
// parameters query ("" or "k=v&...").
func (f *faultFixture) dial(t *testing.T, scenario, query string, opts ...wsclient.Option) *wsclient.Client {
	t.Helper()
	u := f.url + "/" + scenario + "?session=s"
	if query != "" {
		u += "&" + query
	}
	opts = append([]wsclient.Option{wsclient.WithBackoff(5*time.Millisecond, 50*time.Millisecond)}, opts...)
	c, err := wsclient.Dial(t.Context(), u, opts...)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// requests returns the session's requests of op.
func (f *faultFixture) requests(op string) []protocoltest.FaultRequest {
	var out []protocoltest.FaultRequest
	for _, r := range f.fs.Log("s") {
		if r.Op == op {
			out = append(out, r)
		}
	}
	return out
}

// nextErr returns the room's next message or error.
func nextErr(t *testing.T, r *wsclient.Room) (wsclient.Message, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	return r.Next(ctx)
}

// The client offers wsroom.v3, reads hello and exposes its limits and
// connection id.
func TestFaultHello(t *testing.T) {
	f := newFaultFixture(t)
	c := f.dial(t, protocoltest.ScenarioOK, "rate=7&inflight=9&acksPerRoom=5")
	join(t, c, "a")
	var lim wsclient.Limits
	waitFor(t, "hello", func() bool {
		var ok bool
		lim, ok = c.Limits()
		return ok
	})
	want := wsclient.Limits{ReadLimit: 32768, Rooms: 100, Inflight: 9, SendBuffer: 256, PublishRetry: 10 * time.Second,
		Rate: 7, Burst: 40, Ping: 30 * time.Second, PongTimeout: 10 * time.Second, AckTTL: 2 * time.Minute, AcksPerRoom: 5, AckScope: "node"}
	if lim != want {
		t.Errorf("Limits() = %+v, want %+v", lim, want)
	}
	if id := c.ConnID(); id != "fault-1" {
		t.Errorf("ConnID() = %q, want fault-1", id)
	}
}

// An ack without epoch and seq is matched by its id.
func TestFaultAckWithoutSeq(t *testing.T) {
	f := newFaultFixture(t)
	c := f.dial(t, protocoltest.ScenarioAckNoSeq, "")
	r := join(t, c, "a")
	ack, err := r.Publish(t.Context(), []byte(`"x"`))
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if ack != (wsclient.Ack{Room: "a"}) {
		t.Errorf("ack = %+v, want the room alone", ack)
	}
	if got := short(next(t, r)) + " " + short(next(t, r)); got != `1:{"n":1} 2:"x"` {
		t.Errorf("messages %s", got)
	}
}

// A lost ack (then a lost connection) makes the client reconnect, resume
// after the last message it got, and send the publish again with the same
// id: it gets the original ack and the message once.
func TestFaultDropAck(t *testing.T) {
	f := newFaultFixture(t)
	c := f.dial(t, protocoltest.ScenarioDropAck, "delay=50ms")
	r := join(t, c, "a")
	ack, err := r.Publish(t.Context(), []byte(`"x"`))
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if ack.Epoch != "e1" || ack.Seq != 2 {
		t.Errorf("ack = %+v, want e1:2", ack)
	}
	pubs := f.requests("pub")
	if len(pubs) != 2 || pubs[0].ID != pubs[1].ID || pubs[0].Conn != 1 || pubs[1].Conn != 2 {
		t.Errorf("pubs = %+v, want one id on connections 1 and 2", pubs)
	}
	if joins := f.requests("join"); len(joins) != 2 || joins[1].Resume != "e1:2" {
		t.Errorf("joins = %+v, want the second with resume e1:2", joins)
	}
	var got []string
	for range 3 {
		got = append(got, short(next(t, r)))
	}
	if s := strings.Join(got, " "); s != `1:{"n":1} 2:"x" 3:{"n":2}` {
		t.Errorf("messages %s", s)
	}
}

// Delayed replies are waited for and matched by id.
func TestFaultDelay(t *testing.T) {
	f := newFaultFixture(t)
	c := f.dial(t, protocoltest.ScenarioDelay, "delay=30ms")
	r := join(t, c, "a")
	acks := make([]wsclient.Ack, 3)
	var wg sync.WaitGroup
	for i := range acks {
		wg.Go(func() {
			var err error
			if acks[i], err = r.Publish(t.Context(), []byte{'0' + byte(i)}); err != nil {
				t.Errorf("Publish %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	data := map[uint64]string{}
	for range 4 {
		m := next(t, r)
		data[m.Seq] = string(m.Data)
	}
	for i, a := range acks {
		if data[a.Seq] != string(rune('0'+i)) {
			t.Errorf("ack of publish %d is seq %d, whose message is %q", i, a.Seq, data[a.Seq])
		}
	}
}

// Half a frame then a dropped connection: the client reconnects and sends
// the publish again with its id.
func TestFaultHalfFrame(t *testing.T) {
	f := newFaultFixture(t)
	c := f.dial(t, protocoltest.ScenarioHalfFrame, "")
	r := join(t, c, "a")
	ack, err := r.Publish(t.Context(), []byte(`"x"`))
	if err != nil || ack.Seq != 2 {
		t.Fatalf("Publish: %+v, %v; want seq 2", ack, err)
	}
	pubs := f.requests("pub")
	if len(pubs) != 2 || pubs[0].ID != pubs[1].ID || pubs[1].Conn != 2 {
		t.Errorf("pubs = %+v, want one id on connections 1 and 2", pubs)
	}
}

// A close with 1001, 1011 or 4000 makes the client reconnect and resume each
// room from its last message.
func TestFaultCloseCodes(t *testing.T) {
	for _, sc := range []string{protocoltest.ScenarioClose1001, protocoltest.ScenarioClose1011, protocoltest.ScenarioClose4000} {
		t.Run(sc, func(t *testing.T) {
			f := newFaultFixture(t)
			var mu sync.Mutex
			var errs []error
			c := f.dial(t, sc, "", wsclient.WithOnError(func(err error) {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}))
			r := join(t, c, "a")
			if got := short(next(t, r)) + " " + short(next(t, r)); got != `1:{"n":1} 2:{"n":2}` {
				t.Errorf("messages %s", got)
			}
			if joins := f.requests("join"); len(joins) != 2 || joins[1].Resume != "e1:1" || joins[1].Conn != 2 {
				t.Errorf("joins = %+v, want the second on connection 2 with resume e1:1", joins)
			}
			code := sc[len("close-"):]
			mu.Lock()
			defer mu.Unlock()
			if len(errs) == 0 || !strings.Contains(errs[0].Error(), code) {
				t.Errorf("errors reported: %v, want the close %s", errs, code)
			}
		})
	}
}

// A resume the server refuses: the reader gets a *ResyncError, and the
// client joins again from the resume the error gives, or afresh.
func TestFaultRefuseResume(t *testing.T) {
	for _, tc := range []struct{ scenario, resume string }{
		{protocoltest.ScenarioRefuseResume, "e2:0"},
		{protocoltest.ScenarioRefuseResumeFresh, ""},
	} {
		t.Run(tc.scenario, func(t *testing.T) {
			f := newFaultFixture(t)
			c := f.dial(t, tc.scenario, "")
			r := join(t, c, "a")
			if m := next(t, r); m.Epoch != "e1" || m.Seq != 1 {
				t.Errorf("first message %s:%d", m.Epoch, m.Seq)
			}
			_, err := nextErr(t, r)
			var re *wsclient.ResyncError
			if !errors.As(err, &re) || re.Room != "a" {
				t.Fatalf("Next = %v, want a *ResyncError of a", err)
			}
			if m := next(t, r); m.Epoch != "e2" || m.Seq != 1 {
				t.Errorf("message after the resync %s:%d, want e2:1", m.Epoch, m.Seq)
			}
			joins := f.requests("join")
			if len(joins) != 3 || joins[1].Resume != "e1:1" || joins[2].Resume != tc.resume {
				t.Errorf("joins = %+v, want resumes \"\", e1:1, %q", joins, tc.resume)
			}
		})
	}
}

// A resync frame: the room's state is dropped (the reader is told) and the
// room is joined again from the resume it gives, on the same connection.
func TestFaultResyncFrame(t *testing.T) {
	f := newFaultFixture(t)
	c := f.dial(t, protocoltest.ScenarioResyncFrame, "")
	r := join(t, c, "a")
	next(t, r)
	_, err := nextErr(t, r)
	var re *wsclient.ResyncError
	if !errors.As(err, &re) || re.Reason != "trimmed" {
		t.Fatalf("Next = %v, want a *ResyncError (trimmed)", err)
	}
	if m := next(t, r); m.Epoch != "e2" || m.Seq != 1 {
		t.Errorf("message after the resync %s:%d, want e2:1", m.Epoch, m.Seq)
	}
	joins := f.requests("join")
	if len(joins) != 2 || joins[1].Resume != "e2:0" || joins[1].Conn != 1 {
		t.Errorf("joins = %+v, want the second on connection 1 with resume e2:0", joins)
	}
}

// Messages with data, text and bytes payloads.
func TestFaultPayloads(t *testing.T) {
	f := newFaultFixture(t)
	c := f.dial(t, protocoltest.ScenarioPayloads, "")
	r := join(t, c, "a")
	want := []struct {
		kind wsclient.Kind
		data string
	}{{wsclient.KindData, `{"a":1}`}, {wsclient.KindText, "plain text"}, {wsclient.KindBytes, "\xff\x00\x01"}}
	for _, w := range want {
		m := next(t, r)
		if m.Kind != w.kind || string(m.Data) != w.data {
			t.Errorf("message %d: %v %q, want %v %q", m.Seq, m.Kind, m.Data, w.kind, w.data)
		}
	}
}

// "internal" and "unavailable" are sent again with the same id.
func TestFaultRetryable(t *testing.T) {
	for _, sc := range []string{protocoltest.ScenarioInternal, protocoltest.ScenarioUnavailable} {
		t.Run(sc, func(t *testing.T) {
			f := newFaultFixture(t)
			c := f.dial(t, sc, "")
			r := join(t, c, "a")
			ack, err := r.Publish(t.Context(), []byte(`1`))
			if err != nil || ack.Seq != 2 {
				t.Fatalf("Publish: %+v, %v; want seq 2", ack, err)
			}
			pubs := f.requests("pub")
			if len(pubs) != 2 || pubs[0].ID != pubs[1].ID {
				t.Errorf("pubs = %+v, want the same id twice", pubs)
			}
		})
	}
}

// A join answered "internal" is made again.
func TestFaultJoinInternal(t *testing.T) {
	f := newFaultFixture(t)
	c := f.dial(t, protocoltest.ScenarioJoinInternal, "")
	r := join(t, c, "a")
	if m := next(t, r); m.Seq != 1 {
		t.Errorf("first message seq %d", m.Seq)
	}
	if joins := f.requests("join"); len(joins) != 2 || joins[1].Conn != 1 {
		t.Errorf("joins = %+v, want two on connection 1", joins)
	}
}

// A server that is unavailable for good: the publish is tried again with
// its id until its context ends.
func TestFaultUnavailableAlways(t *testing.T) {
	f := newFaultFixture(t)
	c := f.dial(t, protocoltest.ScenarioUnavailableAlways, "")
	r := join(t, c, "a")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := r.Publish(ctx, []byte(`1`))
		done <- err
	}()
	waitFor(t, "three tries", func() bool { return len(f.requests("pub")) >= 3 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Publish = %v, want context.Canceled", err)
	}
	for _, p := range f.requests("pub") {
		if p.ID != f.requests("pub")[0].ID {
			t.Errorf("pubs with ids %s and %s", f.requests("pub")[0].ID, p.ID)
		}
	}
}

// A final error is returned as it is and not sent again.
func TestFaultReject(t *testing.T) {
	f := newFaultFixture(t)
	c := f.dial(t, protocoltest.ScenarioReject, "")
	r := join(t, c, "a")
	_, err := r.Publish(t.Context(), []byte(`1`))
	var we *wsclient.Error
	if !errors.As(err, &we) || we.Code != "bad_request" {
		t.Fatalf("Publish = %v, want a bad_request *Error", err)
	}
	// The join after it is answered after any retry sent before it.
	join(t, c, "b")
	if pubs := f.requests("pub"); len(pubs) != 1 {
		t.Errorf("pubs = %+v, want one", pubs)
	}
}

// Publishes waiting for an ack are bounded by WithMaxPending and by the
// server's acksPerRoom.
func TestFaultMaxPending(t *testing.T) {
	for _, tc := range []struct {
		name  string
		query string
		opts  []wsclient.Option
	}{
		{"WithMaxPending", "", []wsclient.Option{wsclient.WithMaxPending(2)}},
		{"acksPerRoom", "acksPerRoom=2", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFaultFixture(t)
			// Retries a long while apart: the publishes stay pending.
			c := f.dial(t, protocoltest.ScenarioUnavailableAlways, tc.query, append(tc.opts, wsclient.WithBackoff(time.Hour, time.Hour))...)
			r := join(t, c, "a")
			waitFor(t, "hello", func() bool { _, ok := c.Limits(); return ok })
			ctx, cancel := context.WithCancel(t.Context())
			var wg sync.WaitGroup
			for range 2 {
				wg.Go(func() {
					if _, err := r.Publish(ctx, []byte(`1`)); !errors.Is(err, context.Canceled) {
						t.Errorf("Publish = %v, want context.Canceled", err)
					}
				})
			}
			waitFor(t, "two pubs", func() bool { return len(f.requests("pub")) == 2 })
			if _, err := r.Publish(ctx, []byte(`2`)); !errors.Is(err, wsclient.ErrQueueFull) {
				t.Errorf("third Publish = %v, want ErrQueueFull", err)
			}
			cancel()
			wg.Wait()
		})
	}
}

// After a reconnect the rooms are joined again no faster than the hello's
// rate and burst allow.
func TestFaultPacedRejoin(t *testing.T) {
	const rooms, rate, burst = 6, 4, 2
	f := newFaultFixture(t)
	c := f.dial(t, protocoltest.ScenarioOK, "rate=4&burst=2")
	for _, name := range []string{"a", "b", "c", "d", "e", "f"} {
		join(t, c, name)
	}
	dropped := time.Now()
	f.fs.Drop("s")
	var again []protocoltest.FaultRequest
	waitFor(t, "the rejoins", func() bool {
		again = again[:0]
		for _, j := range f.requests("join") {
			if j.Conn == 2 {
				again = append(again, j)
			}
		}
		return len(again) == rooms
	})
	// The new connection starts after the drop, and its writer may send
	// burst frames at once, then one each 1/rate: the last rejoin reaches
	// the server at least (rooms-burst)/rate after the drop, whatever the
	// scheduling (a delay only adds to it). 10% off for timer rounding.
	span := again[rooms-1].Time.Sub(dropped)
	if min := time.Duration(rooms-burst) * time.Second / rate * 9 / 10; span < min {
		t.Errorf("the %d rejoins were done %v after the drop, want at least %v", rooms, span, min)
	}
}

// A write that does not end (a server that stops reading) ends the
// connection after the write timeout, and the client reconnects.
func TestWriteTimeout(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	var mu sync.Mutex
	conns := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{wsclient.Subprotocol}})
		if err != nil {
			return
		}
		defer conn.CloseNow()
		mu.Lock()
		conns++
		n := conns
		mu.Unlock()
		if n > 1 {
			<-release
			return
		}
		// Answer the join, then read nothing more.
		_, b, err := conn.Read(r.Context())
		if err != nil {
			return
		}
		id := b[strings.Index(string(b), `"id":"`)+6:]
		id = id[:strings.IndexByte(string(id), '"')]
		conn.Write(r.Context(), websocket.MessageText, []byte(`{"op":"joined","room":"a","id":"`+string(id)+`","epoch":"","seq":0}`))
		<-release
	}))
	defer srv.Close()
	defer unblock()
	lost := make(chan error, 16)
	c, err := wsclient.Dial(t.Context(), "ws"+strings.TrimPrefix(srv.URL, "http"),
		wsclient.WithWriteTimeout(200*time.Millisecond), wsclient.WithQueue(1000), wsclient.WithBackoff(time.Millisecond, 10*time.Millisecond),
		wsclient.WithOnError(func(err error) {
			select {
			case lost <- err:
			default:
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer unblock() // before Close, which waits for the server's close frame
	r := join(t, c, "a")
	big := []byte(`"` + strings.Repeat("x", 1<<20) + `"`)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for range 8 {
		wg.Go(func() { r.Publish(ctx, big) })
	}
	select {
	case err := <-lost:
		if !strings.Contains(err.Error(), "connection lost") {
			t.Errorf("error reported: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the blocked write did not end the connection")
	}
	waitFor(t, "a reconnection", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return conns >= 2
	})
}
