package brokertest

import (
	"context"
	"errors"
	"fmt"
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

// testEventsOfADeadNode runs three server nodes with lifecycle events
// (wsroom.WithEvents) and kills one with connected users, as a crash
// would: its Broker stops renewing its leases and fails every call, and
// its clients' connections drop. The surviving nodes write the leave and
// disconnect events of its connections, and the last leaves of its users,
// once their leases end: each event arrives once (after de-duplication by
// ID), within LeaseWait, and none for a user still present on a live node.
func testEventsOfADeadNode(t *testing.T, newNode func(*testing.T) wsroom.Broker) {
	a, b, c := newNode(t), newNode(t), newNode(t)
	userPresence(t, a)
	crasher, ok := c.(Crasher)
	if !ok {
		t.Skip("node does not implement brokertest.Crasher")
	}
	dead, err := newDeadSwitch(c)
	if err != nil {
		t.Skip(err)
	}
	opts := []wsroom.Option{wsroom.WithEvents(), wsroom.WithPresenceByUser(),
		wsroom.WithAuthorize(func(r *http.Request) (any, error) { return r.URL.Query().Get("user"), nil })}
	node := func(b wsroom.Broker) (*wsroom.Registry, *httptest.Server) {
		reg := wsroom.NewRegistry(append([]wsroom.Option{wsroom.WithBroker(b)}, opts...)...)
		srv := httptest.NewServer(reg.MuxHandler())
		t.Cleanup(func() {
			srv.CloseClientConnections()
			reg.Close()
			srv.Close()
		})
		return reg, srv
	}
	ra, sa := node(a)
	node(b)
	rc, sc := node(dead)
	// Every event of the log from now on (the engine may hold older ones,
	// of other runs).
	after, err := ra.LastEvent(t.Context())
	if err != nil {
		t.Fatalf("LastEvent: %v", err)
	}
	var (
		mu     sync.Mutex
		events []wsroom.Event
	)
	ctx, cancel := context.WithCancel(context.Background())
	fed := make(chan error, 1)
	go func() {
		fed <- ra.FeedEvents(ctx, after, func(_ context.Context, evs []wsroom.Event) error {
			mu.Lock()
			events = append(events, evs...)
			mu.Unlock()
			return nil
		})
	}()
	defer func() {
		cancel()
		<-fed
	}()

	room1, room2 := "ev-"+roomID(), "ev-"+roomID()
	dial := func(srv *httptest.Server, user string, rooms ...string) {
		c := dialMux(t, &muxNode{reg: nil, url: "ws" + strings.TrimPrefix(srv.URL, "http") + "?user=" + user}, user)
		c.join(t, rooms, nil)
	}
	dial(sa, "stay", room1)        // stays on a live node
	dial(sc, "gone", room1, room2) // dies with its node
	dial(sc, "stay", room1)        // dies, but the user stays on node a
	// The joins were written before their clients were told; the feed
	// reads them.
	waitEvents(t, "the three joins of room 1", func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, ev := range dedupEvents(events) {
			if ev.Type == wsroom.EventJoin && ev.Room == room1 {
				n++
			}
		}
		return n == 3
	})
	var deadConns []string
	for _, cl := range rc.Rooms() {
		for _, cli := range cl.Clients() {
			if !slices.Contains(deadConns, cli.ID()) {
				deadConns = append(deadConns, cli.ID())
			}
		}
	}
	slices.Sort(deadConns)
	if len(deadConns) != 2 {
		t.Fatalf("the dead node has connections %v, want 2", deadConns)
	}
	crasher.Crash()
	dead.kill()
	crashed := time.Now()
	sc.CloseClientConnections()

	// What the survivors must write: per dead connection its leaves and
	// its disconnect, and the last leaves of user gone.
	var want []string
	userOf := map[string]string{}
	mu.Lock()
	for _, ev := range events {
		if ev.Type == wsroom.EventConnect {
			userOf[ev.Conn] = ev.User
		}
	}
	mu.Unlock()
	for _, conn := range deadConns {
		if userOf[conn] == "gone" {
			want = append(want, "leave "+conn+" gone "+room1, "leave "+conn+" gone "+room2, "disconnect "+conn+" gone")
		} else {
			want = append(want, "leave "+conn+" stay "+room1, "disconnect "+conn+" stay")
		}
	}
	want = append(want, "userLeave gone "+room1, "userLeave gone "+room2)
	slices.Sort(want)
	expired := func() []string {
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for _, ev := range dedupEvents(events) {
			if ev.Reason != wsroom.ReasonExpired {
				continue
			}
			line := ev.Type + " " + ev.Conn + " " + ev.User + " " + ev.Room
			if ev.Type == wsroom.EventUserLeave {
				line = ev.Type + " " + ev.User + " " + ev.Room
			}
			out = append(out, strings.TrimSpace(line))
		}
		slices.Sort(out)
		return out
	}
	deadline := crashed.Add(LeaseWait)
	for !slices.Equal(expired(), want) && time.Now().Before(deadline) && len(expired()) <= len(want) {
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(crashed)
	time.Sleep(500 * time.Millisecond) // a duplicate, if any, would come now
	if got := expired(); !slices.Equal(got, want) {
		t.Fatalf("events of the dead node's connections within %v of the crash:\n%s\nwant each once:\n%s", LeaseWait, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	t.Logf("the survivors wrote the dead node's %d events %v after the crash", len(want), took.Round(time.Millisecond))
	mu.Lock()
	defer mu.Unlock()
	for _, ev := range dedupEvents(events) {
		if ev.Type == wsroom.EventUserLeave && ev.User == "stay" {
			t.Errorf("userLeave of stay, who is still on a live node: %+v", ev)
		}
	}
}

// waitEvents waits up to Wait for cond.
func waitEvents(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", Wait, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dedupEvents keeps the first event of each ID.
func dedupEvents(evs []wsroom.Event) []wsroom.Event {
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

// errDead is what a killed deadSwitch answers.
var errDead = errors.New("brokertest: the node is dead")

// deadSwitch is a Broker that forwards to a node's Broker until kill, and
// fails every call from then on, as the Broker of a crashed process would
// be: nothing it did not write by then gets written.
type deadSwitch struct {
	b interface {
		wsroom.Broker
		wsroom.Store
		wsroom.Sequencer
		wsroom.UserPresence
	}
	dedup wsroom.Deduplicator // nil if the Broker is not one
	dead  atomic.Bool
}

// deadOnce is a deadSwitch whose Broker is a Deduplicator.
type deadOnce struct{ *deadSwitch }

func (d deadOnce) PublishOnce(ctx context.Context, room, key string, m wsroom.Message) (wsroom.Message, bool, error) {
	if d.dead.Load() {
		return wsroom.Message{}, false, errDead
	}
	return d.dedup.PublishOnce(ctx, room, key, m)
}

// newDeadSwitch wraps b, which must be a Store, a Sequencer and a
// UserPresence; the result is a Deduplicator if b is one.
func newDeadSwitch(b wsroom.Broker) (interface {
	wsroom.Broker
	kill()
}, error) {
	full, ok := b.(interface {
		wsroom.Broker
		wsroom.Store
		wsroom.Sequencer
		wsroom.UserPresence
	})
	if !ok {
		return nil, fmt.Errorf("%T is not a Store, Sequencer and UserPresence", b)
	}
	d := &deadSwitch{b: full}
	if dd, ok := b.(wsroom.Deduplicator); ok {
		d.dedup = dd
		return deadOnce{d}, nil
	}
	return d, nil
}

func (d *deadSwitch) kill() { d.dead.Store(true) }

func (d *deadSwitch) Publish(ctx context.Context, room string, m wsroom.Message) error {
	if d.dead.Load() {
		return errDead
	}
	return d.b.Publish(ctx, room, m)
}

func (d *deadSwitch) Subscribe(ctx context.Context, room string, deliver func(wsroom.Message), lost func(error)) (func(), error) {
	if d.dead.Load() {
		return nil, errDead
	}
	return d.b.Subscribe(ctx, room, deliver, lost)
}

func (d *deadSwitch) PublishSeq(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	if d.dead.Load() {
		return wsroom.Message{}, errDead
	}
	return d.b.PublishSeq(ctx, room, m)
}

func (d *deadSwitch) Append(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	if d.dead.Load() {
		return wsroom.Message{}, errDead
	}
	return d.b.Append(ctx, room, m)
}

func (d *deadSwitch) After(ctx context.Context, room, epoch string, seq uint64, limit int) ([]wsroom.Message, error) {
	if d.dead.Load() {
		return nil, errDead
	}
	return d.b.After(ctx, room, epoch, seq, limit)
}

func (d *deadSwitch) Last(ctx context.Context, room string, n int) ([]wsroom.Message, error) {
	if d.dead.Load() {
		return nil, errDead
	}
	return d.b.Last(ctx, room, n)
}

func (d *deadSwitch) Join(ctx context.Context, room string, m wsroom.Member) error {
	if d.dead.Load() {
		return errDead
	}
	return d.b.Join(ctx, room, m)
}

func (d *deadSwitch) Leave(ctx context.Context, room, id string) error {
	if d.dead.Load() {
		return errDead
	}
	return d.b.Leave(ctx, room, id)
}

func (d *deadSwitch) Members(ctx context.Context, room string) ([]wsroom.Member, error) {
	if d.dead.Load() {
		return nil, errDead
	}
	return d.b.Members(ctx, room)
}

func (d *deadSwitch) JoinUser(ctx context.Context, room string, m wsroom.Member) (bool, error) {
	if d.dead.Load() {
		return false, errDead
	}
	return d.b.JoinUser(ctx, room, m)
}

func (d *deadSwitch) LeaveUser(ctx context.Context, room, id, user string) (bool, error) {
	if d.dead.Load() {
		return false, errDead
	}
	return d.b.LeaveUser(ctx, room, id, user)
}

func (d *deadSwitch) Count(ctx context.Context, room string) (int, error) {
	if d.dead.Load() {
		return 0, errDead
	}
	return d.b.Count(ctx, room)
}

func (d *deadSwitch) MembersPage(ctx context.Context, room, cursor string, n int) ([]wsroom.Member, string, error) {
	if d.dead.Load() {
		return nil, "", errDead
	}
	return d.b.MembersPage(ctx, room, cursor, n)
}

func (d *deadSwitch) Sweep(ctx context.Context, room string) ([]wsroom.Member, error) {
	if d.dead.Load() {
		return nil, errDead
	}
	return d.b.Sweep(ctx, room)
}

// testAPIAcrossNodes runs the server API (wsroom.Registry.API) on one node
// and acts on a client of another: a publish reaches it, a removal takes
// it out of a room, a disconnect closes it.
func testAPIAcrossNodes(t *testing.T, n Nodes) {
	const key = "test-key"
	node := func() (*wsroom.Registry, string, string) {
		reg := wsroom.NewRegistry(wsroom.WithBroker(n.New(t, 0)), wsroom.WithCodec(wsroom.JSON()),
			wsroom.WithAuthorize(func(r *http.Request) (any, error) { return r.URL.Query().Get("user"), nil }))
		mux := http.NewServeMux()
		mux.Handle("/ws", reg.MuxHandler())
		mux.Handle("/api/", http.StripPrefix("/api", reg.API(wsroom.WithAPIKey(key))))
		srv := httptest.NewServer(mux)
		t.Cleanup(func() {
			srv.CloseClientConnections()
			reg.Close()
			srv.Close()
		})
		return reg, srv.URL + "/api", "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"
	}
	_, apiA, _ := node()
	_, _, wsB := node()
	call := func(method, path, body string) int {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, apiA+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	r1, r2 := "api-"+roomID(), "api-"+roomID()
	c := dialMux(t, &muxNode{url: wsB + "?user=ana"}, "ana on b")
	c.join(t, []string{r1, r2}, nil)
	if got := call("POST", "/rooms/"+r1+"/messages", `{"data":"from a"}`); got != http.StatusOK {
		t.Fatalf("publish on node a's API: %d", got)
	}
	c.waitFor(t, "the message from node a's API", func() bool { return len(c.msgs(r1)) == 1 })
	if got := call("DELETE", "/rooms/"+r1+"/users/ana", ""); got != http.StatusAccepted {
		t.Errorf("remove ana from a room on node a's API: %d, want 202 (she is on node b)", got)
	}
	c.waitFor(t, "left "+r1, func() bool {
		return len(c.filter(func(f muxFrame) bool { return f.Op == "left" && f.Room == r1 && f.Reason == "removed" })) == 1
	})
	if got := call("DELETE", "/users/ana/connections", `{"code":4100,"reason":"moved"}`); got != http.StatusAccepted {
		t.Errorf("disconnect ana on node a's API: %d, want 202", got)
	}
	c.waitFor(t, "the close", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.err != nil
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	if code := websocket.CloseStatus(c.err); code != 4100 {
		t.Errorf("ana's connection ended with %v, want close 4100", c.err)
	}
}
