package wsroom

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// This file holds a client's write path: its queue, the slow-client policy,
// the writer that drains the queue, how a connection ends, and pings.

// outFrame is an encoded message waiting to be written. data is shared by
// every client the message goes to.
type outFrame struct {
	seq   uint64
	epoch string
	data  []byte
	mem   *membership // the room the message is of, for numbered messages
	pub   int64       // when a live message was published (Unix ns), with an Observer; else 0
	reply bool        // a reply to the client's own request: never dropped (see reply)
}

// maxInflight bounds the replies that may wait unwritten for a connection
// of many rooms: past it, the reader waits for the writer before it reads
// the next request, so a client that pipelines requests is slowed by TCP,
// never closed for its own replies (PROTOCOL.md, section 6).
const maxInflight = 64

type closeMode int

const (
	closeDrain   closeMode = iota // write what is queued, then the close frame
	closeDiscard                  // drop what is queued, write the close frame
	closeAbort                    // drop the connection without a close frame
)

type closeRequest struct {
	code   websocket.StatusCode
	reason string
	mode   closeMode
	err    error // why the client leaves, for the leave hook
}

// queuePool recycles queues, so an idle client holds none.
var queuePool = sync.Pool{New: func() any { return new([]outFrame) }}

// enqueue queues f for writing, applying the slow-client policy when the
// queue is full. It never blocks and reports whether f was queued (or
// written).
//
// When inline is set (see loop.fanout), nothing is queued and no writer
// runs, enqueue first tries to write the frame at once, without waiting:
// most of the time the socket takes it whole, and no goroutine has to wake
// up. If the socket takes only part of it, the connection keeps the rest
// and a writer finishes it before anything else.
func (c *Client) enqueue(f outFrame, inline bool) bool {
	c.mu.Lock()
	return c.enqueueLocked(f, inline)
}

// enqueueLocked is enqueue, called with mu held; it unlocks mu.
func (c *Client) enqueueLocked(f outFrame, inline bool) bool {
	if c.closeReq != nil {
		c.mu.Unlock()
		return false
	}
	if f.mem != nil && f.seq != 0 && f.seq <= f.mem.sentSeq && f.epoch == f.mem.sentEpoch {
		// The history the client was sent has it: a message the room's loop
		// delivers late, after a replay read it from the store.
		c.mu.Unlock()
		return true
	}
	if f.mem != nil && f.mem.replaying && c.mux != nil {
		return c.holdLocked(f)
	}
	if inline && c.raw && len(c.queue) == 0 && !c.writing && !c.replayingLocked() && !c.stopped {
		c.writing = true // the writer's token, held for this attempt
		c.mu.Unlock()
		res, err := c.writeNow(f)
		c.mu.Lock()
		c.writing = false
		switch {
		case err != nil:
			c.mu.Unlock()
			c.abort(err)
			return false
		case res == tryWhole:
			if len(c.queue) > 0 || c.closeReq != nil {
				c.startWriterLocked() // for what came in meanwhile
			}
			c.mu.Unlock()
			return true
		case res == tryPartial:
			c.partial = true
			c.startWriterLocked()
			c.mu.Unlock()
			return true
		}
		// Not tried: queue it like any other.
		if c.closeReq != nil {
			c.mu.Unlock()
			return false
		}
	}
	defer c.mu.Unlock()
	n := len(c.queue)
	switch {
	case f.reply:
		c.replies++
	case c.replayingLocked() && len(c.queue) >= holdMax(c.cfg.sendBuffer):
		// Read back from the store when the history ends (see replay).
		c.home.overflow = true
		return true
	case !c.roomLocked(&c.queue):
		return false
	}
	c.queue = append(c.queueOrNew(), f)
	c.stats.queued.Add(int64(len(c.queue) - n)) // 0 if the oldest was dropped
	c.startWriterLocked()
	return true
}

// reply queues a reply to the client's own request, or a change of its
// rooms (PROTOCOL.md: hello, joined, ack, error, left, resync). Replies are
// never dropped and never count toward the slow-client policy; the reader
// bounds them instead (see awaitReplies). It reports whether f was queued.
func (c *Client) reply(data []byte) bool {
	return c.enqueue(outFrame{data: data, reply: true}, false)
}

