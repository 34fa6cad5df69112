package wsroom_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/google/go-cmp/cmp"
	"github.com/wsroom/wsroom"
)

// These tests each pin down one way a peer, a host or an engine could break
// a room.

// oneProc runs the rest of the test with a single P, as on a one-CPU host.
func oneProc(t *testing.T) {
	prev := runtime.GOMAXPROCS(1)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
}

// On one P the room writes to idle clients from its loop; an earlier
// write's deadline, long passed, must not fail those writes.
func TestOneProcWritesOutliveDeadlines(t *testing.T) {
	oneProc(t)
	// Pings every 100ms each set a deadline 20ms ahead; messages every
	// 150ms mostly come after it has passed.
	f := newFixture(t, wsroom.WithPing(100*time.Millisecond, time.Second), wsroom.WithWriteTimeout(20*time.Millisecond))
	c := f.dial(t, "")
	const n = 12
	got := make(chan string, n)
	go func() {
		for {
			_, b, err := c.Read(context.Background())
			if err != nil {
				close(got)
				return
			}
			got <- string(b)
		}
	}()
	var want, seen []string
	for i := range n {
		m := fmt.Sprint("m", i)
		want = append(want, m)
		publishAll(t, f.room, m)
		time.Sleep(150 * time.Millisecond)
	}
	for range n {
		select {
		case m, ok := <-got:
			if !ok {
				t.Fatalf("connection ended after %v; stats %+v", seen, f.room.Stats())
			}
			seen = append(seen, m)
		case <-time.After(10 * time.Second):
			t.Fatalf("got %v, then nothing", seen)
		}
	}
	if diff := cmp.Diff(want, seen); diff != "" {
		t.Errorf("client received (-want +got):\n%s", diff)
	}
	if n := f.room.Len(); n != 1 {
		t.Errorf("Len() = %d, want the client still there", n)
	}
}

// A text room relays only valid UTF-8, whatever the codec: browsers fail
// the whole connection on a text frame that is not.
func TestTextRoomsRefuseInvalidUTF8(t *testing.T) {
	t.Run("JSON client", func(t *testing.T) {
		store := wsroom.NewMemoryStore(0, 0)
		f := newFixture(t, wsroom.WithCodec(wsroom.JSON()), wsroom.WithStore(store))
		bad, other := f.dial(t, ""), f.dial(t, "")
		write(t, bad, "\"\xff\xfe\"")
		if code, _ := closeStatus(t, bad); code != websocket.StatusInvalidFramePayloadData {
			t.Errorf("sender closed with %v, want 1007", code)
		}
		publishAll(t, f.room, `"ok"`)
		if e := readEnvelope(t, other); string(e.Data) != `"ok"` || e.Seq != 1 {
			t.Errorf("other client got %+v first, want seq 1 \"ok\"", e)
		}
		if err := f.room.Publish(t.Context(), []byte("\"\xc3\"")); err == nil {
			t.Errorf("Publish of invalid UTF-8 JSON = nil, want an error")
		}
		last, _ := store.Last(t.Context(), "", 10)
		if len(last) != 1 {
			t.Errorf("store holds %d messages, want only the valid one", len(last))
		}
	})
	t.Run("codec that makes invalid frames", func(t *testing.T) {
		errs := make(chan error, 4)
		f := newFixture(t, wsroom.WithCodec(badTextCodec{}), wsroom.WithOnError(func(_ *wsroom.Client, err error) { errs <- err }))
		c := f.dial(t, "")
		publishAll(t, f.room, "poison", "fine")
		if got := read(t, c); got != "fine" {
			t.Errorf("client got %q, want only \"fine\"", got)
		}
		select {
		case err := <-errs:
			if !strings.Contains(err.Error(), "UTF-8") {
				t.Errorf("error hook got %v, want a UTF-8 error", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("error hook not told of the invalid frame")
		}
	})
}

// failingCodec cannot encode "fail".
type failingCodec struct{}

func (failingCodec) MessageType() websocket.MessageType { return websocket.MessageText }
func (failingCodec) Decode(b []byte) ([]byte, error)    { return b, nil }
func (failingCodec) Encode(m wsroom.Message) ([]byte, error) {
	if string(m.Data) == "fail" {
		return nil, errors.New("cannot encode")
	}
	return m.Data, nil
}

// badTextCodec turns "poison" into invalid UTF-8.
type badTextCodec struct{}

func (badTextCodec) MessageType() websocket.MessageType { return websocket.MessageText }
func (badTextCodec) Decode(b []byte) ([]byte, error)    { return b, nil }
func (badTextCodec) Encode(m wsroom.Message) ([]byte, error) {
	if string(m.Data) == "poison" {
		return []byte("\xff"), nil
	}
	return m.Data, nil
}

// A client that keeps its connection open but never reads cannot hold up a
// drained close: it is dropped within the write timeout.
func TestStuckClientCannotHoldUpClose(t *testing.T) {
	for _, how := range []string{"Shutdown", "Client.Close"} {
		t.Run(how, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				room := wsroom.New(wsroom.WithWriteTimeout(time.Second), wsroom.WithPing(0, 0))
				defer room.Close()
				stuck := pipeDial(t, room.Handler())
				_ = stuck // never reads
				synctest.Wait()
				publishAll(t, room, "m1", "m2")
				synctest.Wait() // the writer now waits on the stuck pipe
				done := make(chan struct{})
				go func() {
					defer close(done)
					if how == "Shutdown" {
						room.Shutdown(context.Background())
					} else {
						room.Clients()[0].Close(websocket.StatusNormalClosure, "bye")
					}
				}()
				time.Sleep(2 * time.Second)
				synctest.Wait()
				if n := room.Len(); n != 0 {
					t.Errorf("Len() = %d two write timeouts after %s, want 0", n, how)
				}
				select {
				case <-done:
				default:
					t.Errorf("%s has not returned two write timeouts later", how)
				}
				if got := room.Stats().ClosedWrite; got != 1 {
					t.Errorf("Stats().ClosedWrite = %d, want 1", got)
				}
			})
		})
	}
}

