package wsroom

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// This file holds connections of many rooms: the wsroom.v1 protocol's
// handler, its read loop, and joining, leaving and publishing by request.

// muxConn is the state of a connection of many rooms.
type muxConn struct {
	g *Registry

	// Under the client's mu.
	rooms  map[*Room]*membership
	byName map[string]*membership
}

// MuxHandler returns an http.Handler that serves connections of many rooms,
// which join, leave and publish to the Registry's rooms by message, in the
// wsroom.v1 protocol that PROTOCOL.md describes (subprotocol Subprotocol).
// Each connection is one Client, with one queue, one writer and one
// slow-client policy, in as many rooms as WithMaxRoomsPerClient allows.
// Each room encodes a message once for all its members of this kind.
//
// The handshake is checked as by Handler, and a handshake that does not
// offer the subprotocol gets 400, with the other 400s of a malformed
// handshake, before the origin check. WithSubprotocols does not apply: the
// handler selects Subprotocol only. A client may offer more, such as a
// credential for the authorize hook (["wsroom.v1", "token.XYZ"], see
// OfferedSubprotocols), which is never echoed.
//
// The Registry's options apply to each connection and room; the message
// hook (WithOnMessage) does not: requests are answered as PROTOCOL.md says,
// and WithJoinCheck decides who may join which room. The join and leave
// hooks run when the connection opens and ends.
func (g *Registry) MuxHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		identity, _, ok := checkRequest(&g.cfg, w, req, muxProtocols, true)
		if !ok {
			return
		}
		if !g.addConn() {
			w.Header().Set("Retry-After", "1")
			http.Error(w, ErrClosed.Error(), http.StatusServiceUnavailable)
			return
		}
		hw := &hijackWriter{ResponseWriter: w, timeout: g.cfg.writeTimeout, framed: g.cfg.compression == websocket.CompressionDisabled}
		conn, err := websocket.Accept(hw, req, acceptOptions(&g.cfg, muxProtocols))
		if err != nil {
			g.conns.Done()
			return
		}
		c := newConn(&g.cfg, &g.stats, conn, hw.conn, identity)
		c.mux = &muxConn{g: g, rooms: make(map[*Room]*membership), byName: make(map[string]*membership)}
		c.closing, c.drained = make(chan struct{}), make(chan struct{}, 1)
		if !g.track(c) {
			conn.Close(websocket.StatusGoingAway, "wsroom: shutting down")
			g.conns.Done()
			return
		}
		go c.serveMux()
	})
}

// serveMux runs a connection of many rooms from its start to its end, on a
// goroutine of its own.
func (c *Client) serveMux() {
	g := c.mux.g
	defer g.removeConn(c)
	defer c.discardQueue() // if it ends before it started
	cfg := c.cfg
	if !c.admit() {
		return
	}
	c.stats.joins.Add(1)
	if cfg.onJoin != nil {
		g.hook(c, "join", func() error { cfg.onJoin(c); return nil })
	}
	c.conn.SetReadLimit(cfg.readLimit)
	c.mu.Lock()
	if cfg.pingInterval > 0 {
		c.pingTimer = time.AfterFunc(cfg.pingInterval, c.ping)
	}
	c.mu.Unlock()

	err := c.muxReadLoop()
	close(c.readDone)
	c.fail(&closeRequest{mode: closeAbort, err: err})
	c.mu.Lock()
	c.stopped = true
	if c.pingTimer != nil {
		c.pingTimer.Stop()
	}
	reason := c.closeReq.err
	mems := slices.Collect(maps.Values(c.mux.rooms))
	c.mu.Unlock()
	c.wg.Wait()
	c.discardQueue()
	for _, mem := range mems {
		c.leaveRoomFor(mem, "", "", "disconnected")
	}
	if reason == nil {
		reason = err
	}
	c.cancel(reason)
	c.stats.leaves.Add(1)
	if cfg.onLeave != nil {
		g.hook(c, "leave", func() error { cfg.onLeave(c, reason); return nil })
	}
}