// awaitReplies waits, before the reader reads the next request, until
// fewer than maxInflight replies wait for the writer, or the connection is
// finished; it reports whether it may read on.
func (c *Client) awaitReplies() bool {
	for {
		c.mu.Lock()
		n, closing := c.replies, c.closeReq != nil
		c.mu.Unlock()
		if n < maxInflight || closing { // a closing client is sent no reply
			return true
		}
		select {
		case <-c.repliesOut:
		case <-c.aborted:
			return false
		}
	}
}

// discardQueue forgets what is left in the queue of a client that has
// ended, once no writer runs.
func (c *Client) discardQueue() {
	c.mu.Lock()
	c.stats.queued.Add(-int64(len(c.queue)))
	c.queue = nil
	c.mu.Unlock()
}

// roomLocked makes room for one more frame in *q, by the slow-client
// policy, and reports whether there is.
//
// Only room messages count and are dropped: replies (see reply) are not.
func (c *Client) roomLocked(q *[]outFrame) bool {
	if len(*q) < c.cfg.sendBuffer {
		return true
	}
	oldest, msgs := 0, len(*q)
	if c.mux != nil { // only connections of many rooms get replies
		oldest, msgs = -1, 0
		for i := range *q {
			if !(*q)[i].reply {
				if oldest < 0 {
					oldest = i
				}
				msgs++
			}
		}
	}
	if msgs < c.cfg.sendBuffer {
		return true
	}
	switch c.cfg.slowPolicy {
	case DropNewest:
		c.stats.dropped.Add(1)
		return false
	case DropOldest:
		n := oldest + copy((*q)[oldest:], (*q)[oldest+1:])
		(*q)[n] = outFrame{}
		*q = (*q)[:n]
		c.stats.dropped.Add(1)
		return true
	default:
		c.stats.closedSlow.Add(1)
		c.setCloseLocked(&closeRequest{code: websocket.StatusPolicyViolation, reason: "wsroom: send buffer full", mode: closeDiscard, err: ErrSlow})
		return false
	}
}

// holdLocked keeps a live frame of a room whose history is still being
// sent, until it is (see endReplay). Past holdMax, the frame is not kept
// but read back from the store when the history ends: a long history is
// not a slow client.
func (c *Client) holdLocked(f outFrame) bool {
	defer c.mu.Unlock()
	if len(f.mem.held) >= holdMax(c.cfg.sendBuffer) {
		f.mem.overflow = true
		return true
	}
	f.mem.held = append(f.mem.held, f)
	return true
}

// holdMax is how many live frames a replay holds back: half the send
// buffer, so that once they are queued after the history, live messages
// that follow at once still have room before the slow policy applies.
func holdMax(sendBuffer int) int { return max(sendBuffer/2, 1) }

// replayingLocked reports whether the one room of a client is sending its
// history, which the client writes itself before any writer runs.
func (c *Client) replayingLocked() bool {
	return c.home != nil && c.home.replaying
}

// deliver queues a message of fs's room for the client.
func (c *Client) deliver(fs *outFrames, inline bool) {
	if c.mux == nil {
		if f, ok := fs.frame(false); ok {
			f.mem = c.home
			c.enqueue(f, inline)
		}
		return
	}
	f, ok := fs.frame(true)
	if !ok {
		return
	}
	c.mu.Lock()
	if f.mem = c.mux.rooms[fs.r]; f.mem == nil {
		c.mu.Unlock()
		return // left meanwhile
	}
	c.enqueueLocked(f, inline)
}

// queueOrNew returns the queue, or an empty one from the pool if there is
// none.
func (c *Client) queueOrNew() []outFrame {
	if c.queue == nil {
		return (*queuePool.Get().(*[]outFrame))[:0]
	}
	return c.queue
}

// writeNow writes f if the socket takes it without waiting, holding the
// writer's token.
func (c *Client) writeNow(f outFrame) (tryResult, error) {
	if f.has() {
		return tryWhole, nil // the client has it
	}
	res, n, err := c.fc.tryWrite(f.data)
	if err != nil || res == tryBusy {
		return res, err
	}
	f.sent()
	if c.cfg.observer != nil {
		live := 0
		if f.pub != 0 {
			live = 1
		}
		c.observeWrite(1, n, live, f.pub, f.mem)
	}
	c.stats.messagesOut.Add(1)
	c.stats.bytesOut.Add(uint64(n))
	return res, nil
}

