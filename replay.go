package wsroom

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/coder/websocket"
)

// This file holds replay: the history a client is owed when it joins, read
// from the Store a page at a time and written before live messages.

const (
	// replayBytes bounds the history one joining client holds at a time:
	// a page of messages is at most this many bytes of payload (or one
	// message, if that is larger).
	replayBytes = 1 << 20
	// frameCacheBytes bounds the frames of history a room keeps for
	// replays, shared by every client that replays the same messages.
	frameCacheBytes = 4 << 20
)

// replayLen returns how many messages the room reads at a time for a
// replay: as many as fit replayBytes when each is as large as the read
// limit allows, between 8 and 256.
func (r *Room) replayLen() int {
	return int(min(max(replayBytes/r.cfg.readLimit, 8), 256))
}

// replay writes the history a client of one room is owed before live
// messages: what it missed, when it resumes, or the room's recent history.
// It runs before any writer, and returns how to close the client if it
// cannot be served.
func (c *Client) replay() *closeRequest {
	r := c.room
	if c.resume == nil && r.cfg.history == 0 {
		// No history: the client has what came before the cut.
		if cur, err := r.joinCut(c.ctx, c.joinedAt); err == nil {
			c.home.lastEpoch, c.home.lastSeq = cur.epoch, cur.seq
		}
		return nil
	}
	var from position
	limit := -1 // no limit
	if p := c.resume; p != nil {
		from = *p
		c.home.lastEpoch, c.home.lastSeq = p.epoch, p.seq
	} else {
		// The last messages before the client joined: those after it come
		// live, however late this read runs.
		cur, err := r.joinCut(c.ctx, c.joinedAt)
		if err != nil {
			return c.historyError(err)
		}
		from, limit = lastN(cur, r.cfg.history)
	}
	return c.replayFrom(from, limit)
}

// replayFrom writes at most limit messages after from (all, if limit < 0)
// to a client of one room, as replay does.
func (c *Client) replayFrom(from position, limit int) *closeRequest {
	r := c.room
	err := r.history(c.ctx, from, limit, false, c.home, func(batch []outFrame) error {
		return c.write(batch, false)
	})
	var gap *gapError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &gap):
		r.stats.resyncs.Add(1)
		reason := "wsroom: cannot resume, resync"
		if gap.resume != "" {
			reason += " resume=" + gap.resume
		}
		return &closeRequest{code: StatusResync, reason: truncate(reason, maxReason), mode: closeDiscard, err: ErrGap}
	case errors.Is(err, errSend):
		return &closeRequest{mode: closeAbort, err: err}
	default:
		return c.historyError(err)
	}
}

// errSend wraps the error of history's send function.
var errSend = errors.New("wsroom: send history")

// gapError says that the history cannot serve a position. resume, if not
// empty, is the start of the room's current epoch, another than the
// position's (":0" if the history is empty): every message from there can
// be served.
type gapError struct{ resume string }

// gap returns the gapError of position p.
func (r *Room) gap(ctx context.Context, p position) *gapError {
	g := &gapError{}
	if cur, err := r.position(ctx); err == nil && cur.epoch != p.epoch {
		g.resume = position{epoch: cur.epoch}.String()
	}
	return g
}

func (e *gapError) Error() string { return ErrGap.Error() }
func (e *gapError) Unwrap() error { return ErrGap }

// lastN returns where the last n messages up to cur start, and how many
// to read (0 when the room has no history).
func lastN(cur position, n int) (position, int) {
	if cur.seq == 0 {
		return position{}, 0
	}
	return position{epoch: cur.epoch, seq: cur.seq - min(cur.seq, uint64(n))}, n
}

