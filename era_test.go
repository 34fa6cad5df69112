package wsroom_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsroom/wsroom"
)

// epochStore is a Store of one room whose history the test sets, epoch by
// epoch. After on a held epoch waits for release.
type epochStore struct {
	mu      sync.Mutex
	epoch   string
	msgs    []wsroom.Message
	hold    string // After of this epoch waits for release
	release chan struct{}
	waiting atomic.Int64 // Afters waiting
	done    atomic.Int64 // held Afters that returned
}

func (s *epochStore) set(epoch string, seqs ...uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.epoch, s.msgs = epoch, nil
	for _, q := range seqs {
		s.msgs = append(s.msgs, wsroom.Message{Epoch: epoch, Seq: q, Time: time.Now(), Data: []byte(`"m"`)})
	}
}

func (s *epochStore) Append(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	return wsroom.Message{}, errors.New("epochStore: read only")
}

func (s *epochStore) After(ctx context.Context, room, epoch string, seq uint64, limit int) ([]wsroom.Message, error) {
	s.mu.Lock()
	held := epoch != "" && epoch == s.hold
	s.mu.Unlock()
	if held {
		s.waiting.Add(1)
		select {
		case <-s.release:
		case <-ctx.Done():
		}
		defer s.done.Add(1)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if epoch != "" && epoch != s.epoch {
		return nil, wsroom.ErrGap
	}
	var out []wsroom.Message
	for _, m := range s.msgs {
		if m.Seq > seq && (limit <= 0 || len(out) < limit) {
			out = append(out, m)
		}
	}
	return out, nil
}

func (s *epochStore) Last(ctx context.Context, room string, n int) ([]wsroom.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.msgs) == 0 {
		return nil, nil
	}
	return s.msgs[len(s.msgs)-1:], nil
}

// handBroker delivers what the test hands it.
type handBroker struct {
	mu      sync.Mutex
	deliver func(wsroom.Message)
}

func (b *handBroker) Publish(ctx context.Context, room string, m wsroom.Message) error {
	return errors.New("handBroker: the test delivers")
}

func (b *handBroker) Subscribe(ctx context.Context, room string, deliver func(wsroom.Message), lost func(error)) (func(), error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.deliver = deliver
	return func() {}, nil
}

func (b *handBroker) send(m wsroom.Message) {
	b.mu.Lock()
	d := b.deliver
	b.mu.Unlock()
	d(m)
}

// A catch-up read of the old epoch that is answered after the room has
// moved to a new one (and resynchronised its clients, telling them to
// resume from the new epoch's start) is stale: the clients that resumed
// are not resynchronised a second time.
func TestStaleCatchUpAfterNewEpoch(t *testing.T) {
	st := &epochStore{release: make(chan struct{})}
	st.set("e1", 1)
	b := &handBroker{}
	f := newMux(t, wsroom.WithBroker(b), wsroom.WithStore(st), wsroom.WithCodec(wsroom.JSON()))
	c := f.dial(t)
	send(t, c, `{"op":"join","room":"r"}`)
	if j := expect(t, c, "joined"); j.Epoch != "e1" || j.Seq != 1 {
		t.Fatalf("joined %+v, want at e1:1", j)
	}
	waitUntil(t, "the room subscribed", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.deliver != nil
	})

	// The broker skips e1:2: the room reads the store, which holds back.
	st.mu.Lock()
	st.hold = "e1"
	st.mu.Unlock()
	b.send(wsroom.Message{Epoch: "e1", Seq: 3, Time: time.Now(), Data: []byte(`"m"`)})
	waitUntil(t, "the catch-up read", func() bool { return st.waiting.Load() == 1 })

	// Meanwhile the history moves to e2.
	st.set("e2", 1)
	b.send(wsroom.Message{Epoch: "e2", Seq: 1, Time: time.Now(), Data: []byte(`"m"`)})
	if rs := expect(t, c, "resync"); rs.Resume != "e2:0" {
		t.Fatalf("resync %+v, want resume e2:0", rs)
	}
	send(t, c, `{"op":"join","room":"r","resume":"e2:0"}`)
	expect(t, c, "joined")
	if m := expect(t, c, "msg"); m.Epoch != "e2" || m.Seq != 1 {
		t.Fatalf("after the resume got %+v, want e2:1", m)
	}

	// The e1 read is answered now: a gap, as e1 is gone.
	close(st.release)
	waitUntil(t, "the catch-up answered", func() bool { return st.done.Load() == 1 })
	st.set("e2", 1, 2)
	b.send(wsroom.Message{Epoch: "e2", Seq: 2, Time: time.Now(), Data: []byte(`"m"`)})
	if m := recv(t, c); m.Op != "msg" || m.Epoch != "e2" || m.Seq != 2 {
		t.Fatalf("after the stale answer got %+v, want msg e2:2", m)
	}
}
