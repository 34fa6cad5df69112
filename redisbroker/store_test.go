package redisbroker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/brokertest"
	"github.com/wsroom/wsroom/storetest"
)

func TestStoreConformance(t *testing.T) {
	requireRedis(t)
	storetest.Run(t, func(t *testing.T) wsroom.Store { return newBroker(t) })
}

var _ wsroom.Sequencer = (*Broker)(nil)

// TestBrokerConformance gives each node of a case a Broker with a client of
// its own, so deliveries really cross Redis between nodes.
func TestBrokerConformance(t *testing.T) {
	requireRedis(t)
	brokertest.Run(t, func(t *testing.T) wsroom.Broker {
		return crashable{newBroker(t, WithPresenceTTL(time.Second))}
	})
}

func appendN(t *testing.T, s wsroom.Store, room string, n int, at time.Time) []wsroom.Message {
	t.Helper()
	var out []wsroom.Message
	for range n {
		m, err := s.Append(t.Context(), room, wsroom.Message{Data: []byte("x"), Time: at})
		if err != nil {
			t.Fatalf("Append error: %v", err)
		}
		out = append(out, m)
	}
	return out
}

func span(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

func TestHistoryLimit(t *testing.T) {
	b := newBroker(t, WithHistoryLimit(5))
	room := roomName(t)
	ms := appendN(t, b, room, 12, time.Time{})
	epoch := ms[0].Epoch
	if got := seqs(ms); !slices.Equal(got, span(1, 12)) {
		t.Fatalf("Append seqs = %v, want 1..12", got)
	}
	_, log := b.keys(room)
	if n, err := b.client.XLen(t.Context(), log).Result(); err != nil || n != 5 {
		t.Errorf("XLEN = %d, %v; want 5", n, err)
	}
	got, err := b.Last(t.Context(), room, 100)
	if err != nil || !slices.Equal(seqs(got), span(8, 12)) {
		t.Errorf("Last(100) = %v, %v; want 8..12", seqs(got), err)
	}
	got, err = b.After(t.Context(), room, epoch, 7, 0)
	if err != nil || !slices.Equal(seqs(got), span(8, 12)) {
		t.Errorf("After(7) = %v, %v; want 8..12", seqs(got), err)
	}
	got, err = b.After(t.Context(), room, epoch, 9, 2)
	if err != nil || !slices.Equal(seqs(got), span(10, 11)) {
		t.Errorf("After(9, limit 2) = %v, %v; want 10..11", seqs(got), err)
	}
	for _, pos := range []struct {
		epoch string
		seq   uint64
	}{{epoch, 6}, {epoch, 0}, {"", 0}} {
		if got, err := b.After(t.Context(), room, pos.epoch, pos.seq, 0); !errors.Is(err, wsroom.ErrGap) {
			t.Errorf("After(%q, %d) past the trimmed start = %v, %v; want ErrGap", pos.epoch, pos.seq, seqs(got), err)
		}
	}
}

// TestMaxAgeByMessageTime checks age retention with messages whose Time is
// in the past, so no waiting is needed.
func TestMaxAgeByMessageTime(t *testing.T) {
	b := newBroker(t, WithMaxAge(time.Hour))
	room := roomName(t)
	old := appendN(t, b, room, 3, time.Now().Add(-2*time.Hour))
	epoch := old[0].Epoch
	got, err := b.Last(t.Context(), room, 10)
	if err != nil || len(got) != 0 {
		t.Errorf("Last with only expired messages = %v, %v; want none", seqs(got), err)
	}
	appendN(t, b, room, 2, time.Time{})
	_, log := b.keys(room)
	if n, err := b.client.XLen(t.Context(), log).Result(); err != nil || n != 2 {
		t.Errorf("XLEN after a fresh append = %d, %v; want 2 (expired entries trimmed)", n, err)
	}
	got, err = b.Last(t.Context(), room, 10)
	if err != nil || !slices.Equal(seqs(got), []uint64{4, 5}) {
		t.Errorf("Last = %v, %v; want [4 5]", seqs(got), err)
	}
	got, err = b.After(t.Context(), room, epoch, 3, 0)
	if err != nil || !slices.Equal(seqs(got), []uint64{4, 5}) {
		t.Errorf("After(3) = %v, %v; want [4 5]", seqs(got), err)
	}
	if _, err := b.After(t.Context(), room, epoch, 2, 0); !errors.Is(err, wsroom.ErrGap) {
		t.Errorf("After(2), reaching an expired message, error = %v; want ErrGap", err)
	}
	meta, _ := b.keys(room)
	for _, key := range []string{meta, log} {
		ttl, err := b.client.PTTL(t.Context(), key).Result()
		if err != nil || ttl <= 59*time.Minute || ttl > time.Hour {
			t.Errorf("PTTL(%s) = %v, %v; want about an hour", key, ttl, err)
		}
	}
}

// TestMaxAgeOverTime lets messages age for real, then lets the whole room
// expire: its next message starts a new epoch.
func TestMaxAgeOverTime(t *testing.T) {
	const age = time.Second
	b := newBroker(t, WithMaxAge(age))
	room := roomName(t)
	first := appendN(t, b, room, 2, time.Time{})
	epoch := first[0].Epoch
	time.Sleep(700 * time.Millisecond)
	appendN(t, b, room, 1, time.Time{})
	time.Sleep(500 * time.Millisecond) // 1,2 are 1.2 s old, 3 is 0.5 s old
	got, err := b.Last(t.Context(), room, 10)
	if err != nil || !slices.Equal(seqs(got), []uint64{3}) {
		t.Errorf("Last = %v, %v; want [3]", seqs(got), err)
	}
	if got, err := b.After(t.Context(), room, epoch, 2, 0); err != nil || !slices.Equal(seqs(got), []uint64{3}) {
		t.Errorf("After(2) = %v, %v; want [3]", seqs(got), err)
	}
	if _, err := b.After(t.Context(), room, epoch, 1, 0); !errors.Is(err, wsroom.ErrGap) {
		t.Errorf("After(1) error = %v; want ErrGap", err)
	}
	time.Sleep(age) // the room has been idle for longer than age
	if _, err := b.After(t.Context(), room, epoch, 3, 0); !errors.Is(err, wsroom.ErrGap) {
		t.Errorf("After(3) on an expired room error = %v; want ErrGap", err)
	}
	if got, err := b.Last(t.Context(), room, 10); err != nil || len(got) != 0 {
		t.Errorf("Last on an expired room = %v, %v; want none", seqs(got), err)
	}
	m := appendN(t, b, room, 1, time.Time{})[0]
	if m.Seq != 1 || m.Epoch == epoch || m.Epoch == "" {
		t.Errorf("Append after expiry = seq %d epoch %q; want seq 1 in a new epoch (old %q)", m.Seq, m.Epoch, epoch)
	}
}

func TestEpoch(t *testing.T) {
	a, b := newBroker(t), newBroker(t)
	room := roomName(t)
	ma := appendN(t, a, room, 2, time.Time{})
	mb := appendN(t, b, room, 2, time.Time{})
	if got := seqs(append(ma, mb...)); !slices.Equal(got, span(1, 4)) {
		t.Errorf("seqs across two nodes = %v, want 1..4", got)
	}
	epoch := ma[0].Epoch
	for _, m := range append(ma, mb...) {
		if m.Epoch != epoch {
			t.Errorf("message %d has epoch %q, want %q on every node", m.Seq, m.Epoch, epoch)
		}
	}

	t.Run("history lost", func(t *testing.T) {
		meta, log := a.keys(room)
		if err := a.client.Del(t.Context(), meta, log).Err(); err != nil {
			t.Fatal(err)
		}
		m := appendN(t, b, room, 1, time.Time{})[0]
		if m.Seq != 1 || m.Epoch == epoch {
			t.Errorf("Append after the history was lost = seq %d epoch %q; want seq 1 in a new epoch", m.Seq, m.Epoch)
		}
		if _, err := a.After(t.Context(), room, epoch, 4, 0); !errors.Is(err, wsroom.ErrGap) {
			t.Errorf("After(old epoch, 4) error = %v; want ErrGap", err)
		}
		if got, err := a.After(t.Context(), room, epoch, 0, 0); !errors.Is(err, wsroom.ErrGap) {
			t.Errorf("After(old epoch, 0) = %v, %v; want ErrGap", seqs(got), err)
		}
		got, err := a.After(t.Context(), room, m.Epoch, 0, 0)
		if err != nil || !slices.Equal(seqs(got), []uint64{1}) || got[0].Epoch != m.Epoch {
			t.Errorf("After(new epoch, 0) = %v, %v; want [1] in the new epoch", seqs(got), err)
		}
		epoch = m.Epoch
	})

	t.Run("metadata lost", func(t *testing.T) {
		appendN(t, a, room, 2, time.Time{}) // seqs 2, 3
		meta, log := a.keys(room)
		if err := a.client.Del(t.Context(), meta).Err(); err != nil {
			t.Fatal(err)
		}
		// The stream is left behind, as eviction might; it must not be
		// served as part of the new epoch.
		m := appendN(t, a, room, 1, time.Time{})[0]
		if m.Seq != 1 || m.Epoch == epoch {
			t.Errorf("Append after the metadata was lost = seq %d epoch %q; want seq 1 in a new epoch", m.Seq, m.Epoch)
		}
		if n, err := a.client.XLen(t.Context(), log).Result(); err != nil || n != 1 {
			t.Errorf("XLEN = %d, %v; want 1 (the stale entries dropped)", n, err)
		}
		got, err := a.Last(t.Context(), room, 10)
		if err != nil || !slices.Equal(seqs(got), []uint64{1}) {
			t.Errorf("Last = %v, %v; want [1]", seqs(got), err)
		}
	})
}

// TestStoredMessage checks what Append returns and what After reads back.
func TestStoredMessage(t *testing.T) {
	b := newBroker(t)
	room := roomName(t)
	in := wsroom.Message{Seq: 99, Epoch: "bogus", From: "c1", Except: "c2", Ephemeral: true, Data: []byte("hi")}
	m, err := b.Append(t.Context(), room, in)
	if err != nil {
		t.Fatal(err)
	}
	if m.Seq != 1 || m.Epoch == "bogus" || m.Except != "" || m.Ephemeral || m.Time.IsZero() || m.Time.Nanosecond()%int(time.Millisecond) != 0 {
		t.Errorf("Append = %+v; want seq 1, a new epoch, no Except, not ephemeral, Time set to the millisecond", m)
	}
	got, err := b.After(t.Context(), room, "", 0, 0)
	if err != nil || len(got) != 1 {
		t.Fatalf("After = %v, %v; want one message", got, err)
	}
	if g := got[0]; g.Seq != m.Seq || g.Epoch != m.Epoch || !g.Time.Equal(m.Time) || g.From != "c1" || string(g.Data) != "hi" {
		t.Errorf("After returned %+v, want %+v", g, m)
	}
}

func TestAfterLimitAndLargeHistory(t *testing.T) {
	b := newBroker(t)
	room := roomName(t)
	ms := appendN(t, b, room, 150, time.Time{})
	got, err := b.After(t.Context(), room, ms[0].Epoch, 20, 100)
	if err != nil || !slices.Equal(seqs(got), span(21, 120)) {
		t.Errorf("After(20, limit 100) = %d messages from %v, %v; want 21..120", len(got), seqs(got[:min(1, len(got))]), err)
	}
}

// xrangeHook records the COUNT of each XRANGE its client sends (-1 for
// none), and calls before, if set, with the number of XRANGEs sent so far
// ahead of each.
type xrangeHook struct {
	mu     sync.Mutex
	counts []int64
	before func(n int)
}

func (h *xrangeHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *xrangeHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.note(cmd)
		return next(ctx, cmd)
	}
}

