package wsroom_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/brokertest"
	"github.com/wsroom/wsroom/storetest"
)

func TestMemoryStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) wsroom.Store { return wsroom.NewMemoryStore(100, 0) })
}

func TestLocalBrokerConformance(t *testing.T) {
	brokertest.Run(t, func() func(*testing.T) wsroom.Broker {
		var b *wsroom.LocalBroker
		return func(t *testing.T) wsroom.Broker {
			if b == nil {
				b = wsroom.NewLocalBroker(wsroom.NewMemoryStore(0, 0))
			}
			return b
		}
	}())
}

func TestMemoryStoreRetention(t *testing.T) {
	ctx := t.Context()
	now := time.UnixMilli(1_700_000_000_000)
	s := wsroom.NewMemoryStore(3, time.Minute)
	wsroom.SetMemoryStoreClock(s, func() time.Time { return now })
	var epoch string
	for i := range 5 {
		m, err := s.Append(ctx, "r", wsroom.Message{Data: []byte{byte('a' + i)}})
		if err != nil {
			t.Fatal(err)
		}
		epoch = m.Epoch
		now = now.Add(10 * time.Second)
	}
	seqsOf := func(ms []wsroom.Message) []uint64 {
		var out []uint64
		for _, m := range ms {
			out = append(out, m.Seq)
		}
		return out
	}
	if got, _ := s.Last(ctx, "r", 10); !slices.Equal(seqsOf(got), []uint64{3, 4, 5}) {
		t.Errorf("after 5 appends with limit 3, Last = %v, want [3 4 5]", seqsOf(got))
	}
	if _, err := s.After(ctx, "r", epoch, 1, 0); !errors.Is(err, wsroom.ErrGap) {
		t.Errorf("After(1) past the count limit = %v, want ErrGap", err)
	}
	now = now.Add(35 * time.Second) // message 3 (at +20s) is now 65s old, 4 is 55s
	if got, _ := s.After(ctx, "r", epoch, 3, 0); !slices.Equal(seqsOf(got), []uint64{4, 5}) {
		t.Errorf("After(3) once 3 expired = %v, want [4 5]", seqsOf(got))
	}
	if _, err := s.After(ctx, "r", epoch, 2, 0); !errors.Is(err, wsroom.ErrGap) {
		t.Errorf("After(2) once 3 expired = %v, want ErrGap", err)
	}
	now = now.Add(time.Hour) // everything expired: the room is forgotten
	if got, _ := s.Last(ctx, "r", 10); len(got) != 0 {
		t.Errorf("Last after every message expired = %v, want none", seqsOf(got))
	}
	m, _ := s.Append(ctx, "r", wsroom.Message{})
	if m.Seq != 1 || m.Epoch == epoch {
		t.Errorf("Append to a forgotten room = seq %d epoch %q, want seq 1 in a new epoch", m.Seq, m.Epoch)
	}
	for i := range 1000 { // many appends past the limit keep it bounded and ordered
		s.Append(ctx, "big", wsroom.Message{Data: []byte{byte(i)}})
	}
	if got, _ := s.Last(ctx, "big", 10); !slices.Equal(seqsOf(got), []uint64{998, 999, 1000}) {
		t.Errorf("Last after 1000 appends = %v, want [998 999 1000]", seqsOf(got))
	}
}
