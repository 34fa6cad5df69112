package wsclient_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/wsclient"
)

// fixture is a real wsroom server of many rooms over loopback whose
// connections the test can drop and whose handshakes it can refuse.
type fixture struct {
	reg    *wsroom.Registry
	url    string
	refuse atomic.Bool  // answer handshakes with 503
	deny   atomic.Bool  // answer handshakes with 401 (authorize hook)
	dials  atomic.Int32 // connections hijacked

	mu      sync.Mutex
	conns   []net.Conn       // hijacked
	clients []*wsroom.Client // server side, from the join hook
}

func newFixture(t *testing.T, opts ...wsroom.Option) *fixture {
	t.Helper()
	return newFixtureOf(t, (*wsroom.Registry).MuxHandler, opts...)
}

// newFixtureOf is newFixture with the handler handler returns.
func newFixtureOf(t *testing.T, handler func(*wsroom.Registry) http.Handler, opts ...wsroom.Option) *fixture {
	t.Helper()
	f := &fixture{}
	opts = append([]wsroom.Option{
		wsroom.WithCodec(wsroom.JSON()),
		wsroom.WithOnJoin(func(c *wsroom.Client) {
			f.mu.Lock()
			f.clients = append(f.clients, c)
			f.mu.Unlock()
		}),
		wsroom.WithAuthorize(func(*http.Request) (any, error) {
			if f.deny.Load() {
				return nil, &wsroom.HTTPError{Code: http.StatusUnauthorized}
			}
			return nil, nil
		}),
	}, opts...)
	f.reg = wsroom.NewRegistry(opts...)
	h := handler(f.reg)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.refuse.Load() {
			http.Error(w, "not now", http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(&recorder{ResponseWriter: w, f: f}, r)
	}))
	t.Cleanup(func() {
		srv.Close()
		f.reg.Close()
	})
	f.url = "ws" + strings.TrimPrefix(srv.URL, "http")
	return f
}

// recorder records the connections the WebSocket handshake hijacks.
type recorder struct {
	http.ResponseWriter
	f *fixture
}

func (w *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil {
		w.f.mu.Lock()
		w.f.conns = append(w.f.conns, nc)
		w.f.mu.Unlock()
		w.f.dials.Add(1)
	}
	return nc, brw, err
}

// drop cuts every connection the server has, without a close frame.
func (f *fixture) drop() {
	f.mu.Lock()
	conns := f.conns
	f.conns = nil
	f.mu.Unlock()
	for _, nc := range conns {
		nc.Close()
	}
}

// lastClient returns the server side of the latest connection.
func (f *fixture) lastClient(t *testing.T) *wsroom.Client {
	t.Helper()
	waitFor(t, "a server-side client", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.clients) > 0
	})
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.clients[len(f.clients)-1]
}

func (f *fixture) dial(t *testing.T, opts ...wsclient.Option) *wsclient.Client {
	t.Helper()
	opts = append([]wsclient.Option{wsclient.WithBackoff(5*time.Millisecond, 50*time.Millisecond)}, opts...)
	c, err := wsclient.Dial(t.Context(), f.url, opts...)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func join(t *testing.T, c *wsclient.Client, room string, opts ...wsclient.JoinOption) *wsclient.Room {
	t.Helper()
	r, err := c.Join(t.Context(), room, opts...)
	if err != nil {
		t.Fatalf("Join(%q): %v", room, err)
	}
	return r
}

// next returns the room's next message, or fails t.
func next(t *testing.T, r *wsclient.Room) wsclient.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	m, err := r.Next(ctx)
	if err != nil {
		t.Fatalf("Next of %s: %v", r.Name(), err)
	}
	return m
}

// short is a message as "seq:data".
func short(m wsclient.Message) string { return fmt.Sprintf("%d:%s", m.Seq, m.Data) }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func publish(t *testing.T, reg *wsroom.Registry, room, data string) {
	t.Helper()
	if err := reg.Publish(t.Context(), room, []byte(data)); err != nil {
		t.Fatalf("Registry.Publish(%s, %s): %v", room, data, err)
	}
}

