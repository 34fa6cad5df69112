package wsroom_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
)

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

func newLossy(t *testing.T) (*lossyBroker, *fixture, *atomic.Int64) {
	store := wsroom.NewMemoryStore(0, 0)
	b := &lossyBroker{LocalBroker: wsroom.NewLocalBroker(store)}
	var errs atomic.Int64
	f := newFixture(t, wsroom.WithStore(store), wsroom.WithBroker(b), wsroom.WithCodec(wsroom.JSON()),
		wsroom.WithOnError(func(c *wsroom.Client, err error) { errs.Add(1) }))
	return b, f, &errs
}

func readSeqs(t *testing.T, c *websocket.Conn, n int) []uint64 {
	t.Helper()
	var out []uint64
	for range n {
		out = append(out, readEnvelope(t, c).Seq)
	}
	return out
}

// When the broker says it may have missed messages, the room recovers them
// from the store at once.
func TestRoomCatchesUpWhenBrokerLostMessages(t *testing.T) {
	b, f, errs := newLossy(t)
	c := f.dial(t, "")
	publishAll(t, f.room, `1`)
	b.dropping.Store(true)
	publishAll(t, f.room, `2`, `3`)
	b.dropping.Store(false)
	b.reconnected()
	if got := readSeqs(t, c, 3); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Errorf("client got seqs %v, want [1 2 3]", got)
	}
	if errs.Load() == 0 {
		t.Errorf("the error hook was not told of the loss")
	}
}

// When a message arrives after a gap, the room fills the gap from the store
// before delivering it.
func TestRoomFillsGapBeforeNextMessage(t *testing.T) {
	b, f, _ := newLossy(t)
	c := f.dial(t, "")
	publishAll(t, f.room, `1`)
	b.dropping.Store(true)
	publishAll(t, f.room, `2`, `3`)
	b.dropping.Store(false)
	publishAll(t, f.room, `4`)
	if got := readSeqs(t, c, 4); !slices.Equal(got, []uint64{1, 2, 3, 4}) {
		t.Errorf("client got seqs %v, want [1 2 3 4]", got)
	}
}

// If the store cannot serve what was missed, clients are told to resync
// rather than left with a silent gap.
func TestRoomResyncsWhenHistoryIsGone(t *testing.T) {
	store := wsroom.NewMemoryStore(2, 0)
	b := &lossyBroker{LocalBroker: wsroom.NewLocalBroker(store)}
	f := newFixture(t, wsroom.WithStore(store), wsroom.WithBroker(b), wsroom.WithCodec(wsroom.JSON()))
	c := f.dial(t, "")
	publishAll(t, f.room, `1`)
	readSeqs(t, c, 1)
	b.dropping.Store(true)
	publishAll(t, f.room, `2`, `3`, `4`, `5`) // the store keeps only 4 and 5
	b.dropping.Store(false)
	b.reconnected()
	if code, _ := closeStatus(t, c); code != wsroom.StatusResync {
		t.Errorf("client closed with %v, want StatusResync", code)
	}
}

func TestAdmitRefusesBeforeJoin(t *testing.T) {
	var joins, leaves atomic.Int64
	f := newFixture(t,
		wsroom.WithHistory(10),
		wsroom.WithAuthorize(func(r *http.Request) (any, error) { return r.URL.Query().Get("user"), nil }),
		wsroom.WithAdmit(func(c *wsroom.Client) error {
			switch c.Identity() {
			case "banned":
				return websocket.CloseError{Code: 4003, Reason: "banned here"}
			case "late":
				return errors.New("too late")
			}
			return nil
		}),
		wsroom.WithOnJoin(func(*wsroom.Client) { joins.Add(1) }),
		wsroom.WithOnLeave(func(*wsroom.Client, error) { leaves.Add(1) }),
	)
	publishAll(t, f.room, "history")
	for _, tt := range []struct {
		user   string
		code   websocket.StatusCode
		reason string
	}{{"banned", 4003, "banned here"}, {"late", websocket.StatusPolicyViolation, "too late"}} {
		c := dialURL(t, f.url+"?user="+tt.user)
		_, _, err := c.Read(t.Context())
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != tt.code || ce.Reason != tt.reason {
			t.Errorf("%s: first read = %v, want close %v %q and no history", tt.user, err, tt.code, tt.reason)
		}
	}
	ok := f.dial(t, "?user=ana")
	if got := read(t, ok); got != "history" {
		t.Errorf("admitted client read %q, want %q", got, "history")
	}
	members, err := f.room.Members(t.Context())
	if err != nil || len(members) != 1 || members[0].Info != "ana" {
		t.Errorf("Members() = %v, %v; want ana alone", members, err)
	}
	ok.Close(websocket.StatusNormalClosure, "")
	waitUntil(t, "ana left", func() bool { return leaves.Load() == 1 })
	if j := joins.Load(); j != 1 {
		t.Errorf("join hook ran %d times, want 1 (not for refused clients)", j)
	}
}