// has reports whether the client was sent f's message already. Only the
// holder of the writer's token may call it, and sent.
func (f *outFrame) has() bool {
	return f.seq != 0 && f.mem != nil && f.epoch == f.mem.lastEpoch && f.seq <= f.mem.lastSeq
}

// sent records that the client was sent f's message.
func (f *outFrame) sent() {
	if f.seq != 0 && f.mem != nil {
		f.mem.lastEpoch, f.mem.lastSeq = f.epoch, f.seq
	}
}

// requestClose asks for the connection to be closed with code and reason.
func (c *Client) requestClose(code websocket.StatusCode, reason string, mode closeMode) {
	c.fail(&closeRequest{code: code, reason: reason, mode: mode})
}

// fail sets how the connection ends, unless that is set already. An abort
// closes the connection at once, from any goroutine; other requests are
// carried out by the writer after (or instead of) what is queued.
func (c *Client) fail(req *closeRequest) {
	c.mu.Lock()
	set := c.setCloseLocked(req)
	c.mu.Unlock()
	if set && req.mode == closeAbort {
		c.markAborted()
		c.conn.CloseNow()
	}
}

// abort drops the connection at once, whatever close was requested before:
// a write failed, so no close frame can follow. err is the leave reason
// unless one was set.
func (c *Client) abort(err error) {
	c.fail(&closeRequest{mode: closeAbort, err: err})
	c.markAborted()
	c.conn.CloseNow()
}

// setCloseLocked records req if no close request is set yet, and makes sure
// a writer will carry it out.
func (c *Client) setCloseLocked(req *closeRequest) bool {
	if c.closeReq != nil {
		return false
	}
	c.closeReq = req
	if c.closing != nil {
		close(c.closing)
	}
	if req.mode != closeAbort {
		c.startWriterLocked()
	}
	return true
}

// startWriterLocked starts a writer unless one runs, history is being
// replayed, or the client is gone. Writers exit when the queue is empty, so
// an idle client has no writer goroutine.
func (c *Client) startWriterLocked() {
	if c.writing || c.replayingLocked() || c.stopped {
		return
	}
	c.writing = true
	c.wg.Add(1)
	go c.writeLoop()
}

// writeLoop writes what is queued until the queue is empty or the
// connection ends. One writer runs at a time.
func (c *Client) writeLoop() {
	defer c.wg.Done()
	for {
		c.mu.Lock()
		batch, req, partial := c.queue, c.closeReq, c.partial
		c.queue, c.partial = nil, false
		if len(batch) > 0 {
			c.stats.queued.Add(-int64(len(batch)))
		}
		if len(batch) == 0 && req == nil && !partial {
			c.writing = false
			c.mu.Unlock()
			signal(c.drained)
			return
		}
		c.mu.Unlock()
		replies := 0
		if c.mux != nil { // only connections of many rooms get replies
			replies = countReplies(batch)
		}
		if req != nil && req.mode != closeDrain {
			batch = batch[:0] // the rest of a begun frame still goes out
		}
		err := c.write(batch, partial)
		if replies > 0 {
			c.mu.Lock()
			c.replies -= replies
			c.mu.Unlock()
			signal(c.repliesOut)
		}
		if batch != nil {
			clear(batch)
			batch = batch[:0]
			queuePool.Put(&batch)
		}
		if err != nil {
			c.stats.closedWrite.Add(1)
			c.abort(err)
			return // writing stays set: the connection is finished
		}
		if req != nil {
			if req.mode == closeAbort {
				c.conn.CloseNow()
			} else {
				c.closeGracefully(req)
			}
			return
		}
	}
}

// countReplies returns how many frames of batch are replies.
func countReplies(batch []outFrame) int {
	n := 0
	for i := range batch {
		if batch[i].reply {
			n++
		}
	}
	return n
}

// closeWait bounds how long a closing connection waits for the peer's
// close frame after the last message it read: while the peer's messages
// keep coming (those it sent before it got our close frame), or one is being
// published, the wait goes on, for closeMax at most.
const (
	closeWait = 5 * time.Second
	closeMax  = 30 * time.Second
)

