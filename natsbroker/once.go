package natsbroker

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"time"

	"github.com/wsroom/wsroom"
)

var _ wsroom.Deduplicator = (*Broker)(nil)

// PublishOnce implements wsroom.Deduplicator: it is PublishSeq of a stored
// message that key identifies, on every node. The message's Nats-Msg-Id is
// derived from room and key (a SHA-256 hash of both), so JetStream's
// duplicate detection, which the stream's leader applies for the whole
// cluster, stores one message per key within the stream's duplicate window
// (wsroom.DedupWindow, or the stream's MaxAge if shorter: see WithMaxAge).
// When JetStream answers that the key's message is stored already,
// PublishOnce reads it back and returns it, as numbered then, with dup
// true; it stores nothing, and sends nothing to the subscribers, whose
// message the first publish announced. (An attempt that PublishOnce retried
// itself, after a timeout, say, may have been stored without being
// announced: then PublishOnce announces the stored message, which
// subscribers that have it drop.) JetStream checks the key before the
// expected room position, so a retry finds the stored message however many
// messages the room took since.
//
// A message stored by Publish or Append is never a duplicate of one stored
// by PublishOnce. m must not be ephemeral. An error does not always mean
// that the message was not stored (see Publish): a later PublishOnce with
// the same key tells.
func (b *Broker) PublishOnce(ctx context.Context, room, key string, m wsroom.Message) (out wsroom.Message, dup bool, err error) {
	if m.Ephemeral {
		return wsroom.Message{}, false, errors.New("natsbroker: PublishOnce of an ephemeral message")
	}
	a, err := b.acquireAppender(room)
	if err != nil {
		return wsroom.Message{}, false, err
	}
	defer b.releaseAppender(room, a)
	a.mu.Lock()
	defer a.mu.Unlock()
	if m.Time.IsZero() {
		m.Time = time.Now()
	}
	m.Time = time.UnixMilli(m.Time.UnixMilli())
	m.Except = ""
	sent, gen := false, 0
	return b.appendLoop(ctx, a, room, m, func() string {
		// Each message of key that lost its position (see won) spends an
		// ID: every node tries them in the same order.
		gen++
		return onceID(room, key, gen-1)
	}, &sent, true)
}

// onceID is the Nats-Msg-Id of the publish of room that key identifies,
// for its gen-th attempt to take a position (0 first): "o" and 32
// characters of a hash, never the same as the 16 characters of a random ID
// (newID) that Append gives other publishes.
func onceID(room, key string, gen int) string {
	h := sha256.New()
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(room)))
	h.Write(n[:])
	h.Write([]byte(room))
	binary.LittleEndian.PutUint64(n[:], uint64(gen))
	h.Write(n[:])
	h.Write([]byte(key))
	return "o" + base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:24])
}
