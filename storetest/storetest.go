// Package storetest checks that a wsroom.Store behaves as the wsroom package
// expects. Implementations call Run from their own tests:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) wsroom.Store { return mystore.New(...) })
//	}
//
// Each case uses room names of its own, so a store backed by a shared
// database can be tested without being emptied first.
package storetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wsroom/wsroom"
)

// Run runs every conformance case as a subtest of t. newStore is called once
// per case and must return a ready Store able to keep at least 100 messages
// per room for at least a minute.
func Run(t *testing.T, newStore func(t *testing.T) wsroom.Store) {
	cases := []struct {
		name string
		fn   func(*testing.T, wsroom.Store)
	}{
		{"AppendNumbers", testAppendNumbers},
		{"RoundTrip", testRoundTrip},
		{"After", testAfter},
		{"AfterGap", testAfterGap},
		{"Last", testLast},
		{"EmptyRoom", testEmptyRoom},
		{"RoomsIsolated", testRoomsIsolated},
		{"ConcurrentAppend", testConcurrentAppend},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, newStore(t)) })
	}
}

// RoomName returns a room name unique to this test and call.
func RoomName(t testing.TB) string {
	var b [6]byte
	rand.Read(b[:])
	return fmt.Sprintf("test-%s-%s", t.Name(), hex.EncodeToString(b[:]))
}

func appendN(t *testing.T, s wsroom.Store, room string, n int) []wsroom.Message {
	t.Helper()
	var out []wsroom.Message
	for i := range n {
		m, err := s.Append(t.Context(), room, wsroom.Message{Data: fmt.Appendf(nil, "m%d", i+1), From: "c1"})
		if err != nil {
			t.Fatalf("Append(%d) error: %v", i+1, err)
		}
		out = append(out, m)
	}
	return out
}

func seqs(ms []wsroom.Message) []uint64 {
	var out []uint64
	for _, m := range ms {
		out = append(out, m.Seq)
	}
	return out
}

func testAppendNumbers(t *testing.T, s wsroom.Store) {
	ms := appendN(t, s, RoomName(t), 5)
	if got, want := seqs(ms), []uint64{1, 2, 3, 4, 5}; !slices.Equal(got, want) {
		t.Errorf("Append seqs = %v, want %v", got, want)
	}
	for _, m := range ms {
		if m.Epoch == "" || m.Epoch != ms[0].Epoch {
			t.Errorf("Append(seq %d) epoch = %q, want one non-empty epoch %q", m.Seq, m.Epoch, ms[0].Epoch)
		}
		if m.Time.IsZero() {
			t.Errorf("Append(seq %d) left Time zero", m.Seq)
		}
	}
}

func testRoundTrip(t *testing.T, s wsroom.Store) {
	room := RoomName(t)
	at := time.UnixMilli(time.Now().UnixMilli())
	in := wsroom.Message{From: "client-7", Data: []byte("{\"x\":\"\u00e9\\u0000\"}\x00\xff"), Time: at}
	m, err := s.Append(t.Context(), room, in)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Last(t.Context(), room, 1)
	if err != nil || len(got) != 1 {
		t.Fatalf("Last(1) = %v, %v; want one message", got, err)
	}
	g := got[0]
	if g.Seq != m.Seq || g.Epoch != m.Epoch || g.From != in.From || !bytes.Equal(g.Data, in.Data) || !g.Time.Equal(at) || g.Ephemeral || g.Except != "" {
		t.Errorf("Last(1) = %+v, want %+v with Seq %d, Epoch %q", g, in, m.Seq, m.Epoch)
	}
}