// A Registry makes a room only for a handshake that passed every check, and
// runs the authorize hook only for same-origin (or allowed) requests.
func TestRegistryMakesRoomsOnlyForGoodHandshakes(t *testing.T) {
	var authorized atomic.Int64
	reg := wsroom.NewRegistry(wsroom.WithAuthorize(func(r *http.Request) (any, error) {
		authorized.Add(1)
		if r.URL.Query().Get("token") != "ok" {
			return nil, &wsroom.HTTPError{Code: http.StatusUnauthorized}
		}
		return "u", nil
	}))
	defer reg.Close()
	mux := http.NewServeMux()
	mux.Handle("GET /rooms/{name}", reg.Handler(nil))
	srv := newServer(t, mux)
	upgrade := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Version": {"13"}, "Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}}
	tests := []struct {
		name   string
		header http.Header
		query  string
		want   int
	}{
		{"no key", without(upgrade, "Sec-Websocket-Key"), "?token=ok", http.StatusBadRequest},
		{"bad version", with(upgrade, "Sec-Websocket-Version", "8"), "?token=ok", http.StatusBadRequest},
		{"cross origin", with(upgrade, "Origin", "https://evil.example"), "?token=ok", http.StatusForbidden},
		{"unauthorized", upgrade, "", http.StatusUnauthorized},
		{"bad resume", upgrade, "?token=ok&resume=x", http.StatusBadRequest},
	}
	for i, tt := range tests {
		req, _ := http.NewRequest("GET", fmt.Sprintf("%s/rooms/r%d%s", srv.URL, i, tt.query), nil)
		req.Header = tt.header.Clone()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s: status %d, want %d", tt.name, resp.StatusCode, tt.want)
		}
	}
	if got := names(reg); len(got) != 0 {
		t.Errorf("rooms after refused handshakes = %v, want none", got)
	}
	if got := authorized.Load(); got != 1 {
		t.Errorf("authorize hook ran %d times, want once (only for the unauthorized request)", got)
	}
}

func with(h http.Header, k, v string) http.Header {
	h = h.Clone()
	h.Set(k, v)
	return h
}

func without(h http.Header, k string) http.Header {
	h = h.Clone()
	h.Del(k)
	return h
}

