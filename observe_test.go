package wsroom_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
)

// recorder is an Observer that keeps every event.
type recorder struct {
	mu      sync.Mutex
	fanouts []wsroom.FanoutEvent
	writes  []wsroom.WriteEvent
}

func (r *recorder) Fanout(e wsroom.FanoutEvent) {
	r.mu.Lock()
	r.fanouts = append(r.fanouts, e)
	r.mu.Unlock()
}

func (r *recorder) Write(e wsroom.WriteEvent) {
	r.mu.Lock()
	r.writes = append(r.writes, e)
	r.mu.Unlock()
}

// totals returns the fan-outs so far and the sums of the writes' fields.
func (r *recorder) totals() (fanouts []wsroom.FanoutEvent, frames, live, bytes int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range r.writes {
		frames += w.Frames
		live += w.Live
		bytes += w.Bytes
	}
	return append([]wsroom.FanoutEvent(nil), r.fanouts...), frames, live, bytes
}

// The Observer sees each fan-out with its clients, and each write with its
// frames, bytes and publish-to-write latency; history has no latency.
func TestObserverSeesFanoutsAndWrites(t *testing.T) {
	rec := &recorder{}
	reg := wsroom.NewRegistry(wsroom.WithObserver(rec), wsroom.WithHistory(2), wsroom.WithPing(0, 0))
	t.Cleanup(func() { reg.Close() })
	srv := newServer(t, reg.Handler(func(r *http.Request) string { return strings.TrimPrefix(r.URL.Path, "/") }))
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/lobby"
	room, err := reg.Room("lobby")
	if err != nil {
		t.Fatal(err)
	}
	var clients []*websocket.Conn
	for i := range 3 {
		clients = append(clients, dialURL(t, url))
		waitUntil(t, fmt.Sprintf("%d clients", i+1), func() bool { return room.Len() == i+1 })
	}
	start := time.Now()
	for i := range 4 {
		if err := room.Publish(t.Context(), fmt.Appendf(nil, "m%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range clients {
		for i := range 4 {
			if got, want := read(t, c), fmt.Sprintf("m%d", i); got != want {
				t.Fatalf("read %q, want %q", got, want)
			}
		}
	}
	// The loop observes a fan-out once it has queued the message to every
	// client, maybe after they read it.
	// A client whose history replay (WithHistory) read the store after a
	// message was published gets that message as history, not live: the
	// two add up to 12.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		fanouts, frames, live, _ := rec.totals()
		if len(fanouts) == 4 && frames == 12 && live+int(room.Stats().Replayed) == 12 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("observed %d fan-outs and %d frames of which %d live (%d replayed), want 4 and 12", len(fanouts), frames, live, room.Stats().Replayed)
		}
	}
	elapsed := time.Since(start)
	fanouts, frames, _, bytes := rec.totals()
	if len(fanouts) != 4 {
		t.Errorf("%d fan-outs observed, want 4", len(fanouts))
	}
	for _, f := range fanouts {
		if f.Room != "lobby" || f.Clients != 3 || f.Duration <= 0 || f.Duration > elapsed {
			t.Errorf("fan-out %+v, want room lobby, 3 clients, a duration in (0, %v]", f, elapsed)
		}
	}
	if frames != 12 || bytes != 12*4 {
		t.Errorf("writes of %d frames, %d bytes, want 12 frames of 4 bytes", frames, bytes)
	}
	rec.mu.Lock()
	for _, w := range rec.writes {
		if w.Room != "lobby" && w.Live > 0 || w.Live > w.Frames || w.Live > 0 && (w.Latency <= 0 || w.Latency > elapsed) || w.Live == 0 && w.Latency != 0 {
			t.Errorf("write %+v, want room lobby, and a latency in (0, %v] when a frame is live", w, elapsed)
		}
	}
	rec.writes = nil
	replayed := room.Stats().Replayed
	rec.mu.Unlock()

	// A newcomer gets two messages of history: written, with no latency.
	late := dialURL(t, url)
	read(t, late)
	read(t, late)
	waitUntil(t, "the history's write observed", func() bool { _, frames, _, _ := rec.totals(); return frames == 2 })
	if n := room.Stats().Replayed - replayed; n != 2 {
		t.Errorf("Stats().Replayed grew by %d, want 2", n)
	}
	rec.mu.Lock()
	for _, w := range rec.writes {
		if w.Live != 0 || w.Latency != 0 || w.Room != "lobby" {
			t.Errorf("history write %+v, want room lobby, no live frame, no latency", w)
		}
	}
	rec.mu.Unlock()
	if q := room.Stats().Queued; q != 0 {
		t.Errorf("Stats().Queued = %d once every client read all, want 0", q)
	}
}

// A connection of many rooms reports the room of each batch's oldest live
// message.
func TestObserverRoomOfManyRoomWrites(t *testing.T) {
	rec := &recorder{}
	f := newMux(t, wsroom.WithObserver(rec), wsroom.WithPing(0, 0))
	c := f.dial(t)
	send(t, c, `{"op":"join","room":"a"}`)
	expect(t, c, "joined")
	rec.mu.Lock()
	rec.writes = nil // the reply
	rec.mu.Unlock()
	if err := f.reg.Publish(t.Context(), "a", []byte("x")); err != nil {
		t.Fatal(err)
	}
	expect(t, c, "msg")
	waitUntil(t, "the message's write observed", func() bool { _, _, live, _ := rec.totals(); return live == 1 })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if w := rec.writes[len(rec.writes)-1]; w.Room != "a" || w.Frames != 1 || w.Latency <= 0 {
		t.Errorf("write %+v, want one frame of room a with a latency", w)
	}
	if q := f.reg.Stats().Queued; q != 0 {
		t.Errorf("Registry.Stats().Queued = %d once the client read all, want 0", q)
	}
}

// Stats.Queued counts the frames waiting for a stuck client's writer, and
// forgets them when the client is dropped with frames still queued.
func TestQueuedCountsWaitingFrames(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		room := wsroom.New(wsroom.WithWriteTimeout(time.Second), wsroom.WithPing(0, 0))
		defer room.Close()
		stuck := pipeDial(t, room.Handler())
		_ = stuck // never reads
		synctest.Wait()
		publishAll(t, room, "m1")
		synctest.Wait() // the writer now waits on the stuck pipe with m1
		publishAll(t, room, "m2", "m3", "m4")
		synctest.Wait()
		if q := room.Stats().Queued; q != 3 {
			t.Errorf("Stats().Queued = %d with three frames behind a stuck write, want 3", q)
		}
		time.Sleep(2 * time.Second) // the write times out: the client is dropped
		synctest.Wait()
		if st := room.Stats(); st.Queued != 0 || st.ClosedWrite != 1 || st.Clients != 0 {
			t.Errorf("Stats() = %+v after the write timeout, want Queued 0, ClosedWrite 1, Clients 0", st)
		}
	})
}