// One client in several rooms publishes with acks and gets each room's
// messages, its own included, in each room's order.
func TestRoomsPublishAndAck(t *testing.T) {
	if wsclient.Subprotocol != wsroom.Subprotocol {
		t.Fatalf("Subprotocol %q, want %q", wsclient.Subprotocol, wsroom.Subprotocol)
	}
	f := newFixture(t, wsroom.WithJoinCheck(func(_ *wsroom.Client, room string) error {
		if room == "secret" {
			return errors.New("members only")
		}
		return nil
	}))
	c := f.dial(t)
	a := join(t, c, "a", wsclient.Members())
	b := join(t, c, "b")
	if ms := a.Members(); len(ms) != 1 || ms[0].ID == "" || ms[0].ID != c.ConnID() {
		t.Errorf("Members() = %+v, want this client (%q, its hello's id)", ms, c.ConnID())
	}
	if lim, ok := c.Limits(); !ok || lim.Rate != 20 || lim.Burst != 40 || lim.AcksPerRoom != 1024 || lim.AckScope != "node" {
		t.Errorf("Limits() = %+v, %v; want the server's defaults", lim, ok)
	}

	ack, err := a.Publish(t.Context(), []byte(`{"n":1}`))
	if err != nil || ack.Room != "a" || ack.Seq != 1 || ack.Epoch == "" {
		t.Fatalf("Publish = %+v, %v; want seq 1 of a", ack, err)
	}
	m := next(t, a)
	if short(m) != `1:{"n":1}` || m.Epoch != ack.Epoch || m.From != c.ConnID() || m.Time.IsZero() || m.Kind != wsclient.KindData {
		t.Errorf("own message = %+v", m)
	}
	if ack, err := b.Publish(t.Context(), []byte(`"x"`)); err != nil || ack.Seq != 1 {
		t.Errorf("Publish to b = %+v, %v", ack, err)
	}
	for i := 2; i <= 4; i++ {
		publish(t, f.reg, "a", fmt.Sprintf(`"a%d"`, i))
		publish(t, f.reg, "b", fmt.Sprintf(`"b%d"`, i))
	}
	var gotA, gotB []string
	for range 3 {
		gotA = append(gotA, short(next(t, a)))
	}
	for range 4 {
		gotB = append(gotB, short(next(t, b)))
	}
	if diff := cmp.Diff([]string{`2:"a2"`, `3:"a3"`, `4:"a4"`}, gotA); diff != "" {
		t.Errorf("room a (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{`1:"x"`, `2:"b2"`, `3:"b3"`, `4:"b4"`}, gotB); diff != "" {
		t.Errorf("room b (-want +got):\n%s", diff)
	}

	if err := b.PublishEphemeral(t.Context(), []byte(`"typing"`)); err != nil {
		t.Errorf("PublishEphemeral: %v", err)
	}
	if m := next(t, b); short(m) != `0:"typing"` || m.Epoch != "" {
		t.Errorf("ephemeral message = %+v", m)
	}
	if _, err := a.Publish(t.Context(), []byte(`not json`)); err == nil {
		t.Error("Publish of data that is not JSON: no error")
	}
	var pe *wsclient.Error
	if _, err := c.Join(t.Context(), "secret"); !errors.As(err, &pe) || pe.Code != "forbidden" {
		t.Errorf("Join of a refused room: %v, want an *Error with code forbidden", err)
	}
	if _, err := c.Join(t.Context(), "a"); err == nil {
		t.Error("second Join of a: no error")
	}
	if _, err := c.Join(t.Context(), "../x"); !errors.As(err, &pe) || pe.Code != "bad_room" {
		t.Errorf("Join of a bad name: %v, want bad_room", err)
	}
}

// While the server keeps publishing to three rooms, the connection is cut
// again and again; each room resumes where it stopped and its reader gets
// every message once, in order.
func TestReconnectResumesEachRoom(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t)
	names := []string{"a", "b", "c"}
	const n = 300
	results := make(chan error, len(names))
	for _, name := range names {
		r := join(t, c, name)
		go func() {
			for i := 1; i <= n; i++ {
				m, err := r.Next(t.Context())
				if err != nil {
					results <- fmt.Errorf("room %s, message %d: %w", name, i, err)
					return
				}
				if want := fmt.Sprintf(`%d:"%s%d"`, i, name, i); short(m) != want {
					results <- fmt.Errorf("room %s: got %s, want %s", name, short(m), want)
					return
				}
			}
			results <- nil
		}()
	}
	var published atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; i <= n; i++ {
			for _, name := range names {
				if err := f.reg.Publish(context.Background(), name, fmt.Appendf(nil, `"%s%d"`, name, i)); err != nil {
					t.Errorf("Publish: %v", err)
					return
				}
			}
			published.Store(int32(i))
			if i%10 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	for k := 1; k <= 4; k++ {
		waitFor(t, "publishing to go on", func() bool { return published.Load() >= int32(k*n/6) })
		dials := f.dials.Load()
		f.drop()
		waitFor(t, "a reconnection", func() bool { return f.dials.Load() > dials })
	}
	<-done
	for range names {
		if err := <-results; err != nil {
			t.Error(err)
		}
	}
	if d := f.dials.Load(); d < 5 {
		t.Errorf("%d handshakes, want at least 5", d)
	}
}

// A room whose history no longer covers its position is reported to the
// reader as a *ResyncError, and joined again afresh with its Join options.
func TestResyncReported(t *testing.T) {
	f := newFixture(t, wsroom.WithStore(wsroom.NewMemoryStore(3, 0)))
	c := f.dial(t)
	a := join(t, c, "a", wsclient.Last(2))
	b := join(t, c, "b")
	publish(t, f.reg, "a", `1`)
	publish(t, f.reg, "b", `1`)
	if got := short(next(t, a)); got != "1:1" {
		t.Fatalf("got %s, want 1:1", got)
	}
	if got := short(next(t, b)); got != "1:1" {
		t.Fatalf("got %s, want 1:1", got)
	}
	f.refuse.Store(true)
	f.drop()
	for i := 2; i <= 8; i++ { // the store keeps 6 to 8
		publish(t, f.reg, "a", fmt.Sprint(i))
	}
	publish(t, f.reg, "b", `2`)
	f.refuse.Store(false)

	_, err := a.Next(t.Context())
	var re *wsclient.ResyncError
	if !errors.As(err, &re) || re.Room != "a" {
		t.Fatalf("Next = %v, want a *ResyncError for a", err)
	}
	var got []string
	for range 2 {
		got = append(got, short(next(t, a)))
	}
	publish(t, f.reg, "a", `9`)
	got = append(got, short(next(t, a)))
	if diff := cmp.Diff([]string{"7:7", "8:8", "9:9"}, got); diff != "" {
		t.Errorf("after the resync, with Last(2) (-want +got):\n%s", diff)
	}
	if got := short(next(t, b)); got != "2:2" {
		t.Errorf("room b resumed with %s, want 2:2", got)
	}
}

// gateBroker holds publishes while its gate is shut.
type gateBroker struct {
	*wsroom.LocalBroker
	shut    atomic.Bool
	entered chan struct{}
	open    chan struct{}
}

func (b *gateBroker) wait() {
	if b.shut.Load() {
		b.entered <- struct{}{}
		<-b.open
	}
}

func (b *gateBroker) Publish(ctx context.Context, room string, m wsroom.Message) error {
	b.wait()
	return b.LocalBroker.Publish(ctx, room, m)
}

func (b *gateBroker) PublishSeq(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	b.wait()
	return b.LocalBroker.PublishSeq(ctx, room, m)
}

// A publish whose ack is lost with the connection is sent again after the
// reconnection, with the same id, and the room's history holds it once.
func TestUnackedPublishSentAgainOnce(t *testing.T) {
	store := wsroom.NewMemoryStore(0, 0)
	broker := &gateBroker{LocalBroker: wsroom.NewLocalBroker(store), entered: make(chan struct{}), open: make(chan struct{})}
	f := newFixture(t, wsroom.WithBroker(broker))
	c := f.dial(t)
	a := join(t, c, "a")

	broker.shut.Store(true)
	type result struct {
		ack wsclient.Ack
		err error
	}
	res := make(chan result, 1)
	go func() {
		ack, err := a.Publish(t.Context(), []byte(`"once"`))
		res <- result{ack, err}
	}()
	<-broker.entered // the server is publishing it
	f.refuse.Store(true)
	f.drop()
	broker.shut.Store(false)
	close(broker.open) // published and stored; the ack goes nowhere
	waitFor(t, "the message in the store", func() bool {
		ms, _ := store.Last(t.Context(), "a", 10)
		return len(ms) == 1
	})
	f.refuse.Store(false)
	r := <-res
	if r.err != nil || r.ack.Seq != 1 {
		t.Fatalf("Publish = %+v, %v; want the ack of seq 1", r.ack, r.err)
	}
	if ms, _ := store.Last(t.Context(), "a", 10); len(ms) != 1 {
		t.Errorf("history holds %d messages, want 1", len(ms))
	}
	if f.dials.Load() != 2 {
		t.Errorf("%d handshakes, want 2", f.dials.Load())
	}
	// The room joined an empty history, and resumes with what came since.
	publish(t, f.reg, "a", `"next"`)
	got := []string{short(next(t, a)), short(next(t, a))}
	if diff := cmp.Diff([]string{`1:"once"`, `2:"next"`}, got); diff != "" {
		t.Errorf("room a (-want +got):\n%s", diff)
	}
}

// A reader that falls behind its buffer slows neither the connection nor
// the other rooms, and still gets every message once, in order.
func TestSlowReaderCatchesUp(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t, wsclient.WithBuffer(4))
	a := join(t, c, "a")
	b := join(t, c, "b")
	const n = 50
	for i := 1; i <= n; i++ {
		publish(t, f.reg, "a", fmt.Sprint(i))
	}
	ack, err := b.Publish(t.Context(), []byte(`"b"`)) // a's reader reads nothing yet
	if err != nil || ack.Seq != 1 {
		t.Fatalf("Publish to b = %+v, %v", ack, err)
	}
	if got := short(next(t, b)); got != `1:"b"` {
		t.Errorf("room b: %s", got)
	}
	for i := 1; i <= n; i++ {
		if got, want := short(next(t, a)), fmt.Sprintf("%d:%d", i, i); got != want {
			t.Fatalf("room a: got %s, want %s", got, want)
		}
	}
	publish(t, f.reg, "a", `"live"`)
	if got := short(next(t, a)); got != fmt.Sprintf(`%d:"live"`, n+1) {
		t.Errorf("room a after catching up: %s", got)
	}
	if d := f.dials.Load(); d != 1 {
		t.Errorf("%d handshakes, want 1", d)
	}
}