// WithMaxRooms caps a Registry: a handshake for one room more gets 503.
func TestRegistryMaxRooms(t *testing.T) {
	reg := wsroom.NewRegistry(wsroom.WithMaxRooms(2))
	defer reg.Close()
	mux := http.NewServeMux()
	mux.Handle("GET /rooms/{name}", reg.Handler(nil))
	url := "ws" + strings.TrimPrefix(newServer(t, mux).URL, "http")
	dialURL(t, url+"/rooms/a")
	dialURL(t, url+"/rooms/b")
	_, resp, err := websocket.Dial(t.Context(), url+"/rooms/c", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("dial of a third room: %v, want 503", err)
	}
	dialURL(t, url+"/rooms/a") // existing rooms still serve
	if _, err := reg.Room("d"); err == nil {
		t.Errorf("Room(\"d\") beyond the cap = nil error, want one")
	}
	if err := reg.Publish(t.Context(), "a", []byte("hi")); err != nil {
		t.Errorf("Registry.Publish to an existing room: %v", err)
	}
}

// A Broker that is slow to subscribe one room delays no other room's
// handshakes.
func TestSlowEngineStallsNoOtherRoom(t *testing.T) {
	release := make(chan struct{})
	b := &slowSubscriber{LocalBroker: wsroom.NewLocalBroker(wsroom.NewMemoryStore(0, 0)), slow: "slow", release: release}
	reg := wsroom.NewRegistry(wsroom.WithBroker(b))
	mux := http.NewServeMux()
	mux.Handle("GET /rooms/{name}", reg.Handler(nil))
	url := "ws" + strings.TrimPrefix(newServer(t, mux).URL, "http")
	defer reg.Close()
	defer close(release)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	slowDone := make(chan error, 1)
	go func() {
		c, _, err := websocket.Dial(ctx, url+"/rooms/slow", nil)
		if err == nil {
			c.CloseNow()
		}
		slowDone <- err
	}()
	waitUntil(t, "the slow subscription started", func() bool { return b.waiting.Load() })
	fast, _, err := websocket.Dial(ctx, url+"/rooms/fast", nil)
	if err != nil {
		t.Fatalf("dial of another room while one subscribes: %v", err)
	}
	defer fast.CloseNow()
	fastRoom, _ := reg.Room("fast")
	waitUntil(t, "the fast room's client joined", func() bool { return fastRoom.Len() == 1 })
	publishAll(t, fastRoom, "x")
	if got := read(t, fast); got != "x" {
		t.Errorf("fast room client got %q, want x", got)
	}
	if err := <-slowDone; err != nil {
		t.Errorf("the slow room's handshake waited for its engine: %v", err)
	}
}

type slowSubscriber struct {
	*wsroom.LocalBroker
	slow    string
	release chan struct{}
	waiting atomic.Bool
}

func (b *slowSubscriber) Subscribe(ctx context.Context, room string, deliver func(wsroom.Message), lost func(error)) (func(), error) {
	if room == b.slow {
		b.waiting.Store(true)
		<-b.release
	}
	return b.LocalBroker.Subscribe(ctx, room, deliver, lost)
}