func testAfter(t *testing.T, s wsroom.Store) {
	room := RoomName(t)
	ms := appendN(t, s, room, 10)
	epoch := ms[0].Epoch
	tests := []struct {
		name  string
		epoch string
		seq   uint64
		limit int
		want  []uint64
	}{
		{"from start", "", 0, 0, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
		{"from zero in epoch", epoch, 0, 0, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
		{"middle", epoch, 6, 0, []uint64{7, 8, 9, 10}},
		{"limit", epoch, 2, 3, []uint64{3, 4, 5}},
		{"at end", epoch, 10, 0, nil},
	}
	for _, tt := range tests {
		got, err := s.After(t.Context(), room, tt.epoch, tt.seq, tt.limit)
		if err != nil {
			t.Errorf("%s: After(%q, %d, %d) error: %v", tt.name, tt.epoch, tt.seq, tt.limit, err)
			continue
		}
		if !slices.Equal(seqs(got), tt.want) {
			t.Errorf("%s: After(%q, %d, %d) seqs = %v, want %v", tt.name, tt.epoch, tt.seq, tt.limit, seqs(got), tt.want)
		}
		for _, m := range got {
			if want := fmt.Sprintf("m%d", m.Seq); string(m.Data) != want {
				t.Errorf("%s: message %d data = %q, want %q", tt.name, m.Seq, m.Data, want)
			}
		}
	}
}

func testAfterGap(t *testing.T, s wsroom.Store) {
	room := RoomName(t)
	ms := appendN(t, s, room, 3)
	for _, tt := range []struct {
		name  string
		epoch string
		seq   uint64
	}{
		{"other epoch", ms[0].Epoch + "x", 1},
		{"future", ms[0].Epoch, 4},
		{"far future", ms[0].Epoch, 1 << 62},
		{"no epoch", "", 2},
	} {
		if got, err := s.After(t.Context(), room, tt.epoch, tt.seq, 0); !errors.Is(err, wsroom.ErrGap) {
			t.Errorf("%s: After(%q, %d) = %v, %v; want ErrGap", tt.name, tt.epoch, tt.seq, seqs(got), err)
		}
	}
}

func testLast(t *testing.T, s wsroom.Store) {
	room := RoomName(t)
	appendN(t, s, room, 5)
	for _, tt := range []struct {
		n    int
		want []uint64
	}{{0, nil}, {1, []uint64{5}}, {3, []uint64{3, 4, 5}}, {9, []uint64{1, 2, 3, 4, 5}}} {
		got, err := s.Last(t.Context(), room, tt.n)
		if err != nil {
			t.Errorf("Last(%d) error: %v", tt.n, err)
		}
		if !slices.Equal(seqs(got), tt.want) {
			t.Errorf("Last(%d) seqs = %v, want %v", tt.n, seqs(got), tt.want)
		}
	}
}

func testEmptyRoom(t *testing.T, s wsroom.Store) {
	room := RoomName(t)
	if got, err := s.Last(t.Context(), room, 10); err != nil || len(got) != 0 {
		t.Errorf("Last on empty room = %v, %v; want none, nil", got, err)
	}
	if got, err := s.After(t.Context(), room, "", 0, 0); err != nil || len(got) != 0 {
		t.Errorf("After(\"\", 0) on empty room = %v, %v; want none, nil", got, err)
	}
	if _, err := s.After(t.Context(), room, "someepoch", 3, 0); !errors.Is(err, wsroom.ErrGap) {
		t.Errorf("After(someepoch, 3) on empty room error = %v, want ErrGap", err)
	}
}

func testRoomsIsolated(t *testing.T, s wsroom.Store) {
	a, b := RoomName(t), RoomName(t)
	appendN(t, s, a, 3)
	mb := appendN(t, s, b, 1)
	if mb[0].Seq != 1 {
		t.Errorf("first Append in a second room got seq %d, want 1", mb[0].Seq)
	}
	got, err := s.Last(t.Context(), a, 10)
	if err != nil || !slices.Equal(seqs(got), []uint64{1, 2, 3}) {
		t.Errorf("Last(a) = %v, %v; want seqs 1..3", seqs(got), err)
	}
}

func testConcurrentAppend(t *testing.T, s wsroom.Store) {
	room := RoomName(t)
	const workers, each = 8, 10
	var (
		mu  sync.Mutex
		got []uint64
		wg  sync.WaitGroup
	)
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for range each {
				m, err := s.Append(context.Background(), room, wsroom.Message{Data: []byte("x")})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				got = append(got, m.Seq)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent Append error: %v", err)
	}
	slices.Sort(got)
	want := make([]uint64, workers*each)
	for i := range want {
		want[i] = uint64(i + 1)
	}
	if !slices.Equal(got, want) {
		t.Errorf("concurrent Append seqs (sorted) = %v, want 1..%d each once", got, workers*each)
	}
	stored, err := s.After(t.Context(), room, "", 0, 0)
	if err != nil || !slices.Equal(seqs(stored), want) {
		t.Errorf("After(start) after concurrent Append = %v, %v; want 1..%d", seqs(stored), err, workers*each)
	}
}