// history reads the room's messages after from, at most limit of them if
// limit >= 0, and hands them to send as frames (mux: of the wsroom.v3
// protocol), a page at a time, so that a client holds at most about
// replayBytes of history at once. Frames come from the room's frame cache,
// so clients that replay the same messages share them. Each page gets the
// write timeout anew: a long history is not a slow client. When from is
// older than what the store keeps, history starts from what it keeps if a
// limit was given, and returns a *gapError otherwise.
func (r *Room) history(ctx context.Context, from position, limit int, mux bool, mem *membership, send func([]outFrame) error) error {
	for limit != 0 {
		more, err := r.historyPage(ctx, &from, &limit, mux, mem, send)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

func (r *Room) historyPage(ctx context.Context, from *position, limit *int, mux bool, mem *membership, send func([]outFrame) error) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.writeTimeout)
	defer cancel()
	n := r.replayLen()
	if *limit > 0 {
		n = min(n, *limit)
	}
	msgs, err := r.cfg.store.After(ctx, r.name, from.epoch, from.seq, n)
	if errors.Is(err, ErrGap) && *limit > 0 {
		// The oldest of the last n is gone: start from what is kept.
		msgs, err = r.cfg.store.Last(ctx, r.name, n)
		*limit = len(msgs)
	}
	if errors.Is(err, ErrGap) {
		return false, r.gap(ctx, *from)
	}
	if err != nil {
		return false, err
	}
	batch := make([]outFrame, 0, len(msgs))
	for _, m := range msgs {
		f, err := r.frames.get(r, m, mux)
		if err != nil {
			r.reportAsync(nil, err)
			continue
		}
		f.mem = mem
		batch = append(batch, f)
	}
	if err := send(batch); err != nil {
		return false, fmt.Errorf("%w: %w", errSend, err)
	}
	r.stats.replayed.Add(uint64(len(batch)))
	if len(msgs) == 0 {
		return false, nil
	}
	last := msgs[len(msgs)-1]
	*from = position{epoch: last.Epoch, seq: last.Seq}
	if *limit > 0 {
		*limit = max(*limit-len(msgs), 0)
	}
	return len(msgs) == n, nil
}

func (c *Client) historyError(err error) *closeRequest {
	c.room.reportError(c, fmt.Errorf("wsroom: read history: %w", err))
	return &closeRequest{code: websocket.StatusTryAgainLater, reason: "wsroom: history unavailable", mode: closeDiscard, err: err}
}

// frameCache keeps the encoded frames of recently replayed messages, up to
// max bytes, so that clients replaying the same history share one copy.
// The oldest entries go first.
type frameCache struct {
	max int

	mu     sync.Mutex
	frames map[frameKey][]byte
	order  []frameKey
	bytes  int
}

// frameKey names the frame of one message for one kind of client.
type frameKey struct {
	position
	mux bool // of the wsroom.v3 protocol, not of the room's codec
}

// get returns the frame of m, encoding it if the cache does not have it.
func (fc *frameCache) get(r *Room, m Message, mux bool) (outFrame, error) {
	key := frameKey{position{epoch: m.Epoch, seq: m.Seq}, mux}
	fc.mu.Lock()
	data, ok := fc.frames[key]
	fc.mu.Unlock()
	if !ok {
		var err error
		if mux {
			data, err = muxFrame(r.name, m)
		} else {
			data, err = r.codecFrame(m)
		}
		if err != nil {
			return outFrame{}, err
		}
		fc.put(key, data)
	}
	return outFrame{seq: m.Seq, epoch: m.Epoch, data: data}, nil
}

func (fc *frameCache) put(key frameKey, data []byte) {
	if len(data) > fc.max {
		return
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.frames == nil {
		fc.frames = make(map[frameKey][]byte)
	}
	if _, ok := fc.frames[key]; ok {
		return
	}
	for fc.bytes+len(data) > fc.max && len(fc.order) > 0 {
		old := fc.order[0]
		fc.order = fc.order[1:]
		fc.bytes -= len(fc.frames[old])
		delete(fc.frames, old)
	}
	fc.frames[key] = data
	fc.order = append(fc.order, key)
	fc.bytes += len(data)
}