// Neither the error hook nor a store read can stall the room's loop.
func TestLoopWaitsForNoHookOrStore(t *testing.T) {
	t.Run("error hook", func(t *testing.T) {
		block := make(chan struct{})
		f := newFixture(t, wsroom.WithCodec(failingCodec{}), wsroom.WithOnError(func(*wsroom.Client, error) { <-block }))
		defer close(block)
		c := f.dial(t, "")
		publishAll(t, f.room, "fail", "after") // "fail" cannot be encoded: the loop meets an error
		if got := read(t, c); got != "after" {
			t.Errorf("client got %q, want \"after\" while the error hook blocks", got)
		}
	})
	t.Run("store read", func(t *testing.T) {
		store := &blockingStore{MemoryStore: wsroom.NewMemoryStore(0, 0), release: make(chan struct{})}
		b := &lossyBroker{LocalBroker: wsroom.NewLocalBroker(store)}
		// A buffer for the ephemeral messages a newcomer may still get.
		f := newFixture(t, wsroom.WithStore(store), wsroom.WithBroker(b), wsroom.WithSendBuffer(4096))
		defer close(store.release)
		c := f.dial(t, "")
		publishAll(t, f.room, "first")
		if got := read(t, c); got != "first" {
			t.Fatalf("got %q, want first", got)
		}
		store.blocking.Store(true)
		b.reconnected() // the room catches up: its store read blocks
		waitUntil(t, "the catch-up read started", func() bool { return store.blocked.Load() })
		for i := range 2 * 1024 { // more than the inbox holds
			if err := f.room.Publish(t.Context(), fmt.Appendf(nil, "e%d", i), wsroom.Ephemeral()); err != nil {
				t.Fatal(err)
			}
		}
		c2 := f.dial(t, "") // joins while the read blocks
		if n := len(f.room.Clients()); n != 2 {
			t.Errorf("Clients() = %d while the store blocks, want 2", n)
		}
		publishAll(t, f.room, "live")
		_ = c
		for { // ephemeral messages still on their way may come first
			got := read(t, c2)
			if got == "live" {
				break
			}
			if !strings.HasPrefix(got, "e") {
				t.Fatalf("client got %q, want \"live\"", got)
			}
		}
		if store.inside.Load() == 0 {
			t.Errorf("the room served the join and the message only once its store read had ended")
		}
	})
}

// blockingStore blocks After while blocking is set, until release closes.
type blockingStore struct {
	*wsroom.MemoryStore
	blocking, blocked atomic.Bool
	inside            atomic.Int32 // reads blocked now
	release           chan struct{}
}

