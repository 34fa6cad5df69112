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

// replay writes the history the client is owed before live messages: what
// it missed, when it resumes, or the room's recent history. It runs before
// any writer, and returns how to close the client if it cannot be served.
//
// The history is read and written a page at a time, so a client holds at
// most about replayBytes of it, and frames come from the room's frame
// cache, so clients that replay the same messages share them.
func (c *Client) replay() *closeRequest {
	r := c.room
	if c.resume == nil && r.cfg.history == 0 {
		return nil
	}
	var from position
	remaining := -1 // no limit
	if p := c.resume; p != nil {
		from = *p
		c.lastEpoch, c.lastSeq = p.epoch, p.seq
	} else {
		ctx, cancel := context.WithTimeout(c.ctx, r.cfg.writeTimeout)
		last, err := r.cfg.store.Last(ctx, r.name, 1)
		cancel()
		if err != nil {
			return c.historyError(err)
		}
		if len(last) == 0 {
			return nil
		}
		from = position{epoch: last[0].Epoch, seq: last[0].Seq - min(last[0].Seq, uint64(r.cfg.history))}
		remaining = r.cfg.history
	}
	for remaining != 0 {
		req, more := c.replayPage(&from, &remaining)
		if req != nil || !more {
			return req
		}
	}
	return nil
}

// replayPage reads and writes the page of history after from, at most
// remaining messages if remaining >= 0, and moves both on. Each page gets
// the write timeout anew: a long history is not a slow client. It returns
// how to close the client if it cannot be served, and whether there may be
// more.
func (c *Client) replayPage(from *position, remaining *int) (*closeRequest, bool) {
	r := c.room
	ctx, cancel := context.WithTimeout(c.ctx, r.cfg.writeTimeout)
	defer cancel()
	n := r.replayLen()
	if *remaining > 0 {
		n = min(n, *remaining)
	}
	msgs, err := r.cfg.store.After(ctx, r.name, from.epoch, from.seq, n)
	if errors.Is(err, ErrGap) && c.resume == nil {
		// The oldest of the last n is gone: start from what is kept.
		msgs, err = r.cfg.store.Last(ctx, r.name, n)
		*remaining = len(msgs)
	}
	if errors.Is(err, ErrGap) {
		r.stats.resyncs.Add(1)
		reason := "wsroom: cannot resume, resync"
		if cur := c.currentEpoch(ctx); cur != "" && cur != from.epoch {
			reason += " resume=" + position{epoch: cur}.String()
		}
		return &closeRequest{code: StatusResync, reason: truncate(reason, maxReason), mode: closeDiscard, err: err}, false
	}
	if err != nil {
		return c.historyError(err), false
	}
	batch := make([]outFrame, 0, len(msgs))
	for _, m := range msgs {
		f, err := r.frames.get(r, m)
		if err != nil {
			r.reportError(c, err)
			continue
		}
		batch = append(batch, f)
	}
	if err := c.write(batch, false); err != nil {
		return &closeRequest{mode: closeAbort, err: err}, false
	}
	r.stats.replayed.Add(uint64(len(batch)))
	if len(msgs) == 0 {
		return nil, false
	}
	last := msgs[len(msgs)-1]
	*from = position{epoch: last.Epoch, seq: last.Seq}
	if *remaining > 0 {
		*remaining = max(*remaining-len(msgs), 0)
	}
	return nil, len(msgs) == n
}

// currentEpoch returns the epoch of the room's history now, or "".
func (c *Client) currentEpoch(ctx context.Context) string {
	last, err := c.room.cfg.store.Last(ctx, c.room.name, 1)
	if err != nil || len(last) == 0 {
		return ""
	}
	return last[0].Epoch
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
	frames map[position][]byte
	order  []position
	bytes  int
}

// get returns the frame of m, encoding it if the cache does not have it.
func (fc *frameCache) get(r *Room, m Message) (outFrame, error) {
	key := position{epoch: m.Epoch, seq: m.Seq}
	fc.mu.Lock()
	data, ok := fc.frames[key]
	fc.mu.Unlock()
	if !ok {
		payload, err := r.encode(m)
		if err != nil {
			return outFrame{}, fmt.Errorf("wsroom: encode message %d: %w", m.Seq, err)
		}
		data = r.newFrame(payload)
		fc.put(key, data)
	}
	return outFrame{seq: m.Seq, epoch: m.Epoch, data: data}, nil
}

func (fc *frameCache) put(key position, data []byte) {
	if len(data) > fc.max {
		return
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.frames == nil {
		fc.frames = make(map[position][]byte)
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
