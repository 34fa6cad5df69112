package redisbroker

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wsroom/wsroom"
)

// flightHook counts the pipelines with an XRANGE (the history reads of
// After) its client has under way, and the most at once.
type flightHook struct {
	now, peak atomic.Int64
}

func (h *flightHook) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *flightHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (h *flightHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		reads := false
		for _, cmd := range cmds {
			if strings.EqualFold(cmd.Name(), "xrange") {
				reads = true
			}
		}
		if !reads {
			return next(ctx, cmds)
		}
		n := h.now.Add(1)
		for p := h.peak.Load(); n > p && !h.peak.CompareAndSwap(p, n); p = h.peak.Load() {
		}
		defer h.now.Add(-1)
		return next(ctx, cmds)
	}
}

// catchUpStore is the Broker, as the rooms' Broker and Store, noting when each room's
// After first returns a message, and the errors After returns.
type catchUpStore struct {
	*Broker
	mu     sync.Mutex
	caught map[string]time.Time
	calls  atomic.Int64
	errs   atomic.Int64
	all    chan struct{} // closed once want rooms have caught up
	want   int
}

func (s *catchUpStore) After(ctx context.Context, room, epoch string, seq uint64, limit int) ([]wsroom.Message, error) {
	s.calls.Add(1)
	ms, err := s.Broker.After(ctx, room, epoch, seq, limit)
	if err != nil {
		s.errs.Add(1)
	}
	if len(ms) > 0 {
		s.mu.Lock()
		if _, ok := s.caught[room]; !ok {
			s.caught[room] = time.Now()
			if len(s.caught) == s.want {
				close(s.all)
			}
		}
		s.mu.Unlock()
	}
	return ms, err
}

// TestCatchUpAfterReconnect runs 1,000 rooms on one Broker whose pub/sub
// connection is killed, and held down while each room gets a message:
// once it is back, every room is told it lost messages and reads them
// from the history at once. The Broker's history reads must never be more
// at once than WithReadConcurrency allows (counted as the pipelines with an
// XRANGE handed to the go-redis client, a wait for one of its connections
// included); the time until every room has its message and the peak are
// logged. Without the bound, the peak was 233 to 983 reads at once.
func TestCatchUpAfterReconnect(t *testing.T) {
	requireRedis(t)
	const rooms, bound = 1000, 8
	flights := &flightHook{}
	g := newGatedClient(t, redisAddr(), "wsroom-test-herd-"+newEpoch()[:8])
	g.client.AddHook(flights)
	a := New(g.client, WithMaxAge(testMaxAge), WithReadConcurrency(bound))
	t.Cleanup(func() { a.Close() })
	store := &catchUpStore{Broker: a, caught: make(map[string]time.Time), all: make(chan struct{}), want: rooms}
	reg := wsroom.NewRegistry(wsroom.WithBroker(store), wsroom.WithIdleTimeout(time.Hour))
	t.Cleanup(func() { reg.Close() })
	pub := newBroker(t)

	names := make([]string, rooms)
	for i := range names {
		names[i] = roomName(t)
		if _, err := reg.Room(names[i]); err != nil {
			t.Fatal(err)
		}
	}
	// Each room reads the history once it has subscribed: wait for that,
	// so that only the reads after the reconnection are counted.
	waitUntil(t, "every room subscribed and caught up", func() bool {
		return store.calls.Load() >= rooms && flights.now.Load() == 0
	})
	startCalls, startErrs := store.calls.Load(), store.errs.Load()
	flights.peak.Store(0)

	g.hold()
	g.killPubSub(t)
	for _, name := range names {
		publish(t, pub, name, "missed")
	}
	start := time.Now()
	g.release()
	select {
	case <-store.all:
	case <-time.After(time.Minute):
		store.mu.Lock()
		n := len(store.caught)
		store.mu.Unlock()
		t.Fatalf("%d of %d rooms caught up within a minute of the reconnection", n, rooms)
	}
	var last time.Time
	store.mu.Lock()
	for _, at := range store.caught {
		if at.After(last) {
			last = at
		}
	}
	store.mu.Unlock()
	peak := flights.peak.Load()
	t.Logf("%d rooms: all caught up %v after the reconnection; %d After calls (%d failed); at most %d history reads at once (bound %d)",
		rooms, last.Sub(start).Round(time.Millisecond), store.calls.Load()-startCalls, store.errs.Load()-startErrs, peak, bound)
	if peak > bound {
		t.Errorf("%d history reads at once, want at most WithReadConcurrency(%d)", peak, bound)
	}
}