func (s *blockingStore) After(ctx context.Context, room, epoch string, seq uint64, limit int) ([]wsroom.Message, error) {
	if s.blocking.Load() {
		s.blocked.Store(true)
		s.inside.Add(1)
		defer s.inside.Add(-1)
		select {
		case <-s.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return s.MemoryStore.After(ctx, room, epoch, seq, limit)
}

// A store error while catching up is retried before any client is
// resynchronised.
func TestCatchUpRetriesStoreErrors(t *testing.T) {
	store := &failingStore{MemoryStore: wsroom.NewMemoryStore(0, 0)}
	b := &lossyBroker{LocalBroker: wsroom.NewLocalBroker(store)}
	f := newFixture(t, wsroom.WithStore(store), wsroom.WithBroker(b), wsroom.WithCodec(wsroom.JSON()))
	c := f.dial(t, "")
	publishAll(t, f.room, `1`)
	b.dropping.Store(true)
	publishAll(t, f.room, `2`, `3`)
	b.dropping.Store(false)
	store.fails.Store(3)
	b.reconnected()
	if got := readSeqs(t, c, 3); !cmp.Equal(got, []uint64{1, 2, 3}) {
		t.Errorf("client got seqs %v, want [1 2 3]", got)
	}
	if n := f.room.Stats().Resyncs; n != 0 {
		t.Errorf("Stats().Resyncs = %d, want 0", n)
	}
}

// failingStore fails the next fails calls of After.
type failingStore struct {
	*wsroom.MemoryStore
	fails atomic.Int64
}

func (s *failingStore) After(ctx context.Context, room, epoch string, seq uint64, limit int) ([]wsroom.Message, error) {
	if s.fails.Add(-1) >= 0 {
		return nil, errors.New("store unavailable")
	}
	return s.MemoryStore.After(ctx, room, epoch, seq, limit)
}

// A lost signal counts before the room has delivered anything: the loop
// knows its start from the store.
func TestRoomCatchesUpLossBeforeAnyDelivery(t *testing.T) {
	b, f, _ := newLossy(t)
	c := f.dial(t, "")
	b.dropping.Store(true)
	publishAll(t, f.room, `1`, `2`)
	b.dropping.Store(false)
	b.reconnected()
	if got := readSeqs(t, c, 2); !cmp.Equal(got, []uint64{1, 2}) {
		t.Errorf("client got seqs %v, want [1 2]", got)
	}
}

// Default options protect a room from one client that floods it: the others
// keep every message and their connections.
func TestDefaultsSlowAFlooder(t *testing.T) {
	f := newFixture(t)
	flooder, canary := f.dial(t, ""), f.dial(t, "")
	const observers, canaryMsgs = 5, 20
	var obs []*websocket.Conn
	for range observers {
		obs = append(obs, f.dial(t, ""))
	}
	go func() { // drain the flooder's own echo
		for {
			if _, _, err := flooder.Read(context.Background()); err != nil {
				return
			}
		}
	}()
	go func() {
		for {
			if _, _, err := canary.Read(context.Background()); err != nil {
				return
			}
		}
	}()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var wg sync.WaitGroup
	wg.Go(func() {
		msg := []byte(strings.Repeat("f", 128))
		for ctx.Err() == nil {
			if flooder.Write(ctx, websocket.MessageText, msg) != nil {
				return
			}
		}
	})
	seen := make([]chan int, observers)
	for i, o := range obs {
		seen[i] = make(chan int, 1)
		go func() {
			n := 0
			for n < canaryMsgs {
				_, b, err := o.Read(context.Background())
				if err != nil {
					break
				}
				if strings.HasPrefix(string(b), "canary") {
					n++
				}
			}
			seen[i] <- n
		}()
	}
	for i := range canaryMsgs {
		write(t, canary, fmt.Sprint("canary", i))
		time.Sleep(50 * time.Millisecond)
	}
	for i := range observers {
		select {
		case n := <-seen[i]:
			if n != canaryMsgs {
				t.Errorf("observer %d saw %d canary messages, want %d; stats %+v", i, n, canaryMsgs, f.room.Stats())
			}
		case <-time.After(10 * time.Second):
			t.Errorf("observer %d: canary messages did not all arrive", i)
		}
	}
	stop()
	flooder.CloseNow()
	wg.Wait()
	if s := f.room.Stats(); s.ClosedSlow != 0 || s.Throttled == 0 {
		t.Errorf("Stats: ClosedSlow %d, Throttled %d; want no slow closes and the flooder throttled", s.ClosedSlow, s.Throttled)
	}
}

// Close reasons fit a close frame and stay valid UTF-8.
func TestCloseReasonsAreCutWhole(t *testing.T) {
	long := strings.Repeat("é", 100) // 200 bytes
	t.Run("admit refusal", func(t *testing.T) {
		f := newFixture(t, wsroom.WithAdmit(func(*wsroom.Client) error { return errors.New(long) }))
		c := dialURL(t, f.url)
		code, reason := closeStatus(t, c)
		if code != websocket.StatusPolicyViolation || !utf8.ValidString(reason) || len(reason) > 123 || !strings.HasPrefix(long, reason) {
			t.Errorf("closed with %v %q (%d bytes), want 1008 and the reason cut whole to 123 bytes at most", code, reason, len(reason))
		}
	})
	t.Run("Client.Close", func(t *testing.T) {
		f := newFixture(t)
		c := f.dial(t, "")
		f.room.Clients()[0].Close(4001, long)
		code, reason := closeStatus(t, c)
		if code != 4001 || !utf8.ValidString(reason) || len(reason) > 123 {
			t.Errorf("closed with %v %q, want 4001 and a reason of at most 123 bytes", code, reason)
		}
	})
}

// A client that pings faster than the room answers is closed.
func TestPingFloodCloses(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t, "")
	done := make(chan error, 1)
	go func() {
		for {
			if _, _, err := c.Read(context.Background()); err != nil {
				done <- err
				return
			}
		}
	}()
	for range 200 {
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		err := c.Ping(ctx)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			break
		}
	}
	select {
	case err := <-done:
		if code := websocket.CloseStatus(err); code != websocket.StatusPolicyViolation {
			t.Errorf("ping flooder closed with %v, want 1008", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("ping flooder still connected")
	}
	if n := f.room.Stats().ClosedRateLimit; n != 1 {
		t.Errorf("Stats().ClosedRateLimit = %d, want 1", n)
	}
}

// While the Broker fails, a client's message is retried and its reads wait;
// nothing it sent is lost. If the Broker keeps failing, the client is closed
// with 1013 so that it sends again.
func TestBrokerOutageHoldsClientMessages(t *testing.T) {
	t.Run("recovers", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := &downBroker{LocalBroker: wsroom.NewLocalBroker(wsroom.NewMemoryStore(0, 0))}
			room := wsroom.New(wsroom.WithBroker(b), wsroom.WithPing(0, 0))
			defer room.Close()
			h := room.Handler()
			sender, watcher := pipeDial(t, h), pipeDial(t, h)
			got := make(chan []string, 1)
			go func() {
				msgs, _ := readAll(watcher)
				got <- msgs
			}()
			go readAll(sender)
			synctest.Wait()
			b.down.Store(true)
			if err := sender.Write(t.Context(), websocket.MessageText, []byte("a")); err != nil {
				t.Fatal(err)
			}
			go sender.Write(context.Background(), websocket.MessageText, []byte("b"))
			time.Sleep(3 * time.Second)
			synctest.Wait()
			b.down.Store(false)
			time.Sleep(2 * time.Second)
			synctest.Wait()
			if n := room.Len(); n != 2 {
				t.Errorf("Len() = %d, want both clients still there", n)
			}
			if s := room.Stats(); s.PublishRetries == 0 || s.ClosedRetry != 0 {
				t.Errorf("Stats: PublishRetries %d, ClosedRetry %d; want retries and no close", s.PublishRetries, s.ClosedRetry)
			}
			room.Close()
			if diff := cmp.Diff([]string{"a", "b"}, <-got); diff != "" {
				t.Errorf("watcher received (-want +got):\n%s", diff)
			}
		})
	})
	t.Run("gives up with 1013", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := &downBroker{LocalBroker: wsroom.NewLocalBroker(wsroom.NewMemoryStore(0, 0))}
			left := make(chan error, 1)
			room := wsroom.New(wsroom.WithBroker(b), wsroom.WithPing(0, 0), wsroom.WithPublishRetry(5*time.Second),
				wsroom.WithOnLeave(func(_ *wsroom.Client, reason error) { left <- reason }))
			defer room.Close()
			sender := pipeDial(t, room.Handler())
			synctest.Wait()
			b.down.Store(true)
			start := time.Now()
			if err := sender.Write(t.Context(), websocket.MessageText, []byte("a")); err != nil {
				t.Fatal(err)
			}
			_, err := readAll(sender)
			if code := websocket.CloseStatus(err); code != websocket.StatusTryAgainLater {
				t.Errorf("sender closed with %v, want 1013", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("sender closed after %v, want within the publish retry time 5s", d)
			}
			if reason := <-left; !errors.Is(reason, wsroom.ErrUnavailable) {
				t.Errorf("leave reason %v, want ErrUnavailable", reason)
			}
			if n := room.Stats().ClosedRetry; n != 1 {
				t.Errorf("Stats().ClosedRetry = %d, want 1", n)
			}
		})
	})
}