// Leave ends a room with a *LeftError, and so does server code removing the
// client; the other rooms go on.
func TestLeave(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t)
	a := join(t, c, "a")
	b := join(t, c, "b")
	if err := a.Leave(t.Context()); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	var le *wsclient.LeftError
	if _, err := a.Next(t.Context()); !errors.As(err, &le) || le.Reason != "requested" {
		t.Errorf("Next after Leave = %v, want a *LeftError, reason requested", err)
	}
	if _, err := a.Publish(t.Context(), []byte(`1`)); !errors.As(err, &le) {
		t.Errorf("Publish after Leave = %v, want a *LeftError", err)
	}
	if err := f.lastClient(t).Leave("b"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Next(t.Context()); !errors.As(err, &le) || le.Reason != "removed" {
		t.Errorf("Next after removal = %v, want a *LeftError, reason removed", err)
	}
	a2 := join(t, c, "a") // the name is free again
	publish(t, f.reg, "a", `"back"`)
	if got := short(next(t, a2)); got != `1:"back"` {
		t.Errorf("rejoined a: %s", got)
	}
}

// A handshake refused for good ends the client; Dial returns it at once.
func TestRefused(t *testing.T) {
	f := newFixture(t)
	var errs []error
	var mu sync.Mutex
	c := f.dial(t, wsclient.WithOnError(func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}))
	a := join(t, c, "a")
	f.deny.Store(true)
	f.drop()
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the client did not end")
	}
	var de *wsclient.DialError
	if !errors.As(c.Err(), &de) || de.StatusCode != http.StatusUnauthorized {
		t.Errorf("Err() = %v, want a *DialError with 401", c.Err())
	}
	if _, err := a.Next(t.Context()); !errors.As(err, &de) {
		t.Errorf("Next = %v, want the *DialError", err)
	}
	mu.Lock()
	if len(errs) < 2 {
		t.Errorf("error hook got %v, want the lost connection and the refusal", errs)
	}
	mu.Unlock()
	if _, err := wsclient.Dial(t.Context(), f.url); !errors.As(err, &de) || de.StatusCode != http.StatusUnauthorized {
		t.Errorf("Dial = %v, want a *DialError with 401", err)
	}
}