// muxReadLoop reads and answers the client's requests until the connection
// fails or the client must be closed.
func (c *Client) muxReadLoop() error {
	lim := c.newLimiter()
	for {
		data, err := c.readFrame(lim, websocket.MessageText)
		if err != nil {
			return err
		}
		if !utf8.Valid(data) {
			return c.reject(websocket.StatusInvalidFramePayloadData, errInvalidUTF8)
		}
		req, err := parseRequest(data)
		if errors.Is(err, errNotObject) {
			return c.reject(websocket.StatusInvalidFramePayloadData, err)
		}
		if err == nil {
			err = c.serveRequest(req)
		}
		var pe *protoError
		switch {
		case errors.As(err, &pe):
			c.replyErr(req, pe)
		case err != nil:
			return err
		}
	}
}

// serveRequest carries out one request. A *protoError is answered; other
// errors end the connection.
func (c *Client) serveRequest(req *request) error {
	switch req.Op {
	case "join":
		return c.joinRoom(c.ctx, req.Room, req)
	case "leave":
		c.mu.Lock()
		mem := c.mux.byName[req.Room]
		c.mu.Unlock()
		if mem == nil {
			return protoErr(codeNotJoined, "wsroom: not in room %q", req.Room)
		}
		c.leaveRoom(mem, "requested", req.id())
		return nil
	case "pub":
		return c.publishReq(req)
	default:
		return protoErr(codeUnknownOp, "wsroom: unknown op %q", req.Op)
	}
}

// replyErr answers a failed request.
func (c *Client) replyErr(req *request, pe *protoError) {
	rp := &reply{Op: "error", Code: pe.code, Message: pe.msg, Resume: pe.resume}
	if req != nil {
		rp.ID, rp.Room = req.id(), req.Room
	}
	c.enqueue(outFrame{data: rp.frame()}, false)
}

// Join adds a client of many rooms (see Registry.MuxHandler) to the room
// called name, as if it had asked to, without history: the client gets a
// "joined" frame, then the room's messages. The join check
// (WithJoinCheck) does not apply. It returns an error for a client of one
// room, for a bad name, if the client is in the room already or in as many
// rooms as allowed, or if the room is not available.
func (c *Client) Join(ctx context.Context, name string) error {
	if c.mux == nil {
		return errOneRoom
	}
	return c.joinRoom(ctx, name, nil)
}

// Leave removes a client of many rooms from the room called name; the
// client gets a "left" frame with the reason "removed". It returns an error
// for a client of one room or one not in that room.
func (c *Client) Leave(name string) error {
	if c.mux == nil {
		return errOneRoom
	}
	c.mu.Lock()
	mem := c.mux.byName[name]
	c.mu.Unlock()
	if mem == nil {
		return protoErr(codeNotJoined, "wsroom: not in room %q", name)
	}
	c.leaveRoom(mem, "removed", "")
	return nil
}

