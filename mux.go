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
// offer the subprotocol gets 400. The Registry's options apply to each
// connection and room; the message hook (WithOnMessage) does not: requests
// are answered as PROTOCOL.md says, and WithJoinCheck decides who may join
// which room. The join and leave hooks run when the connection opens and
// ends.
func (g *Registry) MuxHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !headerHas(req.Header, "Sec-WebSocket-Protocol", Subprotocol) && headerHas(req.Header, "Upgrade", "websocket") {
			http.Error(w, "wsroom: this endpoint speaks the "+Subprotocol+" subprotocol (PROTOCOL.md)", http.StatusBadRequest)
			return
		}
		identity, _, ok := checkRequest(&g.cfg, w, req)
		if !ok {
			return
		}
		if !g.addConn() {
			w.Header().Set("Retry-After", "1")
			http.Error(w, ErrClosed.Error(), http.StatusServiceUnavailable)
			return
		}
		hw := &hijackWriter{ResponseWriter: w, timeout: g.cfg.writeTimeout, framed: g.cfg.compression == websocket.CompressionDisabled}
		conn, err := websocket.Accept(hw, req, &websocket.AcceptOptions{
			Subprotocols:    []string{Subprotocol},
			OriginPatterns:  g.cfg.origins,
			CompressionMode: g.cfg.compression,
		})
		if err != nil {
			g.conns.Done()
			return
		}
		c := newConn(&g.cfg, &g.stats, conn, hw.conn, identity)
		c.mux = &muxConn{g: g, rooms: make(map[*Room]*membership), byName: make(map[string]*membership)}
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
	if cfg.admit != nil {
		if err := g.hook(c, "admit", func() error { return cfg.admit(c) }); err != nil {
			code, reason := websocket.StatusPolicyViolation, err.Error()
			var ce websocket.CloseError
			if errors.As(err, &ce) {
				code, reason = ce.Code, ce.Reason
			}
			c.conn.Close(code, truncate(reason, maxReason))
			c.cancel(err)
			return
		}
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
		c.leaveRoom(mem, "", "")
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
	cfg := c.cfg
	var lim *limiter
	if cfg.rateLimit > 0 {
		lim = newLimiter(cfg.rateLimit, cfg.rateBurst)
	}
	for {
		typ, data, err := c.conn.Read(context.Background())
		if err != nil {
			if errors.Is(err, websocket.ErrMessageTooBig) {
				c.stats.closedInvalid.Add(1)
				c.report(err)
			}
			return err
		}
		c.stats.messagesIn.Add(1)
		c.stats.bytesIn.Add(uint64(len(data)))
		if typ != websocket.MessageText {
			return c.rejectConn(websocket.StatusUnsupportedData, errors.New("wsroom: binary frame in the "+Subprotocol+" protocol"))
		}
		if !utf8.Valid(data) {
			return c.rejectConn(websocket.StatusInvalidFramePayloadData, errInvalidUTF8)
		}
		if lim != nil {
			if wait := lim.take(time.Now()); wait > 0 {
				if cfg.ratePolicy == CloseOverLimit {
					c.stats.closedRate.Add(1)
					c.requestClose(websocket.StatusPolicyViolation, "wsroom: rate limit exceeded", closeDiscard)
					return ErrRateLimited
				}
				c.stats.throttled.Add(1)
				if !c.sleep(wait) {
					return ErrClosed
				}
			}
		}
		req, err := parseRequest(data)
		if errors.Is(err, errNotObject) {
			return c.rejectConn(websocket.StatusInvalidFramePayloadData, err)
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

// rejectConn reports bad input from a client of many rooms and closes it.
func (c *Client) rejectConn(code websocket.StatusCode, err error) error {
	c.stats.closedInvalid.Add(1)
	c.report(err)
	c.requestClose(code, truncate(err.Error(), maxReason), closeDiscard)
	return err
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
		if g.cfg.joinCheck != nil {
			if err := g.hook(c, "join check", func() error { return g.cfg.joinCheck(c, name) }); err != nil {
				return protoErr(codeForbidden, "%v", err)
			}
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
	r, err := g.acquire(name)
	if err != nil {
		untake()
		return protoErr(codeUnavailable, "%v", err)
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

// publishReq publishes a client's "pub" and acks it.
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
	id := req.id()
	key := ackKey{who: c.member().Info, id: id}
	if id != "" {
		if a, ok := r.acks.get(key); ok {
			c.enqueue(outFrame{data: a.frame()}, false)
			return nil
		}
	}
	m := Message{Time: time.Now(), From: c.id, Ephemeral: req.Ephemeral, Data: data}
	m, err = c.publishRetry(r, m, id != "")
	if errors.Is(err, ErrClosed) {
		return protoErr(codeUnavailable, "wsroom: room %q is closing", r.name)
	}
	if err != nil {
		return protoErr(codeUnavailable, "%v", err)
	}
	if id == "" {
		return nil
	}
	a := &reply{Op: "ack", ID: id, Room: r.name}
	if m.Seq != 0 {
		a.at(position{epoch: m.Epoch, seq: m.Seq})
	}
	if !req.Ephemeral {
		r.acks.put(key, a)
	}
	c.enqueue(outFrame{data: a.frame()}, false)
	return nil
}

// sendMux sends data to a client of many rooms alone, as an ephemeral
// message with no room.
func (c *Client) sendMux(data []byte) error {
	var r Room
	r.cfg = *c.cfg
	if _, err := r.check(data); err != nil {
		return err
	}
	f, err := r.muxFrame(Message{Time: time.Now(), Ephemeral: true, Data: data})
	if err != nil {
		return err
	}
	if !c.enqueue(outFrame{data: f}, false) {
		return ErrClosed
	}
	return nil
}

// ackKey names a publish for idempotent retries: who sent it (the
// authorized identity's text) and its request id.
type ackKey struct{ who, id string }

// ackTTL is how long a room remembers the ack of a publish, and ackMax how
// many it remembers.
const (
	ackTTL = 2 * time.Minute
	ackMax = 1024
)

// ackCache remembers the acks of a room's recent publishes.
type ackCache struct {
	mu    sync.Mutex
	acks  map[ackKey]ackEntry
	order []ackKey
}

type ackEntry struct {
	ack *reply
	at  time.Time
}

func (ac *ackCache) get(k ackKey) (*reply, bool) {
	ac.mu.Lock()
	defer ac.mu.Unlock()
	e, ok := ac.acks[k]
	if !ok || time.Since(e.at) > ackTTL {
		return nil, false
	}
	return e.ack, true
}

func (ac *ackCache) put(k ackKey, a *reply) {
	ac.mu.Lock()
	defer ac.mu.Unlock()
	if ac.acks == nil {
		ac.acks = make(map[ackKey]ackEntry)
	}
	for len(ac.order) >= ackMax {
		delete(ac.acks, ac.order[0])
		ac.order = ac.order[1:]
	}
	ac.acks[k] = ackEntry{a, time.Now()}
	ac.order = append(ac.order, k)
}