func (h *xrangeHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			h.note(cmd)
		}
		return next(ctx, cmds)
	}
}

func (h *xrangeHook) note(cmd redis.Cmder) {
	args := cmd.Args()
	if !strings.EqualFold(fmt.Sprint(args[0]), "xrange") {
		return
	}
	count := int64(-1)
	for i := 1; i+1 < len(args); i++ {
		if strings.EqualFold(fmt.Sprint(args[i]), "count") {
			count, _ = strconv.ParseInt(fmt.Sprint(args[i+1]), 10, 64)
		}
	}
	h.mu.Lock()
	n := len(h.counts)
	h.counts = append(h.counts, count)
	before := h.before
	h.mu.Unlock()
	if before != nil {
		before(n)
	}
}

func (h *xrangeHook) take() []int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.counts
	h.counts = nil
	return out
}

// TestAfterReadsInPages checks that After never asks Redis for more than
// historyPage entries at once, with no limit as with a large one, and that
// the pages join into one answer; and that a history reset or trimmed
// between two pages gives ErrGap, not a mix.
func TestAfterReadsInPages(t *testing.T) {
	requireRedis(t)
	hook := &xrangeHook{}
	client := newClient(t)
	client.AddHook(hook)
	b := New(client, WithMaxAge(testMaxAge), WithHistoryLimit(3*historyPage))
	t.Cleanup(func() { b.Close() })
	room := roomName(t)
	n := 2*historyPage + historyPage/2
	ms := appendN(t, b, room, n, time.Time{})
	epoch := ms[0].Epoch
	hook.take()

	for _, tc := range []struct {
		from   uint64
		limit  int
		want   []uint64
		counts []int64
	}{
		{0, 0, span(1, uint64(n)), []int64{historyPage, historyPage, historyPage}},
		{100, -1, span(101, uint64(n)), []int64{historyPage, historyPage, historyPage}},
		{0, historyPage + 200, span(1, historyPage+200), []int64{historyPage, 200}},
		{10, 5, span(11, 15), []int64{5}},
	} {
		ep := epoch
		if tc.from == 0 {
			ep = ""
		}
		got, err := b.After(t.Context(), room, ep, tc.from, tc.limit)
		counts := hook.take()
		if err != nil || !slices.Equal(seqs(got), tc.want) {
			t.Errorf("After(%d, limit %d) = %d messages, %v; want %d..%d", tc.from, tc.limit, len(got), err, tc.want[0], tc.want[len(tc.want)-1])
		}
		if !slices.Equal(counts, tc.counts) {
			t.Errorf("After(%d, limit %d) sent XRANGEs with COUNT %v, want %v", tc.from, tc.limit, counts, tc.counts)
		}
	}

	admin := newClient(t)
	for _, tc := range []struct {
		name   string
		change func(room string)
	}{
		{"Reset", func(room string) {
			// The room's history is lost and starts again.
			meta, log := b.keys(room)
			admin.Del(context.Background(), meta, log)
			if _, err := b.Append(context.Background(), room, wsroom.Message{Data: []byte("new")}); err != nil {
				t.Errorf("Append error: %v", err)
			}
		}},
		{"Trimmed", func(room string) {
			_, log := b.keys(room)
			admin.XTrimMinID(context.Background(), log, entryID(historyPage+10))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			room := roomName(t)
			ms := appendN(t, b, room, historyPage+100, time.Time{})
			hook.take()
			hook.mu.Lock()
			hook.before = func(i int) {
				if i == 1 {
					tc.change(room)
				}
			}
			hook.mu.Unlock()
			defer func() {
				hook.mu.Lock()
				hook.before = nil
				hook.mu.Unlock()
			}()
			got, err := b.After(t.Context(), room, ms[0].Epoch, 0, 0)
			if !errors.Is(err, wsroom.ErrGap) {
				t.Errorf("After with the history changed between pages = %d messages (%v), %v; want ErrGap", len(got), seqs(got[:min(3, len(got))]), err)
			}
			if counts := hook.take(); len(counts) != 2 {
				t.Errorf("After sent XRANGEs with COUNT %v, want 2 pages", counts)
			}
		})
	}
}

// crashable is a Broker that brokertest's lease case can crash.
type crashable struct{ *Broker }

// Crash implements brokertest.Crasher.
func (c crashable) Crash() { c.stopRenewing() }