// closeGracefully writes the close frame, then keeps reading until the
// peer's close frame comes, so that every message the client sent before it
// knew of the close is published, not dropped; then it closes the
// connection. The close frame's write is bounded by the write timeout, the
// wait by closeWait after the peer's last message and its publish, and by
// closeMax in all. With compression negotiated too: the close frame is
// written to the socket directly, not through coder/websocket's Close,
// which would read and drop the messages before the peer's close frame.
func (c *Client) closeGracefully(req *closeRequest) {
	defer c.markAborted()
	if err := c.fc.writeClose(req.code, req.reason); err == nil {
		t := time.NewTimer(closeWait)
		defer t.Stop()
		seen, end := c.reads.Load(), time.Now().Add(closeMax)
	wait:
		for {
			select {
			case <-c.readDone:
				break wait
			case <-t.C:
				if now := c.reads.Load(); (now != seen || c.publishing.Load()) && time.Now().Before(end) {
					seen = now
					t.Reset(closeWait)
					continue
				}
				break wait
			}
		}
	}
	c.conn.CloseNow()
}

// markAborted records that the connection is finished, so that the reader
// waits for nothing more.
func (c *Client) markAborted() {
	c.abortOnce.Do(func() { close(c.aborted) })
}

// iovPool recycles the lists of frames handed to writev.
var iovPool = sync.Pool{New: func() any { return new(net.Buffers) }}

// write writes a batch of frames, after the rest of a begun frame if
// partial is set, skipping messages the client already has.
func (c *Client) write(batch []outFrame, partial bool) error {
	if len(batch) == 0 && !partial {
		return nil
	}
	iovp := iovPool.Get().(*net.Buffers)
	iov := (*iovp)[:0]
	var bytes uint64
	var live int
	var oldest *outFrame // the first live frame, with an Observer
	for i := range batch {
		f := &batch[i]
		if f.has() {
			continue
		}
		f.sent()
		iov = append(iov, f.data)
		bytes += uint64(len(f.data))
		if f.pub != 0 {
			if live == 0 {
				oldest = f
			}
			live++
		}
	}
	n := len(iov)
	var err error
	if c.raw {
		err = c.fc.writeFrames(iov)
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.writeTimeout)
		// coder/websocket frames (and compresses) each message itself.
		for _, f := range iov {
			typ, payload := framePayload(f)
			if err = c.conn.Write(ctx, typ, payload); err != nil {
				break
			}
		}
		cancel()
	}
	clear(iov[:n])
	*iovp = iov[:0]
	iovPool.Put(iovp)
	if err != nil {
		return err
	}
	if c.cfg.observer != nil && n > 0 {
		var pub int64
		var mem *membership
		if oldest != nil {
			pub, mem = oldest.pub, oldest.mem
		}
		c.observeWrite(n, int(bytes), live, pub, mem)
	}
	// Counted after the observer saw the write: Stats is the later news.
	c.stats.messagesOut.Add(uint64(n))
	c.stats.bytesOut.Add(bytes)
	return nil
}

// ping pings the client from the ping timer's goroutine and drops it if no
// pong comes back in time; then it sets the timer for the next ping.
func (c *Client) ping() {
	c.mu.Lock()
	if c.stopped || c.closeReq != nil {
		c.mu.Unlock()
		return
	}
	c.wg.Add(1)
	c.mu.Unlock()
	defer c.wg.Done()

	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	// No pong in time drops the client, unless its reader could not read
	// the pong: it was busy with the client's requests, or read a frame
	// meanwhile (the client is alive). Then the ping is given up, and
	// another follows.
	reads := c.reads.Load()
	var spared atomic.Bool
	timeout := time.AfterFunc(c.cfg.pongTimeout, func() {
		if !c.inRead.Load() || c.reads.Load() != reads {
			spared.Store(true)
			cancel()
			return
		}
		c.stats.closedPing.Add(1)
		c.abort(ErrPongTimeout)
		cancel()
	})
	err := c.conn.Ping(ctx)
	timeout.Stop()
	if err != nil && !spared.Load() {
		// No pong (the timer set the reason), or the connection failed.
		c.abort(err)
		return
	}
	c.mu.Lock()
	if !c.stopped {
		c.pingTimer.Reset(c.cfg.pingInterval)
	}
	c.mu.Unlock()
}