// Rooms returns the names of the rooms the client is in, sorted.
func (c *Client) Rooms() []string {
	if c.mux == nil {
		if c.room == nil {
			return nil
		}
		return []string{c.room.name}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Sorted(maps.Keys(c.mux.byName))
}

var errOneRoom = errors.New("wsroom: the client is a connection of one room")

// joinRoom joins the client to the room called name: a request's (req not
// nil, with its history options and join check) or server code's.
func (c *Client) joinRoom(ctx context.Context, name string, req *request) error {
	g := c.mux.g
	if err := g.cfg.validName(name); err != nil {
		return protoErr(codeBadRoom, "%v", err)
	}
	var resume *position
	if req != nil {
		var err error
		if resume, err = parseResume(req.Resume); err != nil {
			return protoErr(codeBadRequest, "%v", err)
		}
		if req.Last < 0 {
			return protoErr(codeBadRequest, "wsroom: last must not be negative")
		}
	}
	// Take the name, so that a second join of it waits for nothing.
	mem := &membership{replaying: true}
	c.mu.Lock()
	switch {
	case c.stopped || c.closeReq != nil:
		c.mu.Unlock()
		return ErrClosed
	case c.mux.byName[name] != nil:
		c.mu.Unlock()
		return protoErr(codeBadRequest, "wsroom: in room %q already", name)
	case len(c.mux.byName) >= g.cfg.maxRoomsPerClient:
		c.mu.Unlock()
		return protoErr(codeTooManyRooms, "wsroom: in %d rooms already, the most a connection may be in", len(c.mux.byName))
	}
	c.mux.byName[name] = mem
	c.mu.Unlock()
	untake := func() {
		c.mu.Lock()
		delete(c.mux.byName, name)
		c.mu.Unlock()
	}
	if req != nil && g.cfg.joinCheck != nil {
		if err := g.hook(c, "join check", func() error { return g.cfg.joinCheck(c, name) }); err != nil {
			untake()
			return protoErr(codeForbidden, "%v", err)
		}
	}
	r, err := g.acquireFor(c, name)
	if err != nil {
		untake()
		return acquireErr(err)
	}
	if !r.awaitReady() {
		untake()
		g.abandon(r)
		return protoErr(codeUnavailable, "wsroom: room %q not ready, try again", name)
	}
	mem.room = r
	if resume != nil {
		mem.lastEpoch, mem.lastSeq = resume.epoch, resume.seq
		// Refuse a resume the history cannot serve before joining.
		if _, err := r.readAfter(ctx, *resume, 1); err != nil {
			untake()
			g.abandon(r)
			var gap *gapError
			if errors.As(err, &gap) {
				r.stats.resyncs.Add(1)
				return &protoError{code: codeResync, msg: "wsroom: cannot resume, resync", resume: gap.resume}
			}
			return protoErr(codeUnavailable, "wsroom: read history: %v", err)
		}
	}
	c.mu.Lock()
	c.mux.rooms[r] = mem
	c.mu.Unlock()
	if !r.join(c) {
		c.mu.Lock()
		delete(c.mux.rooms, r)
		delete(c.mux.byName, name)
		c.mu.Unlock()
		r.release()
		return protoErr(codeUnavailable, "%v", ErrClosed)
	}
	r.stats.joins.Add(1)
	if p, ok := r.cfg.broker.(Presence); ok {
		c.presenceIn(r, func(ctx context.Context) error { return p.Join(ctx, r.name, c.member()) })
	}
	r.announce(c, presenceJoin)
	if fn := g.cfg.onRoomJoin; fn != nil {
		c.hook("room join", func() error { fn(c, r); return nil })
	}

	// Live messages are held from here; the client gets the room's
	// position, then the history it asked for, then them.
	cur, err := r.position(ctx)
	if err != nil {
		c.leaveRoom(mem, "", "")
		return protoErr(codeUnavailable, "wsroom: read history: %v", err)
	}
	joined := (&reply{Op: "joined", Room: name}).at(cur)
	if req != nil {
		joined.ID = req.id()
		if req.Members {
			ms, _ := r.Members(ctx)
			if limit := r.cfg.presenceEvents; limit > 0 && len(ms) > limit {
				n := len(ms)
				joined.Count = &n
			} else {
				joined.Members = ms
			}
		}
	}
	c.enqueue(outFrame{data: joined.frame()}, false)
	from, limit := position{}, 0
	switch {
	case resume != nil:
		from, limit = *resume, -1
	case req != nil && req.Last > 0:
		n := min(req.Last, maxLast)
		from, limit = position{epoch: cur.epoch, seq: cur.seq - min(cur.seq, uint64(n))}, n
	}
	if limit != 0 {
		err := r.history(ctx, from, limit, true, mem, c.sendHistory)
		var gap *gapError
		switch {
		case errors.As(err, &gap):
			// The store trimmed it meanwhile.
			r.stats.resyncs.Add(1)
			c.leaveRoom(mem, "", "")
			c.enqueue(outFrame{data: (&reply{Op: "resync", Room: name, Reason: "history trimmed", Resume: gap.resume}).frame()}, false)
			return nil
		case err != nil:
			c.leaveRoom(mem, "", "")
			return protoErr(codeUnavailable, "wsroom: read history: %v", err)
		}
	}
	c.mu.Lock()
	mem.replaying = false
	held := mem.held
	mem.held = nil
	if c.closeReq == nil {
		c.queue = append(c.queueOrNew(), held...)
		c.stats.queued.Add(int64(len(held)))
		c.startWriterLocked()
	}
	c.mu.Unlock()
	return nil
}

// maxLast bounds the "last" of a join request.
const maxLast = 1000

// sendHistory queues a page of history and waits until it is written, so
// that a client holds at most a page of it.
func (c *Client) sendHistory(batch []outFrame) error {
	c.mu.Lock()
	if c.closeReq != nil {
		c.mu.Unlock()
		return ErrClosed
	}
	select {
	case <-c.drained:
	default:
	}
	c.queue = append(c.queueOrNew(), batch...)
	c.stats.queued.Add(int64(len(batch)))
	c.startWriterLocked()
	c.mu.Unlock()
	select {
	case <-c.drained:
		return nil
	case <-c.closing:
		return ErrClosed
	}
}

// leaveRoom takes the client out of mem's room. A reason, if any, is sent
// to the client in a "left" frame (with the request's id).
func (c *Client) leaveRoom(mem *membership, reason, id string) {
	c.leaveRoomFor(mem, reason, id, reason)
}

// leaveRoomFor is leaveRoom, telling the room leave hook why.
func (c *Client) leaveRoomFor(mem *membership, reason, id, why string) {
	r := mem.room
	c.mu.Lock()
	if c.mux.rooms[r] != mem {
		c.mu.Unlock()
		return // left already
	}
	delete(c.mux.rooms, r)
	delete(c.mux.byName, r.name)
	c.mu.Unlock()
	r.leave(c)
	c.roomLeft(r, reason, id)
	c.roomLeaveHook(r, why)
}

// roomLeaveHook runs the room leave hook, if any.
func (c *Client) roomLeaveHook(r *Room, why string) {
	if fn := c.cfg.onRoomLeave; fn != nil && why != "" {
		c.hook("room leave", func() error { fn(c, r, why); return nil })
	}
}

// roomLeft finishes a leave once the room's loop has forgotten the client.
func (c *Client) roomLeft(r *Room, reason, id string) {
	if p, ok := r.cfg.broker.(Presence); ok {
		c.presenceIn(r, func(ctx context.Context) error { return p.Leave(ctx, r.name, c.id) })
	}
	r.announce(c, presenceLeave)
	r.stats.leaves.Add(1)
	if reason != "" {
		c.enqueue(outFrame{data: (&reply{Op: "left", Room: r.name, ID: id, Reason: reason}).frame()}, false)
	}
	r.release()
}

// evict takes a client of many rooms out of a room whose loop has stopped
// or forgotten it (the room closed, or its history broke), telling it with
// a frame built by tell. It runs on the room's goroutines and never waits
// for the client.
func (c *Client) evict(r *Room, tell *reply) {
	c.mu.Lock()
	mem := c.mux.rooms[r]
	if mem != nil {
		delete(c.mux.rooms, r)
		delete(c.mux.byName, r.name)
	}
	c.mu.Unlock()
	if mem == nil {
		return
	}
	r.joined.Add(-1)
	c.enqueue(outFrame{data: tell.frame()}, false)
	go func() { // presence and the release may wait
		if p, ok := r.cfg.broker.(Presence); ok {
			c.presenceIn(r, func(ctx context.Context) error { return p.Leave(ctx, r.name, c.id) })
		}
		r.announce(c, presenceLeave)
		r.stats.leaves.Add(1)
		why := "closed"
		if tell.Op == "resync" {
			why = "resync"
		}
		c.roomLeaveHook(r, why)
		r.release()
	}()
}

// presenceIn runs a presence update for room r, bounded by the write
// timeout.
func (c *Client) presenceIn(r *Room, update func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.writeTimeout)
	defer cancel()
	if err := update(ctx); err != nil {
		r.reportError(c, fmt.Errorf("wsroom: presence: %w", err))
	}
}