// downBroker fails every Publish while down is set.
type downBroker struct {
	*wsroom.LocalBroker
	down atomic.Bool
}

func (b *downBroker) Publish(ctx context.Context, room string, m wsroom.Message) error {
	if b.down.Load() {
		return errors.New("engine unreachable")
	}
	return b.LocalBroker.Publish(ctx, room, m)
}

// When the room's history moves to a new epoch, its clients are told to
// resume from the new epoch's start, and doing so gets them every message
// stored in it.
func TestNewEpochResumesFromItsStart(t *testing.T) {
	store := &resettableStore{}
	store.reset()
	f := newFixture(t, wsroom.WithStore(store), wsroom.WithCodec(wsroom.JSON()))
	c := f.dial(t, "")
	publishAll(t, f.room, `1`)
	readEnvelope(t, c)
	store.reset() // the engine came back empty
	for _, d := range []string{`"a"`, `"b"`} {
		if _, err := store.Append(t.Context(), "", wsroom.Message{Data: []byte(d)}); err != nil {
			t.Fatal(err) // stored while the room was not listening
		}
	}
	publishAll(t, f.room, `"c"`)
	code, reason := closeStatus(t, c)
	if code != wsroom.StatusResync {
		t.Fatalf("client closed with %v %q, want StatusResync", code, reason)
	}
	i := strings.Index(reason, "resume=")
	if i < 0 {
		t.Fatalf("close reason %q names no position to resume from", reason)
	}
	c2 := dialURL(t, f.url+"?"+reason[i:])
	var got []string
	for range 3 {
		e := readEnvelope(t, c2)
		got = append(got, fmt.Sprint(e.Seq, string(e.Data)))
	}
	if diff := cmp.Diff([]string{`1"a"`, `2"b"`, `3"c"`}, got); diff != "" {
		t.Errorf("after resuming at %s (-want +got):\n%s", reason[i:], diff)
	}
}

