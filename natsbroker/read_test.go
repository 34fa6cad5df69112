package natsbroker

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/storetest"
)

// fillRoom appends n messages to room, interleaved with messages of
// another room every third one, so that the room's messages are not
// contiguous in the stream. It returns the room's messages.
func fillRoom(t testing.TB, b *Broker, room string, n int) []wsroom.Message {
	t.Helper()
	other := room + "-other"
	out := make([]wsroom.Message, 0, n)
	for i := range n {
		m, err := b.Append(context.Background(), room, wsroom.Message{Data: fmt.Appendf(nil, "m%d", i+1)})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
		if i%3 == 0 {
			if _, err := b.Append(context.Background(), other, wsroom.Message{Data: []byte("x")}); err != nil {
				t.Fatal(err)
			}
		}
	}
	return out
}

// consumerCount counts, from the server's advisories, the consumers created
// on the Broker's stream.
func consumerCount(t *testing.T, b *Broker) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	sub, err := b.nc.Subscribe("$JS.EVENT.ADVISORY.CONSUMER.CREATED."+b.name+".*", func(*nats.Msg) { n.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return &n
}

// TestReadsAreBounded checks that Last and After read from the server only
// the messages they return, with no consumer, however long the room's
// history.
func TestReadsAreBounded(t *testing.T) {
	const total = 3000
	b := newNode(t, testPrefix(t), WithHistoryLimit(2*total))
	room := storetest.RoomName(t)
	ms := fillRoom(t, b, room, total)
	created := consumerCount(t, b)
	// The advisories of the consumers the checks create, if any, arrive
	// after the replies; a flush on the same connection orders them.
	settle := func() {
		if err := b.nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	check := func(what string, got []wsroom.Message, err error, want []wsroom.Message, maxFetched uint64, before uint64) {
		t.Helper()
		settle()
		fetched := b.fetched.Load() - before
		if err != nil || !slices.Equal(seqs(got), seqs(want)) {
			t.Errorf("%s = %v, %v; want seqs %v", what, seqs(got), err, seqs(want))
		}
		t.Logf("%s: %d messages read from the server, %d consumers created", what, fetched, created.Load())
		if fetched > maxFetched {
			t.Errorf("%s read %d messages from the server, want at most %d", what, fetched, maxFetched)
		}
		if n := created.Swap(0); n != 0 {
			t.Errorf("%s created %d consumers, want none", what, n)
		}
	}

	before := b.fetched.Load()
	got, err := b.After(t.Context(), room, ms[0].Epoch, ms[total-11].Seq, 0)
	check("After(last 10)", got, err, ms[total-10:], 10, before)

	before = b.fetched.Load()
	got, err = b.After(t.Context(), room, ms[0].Epoch, ms[total-11].Seq, 3)
	check("After(last 10, limit 3)", got, err, ms[total-10:total-7], 10, before)

	before = b.fetched.Load()
	got, err = b.Last(t.Context(), room, 50)
	check("Last(50)", got, err, ms[total-50:], 50, before)

	before = b.fetched.Load()
	got, err = b.Last(t.Context(), room, 1)
	check("Last(1)", got, err, ms[total-1:], 1, before)

	before = b.fetched.Load()
	got, err = b.After(t.Context(), room, ms[0].Epoch, ms[total-1].Seq, 0)
	check("After(last)", got, err, nil, 1, before)
}

// TestLongReads checks reads of more messages than direct gets serve: they
// find their first message with a few probes and read from there, through
// one consumer.
func TestLongReads(t *testing.T) {
	const total = 1500
	b := newNode(t, testPrefix(t), WithHistoryLimit(1000))
	room := storetest.RoomName(t)
	ms := fillRoom(t, b, room, total)[total-1000:] // the older ones are trimmed
	created := consumerCount(t, b)
	for _, c := range []struct {
		name      string
		read      func() ([]wsroom.Message, error)
		want      []wsroom.Message
		consumers int64
	}{
		{"After(500 back)", func() ([]wsroom.Message, error) {
			return b.After(t.Context(), room, ms[0].Epoch, ms[499].Seq, 0)
		}, ms[500:], 1},
		{"After(500 back, limit 5)", func() ([]wsroom.Message, error) {
			return b.After(t.Context(), room, ms[0].Epoch, ms[499].Seq, 5)
		}, ms[500:505], 0},
		{"After(oldest)", func() ([]wsroom.Message, error) {
			return b.After(t.Context(), room, ms[0].Epoch, ms[0].Seq-1, 0)
		}, ms, 1},
		{"Last(300)", func() ([]wsroom.Message, error) { return b.Last(t.Context(), room, 300) }, ms[700:], 1},
		{"Last(5000)", func() ([]wsroom.Message, error) { return b.Last(t.Context(), room, 5000) }, ms, 1},
	} {
		before := b.fetched.Load()
		got, err := c.read()
		if err := b.nc.Flush(); err != nil {
			t.Fatal(err)
		}
		fetched := b.fetched.Load() - before
		if err != nil || !slices.Equal(seqs(got), seqs(c.want)) {
			t.Errorf("%s = %d messages, %v; want seqs %d..%d", c.name, len(got), err, c.want[0].Seq, c.want[len(c.want)-1].Seq)
		}
		t.Logf("%s: %d messages read from the server, %d consumers created", c.name, fetched, created.Load())
		if max := uint64(len(c.want)) + 30; fetched > max {
			t.Errorf("%s read %d messages from the server, want at most %d", c.name, fetched, max)
		}
		if n := created.Swap(0); n > c.consumers {
			t.Errorf("%s created %d consumers, want at most %d", c.name, n, c.consumers)
		}
	}
	if _, err := b.After(t.Context(), room, ms[0].Epoch, ms[0].Seq-2, 0); !errors.Is(err, wsroom.ErrGap) {
		t.Errorf("After(trimmed) error = %v, want ErrGap", err)
	}
}

// TestReadsOfUnlinkedHistory checks Last and After on a room whose older
// messages were stored without the link to their predecessor, as by an
// earlier version of the Broker.
func TestReadsOfUnlinkedHistory(t *testing.T) {
	b := newNode(t, testPrefix(t))
	room := storetest.RoomName(t)
	subj := b.hist + roomToken(room)
	epoch := newID()
	var ms []wsroom.Message
	for i := range 20 {
		m := wsroom.Message{Seq: uint64(i + 1), Epoch: epoch, Data: fmt.Appendf(nil, "old%d", i)}
		data, _ := m.MarshalBinary()
		if _, err := b.js.Publish(t.Context(), subj, data); err != nil {
			t.Fatal(err)
		}
		if _, err := b.js.Publish(t.Context(), b.hist+roomToken(room+"-other"), data); err != nil {
			t.Fatal(err)
		}
		got, err := b.Last(t.Context(), room, 1)
		if err != nil || len(got) != 1 {
			t.Fatalf("Last(1) = %v, %v", seqs(got), err)
		}
		ms = append(ms, got[0])
	}
	for i := range 10 {
		m, err := b.Append(t.Context(), room, wsroom.Message{Data: fmt.Appendf(nil, "new%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	if ms[20].Seq != 21 || ms[20].Epoch != epoch {
		t.Fatalf("first new message = seq %d epoch %q, want 21 in %q", ms[20].Seq, ms[20].Epoch, epoch)
	}
	for n := 1; n <= 35; n += 3 {
		got, err := b.Last(t.Context(), room, n)
		if want := ms[max(0, len(ms)-n):]; err != nil || !slices.Equal(seqs(got), seqs(want)) {
			t.Errorf("Last(%d) = %v, %v; want %v", n, seqs(got), err, seqs(want))
		}
	}
	for seq := range uint64(30) {
		got, err := b.After(t.Context(), room, epoch, seq, 0)
		if want := ms[seq:]; err != nil || !slices.Equal(seqs(got), seqs(want)) {
			t.Errorf("After(%d) = %v, %v; want %v", seq, seqs(got), err, seqs(want))
		}
	}
}

// TestCatchUpReadsOnlyTheGap checks that a room that misses announcements
// reads the missing messages from the stream one by one, from the first one
// missing, without making a consumer.
func TestCatchUpReadsOnlyTheGap(t *testing.T) {
	prefix := testPrefix(t)
	a, b := newNode(t, prefix, WithHistoryLimit(5000)), newNode(t, prefix, WithHistoryLimit(5000))
	room := storetest.RoomName(t)
	fillRoom(t, a, room, 1000)
	s := subscribe(t, b, room)
	created := consumerCount(t, b)
	m, err := a.Append(t.Context(), room, wsroom.Message{Data: []byte("announced")})
	if err != nil {
		t.Fatal(err)
	}
	s.wait(t, 1, 5*time.Second)
	// Store three messages the way Append does, without the announcements.
	sseq := uint64(0)
	if raw, err := a.stream.GetLastMsgForSubject(t.Context(), a.hist+roomToken(room)); err != nil {
		t.Fatal(err)
	} else {
		sseq = raw.Sequence
	}
	for i := range uint64(3) {
		mi := wsroom.Message{Seq: m.Seq + 1 + i, Epoch: m.Epoch, Time: time.UnixMilli(time.Now().UnixMilli()), Data: []byte("silent")}
		data, _ := mi.MarshalBinary()
		ack, err := a.js.PublishMsg(t.Context(), &nats.Msg{Subject: a.hist + roomToken(room), Data: data, Header: nats.Header{prevHeader: []string{fmt.Sprint(sseq)}}})
		if err != nil {
			t.Fatal(err)
		}
		sseq = ack.Sequence
	}
	a.mu.Lock()
	delete(a.appenders, room) // forget the position, as another node would not know it
	a.mu.Unlock()
	before := b.fetched.Load()
	if _, err := a.Append(t.Context(), room, wsroom.Message{Data: []byte("next")}); err != nil {
		t.Fatal(err)
	}
	got := s.wait(t, 5, 5*time.Second)
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if want := []uint64{m.Seq, m.Seq + 1, m.Seq + 2, m.Seq + 3, m.Seq + 4}; !slices.Equal(seqs(got), want) {
		t.Errorf("got seqs %v, want %v", seqs(got), want)
	}
	fetched := b.fetched.Load() - before
	t.Logf("catching up 3 messages: %d messages read from the server, %d consumers created", fetched, created.Load())
	if fetched > 5 {
		t.Errorf("catching up 3 messages read %d from the server, want at most 5", fetched)
	}
	if n := created.Load(); n != 0 {
		t.Errorf("catching up created %d consumers, want none", n)
	}
}

// TestAfterReadsWhatIsAsked checks that After with a limit makes a number
// of requests proportional to the limit, not to the span after the
// position: a resume that wants one message of the last 64, and history
// pages of 8 through them. It counts the requests the Broker's connection
// sends (each direct get is one), in a stream of the room alone and in one
// where another room's messages are interleaved with it.
func TestAfterReadsWhatIsAsked(t *testing.T) {
	const total, span = 200, 64
	for _, interleaved := range []bool{false, true} {
		t.Run(fmt.Sprintf("interleaved=%v", interleaved), func(t *testing.T) {
			b := newNode(t, testPrefix(t), WithHistoryLimit(2*total))
			room := storetest.RoomName(t)
			var ms []wsroom.Message
			if interleaved {
				ms = fillRoom(t, b, room, total)
			} else {
				for i := range total {
					m, err := b.Append(t.Context(), room, wsroom.Message{Data: fmt.Appendf(nil, "m%d", i+1)})
					if err != nil {
						t.Fatal(err)
					}
					ms = append(ms, m)
				}
			}
			// The locating probes: at most about twice the logarithm of
			// the distance, and one in a stream of the room alone.
			probes := uint64(1)
			if interleaved {
				probes = 2*uint64(bits.Len(span)) + 2
			}
			after := func(seq uint64, limit int) ([]wsroom.Message, uint64) {
				t.Helper()
				before := b.nc.Stats().OutMsgs
				got, err := b.After(t.Context(), room, ms[0].Epoch, seq, limit)
				if err != nil {
					t.Fatalf("After(%d, limit %d): %v", seq, limit, err)
				}
				return got, b.nc.Stats().OutMsgs - before
			}
			from := ms[total-span-1].Seq
			for _, limit := range []int{1, 8} {
				got, requests := after(from, limit)
				if !slices.Equal(seqs(got), seqs(ms[total-span:total-span+limit])) {
					t.Errorf("After(%d, limit %d) = %v", from, limit, seqs(got))
				}
				t.Logf("After(last %d, limit %d): %d requests", span, limit, requests)
				// The room's last message, the probes, the rest of the limit.
				if want := 1 + probes + uint64(limit) - 1; requests > want {
					t.Errorf("After(last %d, limit %d) made %d requests, want at most %d", span, limit, requests, want)
				}
			}
			var pages, requests uint64
			var read []wsroom.Message
			for seq := from; seq < ms[total-1].Seq; pages++ {
				got, n := after(seq, 8)
				read = append(read, got...)
				requests += n
				seq = got[len(got)-1].Seq
			}
			if !slices.Equal(seqs(read), seqs(ms[total-span:])) {
				t.Errorf("pages of 8 read %v, want the last %d", seqs(read), span)
			}
			t.Logf("%d pages of 8 through the last %d: %d requests", pages, span, requests)
			if want := pages * (1 + probes + 7); requests > want {
				t.Errorf("%d pages of 8 made %d requests, want at most %d", pages, requests, want)
			}
		})
	}
}
