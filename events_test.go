package wsroom_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
)

// eventLine is an event without the fields that differ between runs.
func eventLine(ev wsroom.Event, conns map[string]string) string {
	conn := conns[ev.Conn]
	if conn == "" {
		conn = ev.Conn
	}
	return strings.TrimRight(fmt.Sprintf("%s %s %s %s %s", ev.Type, conn, ev.User, ev.Room, ev.Reason), " ")
}

// feed runs FeedEvents into a slice until the test ends.
type feed struct {
	mu     sync.Mutex
	events []wsroom.Event
	more   chan struct{}
	stop   func() // ends FeedEvents and checks how it returned
}

func startFeed(t *testing.T, reg *wsroom.Registry, after string, fn func(context.Context, []wsroom.Event) error) *feed {
	f := &feed{more: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	if fn == nil {
		fn = func(_ context.Context, evs []wsroom.Event) error {
			f.add(evs)
			return nil
		}
	}
	done := make(chan error, 1)
	go func() { done <- reg.FeedEvents(ctx, after, fn) }()
	var once sync.Once
	f.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("FeedEvents = %v, want context.Canceled", err)
			}
		})
	}
	t.Cleanup(f.stop)
	return f
}

func (f *feed) add(evs []wsroom.Event) {
	f.mu.Lock()
	f.events = append(f.events, evs...)
	f.mu.Unlock()
	select {
	case f.more <- struct{}{}:
	default:
	}
}

// wait waits until the feed holds n events (after de-duplication by ID)
// and returns them.
func (f *feed) wait(t *testing.T, n int) []wsroom.Event {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		f.mu.Lock()
		got := dedup(f.events)
		f.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-f.more:
		case <-deadline:
			t.Fatalf("%d events, want %d: %v", len(got), n, got)
		}
	}
}

// dedup keeps the first event of each ID.
func dedup(evs []wsroom.Event) []wsroom.Event {
	seen := make(map[string]bool)
	var out []wsroom.Event
	for _, ev := range evs {
		if !seen[ev.ID] {
			seen[ev.ID] = true
			out = append(out, ev)
		}
	}
	return out
}

// TestEvents follows two connections of one user, one of many rooms and one
// of one room, through the event log: every connect, join, first join,
// leave, last leave and disconnect, in order, each with an ID of its own.
func TestEvents(t *testing.T) {
	defer leakCheck(t)()
	f := newAPI(t, wsroom.WithEvents(), wsroom.WithPresenceByUser())
	got := startFeed(t, f.reg, "", nil)

	mc, mcID := f.dialMux(t, "ana")
	send(t, mc, `{"op":"join","room":"lobby"}`)
	expect(t, mc, "joined")
	one := dialURL(t, f.ws+"/rooms/lobby?user=ana")
	waitUntil(t, "two clients in lobby", func() bool {
		r, _ := f.reg.Room("lobby")
		return r.Len() == 2
	})
	one.Close(websocket.StatusNormalClosure, "bye")
	got.wait(t, 7) // its leave and disconnect written
	send(t, mc, `{"op":"leave","room":"lobby"}`)
	expect(t, mc, "left")
	mc.Close(websocket.StatusNormalClosure, "done")

	evs := got.wait(t, 10)
	var oneID string
	for _, ev := range evs {
		if ev.Conn != "" && ev.Conn != mcID {
			oneID = ev.Conn
		}
	}
	names := map[string]string{mcID: "mux", oneID: "one"}
	var lines []string
	ids := make(map[string]bool)
	for _, ev := range evs {
		lines = append(lines, eventLine(ev, names))
		if ids[ev.ID] || ev.ID == "" || ev.Node == "" || ev.Time.IsZero() {
			t.Errorf("event %+v: a repeated or empty ID, or no node or time", ev)
		}
		ids[ev.ID] = true
	}
	want := []string{
		"connect mux ana",
		"join mux ana lobby",
		"userJoin  ana lobby",
		"connect one ana",
		"join one ana lobby",
		"leave one ana lobby " + lines[5][len("leave one ana lobby "):], // the close, as the server saw it
		"disconnect one ana " + lines[6][len("disconnect one ana "):],
		"leave mux ana lobby requested",
		"userLeave  ana lobby requested",
		"disconnect mux ana " + lines[9][len("disconnect mux ana "):],
	}
	if !slices.Equal(lines, want) {
		t.Errorf("events:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	if !strings.HasSuffix(lines[5], " 1000 bye") || !strings.HasSuffix(lines[6], " 1000 bye") || !strings.HasSuffix(lines[9], " 1000 done") {
		t.Errorf("the leave and disconnect reasons: %q, %q, %q; want the clients' close codes and reasons", lines[5], lines[6], lines[9])
	}

	// Events reads the same log, from any ID on.
	page, err := f.reg.Events(t.Context(), evs[3].ID, 2)
	if err != nil || len(page) != 2 || page[0].ID != evs[4].ID || page[1].ID != evs[5].ID {
		t.Errorf("Events after the 4th = %v, %v; want the 5th and 6th", page, err)
	}
	if last, err := f.reg.LastEvent(t.Context()); err != nil || last != evs[len(evs)-1].ID {
		t.Errorf("LastEvent = %q, %v; want %q", last, err, evs[len(evs)-1].ID)
	}
	if _, err := f.reg.Events(t.Context(), "nonsense", 1); err == nil {
		t.Error("Events after a bad ID: no error")
	}
	// And so does the server API, page by page.
	var paged []string
	for after := ""; ; {
		p := f.call(t, "GET", "/events?limit=3&after="+after, nil)
		page, _ := p.body["events"].([]any)
		if p.status != 200 || len(page) == 0 {
			break
		}
		for _, e := range page {
			paged = append(paged, e.(map[string]any)["id"].(string))
		}
		after = p.body["next"].(string)
	}
	var all []string
	for _, ev := range evs {
		all = append(all, ev.ID)
	}
	if !slices.Equal(paged, all) {
		t.Errorf("GET /events by pages of 3: %v, want %v", paged, all)
	}
	if p := f.call(t, "GET", "/events?after=bad", nil); p.status != 400 {
		t.Errorf("GET /events?after=bad: %d %s", p.status, p.raw)
	}
	// A client cannot join the log's room.
	c, _ := f.dialMux(t, "eve")
	send(t, c, `{"op":"join","room":".wsroom.events"}`)
	expect(t, c, "error")
	c.Close(websocket.StatusNormalClosure, "")
	got.stop()
	f.reg.Close()
	f.srv.Close()
}

// TestEventsWebhookDown takes the webhook's receiver down for a while: the
// events written meanwhile arrive once it is back, none lost, in order, and
// every request is signed.
func TestEventsWebhookDown(t *testing.T) {
	defer leakCheck(t)()
	secret := []byte("s3cret")
	var (
		down     atomic.Bool
		mu       sync.Mutex
		received []wsroom.Event
		refused  atomic.Int64
		badSig   atomic.Int64
	)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		sig := r.Header.Get("Wsroom-Signature")
		var ts int64
		fmt.Sscanf(sig, "t=%d,", &ts)
		if sig != wsroom.SignWebhook(secret, time.Unix(ts, 0), body) {
			badSig.Add(1)
		}
		if down.Load() {
			refused.Add(1)
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		var batch struct{ Events []wsroom.Event }
		json.Unmarshal(body, &batch)
		mu.Lock()
		received = append(received, batch.Events...)
		mu.Unlock()
	}))
	defer hook.Close()
	f := newAPI(t, wsroom.WithEvents())
	fd := startFeed(t, f.reg, "", wsroom.Webhook(hook.URL, secret))
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(dedup(received))
	}

	down.Store(true)
	const conns = 5
	for range conns {
		c, _ := f.dialMux(t, "ana")
		send(t, c, `{"op":"join","room":"lobby"}`)
		expect(t, c, "joined")
		c.Close(websocket.StatusNormalClosure, "")
	}
	waitUntil(t, "the webhook refused a batch", func() bool { return refused.Load() > 0 })
	if n := count(); n != 0 {
		t.Fatalf("%d events received while the receiver was down", n)
	}
	down.Store(false)
	want := conns * 4 // connect, join, leave, disconnect
	waitUntil(t, fmt.Sprintf("%d events at the webhook", want), func() bool { return count() >= want })
	mu.Lock()
	got := dedup(received)
	mu.Unlock()
	perConn := make(map[string][]string)
	for _, ev := range got {
		perConn[ev.Conn] = append(perConn[ev.Conn], ev.Type)
	}
	for conn, types := range perConn {
		if !slices.Equal(types, []string{"connect", "join", "leave", "disconnect"}) {
			t.Errorf("connection %s: events %v, want connect, join, leave, disconnect", conn, types)
		}
	}
	if len(got) != want || len(perConn) != conns {
		t.Errorf("%d events of %d connections, want %d of %d", len(got), len(perConn), want, conns)
	}
	if n := badSig.Load(); n != 0 {
		t.Errorf("%d requests with a bad signature", n)
	}
	fd.stop()
	f.reg.Close()
	f.srv.Close()
}