// resettableStore is a MemoryStore that can lose everything, as an engine
// that restarts empty.
type resettableStore struct {
	mu sync.Mutex
	s  *wsroom.MemoryStore
}

func (s *resettableStore) reset() {
	s.mu.Lock()
	s.s = wsroom.NewMemoryStore(0, 0)
	s.mu.Unlock()
}

func (s *resettableStore) get() *wsroom.MemoryStore {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.s
}

func (s *resettableStore) Append(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	return s.get().Append(ctx, room, m)
}

func (s *resettableStore) After(ctx context.Context, room, epoch string, seq uint64, limit int) ([]wsroom.Message, error) {
	return s.get().After(ctx, room, epoch, seq, limit)
}

func (s *resettableStore) Last(ctx context.Context, room string, n int) ([]wsroom.Message, error) {
	return s.get().Last(ctx, room, n)
}

// A Store other than the one the Broker numbers messages in would split the
// history: New refuses the mix.
func TestSplitHistoryPanics(t *testing.T) {
	s1, s2 := wsroom.NewMemoryStore(0, 0), wsroom.NewMemoryStore(0, 0)
	defer func() {
		if p := recover(); p == nil || !strings.Contains(fmt.Sprint(p), "WithStore") {
			t.Errorf("New with a split history: panic %v, want one naming WithStore", p)
		}
	}()
	wsroom.New(wsroom.WithStore(s1), wsroom.WithBroker(wsroom.NewLocalBroker(s1))).Close() // one store: fine
	wsroom.New(wsroom.WithStore(s2), wsroom.WithBroker(wsroom.NewLocalBroker(s1)))
}