// publishReq publishes a client's "pub" and acks it. A pub whose id the
// registry has seen from the same identity in the same room within ackTTL
// is not published again: it gets the first one's ack, once that one is
// done.
func (c *Client) publishReq(req *request) error {
	c.mu.Lock()
	mem := c.mux.byName[req.Room]
	c.mu.Unlock()
	if mem == nil || mem.room == nil {
		return protoErr(codeNotJoined, "wsroom: not in room %q", req.Room)
	}
	r := mem.room
	if req.Data == nil {
		return protoErr(codeBadRequest, "wsroom: pub without data")
	}
	data, err := r.check(req.Data)
	if err != nil {
		return protoErr(codeBadRequest, "%v", err)
	}
	if fn := c.cfg.onPublish; fn != nil {
		var out []byte
		if err := c.hook("publish", func() (err error) { out, err = fn(c, r, data); return err }); err != nil {
			return protoErr(codeForbidden, "%v", err)
		}
		if data, err = r.check(out); err != nil {
			return protoErr(codeBadRequest, "wsroom: the publish hook's data: %v", err)
		}
	}
	id := req.id()
	var e *ackEntry
	if id != "" && !req.Ephemeral {
		var first bool
		key := ackKey{room: r.name, who: c.member().Info, id: id}
		if e, first = c.mux.g.acks.begin(key); !first {
			a, err := e.wait(c.aborted)
			if err != nil {
				return err
			}
			c.enqueue(outFrame{data: a.frame()}, false)
			return nil
		}
	}
	m := Message{Time: time.Now(), From: c.id, Ephemeral: req.Ephemeral, Data: data}
	m, err = c.publishRetry(r, m, id != "")
	if errors.Is(err, ErrClosed) {
		err = protoErr(codeUnavailable, "wsroom: room %q is closing", r.name)
	} else if err != nil {
		err = protoErr(codeUnavailable, "%v", err)
	}
	var a *reply
	if err == nil && id != "" {
		a = &reply{Op: "ack", ID: id, Room: r.name}
		if m.Seq != 0 {
			a.at(position{epoch: m.Epoch, seq: m.Seq})
		}
	}
	if e != nil {
		c.mux.g.acks.finish(e, a, err)
	}
	if err != nil {
		return err
	}
	if a != nil {
		c.enqueue(outFrame{data: a.frame()}, false)
	}
	return nil
}