// TestEventsNeedOption: FeedEvents and Events of a registry without
// WithEvents fail, and New refuses WithEvents.
func TestEventsNeedOption(t *testing.T) {
	reg := wsroom.NewRegistry()
	defer reg.Close()
	if err := reg.FeedEvents(t.Context(), "", func(context.Context, []wsroom.Event) error { return nil }); err == nil {
		t.Error("FeedEvents without WithEvents: no error")
	}
	defer func() {
		if recover() == nil {
			t.Error("New(WithEvents()) did not panic")
		}
	}()
	wsroom.New(wsroom.WithEvents())
}

// TestEventsThroughOutage writes events while the Broker fails: they wait
// on the node and reach the log, in order, once it is back.
func TestEventsThroughOutage(t *testing.T) {
	defer leakCheck(t)()
	broker := &outageBroker{LocalBroker: wsroom.NewLocalBroker(wsroom.NewMemoryStore(0, 0))}
	var reported atomic.Int64
	f := newAPI(t, wsroom.WithEvents(), wsroom.WithBroker(broker), wsroom.WithOnError(func(*wsroom.Client, error) { reported.Add(1) }))
	got := startFeed(t, f.reg, "", nil)
	broker.down.Store(true)
	c, id := f.dialMux(t, "ana")
	send(t, c, `{"op":"join","room":"lobby"}`)
	expect(t, c, "joined")
	send(t, c, `{"op":"leave","room":"lobby"}`)
	expect(t, c, "left")
	c.Close(websocket.StatusNormalClosure, "")
	waitUntil(t, "the failures reported", func() bool { return reported.Load() > 0 })
	if evs := got.snapshot(); len(evs) != 0 {
		t.Fatalf("%d events in the log during the outage", len(evs))
	}
	broker.down.Store(false)
	var lines []string
	for _, ev := range got.wait(t, 4) {
		lines = append(lines, eventLine(ev, map[string]string{id: "c"}))
	}
	if want := []string{"connect c ana", "join c ana lobby", "leave c ana lobby requested", "disconnect c ana  1000"}; !slices.Equal(lines, want) {
		t.Errorf("events after the outage: %q, want %q", lines, want)
	}
	got.stop()
	f.reg.Close()
	f.srv.Close()
}

func (f *feed) snapshot() []wsroom.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.events)
}