func newServer(t *testing.T, h http.Handler) *httptest.Server {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// A resume reads the history a bounded page at a time, and clients that
// replay the same messages share their frames.
func TestReplayPagesAndSharesFrames(t *testing.T) {
	store := &pageStore{MemoryStore: wsroom.NewMemoryStore(0, 0)}
	codec := &countingCodec{Codec: wsroom.JSON()}
	f := newFixture(t, wsroom.WithStore(store), wsroom.WithCodec(codec))
	const n = 300
	live := f.dial(t, "")
	for i := range n {
		publishAll(t, f.room, fmt.Sprint(i))
		readEnvelope(t, live)
	}
	last, _ := store.Last(t.Context(), "", 1)
	for range 2 {
		c := f.dial(t, "?resume="+last[0].Epoch+":0")
		for i := range n {
			if e := readEnvelope(t, c); e.Seq != uint64(i+1) {
				t.Fatalf("replay message %d has seq %d", i+1, e.Seq)
			}
		}
	}
	if got := codec.encodes.Load(); got != 2*n {
		t.Errorf("encodes = %d, want %d: once live, once for both replays", got, 2*n)
	}
	if got := store.maxLimit.Load(); got < 1 || got > 256 {
		t.Errorf("largest page read = %d messages, want 1 to 256", got)
	}
}

// pageStore records the largest limit After was called with (0: none).
type pageStore struct {
	*wsroom.MemoryStore
	maxLimit atomic.Int64
}

func (s *pageStore) After(ctx context.Context, room, epoch string, seq uint64, limit int) ([]wsroom.Message, error) {
	if limit <= 0 {
		s.maxLimit.Store(1 << 30)
	} else if int64(limit) > s.maxLimit.Load() {
		s.maxLimit.Store(int64(limit))
	}
	return s.MemoryStore.After(ctx, room, epoch, seq, limit)
}

// A close the room starts keeps what the client sent before it knew of the
// close: the reader goes on reading and publishing until the peer answers.
func TestCloseKeepsWhatTheClientSent(t *testing.T) {
	b := &downBroker{LocalBroker: wsroom.NewLocalBroker(wsroom.NewMemoryStore(0, 0))}
	joined := make(chan *wsroom.Client, 2)
	f := newFixture(t, wsroom.WithBroker(b), wsroom.WithPing(0, 0), wsroom.WithOnJoin(func(c *wsroom.Client) { joined <- c }))
	watcher := f.dial(t, "")
	<-joined
	sender := f.dial(t, "")
	senderClient := <-joined
	go func() { // the sender reads only to see the close
		for {
			if _, _, err := sender.Read(context.Background()); err != nil {
				return
			}
		}
	}()
	b.down.Store(true)
	var want []string
	for i := range 5 {
		m := fmt.Sprint("s", i)
		want = append(want, m)
		write(t, sender, m) // into the socket: the reader waits on the broker
	}
	senderClient.Close(4001, "bye")
	time.Sleep(300 * time.Millisecond)
	b.down.Store(false)
	var got []string
	for range 5 {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		_, m, err := watcher.Read(ctx)
		cancel()
		if err != nil {
			break
		}
		got = append(got, string(m))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("messages sent before the close (-want +got):\n%s", diff)
	}
}

// A room whose Store fails when it starts retries until it knows where its
// history ends; a client that cannot wait that long is told to try again.
func TestRoomStartRetriesItsStore(t *testing.T) {
	t.Run("recovers", func(t *testing.T) {
		store := &lastFailStore{MemoryStore: wsroom.NewMemoryStore(0, 0)}
		store.fails.Store(3)
		f := newFixture(t, wsroom.WithStore(store))
		c := f.dial(t, "")
		publishAll(t, f.room, "hello")
		if got := read(t, c); got != "hello" {
			t.Errorf("got %q, want hello", got)
		}
		if n := f.room.Stats().Errors; n < 3 {
			t.Errorf("Stats().Errors = %d, want the 3 failures counted", n)
		}
	})
	t.Run("gives up with 1013", func(t *testing.T) {
		store := &lastFailStore{MemoryStore: wsroom.NewMemoryStore(0, 0)}
		store.fails.Store(1 << 30)
		f := newFixture(t, wsroom.WithStore(store), wsroom.WithWriteTimeout(300*time.Millisecond))
		c := dialURL(t, f.url)
		if code, _ := closeStatus(t, c); code != websocket.StatusTryAgainLater {
			t.Errorf("closed with %v, want 1013", code)
		}
	})
}

// lastFailStore fails the next fails calls of Last.
type lastFailStore struct {
	*wsroom.MemoryStore
	fails atomic.Int64
}

func (s *lastFailStore) Last(ctx context.Context, room string, n int) ([]wsroom.Message, error) {
	if s.fails.Add(-1) >= 0 {
		return nil, errors.New("store starting")
	}
	return s.MemoryStore.Last(ctx, room, n)
}

// A client whose message cannot be published while its history is still
// being replayed is told so (1013) once the replay ends: the close it asked
// for is not lost because its reader stopped first.
func TestPublishFailsDuringReplay(t *testing.T) {
	store := &blockingStore{MemoryStore: wsroom.NewMemoryStore(0, 0), release: make(chan struct{})}
	b := &downBroker{LocalBroker: wsroom.NewLocalBroker(store)}
	f := newFixture(t, wsroom.WithStore(store), wsroom.WithBroker(b), wsroom.WithPublishRetry(100*time.Millisecond), wsroom.WithPing(0, 0))
	publishAll(t, f.room, "first")
	store.blocking.Store(true)
	b.down.Store(true)
	c := dialURL(t, f.url+"?resume=:0") // its replay reads the store, which blocks
	waitUntil(t, "the replay's store read started", func() bool { return store.blocked.Load() })
	write(t, c, "lost")
	waitUntil(t, "the publish gave up", func() bool { return f.room.Stats().ClosedRetry == 1 })
	time.Sleep(50 * time.Millisecond)
	store.blocking.Store(false)
	close(store.release)
	if code, reason := closeStatus(t, c); code != websocket.StatusTryAgainLater {
		t.Errorf("client closed with %v %q, want 1013 for the message not published", code, reason)
	}
}