// Close ends readers, publishes and reconnection attempts, and leaves no
// goroutine behind.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	t.Cleanup(leakCheck(t)) // after the server's cleanup
	f := newFixture(t)
	c := f.dial(t)
	a := join(t, c, "a")
	join(t, c, "b")
	got := make(chan error, 1)
	go func() {
		_, err := a.Next(context.Background())
		got <- err
	}()
	time.Sleep(10 * time.Millisecond)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; !errors.Is(err, wsclient.ErrClosed) {
		t.Errorf("Next = %v, want ErrClosed", err)
	}
	if _, err := a.Publish(t.Context(), []byte(`1`)); !errors.Is(err, wsclient.ErrClosed) {
		t.Errorf("Publish after Close = %v, want ErrClosed", err)
	}

	// Closed while it waits to reconnect.
	c2 := f.dial(t)
	join(t, c2, "a")
	f.refuse.Store(true)
	f.drop()
	time.Sleep(20 * time.Millisecond)
	start := time.Now()
	c2.Close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
	if !errors.Is(c2.Err(), wsclient.ErrClosed) {
		t.Errorf("Err() = %v, want ErrClosed", c2.Err())
	}
}

// lossyBroker loses deliveries while dropping is set, as a broker does
// while its connection to the engine is down.
type lossyBroker struct {
	*wsroom.LocalBroker
	dropping atomic.Bool
	mu       sync.Mutex
	lost     []func(error)
}

