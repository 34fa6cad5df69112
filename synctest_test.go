package wsroom_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
	"github.com/google/go-cmp/cmp"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/internal/wspipe"
)

// These tests run in a synctest bubble over in-memory pipes: time is
// virtual, and a write to a client that does not read blocks at once, as a
// stuck peer's full socket would.

func pipeDial(t *testing.T, h http.Handler) *websocket.Conn {
	t.Helper()
	c, _, err := wspipe.Dial(t.Context(), h, "ws://room.test/", nil)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

func publishAll(t *testing.T, room *wsroom.Room, msgs ...string) {
	t.Helper()
	for _, m := range msgs {
		if err := room.Publish(t.Context(), []byte(m)); err != nil {
			t.Fatalf("Publish(%q): %v", m, err)
		}
	}
}

// readAll reads until the connection closes and returns the messages and
// the close error.
func readAll(c *websocket.Conn) ([]string, error) {
	var out []string
	for {
		_, b, err := c.Read(context.Background())
		if err != nil {
			return out, err
		}
		out = append(out, string(b))
	}
}

// Guarantee 2: a stuck client costs at most its send buffer, never blocks
// the room, and the slow-client policy applies when the buffer is full.
func TestSlowClientPolicies(t *testing.T) {
	tests := []struct {
		policy    wsroom.SlowPolicy
		wantStuck []string
		wantCode  websocket.StatusCode
		wantStats wsroom.Stats
	}{
		{wsroom.CloseSlow, []string{"m1"}, websocket.StatusPolicyViolation, wsroom.Stats{ClosedSlow: 1, Queued: 2}},
		{wsroom.DropOldest, []string{"m1", "m5", "m6"}, websocket.StatusGoingAway, wsroom.Stats{Dropped: 3, Queued: 2}},
		{wsroom.DropNewest, []string{"m1", "m2", "m3"}, websocket.StatusGoingAway, wsroom.Stats{Dropped: 3, Queued: 2}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.policy), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				room := wsroom.New(wsroom.WithSendBuffer(2), wsroom.WithSlowPolicy(tt.policy), wsroom.WithPing(0, 0))
				defer room.Close()
				h := room.Handler()
				stuck, healthy := pipeDial(t, h), pipeDial(t, h)
				healthyGot := make(chan []string)
				go func() {
					msgs, _ := readAll(healthy)
					healthyGot <- msgs
				}()
				synctest.Wait()
				publishAll(t, room, "m1")
				synctest.Wait() // the stuck client's writer now blocks on m1
				for _, m := range []string{"m2", "m3", "m4", "m5", "m6"} {
					publishAll(t, room, m)
					synctest.Wait() // the healthy client keeps up
				}

				got := room.Stats()
				if diff := cmp.Diff(tt.wantStats, got, cmpStats("ClosedSlow", "Dropped", "Queued")); diff != "" {
					t.Errorf("Stats (-want +got):\n%s", diff)
				}
				go room.Shutdown(context.Background())
				msgs, err := readAll(stuck)
				if diff := cmp.Diff(tt.wantStuck, msgs); diff != "" {
					t.Errorf("stuck client received (-want +got):\n%s", diff)
				}
				if code := websocket.CloseStatus(err); code != tt.wantCode {
					t.Errorf("stuck client closed with %v, want %v", err, tt.wantCode)
				}
				if diff := cmp.Diff([]string{"m1", "m2", "m3", "m4", "m5", "m6"}, <-healthyGot); diff != "" {
					t.Errorf("healthy client received (-want +got):\n%s", diff)
				}
				synctest.Wait()
				if q := room.Stats().Queued; q != 0 {
					t.Errorf("Stats().Queued = %d after the shutdown, want 0", q)
				}
			})
		})
	}
}

// cmpStats compares only the named Stats fields.
func cmpStats(fields ...string) cmp.Option {
	keep := map[string]bool{}
	for _, f := range fields {
		keep[f] = true
	}
	return cmp.FilterPath(func(p cmp.Path) bool {
		sf, ok := p.Last().(cmp.StructField)
		return ok && !keep[sf.Name()]
	}, cmp.Ignore())
}

// Guarantee 3: a peer that stops answering pings is dropped within ping
// interval + pong timeout; one that answers stays.
func TestPingDropsDeadPeer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const interval, timeout = 10 * time.Second, 3 * time.Second
		left := make(chan error, 2)
		room := wsroom.New(wsroom.WithPing(interval, timeout), wsroom.WithOnLeave(func(c *wsroom.Client, reason error) { left <- reason }))
		defer room.Close()
		h := room.Handler()
		dead, alive := pipeDial(t, h), pipeDial(t, h)
		_ = dead // never reads, so never answers a ping
		go readAll(alive)
		start := time.Now()
		synctest.Wait()

		time.Sleep(interval + timeout - time.Millisecond)
		synctest.Wait()
		if n := room.Len(); n != 2 {
			t.Fatalf("Len() = %d just before interval+timeout, want 2", n)
		}
		time.Sleep(2 * time.Millisecond)
		synctest.Wait()
		if n := room.Len(); n != 1 {
			t.Fatalf("Len() = %d after interval+timeout, want 1", n)
		}
		if reason := <-left; !errors.Is(reason, wsroom.ErrPongTimeout) {
			t.Errorf("leave reason = %v, want ErrPongTimeout", reason)
		}
		if got := room.Stats().ClosedPing; got != 1 {
			t.Errorf("Stats().ClosedPing = %d, want 1", got)
		}
		time.Sleep(10 * interval)
		synctest.Wait()
		if n := room.Len(); n != 1 {
			t.Errorf("Len() = %d after %v, want the answering client still there", n, time.Since(start))
		}
	})
}

