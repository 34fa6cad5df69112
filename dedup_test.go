package wsroom_test

import (
	"context"
	"sync"
	"testing"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/brokertest"
)

// dedupBroker is a LocalBroker shared by the nodes of one process that
// remembers the keys of its publishes, as the engine of a cluster does: a
// wsroom.Deduplicator for tests.
type dedupBroker struct {
	*wsroom.LocalBroker

	mu   sync.Mutex
	keys map[string]wsroom.Message // by room and key
	once map[string]*sync.Mutex    // a publish under way, by room and key
}

func newDedupBroker() *dedupBroker {
	return &dedupBroker{
		LocalBroker: wsroom.NewLocalBroker(wsroom.NewMemoryStore(0, 0)),
		keys:        make(map[string]wsroom.Message),
		once:        make(map[string]*sync.Mutex),
	}
}

func (b *dedupBroker) PublishOnce(ctx context.Context, room, key string, m wsroom.Message) (wsroom.Message, bool, error) {
	k := room + "\x00" + key
	b.mu.Lock()
	l := b.once[k]
	if l == nil {
		l = new(sync.Mutex)
		b.once[k] = l
	}
	b.mu.Unlock()
	l.Lock()
	defer l.Unlock()
	b.mu.Lock()
	orig, ok := b.keys[k]
	b.mu.Unlock()
	if ok {
		return orig, true, nil
	}
	out, err := b.PublishSeq(ctx, room, m)
	if err != nil {
		return wsroom.Message{}, false, err
	}
	b.mu.Lock()
	b.keys[k] = out
	b.mu.Unlock()
	return out, false, nil
}

// After, Last and Append make the shared broker the nodes' Store too.
func (b *dedupBroker) After(ctx context.Context, room, epoch string, seq uint64, limit int) ([]wsroom.Message, error) {
	return b.Store().After(ctx, room, epoch, seq, limit)
}

func (b *dedupBroker) Last(ctx context.Context, room string, n int) ([]wsroom.Message, error) {
	return b.Store().Last(ctx, room, n)
}

func (b *dedupBroker) Append(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	return b.Store().Append(ctx, room, m)
}

// TestDeduplicatorAcrossNodes runs the two-node cases on nodes of one
// process that share a Deduplicator: a publish retried on the other node
// gets the original ack and is stored once (PROTOCOL.md, section 5).
func TestDeduplicatorAcrossNodes(t *testing.T) {
	b := newDedupBroker()
	brokertest.RunNodes(t, brokertest.Nodes{
		New: func(t *testing.T, limit int) wsroom.Broker { return b },
	})
}

// TestDeduplicatorConformance runs the conformance suite, PublishOnce
// included, on the nodes of one process that share a Deduplicator.
func TestDeduplicatorConformance(t *testing.T) {
	b := newDedupBroker()
	brokertest.Run(t, func(t *testing.T) wsroom.Broker { return b })
}