// A loss before the room delivered its first message is recovered too: the
// room starts from the last stored message.
func TestRoomCatchesUpBeforeFirstDelivery(t *testing.T) {
	store := wsroom.NewMemoryStore(0, 0)
	if _, err := store.Append(t.Context(), "", wsroom.Message{Data: []byte(`"old"`)}); err != nil {
		t.Fatal(err)
	}
	b := &lossyBroker{LocalBroker: wsroom.NewLocalBroker(store)}
	f := newFixture(t, wsroom.WithStore(store), wsroom.WithBroker(b), wsroom.WithCodec(wsroom.JSON()))
	c := f.dial(t, "")
	b.dropping.Store(true)
	publishAll(t, f.room, `2`, `3`)
	b.dropping.Store(false)
	b.reconnected()
	if got := readSeqs(t, c, 2); !slices.Equal(got, []uint64{2, 3}) {
		t.Errorf("client got seqs %v, want [2 3]", got)
	}
}

// A hook that panics costs its client, not the server.
func TestHookPanicClosesOnlyItsClient(t *testing.T) {
	var errs atomic.Int64
	f := newFixture(t,
		wsroom.WithOnMessage(func(c *wsroom.Client, data []byte) error {
			if string(data) == "boom" {
				panic("boom")
			}
			return c.Room().Publish(c.Context(), data)
		}),
		wsroom.WithOnJoin(func(c *wsroom.Client) {
			if c.Identity() == "bad" {
				panic("join")
			}
		}),
		wsroom.WithAuthorize(func(r *http.Request) (any, error) { return r.URL.Query().Get("u"), nil }),
		wsroom.WithOnError(func(*wsroom.Client, error) { errs.Add(1) }),
	)
	bad := f.dial(t, "?u=bad") // its join hook panics: reported, the client stays
	good := f.dial(t, "?u=good")
	write(t, bad, "boom")
	if code, _ := closeStatus(t, bad); code != websocket.StatusInternalError {
		t.Errorf("panicking client closed with %v, want 1011", code)
	}
	write(t, good, "still fine")
	if got := read(t, good); got != "still fine" {
		t.Errorf("good client read %q, want %q", got, "still fine")
	}
	if n := errs.Load(); n != 2 {
		t.Errorf("error hook called %d times, want 2 (join and message panics)", n)
	}
}

// An admitted client gets its leave hook once, even when the room closes
// between admit and join.
func TestLeaveHookRunsForAdmittedClientWhenRoomCloses(t *testing.T) {
	var room *wsroom.Room
	var leaves atomic.Int64
	admitted := make(chan struct{})
	room = wsroom.New(
		wsroom.WithAdmit(func(c *wsroom.Client) error {
			go room.Close()
			for room.Publish(context.Background(), []byte("x")) == nil { // until Close has begun
			}
			close(admitted)
			return nil
		}),
		wsroom.WithOnLeave(func(*wsroom.Client, error) { leaves.Add(1) }),
	)
	srv := httptest.NewServer(room.Handler())
	defer srv.Close()
	c, _, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	<-admitted
	room.Close() // returns once every client goroutine has ended
	if n := leaves.Load(); n != 1 {
		t.Errorf("leave hook ran %d times for the admitted client, want 1", n)
	}
}