// Guarantee 4: a client over its rate limit is throttled, and others see no
// slowdown.
func TestRateLimitThrottles(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		room := wsroom.New(wsroom.WithRateLimit(10, 1, wsroom.Throttle), wsroom.WithPing(0, 0))
		defer room.Close()
		h := room.Handler()
		flood, calm, watcher := pipeDial(t, h), pipeDial(t, h), pipeDial(t, h)
		go readAll(flood)
		go readAll(calm)
		type got struct {
			msg string
			at  time.Duration
		}
		seen := make(chan got, 100)
		start := time.Now()
		go func() {
			for {
				_, b, err := watcher.Read(context.Background())
				if err != nil {
					close(seen)
					return
				}
				seen <- got{string(b), time.Since(start)}
			}
		}()
		synctest.Wait()
		go func() { // a pipe has no buffer: these writes wait for the throttled reader
			for i := range 5 {
				if err := flood.Write(context.Background(), websocket.MessageText, fmt.Appendf(nil, "f%d", i)); err != nil {
					t.Errorf("flood write %d: %v", i, err)
				}
			}
		}()
		synctest.Wait()
		if err := calm.Write(t.Context(), websocket.MessageText, []byte("calm")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		room.Close()
		var order []got
		for g := range seen {
			order = append(order, g)
		}
		want := []got{{"f0", 0}, {"calm", 0}, {"f1", 100 * time.Millisecond}, {"f2", 200 * time.Millisecond}, {"f3", 300 * time.Millisecond}, {"f4", 400 * time.Millisecond}}
		if diff := cmp.Diff(want, order, cmp.AllowUnexported(got{})); diff != "" {
			t.Errorf("watcher saw (-want +got):\n%s", diff)
		}
		if n := room.Stats().Throttled; n != 4 {
			t.Errorf("Stats().Throttled = %d, want 4", n)
		}
	})
}

// A registry forgets a room once it has been empty for the idle timeout.
func TestRegistryIdleRoomsExpire(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := wsroom.NewRegistry(wsroom.WithIdleTimeout(time.Minute), wsroom.WithPing(0, 0))
		defer reg.Close()
		mux := http.NewServeMux()
		mux.Handle("GET /rooms/{name}", reg.Handler(nil))
		c, _, err := wspipe.Dial(t.Context(), mux, "ws://x/rooms/lobby", nil)
		if err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		if got := names(reg); !cmp.Equal(got, []string{"lobby"}) {
			t.Fatalf("rooms with a client after 2m = %v, want [lobby]", got)
		}
		c.Close(websocket.StatusNormalClosure, "")
		synctest.Wait()
		time.Sleep(time.Minute - time.Millisecond)
		synctest.Wait()
		if got := names(reg); !cmp.Equal(got, []string{"lobby"}) {
			t.Fatalf("rooms just before the idle timeout = %v, want [lobby]", got)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if got := names(reg); len(got) != 0 {
			t.Errorf("rooms after the idle timeout = %v, want none", got)
		}
	})
}

func names(reg *wsroom.Registry) []string {
	var out []string
	for _, r := range reg.Rooms() {
		out = append(out, r.Name())
	}
	return out
}

// The deadline of a message write must not outlive it: later writes, such as
// pings long after, go through.
func TestWriteDeadlineDoesNotLinger(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		room := wsroom.New(wsroom.WithWriteTimeout(time.Second), wsroom.WithPing(5*time.Second, time.Second))
		defer room.Close()
		c := pipeDial(t, room.Handler())
		got := make(chan []string, 1)
		go func() {
			msgs, _ := readAll(c)
			got <- msgs
		}()
		synctest.Wait()
		publishAll(t, room, "m1")
		time.Sleep(time.Minute) // many pings, each long after the write's deadline
		synctest.Wait()
		if n := room.Len(); n != 1 {
			t.Errorf("Len() = %d a minute after a write, want the client still there", n)
		}
		publishAll(t, room, "m2")
		synctest.Wait()
		room.Close()
		if diff := cmp.Diff([]string{"m1", "m2"}, <-got); diff != "" {
			t.Errorf("client received (-want +got):\n%s", diff)
		}
	})
}
