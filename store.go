package wsroom

import (
	"container/list"
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"sync"
	"time"
	"unsafe"
)

// ErrGap reports that a Store cannot serve every message after a position:
// the history no longer reaches back that far, the epoch is not the room's
// current one (the history was reset), or the position lies in the future.
// A client resuming from such a position must resynchronise from scratch.
var ErrGap = errors.New("wsroom: history does not cover the requested position")

// Store keeps the recent history of rooms and numbers their messages.
//
// Each room's messages are numbered 1, 2, 3 and so on within an epoch, with
// no gaps; a Store assigns the numbers in Append, so a Broker that publishes
// through a Store gets one order per room. Sequence numbers never go back
// within an epoch, even when old messages are trimmed away.
//
// A Store's methods may be called concurrently, for the same room and for
// different rooms.
type Store interface {
	// Append assigns m the next sequence number of room, stores it, and
	// returns it with Seq and Epoch set. m.Data must not be modified
	// afterwards.
	Append(ctx context.Context, room string, m Message) (Message, error)

	// After returns the stored messages of room that follow the position
	// (epoch, seq), oldest first, at most limit of them (no limit if
	// limit <= 0). It returns ErrGap if the history cannot serve every
	// message after that position. The position ("", 0) means "before the
	// first message"; if room has no history, After returns no messages
	// for it and ErrGap for any other.
	After(ctx context.Context, room, epoch string, seq uint64, limit int) ([]Message, error)

	// Last returns the last n stored messages of room, oldest first.
	Last(ctx context.Context, room string, n int) ([]Message, error)
}

// MemoryStore is a Store that keeps history in memory, bounded per room by a
// count and an age, and in all by a number of rooms and of bytes (see
// NewMemoryStore). It is the default Store of a Room.
// It is safe for concurrent use.
type MemoryStore struct {
	limit    int
	maxAge   time.Duration
	maxRooms int   // 0: no bound
	maxBytes int64 // 0: no bound
	now      func() time.Time

	mu        sync.Mutex
	rooms     map[string]*memHistory
	written   list.List // of *memHistory, the most recently written first
	bytes     int64     // msgBytes of every kept message
	lastSweep time.Time
}

type memHistory struct {
	name  string
	epoch string
	next  uint64    // sequence number of the next message
	buf   []Message // buf[off:] is kept, oldest first, with contiguous Seq
	off   int
	bytes int64         // msgBytes of the kept messages
	elem  *list.Element // in MemoryStore.written
}

// msgOverhead is what a kept message costs beyond its data: the Message.
const msgOverhead = int64(unsafe.Sizeof(Message{}))

// msgBytes is what the MemoryStore counts for m against its byte bound.
func msgBytes(m *Message) int64 { return msgOverhead + int64(len(m.Data)+len(m.From)) }

// msgs returns the kept messages, oldest first.
func (h *memHistory) msgs() []Message { return h.buf[h.off:] }

// drop forgets the n oldest messages; the buffer is compacted once as many
// messages are dropped as are kept, so appending stays O(1) amortized.
func (h *memHistory) drop(n int) {
	clear(h.buf[h.off : h.off+n])
	h.off += n
	if h.off >= len(h.buf)-h.off {
		k := copy(h.buf, h.buf[h.off:])
		clear(h.buf[k:])
		h.buf, h.off = h.buf[:k], 0
	}
}

// DefaultHistoryLimit is the number of messages per room a MemoryStore keeps
// when NewMemoryStore is given a limit < 1.
const DefaultHistoryLimit = 1000

// DefaultHistoryRooms and DefaultHistoryBytes bound a MemoryStore made
// without MaxHistoryRooms and MaxHistoryBytes: the histories of at most
// 10,000 rooms, of at most 256 MiB in all (each message counted as its data,
// its From and the size of a Message).
const (
	DefaultHistoryRooms       = 10000
	DefaultHistoryBytes int64 = 256 << 20
)

// MemoryStoreOption bounds a MemoryStore (see NewMemoryStore).
type MemoryStoreOption func(*MemoryStore)

// MaxHistoryRooms bounds how many rooms' histories a MemoryStore keeps
// (default DefaultHistoryRooms; n == 0 selects the default, n < 0 removes
// the bound). Past it the least recently written room's history is
// forgotten, epoch included.
func MaxHistoryRooms(n int) MemoryStoreOption {
	return func(s *MemoryStore) { s.maxRooms = bound(n, DefaultHistoryRooms) }
}

// MaxHistoryBytes bounds the bytes of the messages a MemoryStore keeps, in
// all rooms (default DefaultHistoryBytes; n == 0 selects the default, n < 0
// removes the bound). Each message counts as its Data, its From and the
// size of a Message. Past it the least recently written rooms' histories
// are forgotten, epoch included; if the room just written is the only one
// left, its oldest messages are dropped instead, down to its last one.
func MaxHistoryBytes(n int64) MemoryStoreOption {
	return func(s *MemoryStore) { s.maxBytes = bound(n, DefaultHistoryBytes) }
}

// DefaultHistoryAge is how long the default MemoryStore of a Room or a
// Registry keeps messages, so that the history of rooms that come and go
// does not grow without end.
const DefaultHistoryAge = 24 * time.Hour

