package wsroom_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
)

// gatedObserver holds up the room's loop in Fanout until open is closed,
// so that a test can publish faster than the loop delivers.
type gatedObserver struct {
	open    chan struct{}
	fanouts atomic.Int64
}

func (o *gatedObserver) Fanout(wsroom.FanoutEvent) {
	o.fanouts.Add(1)
	<-o.open
}

func (o *gatedObserver) Write(wsroom.WriteEvent) {}

// overloadMessages is more than the room's inbox (1,024) and the store's
// history (storeLimit) hold together: a loop that fell this far behind
// could not catch up from the store.
const (
	overloadMessages = 1500
	storeLimit       = 100
)

// flood publishes overloadMessages numbered messages to room from a
// goroutine while the loop is held up by obs, and opens the gate once the
// publisher has finished or, unless waitAll, has stopped getting through
// (it waits for the loop). It returns a channel that yields the
// publisher's first error.
func flood(t *testing.T, room *wsroom.Room, obs *gatedObserver, waitAll bool) <-chan error {
	t.Helper()
	var published atomic.Int64
	done := make(chan error, 1)
	go func() {
		for i := 1; i <= overloadMessages; i++ {
			if err := room.Publish(context.Background(), []byte(strconv.Itoa(i))); err != nil {
				done <- err
				return
			}
			published.Add(1)
		}
		done <- nil
	}()
	// The loop is stuck in the first fan-out: every later message waits.
	waitUntil(t, "the loop is held up", func() bool { return obs.fanouts.Load() > 0 })
	// Hold the loop until the publisher is done or stalls (not an
	// assertion: either way the gate opens and the test goes on).
	if waitAll {
		err := <-done
		close(obs.open)
		done <- err
		return done
	}
	var last int64 = -1
	for published.Load() < overloadMessages && published.Load() != last {
		last = published.Load()
		time.Sleep(200 * time.Millisecond)
	}
	close(obs.open)
	return done
}

// On a single node (the default LocalBroker), a room whose loop is behind
// slows its publishers: Publish waits for the inbox. No client is
// resynchronised, and each gets every message, in order, even when far more
// were published than the inbox and the history hold.
func TestOverloadSlowsPublishers(t *testing.T) {
	obs := &gatedObserver{open: make(chan struct{})}
	store := wsroom.NewMemoryStore(storeLimit, 0)
	f := newFixture(t, wsroom.WithStore(store), wsroom.WithCodec(wsroom.JSON()),
		wsroom.WithObserver(obs), wsroom.WithSendBuffer(2*overloadMessages))
	const clients = 3
	var conns []*websocket.Conn
	for range clients {
		conns = append(conns, f.dial(t, ""))
	}
	done := flood(t, f.room, obs, false)
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i, c := range conns {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			for want := uint64(1); want <= overloadMessages; want++ {
				_, b, err := c.Read(ctx)
				if err != nil {
					errs <- fmt.Errorf("client %d: reading message %d: %w (close status %v)", i, want, err, websocket.CloseStatus(err))
					return
				}
				var e envelope
				if err := json.Unmarshal(b, &e); err != nil {
					errs <- fmt.Errorf("client %d: envelope %q: %w", i, b, err)
					return
				}
				if e.Seq != want || string(e.Data) != strconv.FormatUint(want, 10) {
					errs <- fmt.Errorf("client %d: got seq %d data %s, want %d", i, e.Seq, e.Data, want)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := <-done; err != nil {
		t.Errorf("Publish: %v", err)
	}
	st := f.room.Stats()
	if st.Resyncs != 0 || st.Overflow != 0 {
		t.Errorf("Stats: Resyncs %d, Overflow %d, want 0 and 0", st.Resyncs, st.Overflow)
	}
	if n := f.room.Len(); n != clients {
		t.Errorf("room has %d clients after the flood, want %d", n, clients)
	}
}

// A Broker other than the LocalBroker (one across nodes) never waits for
// the loop: the loop falls behind, catches up from the store while the
// store holds what it missed, and resynchronises its clients, counted in
// Stats.Resyncs, only once it does not.
func TestOverloadAcrossNodesResyncsOnlyPastTheStore(t *testing.T) {
	obs := &gatedObserver{open: make(chan struct{})}
	store := wsroom.NewMemoryStore(storeLimit, 0)
	b := &lossyBroker{LocalBroker: wsroom.NewLocalBroker(store)} // not a *LocalBroker: never waits
	f := newFixture(t, wsroom.WithStore(store), wsroom.WithBroker(b), wsroom.WithCodec(wsroom.JSON()),
		wsroom.WithObserver(obs), wsroom.WithSendBuffer(2*overloadMessages))
	c := f.dial(t, "")
	done := flood(t, f.room, obs, true) // the publisher never waits
	if err := <-done; err != nil {
		t.Fatalf("Publish: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var err error
	for err == nil {
		_, _, err = c.Read(ctx)
	}
	if got := websocket.CloseStatus(err); got != wsroom.StatusResync {
		t.Fatalf("client closed with %v (%v), want StatusResync", got, err)
	}
	st := f.room.Stats()
	if st.Overflow == 0 || st.Resyncs != 1 {
		t.Errorf("Stats: Overflow %d, Resyncs %d, want > 0 and 1", st.Overflow, st.Resyncs)
	}
}

// A publish whose context ends while it waits for the loop returns without
// error: its message is numbered and stored, and the loop reads it back
// from the store, so every client still gets every message in order.
func TestOverloadPublishContextEnds(t *testing.T) {
	obs := &gatedObserver{open: make(chan struct{})}
	store := wsroom.NewMemoryStore(4096, 0) // holds all: the catch-up needs no resync
	f := newFixture(t, wsroom.WithStore(store), wsroom.WithCodec(wsroom.JSON()),
		wsroom.WithObserver(obs), wsroom.WithSendBuffer(4096))
	c := f.dial(t, "")
	const inbox = 1024
	publishAll(t, f.room, "1") // held up in the loop's fan-out
	waitUntil(t, "the loop is held up", func() bool { return obs.fanouts.Load() > 0 })
	for i := 2; i <= inbox+1; i++ { // fills the inbox
		publishAll(t, f.room, strconv.Itoa(i))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	err := f.room.Publish(ctx, []byte(strconv.Itoa(inbox+2))) // waits, then gives up waiting
	cancel()
	if err != nil {
		t.Fatalf("Publish once its context ended waiting = %v, want nil (the message is stored)", err)
	}
	close(obs.open)
	for want := uint64(1); want <= inbox+2; want++ {
		if e := readEnvelope(t, c); e.Seq != want || string(e.Data) != strconv.FormatUint(want, 10) {
			t.Fatalf("got seq %d data %s, want %d", e.Seq, e.Data, want)
		}
	}
	if st := f.room.Stats(); st.Overflow != 1 || st.Resyncs != 0 {
		t.Errorf("Stats: Overflow %d, Resyncs %d, want 1 and 0", st.Overflow, st.Resyncs)
	}
}