// sendMux sends data to a client of many rooms alone, as an ephemeral
// message with no room.
func (c *Client) sendMux(data []byte) error {
	if _, err := c.cfg.check(data); err != nil {
		return err
	}
	f, err := muxFrame("", Message{Time: time.Now(), Ephemeral: true, Data: data})
	if err != nil {
		return err
	}
	if !c.enqueue(outFrame{data: f}, false) {
		return ErrClosed
	}
	return nil
}

// ackKey names a publish for idempotent retries: its room, who sent it
// (the authorized identity's text) and its request id.
type ackKey struct{ room, who, id string }

// ackTTL is how long a registry remembers the ack of a publish, and ackMax
// how many it remembers.
const (
	ackTTL = 2 * time.Minute
	ackMax = 1 << 16
)

// ackCache remembers the acks of a registry's recent publishes, and the
// publishes still under way, so that a retry is never published twice.
type ackCache struct {
	mu    sync.Mutex
	acks  map[ackKey]*ackEntry
	order []*ackEntry
}

type ackEntry struct {
	key  ackKey
	at   time.Time
	done chan struct{} // closed when the publish is done
	ack  *reply        // its ack, once done; nil if it failed
	err  error
}

// wait waits for the publish of e to be done, or for stop, and returns its
// ack or its error.
func (e *ackEntry) wait(stop <-chan struct{}) (*reply, error) {
	select {
	case <-e.done:
		return e.ack, e.err
	case <-stop:
		return nil, ErrClosed
	}
}

// begin returns the entry of k and whether the caller is first: then it
// publishes and calls finish. Others wait on the entry.
func (ac *ackCache) begin(k ackKey) (*ackEntry, bool) {
	now := time.Now()
	ac.mu.Lock()
	defer ac.mu.Unlock()
	if ac.acks == nil {
		ac.acks = make(map[ackKey]*ackEntry)
	}
	if e := ac.acks[k]; e != nil && now.Sub(e.at) <= ackTTL {
		return e, false
	}
	for len(ac.order) > 0 && (len(ac.order) >= ackMax || now.Sub(ac.order[0].at) > ackTTL) {
		if old := ac.order[0]; ac.acks[old.key] == old {
			delete(ac.acks, old.key)
		}
		ac.order = ac.order[1:]
	}
	e := &ackEntry{key: k, at: now, done: make(chan struct{})}
	ac.acks[k] = e
	ac.order = append(ac.order, e)
	return e, true
}

// finish records how the publish of e ended. A failed publish is
// forgotten, so that a retry publishes it.
func (ac *ackCache) finish(e *ackEntry, a *reply, err error) {
	ac.mu.Lock()
	e.ack, e.err = a, err
	if err != nil && ac.acks[e.key] == e {
		delete(ac.acks, e.key)
	}
	ac.mu.Unlock()
	close(e.done)
}