// NewMemoryStore returns a MemoryStore that keeps, per room, the last limit
// messages (limit < 1 selects DefaultHistoryLimit) that are no older than
// maxAge (maxAge <= 0 keeps them regardless of age). A room whose every
// message has expired is forgotten, epoch included.
//
// In all, it keeps the histories of at most DefaultHistoryRooms rooms, of
// at most DefaultHistoryBytes, unless opts (MaxHistoryRooms,
// MaxHistoryBytes) say otherwise: past a bound, the least recently
// written rooms' histories are forgotten, epoch included, so that rooms
// made by the thousand cannot take the process's memory. A client resuming
// into a forgotten history is resynchronised (ErrGap), as it is when its
// messages have expired; the room's next message starts a new epoch.
func NewMemoryStore(limit int, maxAge time.Duration, opts ...MemoryStoreOption) *MemoryStore {
	if limit < 1 {
		limit = DefaultHistoryLimit
	}
	s := &MemoryStore{limit: limit, maxAge: maxAge, maxRooms: DefaultHistoryRooms, maxBytes: DefaultHistoryBytes,
		now: time.Now, rooms: make(map[string]*memHistory)}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Append implements Store.
func (s *MemoryStore) Append(ctx context.Context, room string, m Message) (Message, error) {
	if err := ctx.Err(); err != nil {
		return Message{}, err
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweepLocked(now)
	h := s.rooms[room]
	if h == nil {
		h = &memHistory{name: room, epoch: newID(), next: 1}
		s.rooms[room] = h
		h.elem = s.written.PushFront(h)
	} else {
		s.written.MoveToFront(h.elem)
	}
	m.Seq, m.Epoch, m.Ephemeral, m.Except = h.next, h.epoch, false, ""
	if m.Time.IsZero() {
		m.Time = now
	}
	h.next++
	h.buf = append(h.buf, m)
	size := msgBytes(&m)
	h.bytes += size
	s.bytes += size
	if n := len(h.buf) - h.off - s.limit; n > 0 {
		s.drop(h, n)
	}
	s.evict(h)
	return m, nil
}

// evict forgets the least recently written rooms' histories while the
// store is over a bound; h, just written, is kept, but for its oldest
// messages if it alone is over the byte bound.
func (s *MemoryStore) evict(h *memHistory) {
	for s.maxRooms > 0 && len(s.rooms) > s.maxRooms {
		s.forget(s.written.Back().Value.(*memHistory)) // not h: it is first
	}
	for s.maxBytes > 0 && s.bytes > s.maxBytes {
		if old := s.written.Back().Value.(*memHistory); old != h {
			s.forget(old)
			continue
		}
		if len(h.msgs()) <= 1 {
			return
		}
		s.drop(h, 1)
	}
}

// forget forgets the history h.
func (s *MemoryStore) forget(h *memHistory) {
	delete(s.rooms, h.name)
	s.written.Remove(h.elem)
	s.bytes -= h.bytes
}

// drop forgets h's n oldest messages.
func (s *MemoryStore) drop(h *memHistory, n int) {
	var size int64
	for i := range h.msgs()[:n] {
		size += msgBytes(&h.msgs()[i])
	}
	h.bytes -= size
	s.bytes -= size
	h.drop(n)
}

// After implements Store.
func (s *MemoryStore) After(ctx context.Context, room, epoch string, seq uint64, limit int) ([]Message, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.history(room)
	if h == nil {
		if epoch == "" && seq == 0 {
			return nil, nil
		}
		return nil, ErrGap
	}
	if epoch == "" && seq == 0 {
		epoch = h.epoch
	}
	msgs := h.msgs()
	last := h.next - 1
	first := last + 1
	if len(msgs) > 0 {
		first = msgs[0].Seq
	}
	if epoch != h.epoch || seq > last || seq+1 < first {
		return nil, ErrGap
	}
	out := msgs[seq+1-first:]
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return append([]Message(nil), out...), nil
}

// Last implements Store.
func (s *MemoryStore) Last(ctx context.Context, room string, n int) ([]Message, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.history(room)
	if h == nil || n <= 0 {
		return nil, nil
	}
	msgs := h.msgs()
	out := msgs[max(0, len(msgs)-n):]
	return append([]Message(nil), out...), nil
}

// history returns the room's history with expired messages trimmed, or nil.
func (s *MemoryStore) history(room string) *memHistory {
	now := s.now()
	s.sweepLocked(now)
	h := s.rooms[room]
	if h != nil && s.trim(h, now) {
		s.forget(h)
		return nil
	}
	return h
}

// trim drops h's expired messages and reports whether none is left.
func (s *MemoryStore) trim(h *memHistory, now time.Time) bool {
	if s.maxAge <= 0 {
		return false
	}
	cut := now.Add(-s.maxAge)
	msgs := h.msgs()
	i := 0
	for i < len(msgs) && msgs[i].Time.Before(cut) {
		i++
	}
	if i > 0 {
		s.drop(h, i)
	}
	return len(h.msgs()) == 0
}

// sweepLocked forgets expired rooms, at most twice per maxAge.
func (s *MemoryStore) sweepLocked(now time.Time) {
	if s.maxAge <= 0 || now.Sub(s.lastSweep) < s.maxAge/2 {
		return
	}
	s.lastSweep = now
	for _, h := range s.rooms {
		if s.trim(h, now) {
			s.forget(h)
		}
	}
}

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// newID returns a random 16-character identifier.
func newID() string {
	var b [10]byte
	rand.Read(b[:])
	return idEncoding.EncodeToString(b[:])
}