func (b *lossyBroker) Subscribe(ctx context.Context, room string, deliver func(wsroom.Message), lost func(error)) (func(), error) {
	b.mu.Lock()
	b.lost = append(b.lost, lost)
	b.mu.Unlock()
	return b.LocalBroker.Subscribe(ctx, room, func(m wsroom.Message) {
		if !b.dropping.Load() {
			deliver(m)
		}
	}, lost)
}

// reconnected tells every subscriber that messages may have been missed.
func (b *lossyBroker) reconnected() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, f := range b.lost {
		f(errors.New("connection to the engine dropped"))
	}
}

// A room the server resynchronises while the connection stays up is
// reported and joined again; the other room is not disturbed.
func TestResyncOfOneRoomLive(t *testing.T) {
	store := wsroom.NewMemoryStore(2, 0)
	b := &lossyBroker{LocalBroker: wsroom.NewLocalBroker(store)}
	f := newFixture(t, wsroom.WithBroker(b))
	c := f.dial(t)
	a := join(t, c, "a", wsclient.Last(5))
	other := join(t, c, "b")
	publish(t, f.reg, "a", `1`)
	if got := short(next(t, a)); got != "1:1" {
		t.Fatalf("got %s", got)
	}
	b.dropping.Store(true)
	for i := 2; i <= 5; i++ { // the store keeps only 4 and 5
		publish(t, f.reg, "a", fmt.Sprint(i))
	}
	b.dropping.Store(false)
	b.reconnected()
	var re *wsclient.ResyncError
	if _, err := a.Next(t.Context()); !errors.As(err, &re) || re.Room != "a" {
		t.Fatalf("Next = %v, want a *ResyncError for a", err)
	}
	got := []string{short(next(t, a)), short(next(t, a))}
	publish(t, f.reg, "a", `6`)
	got = append(got, short(next(t, a)))
	if diff := cmp.Diff([]string{"4:4", "5:5", "6:6"}, got); diff != "" {
		t.Errorf("after the resync, with Last(5) (-want +got):\n%s", diff)
	}
	publish(t, f.reg, "b", `"still here"`)
	if got := short(next(t, other)); got != `1:"still here"` {
		t.Errorf("room b: %s", got)
	}
	if d := f.dials.Load(); d != 1 {
		t.Errorf("%d handshakes, want 1", d)
	}
}

// Handshakes carry WithHeader's headers; a publish the server closes the
// connection for fails instead of being sent again, and the client goes on.
func TestHeaderAndRefusedPublish(t *testing.T) {
	f := newFixture(t, wsroom.WithReadLimit(1024), wsroom.WithAuthorize(func(r *http.Request) (any, error) {
		if r.Header.Get("Authorization") != "Bearer sesame" {
			return nil, &wsroom.HTTPError{Code: http.StatusUnauthorized}
		}
		return "ana", nil
	}))
	var de *wsclient.DialError
	if _, err := wsclient.Dial(t.Context(), f.url); !errors.As(err, &de) || de.StatusCode != http.StatusUnauthorized {
		t.Fatalf("Dial without the header = %v, want 401", err)
	}
	c := f.dial(t, wsclient.WithHeader(http.Header{"Authorization": {"Bearer sesame"}}))
	a := join(t, c, "a", wsclient.Members())
	if ms := a.Members(); len(ms) != 1 || ms[0].Info != "ana" {
		t.Errorf("Members() = %+v, want ana", ms)
	}
	big := []byte(`"` + strings.Repeat("x", 2000) + `"`)
	if _, err := a.Publish(t.Context(), big); err == nil {
		t.Error("Publish over the server's read limit: no error")
	}
	if ack, err := a.Publish(t.Context(), []byte(`"small"`)); err != nil || ack.Seq != 1 {
		t.Errorf("Publish after the refused one = %+v, %v; want seq 1", ack, err)
	}
	var got []string
	for m, err := range a.Messages(t.Context()) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, short(m))
		break
	}
	if diff := cmp.Diff([]string{`1:"small"`}, got); diff != "" {
		t.Errorf("room a (-want +got):\n%s", diff)
	}
	if d := f.dials.Load(); d != 2 {
		t.Errorf("%d connections, want 2", d)
	}
}
