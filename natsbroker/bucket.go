package natsbroker

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// bucket is the presence bucket, whose entries are changed by
// compare-and-set writes (Create, Update, deleteAt) that hold on clustered
// servers too.
//
// A KV update names the entry's revision it read, and JetStream stores it
// only if that is still the entry's last revision. With replicas, JetStream
// checks the revision before it proposes the write to the replicas, so that
// two writes sent at the same moment after the same revision may both be
// stored (NATS servers before 2.9.21 do so readily; later ones still may
// across a change of the stream's leader, nats-server #4320): two nodes
// removing a user's last two connections at once would each write the
// entry with the other's connection still in it, and neither see the last
// leave. Every write of bucket therefore also carries a message id made of
// the key and the revision it expects, which JetStream's de-duplication
// tracks from the moment the leader takes the write: of the writes after
// one revision the first is stored and the others are answered as
// duplicates, which bucket reports as conflicts, and their writers read
// the entry again.
//
// An id is used again only by a write expecting revision 0 (no entry), and
// only once the key's last message has aged out, which the bucket's age
// limit puts after the de-duplication window: JetStream takes a window no
// longer than the bucket's age limit.
type bucket struct {
	jetstream.KeyValue
	js     jetstream.JetStream
	stream jetstream.Stream // the bucket's stream
	pre    string           // the subject prefix of its keys, "$KV.<bucket>."
}

// errWriteRaced is the conflict of a write after a revision another write
// already took (see bucket).
var errWriteRaced = fmt.Errorf("%w: another write after this revision was stored first", jetstream.ErrKeyExists)

// Create writes key's first value: if the key has no entry, or one that
// was deleted.
func (k *bucket) Create(ctx context.Context, key string, value []byte) (uint64, error) {
	rev := uint64(0)
	last, err := k.stream.GetLastMsgForSubject(ctx, k.pre+key)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
	case err != nil:
		return 0, err
	default:
		if op := last.Header.Get("KV-Operation"); op != "DEL" && op != "PURGE" {
			return 0, jetstream.ErrKeyExists
		}
		rev = last.Sequence
	}
	return k.Update(ctx, key, value, rev)
}

// Update writes key's value if its last revision is still rev.
func (k *bucket) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	m := nats.NewMsg(k.pre + key)
	m.Data = value
	return k.write(ctx, m, key, rev)
}

// deleteAt deletes key if its last revision is still rev.
func (k *bucket) deleteAt(ctx context.Context, key string, rev uint64) error {
	m := nats.NewMsg(k.pre + key)
	m.Header.Set("KV-Operation", "DEL")
	_, err := k.write(ctx, m, key, rev)
	return err
}

func (k *bucket) write(ctx context.Context, m *nats.Msg, key string, rev uint64) (uint64, error) {
	r := strconv.FormatUint(rev, 10)
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, r)
	// The id of the key and the revision, hashed as PublishOnce hashes
	// a room and a key.
	m.Header.Set(jetstream.MsgIDHeader, onceID(key, r, 0))
	ack, err := k.js.PublishMsg(ctx, m)
	if err != nil {
		return 0, err
	}
	if ack.Duplicate {
		return 0, errWriteRaced
	}
	return ack.Sequence, nil
}
