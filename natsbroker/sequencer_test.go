package natsbroker

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/storetest"
)

var _ wsroom.Sequencer = (*Broker)(nil)

// TestPublishSeq publishes from two nodes at once with PublishSeq and checks
// that each returned message is the one subscribers receive and the Store
// keeps under that position: same Seq, Epoch, Time and Data. An ephemeral
// message comes back as published, unnumbered.
func TestPublishSeq(t *testing.T) {
	prefix := testPrefix(t)
	nodes := []*Broker{newNode(t, prefix), newNode(t, prefix)}
	room := storetest.RoomName(t)
	s := subscribe(t, nodes[1], room)
	const each = 25
	returned := make([][]wsroom.Message, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, b := range nodes {
		wg.Go(func() {
			for j := range each {
				m, err := b.PublishSeq(t.Context(), room, wsroom.Message{Time: time.Now(), From: fmt.Sprint("node", i), Data: fmt.Appendf(nil, "n%d-%d", i, j)})
				if err != nil {
					errs[i] = err
					return
				}
				returned[i] = append(returned[i], m)
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("node %d PublishSeq error: %v", i, err)
		}
	}
	total := len(nodes) * each
	bySeq := make(map[uint64]wsroom.Message)
	var epoch string
	for i, ms := range returned {
		for j, m := range ms {
			if want := fmt.Sprintf("n%d-%d", i, j); string(m.Data) != want || m.Ephemeral {
				t.Fatalf("node %d publish %d returned %q (ephemeral %v), want %q", i, j, m.Data, m.Ephemeral, want)
			}
			if m.Seq == 0 || m.Epoch == "" {
				t.Fatalf("node %d publish %d returned unnumbered: seq %d epoch %q", i, j, m.Seq, m.Epoch)
			}
			if j > 0 && m.Seq <= ms[j-1].Seq {
				t.Errorf("node %d publish %d returned seq %d after %d: not increasing", i, j, m.Seq, ms[j-1].Seq)
			}
			if epoch == "" {
				epoch = m.Epoch
			}
			if m.Epoch != epoch {
				t.Errorf("node %d publish %d returned epoch %q, want %q", i, j, m.Epoch, epoch)
			}
			if _, dup := bySeq[m.Seq]; dup {
				t.Fatalf("seq %d returned twice", m.Seq)
			}
			bySeq[m.Seq] = m
		}
	}

	eph, err := nodes[0].PublishSeq(t.Context(), room, wsroom.Message{Ephemeral: true, Data: []byte("typing")})
	if err != nil {
		t.Fatalf("ephemeral PublishSeq error: %v", err)
	}
	if eph.Seq != 0 || eph.Epoch != "" || !eph.Ephemeral || string(eph.Data) != "typing" {
		t.Errorf("ephemeral PublishSeq returned %+v, want it unnumbered, as published", eph)
	}

	s.wait(t, total+1, 10*time.Second)
	time.Sleep(100 * time.Millisecond) // let a duplicate, if any, arrive
	delivered := s.get()
	if len(delivered) != total+1 {
		t.Fatalf("got %d deliveries, want %d: %v", len(delivered), total+1, describe(delivered))
	}
	stored, err := nodes[0].After(t.Context(), room, epoch, 0, 0)
	if err != nil {
		t.Fatalf("After error: %v", err)
	}
	if len(stored) != total {
		t.Fatalf("store holds %d messages, want %d", len(stored), total)
	}
	// The ephemeral message may overtake the other node's last ones.
	var numbered []wsroom.Message
	var ephs int
	for _, d := range delivered {
		if d.Ephemeral {
			ephs++
			if d.Seq != 0 || d.Epoch != "" || string(d.Data) != "typing" {
				t.Errorf("ephemeral delivery = %+v, want it unnumbered, as published", d)
			}
			continue
		}
		numbered = append(numbered, d)
	}
	if ephs != 1 || len(numbered) != total {
		t.Fatalf("got %d ephemeral and %d numbered deliveries, want 1 and %d: %v", ephs, len(numbered), total, describe(delivered))
	}
	same := func(a, b wsroom.Message) bool {
		return a.Seq == b.Seq && a.Epoch == b.Epoch && a.Time.Equal(b.Time) && a.From == b.From && string(a.Data) == string(b.Data)
	}
	for k := range total {
		seq := uint64(k + 1)
		r, ok := bySeq[seq]
		if !ok {
			t.Fatalf("no PublishSeq returned seq %d", seq)
		}
		if d := numbered[k]; !same(d, r) {
			t.Errorf("delivery %d is %d %q %v %q %q, PublishSeq returned %d %q %v %q %q", k, d.Seq, d.Epoch, d.Time, d.From, d.Data, r.Seq, r.Epoch, r.Time, r.From, r.Data)
		}
		if st := stored[k]; !same(st, r) {
			t.Errorf("stored message %d is %d %q %v %q %q, PublishSeq returned %d %q %v %q %q", k, st.Seq, st.Epoch, st.Time, st.From, st.Data, r.Seq, r.Epoch, r.Time, r.From, r.Data)
		}
	}
}

// describe lists messages as seq:data, ephemeral ones as e:data.
func describe(ms []wsroom.Message) []string {
	var out []string
	for _, m := range ms {
		if m.Ephemeral {
			out = append(out, "e:"+string(m.Data))
		} else {
			out = append(out, fmt.Sprintf("%d:%s", m.Seq, m.Data))
		}
	}
	return out
}
