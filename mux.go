package wsroom

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// This file holds connections of many rooms: the wsroom.v3 protocol's
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
// wsroom.v3 protocol that PROTOCOL.md describes (subprotocol Subprotocol).
// Each connection is one Client, with one queue, one writer and one
// slow-client policy, in as many rooms as WithMaxRoomsPerClient allows.
// Each room encodes a message once for all its members of this kind.
//
// The handshake is checked as by Handler, and a handshake that does not
// offer the subprotocol (matched exactly) gets 400, with the other 400s of
// a malformed handshake, before the origin check. WithSubprotocols does not
// apply: the handler selects Subprotocol only. A client may offer more,
// such as a credential for the authorize hook (["wsroom.v3", "token.XYZ"],
// see OfferedSubprotocols), which is never echoed.
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
		hw := &hijackWriter{ResponseWriter: w, timeout: g.cfg.writeTimeout}
		conn, err := websocket.Accept(hw, req, acceptOptions(&g.cfg, []string{muxProtocol(req)}))
		if err != nil {
			g.conns.Done()
			return
		}
		c := newConn(&g.cfg, &g.stats, conn, hw.conn, identity)
		c.mux = &muxConn{g: g, rooms: make(map[*Room]*membership), byName: make(map[string]*membership)}
		c.closing, c.drained = make(chan struct{}), make(chan struct{}, 1)
		c.repliesOut = make(chan struct{}, 1)
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
	cfg.events.connected(c)
	if cfg.onJoin != nil {
		g.hook(c, "join", func() error { cfg.onJoin(c); return nil })
	}
	c.conn.SetReadLimit(cfg.readLimit)
	c.reply(c.hello())
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
	// The leaves of rooms that closed under the client come first. An
	// eviction after the client left all its rooms (above) does nothing.
	c.mu.Lock()
	evictions := c.evictions
	c.evictions = nil
	c.mu.Unlock()
	for _, done := range evictions {
		<-done
	}
	cfg.events.disconnected(c, reason)
	c.cancel(reason)
	c.stats.leaves.Add(1)
	if cfg.onLeave != nil {
		g.hook(c, "leave", func() error { cfg.onLeave(c, reason); return nil })
	}
}

// muxReadLoop reads and answers the client's requests, one at a time and
// in order, until the connection fails. Once a close is asked for (a
// protocol error, the application), it goes on reading until the client's
// close frame and carries out what the client sent before it knew.
func (c *Client) muxReadLoop() error {
	lim := c.newLimiter()
	for {
		if !c.awaitReplies() {
			return ErrClosed
		}
		data, err := c.readFrame(lim, websocket.MessageText)
		if err != nil {
			return err
		}
		if data == nil {
			continue // refused; the connection is closing
		}
		if !utf8.Valid(data) {
			c.reject(websocket.StatusInvalidFramePayloadData, errInvalidUTF8)
			continue
		}
		req, err := parseRequest(data)
		if errors.Is(err, errNotObject) {
			c.reject(websocket.StatusInvalidFramePayloadData, err)
			continue
		}
		if err == nil {
			err = c.serveRequest(req)
		}
		var pe *protoError
		switch {
		case errors.As(err, &pe):
			c.replyErr(req, pe)
		case err != nil && !errors.Is(err, ErrClosed):
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
	default: // "pub": parseRequest knows no other
		return c.publishReq(req)
	}
}

// replyErr answers a failed request.
func (c *Client) replyErr(req *request, pe *protoError) {
	rp := &reply{Op: "error", Code: pe.code, Message: pe.msg, Resume: pe.resume}
	if req != nil {
		rp.ID = req.id()
		if req.hasRoom {
			rp.Room = truncate(req.Room, 64)
		}
	}
	c.reply(rp.frame())
}

// hookError is the protocol's answer to an application hook that refused
// (forbidden) or panicked (internal: a server fault, try again later).
func hookError(err error) *protoError {
	if errors.As(err, new(*hookPanic)) {
		return protoErr(codeInternal, "wsroom: server error")
	}
	return protoErr(codeForbidden, "%v", err)
}

// Join adds a client of many rooms (see Registry.MuxHandler) to the room
// called name, as if it had asked to, without history: the client gets a
// "joined" frame, then the room's messages. The join check
// (WithJoinCheck) does not apply. It returns an error for a client of one
// room, for a bad name, if the client is in the room already or in as many
// rooms as allowed, or if the room is not available. It is safe to call
// while the client sends requests.
func (c *Client) Join(ctx context.Context, name string) error {
	if c.mux == nil {
		return errOneRoom
	}
	return c.joinRoom(ctx, name, nil)
}

// Leave removes a client of many rooms from the room called name; the
// client gets a "left" frame with the reason "removed". A Leave while the
// client is joining the room takes effect once the join is done. It returns
// an error for a client of one room or one not in that room.
func (c *Client) Leave(name string) error {
	if c.mux == nil {
		return errOneRoom
	}
	c.mu.Lock()
	mem := c.mux.byName[name]
	if mem != nil && mem.replaying {
		mem.leaveAfter = "removed"
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	if mem == nil {
		return protoErr(codeNotJoined, "wsroom: not in room %q", name)
	}
	c.leaveRoom(mem, "removed", "")
	return nil
}

// Rooms returns the names of the rooms the client is in, sorted, with those
// it is joining.
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
//
// The membership is taken by name first, so that a second join of the name
// fails at once; it is in the room's loop from r.join on, and holds the
// live messages (mem.replaying) until the client has been sent "joined"
// and the history it asked for. Where the live messages start is the cut
// the loop gives at r.join: "joined" names it, the history ends at it, and
// every later numbered message comes live.
func (c *Client) joinRoom(ctx context.Context, name string, req *request) error {
	g := c.mux.g
	if err := g.cfg.validName(name); err != nil {
		return protoErr(codeBadRoom, "%v", err)
	}
	var resume *position
	if req != nil && req.Resume != nil {
		if *req.Resume == "" {
			return protoErr(codeBadRequest, "%v", errBadResume)
		}
		var err error
		if resume, err = parseResume(*req.Resume); err != nil {
			return protoErr(codeBadRequest, "%v", err)
		}
	}
	mem := &membership{replaying: true}
	c.mu.Lock()
	switch {
	case c.stopped || c.closeReq != nil:
		c.mu.Unlock()
		return ErrClosed
	case c.mux.byName[name] != nil:
		c.mu.Unlock()
		return protoErr(codeBadRequest, "wsroom: already in room %q", name)
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
			return hookError(err)
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
	mem.room = r
	c.mux.rooms[r] = mem
	c.mu.Unlock()
	k, ok := r.join(c)
	if !ok {
		c.mu.Lock()
		delete(c.mux.rooms, r)
		delete(c.mux.byName, name)
		c.mu.Unlock()
		r.release()
		return protoErr(codeUnavailable, "%v", ErrClosed)
	}
	r.stats.joins.Add(1)
	r.presenceJoin(c)
	if fn := g.cfg.onRoomJoin; fn != nil {
		c.hook("room join", func() error { fn(c, r); return nil })
	}

	cur, err := r.joinCut(ctx, k)
	if err != nil {
		c.leaveRoom(mem, "", "")
		return protoErr(codeUnavailable, "wsroom: read history: %v", err)
	}
	joined := (&reply{Op: "joined", Room: name}).at(cur)
	if req != nil {
		joined.ID = req.id()
		if req.Members {
			joined.Members, joined.Count = r.membersReply(ctx)
		}
	}
	from, limit := position{}, 0
	switch {
	case resume != nil:
		from, limit = *resume, -1
	case req != nil && req.Last > 0:
		from, limit = lastN(cur, req.Last)
	default:
		mem.lastEpoch, mem.lastSeq = cur.epoch, cur.seq
	}
	c.mu.Lock()
	if mem.evicted != nil {
		// The room closed or resynchronised its clients before the client
		// was told it joined: the join failed.
		tell := mem.evicted
		c.mu.Unlock()
		if tell.Op == "resync" {
			return &protoError{code: codeResync, msg: "wsroom: messages lost, resync", resume: tell.Resume}
		}
		return protoErr(codeUnavailable, "wsroom: room %q closed, try again", name)
	}
	mem.told = true // from here, an eviction is sent to the client
	c.enqueueLocked(outFrame{data: joined.frame(), reply: true}, false)
	if limit != 0 {
		err := r.history(ctx, from, limit, true, mem, func(batch []outFrame) error { return c.sendHistory(mem, batch) })
		var gap *gapError
		switch {
		case errors.As(err, &gap):
			// The store trimmed it meanwhile.
			r.stats.resyncs.Add(1)
			c.leaveRoom(mem, "", "")
			c.reply((&reply{Op: "resync", Room: name, Reason: "history trimmed", Resume: gap.resume}).frame())
			return nil
		case errors.Is(err, errEvicted):
			return nil // the client was told
		case err != nil:
			c.leaveRoom(mem, "", "")
			return protoErr(codeUnavailable, "wsroom: read history: %v", err)
		}
	}
	if !c.endReplay(mem, r) {
		return nil
	}
	c.mu.Lock()
	leave := mem.leaveAfter
	c.mu.Unlock()
	if leave != "" {
		c.leaveRoom(mem, leave, "")
	}
	return nil
}

// endReplay ends the history of mem's room: the live messages held
// meanwhile follow it. While the client was sent the history, more live
// messages may have come than the send buffer holds: those are read back
// from the store, from where the history ended, until none is missing. It
// reports whether the client is still in the room.
func (c *Client) endReplay(mem *membership, r *Room) bool {
	for {
		c.mu.Lock()
		if c.mux.rooms[r] != mem {
			mem.held = nil
			c.mu.Unlock()
			return false
		}
		if !mem.overflow {
			mem.replaying = false
			// The history is written (sendHistory waited for it).
			mem.sentEpoch, mem.sentSeq = mem.lastEpoch, mem.lastSeq
			held := mem.held
			mem.held = nil
			if c.closeReq == nil {
				c.queue = append(c.queueOrNew(), held...)
				c.stats.queued.Add(int64(len(held)))
				c.startWriterLocked()
			}
			c.mu.Unlock()
			return true
		}
		// Catch up from where the client is, then look again.
		mem.overflow = false
		mem.held = nil
		from := position{epoch: mem.lastEpoch, seq: mem.lastSeq}
		c.mu.Unlock()
		err := r.history(c.ctx, from, -1, true, mem, func(batch []outFrame) error { return c.sendHistory(mem, batch) })
		if err != nil && !errors.Is(err, errEvicted) {
			var gap *gapError
			if errors.As(err, &gap) {
				r.stats.resyncs.Add(1)
			}
			c.leaveRoom(mem, "", "")
			c.reply((&reply{Op: "resync", Room: r.name, Reason: "messages lost", Resume: resumeOf(err)}).frame())
			return false
		}
	}
}

// resumeOf returns where a gapError says the history can be resumed.
func resumeOf(err error) string {
	var gap *gapError
	if errors.As(err, &gap) {
		return gap.resume
	}
	return ""
}

// errEvicted is history's error when the client left the room meanwhile.
var errEvicted = errors.New("wsroom: no longer in the room")

// maxLast bounds the "last" of a join request.
const maxLast = 1000

// sendHistory queues a page of mem's history and waits until it is
// written, so that a client holds at most a page of it.
func (c *Client) sendHistory(mem *membership, batch []outFrame) error {
	c.mu.Lock()
	if c.closeReq != nil {
		c.mu.Unlock()
		return ErrClosed
	}
	if c.mux.rooms[mem.room] != mem {
		c.mu.Unlock()
		return errEvicted
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
	c.roomLeft(r, reason, id, why)
	c.roomLeaveHook(r, why)
}

// roomLeaveHook runs the room leave hook, if any.
func (c *Client) roomLeaveHook(r *Room, why string) {
	if fn := c.cfg.onRoomLeave; fn != nil && why != "" {
		c.hook("room leave", func() error { fn(c, r, why); return nil })
	}
}

// roomLeft finishes a leave once the room's loop has forgotten the client.
func (c *Client) roomLeft(r *Room, reason, id, why string) {
	r.presenceLeave(c, why)
	r.stats.leaves.Add(1)
	if reason != "" {
		c.reply((&reply{Op: "left", Room: r.name, ID: id, Reason: reason}).frame())
	}
	r.release()
}

// evict takes a client of many rooms out of a room whose loop has stopped
// or forgotten it (the room closed, or its history broke), telling it with
// the frame of tell; a client that is joining the room and was not told it
// joined is not told: its join fails instead (see joinRoom). It runs on the
// room's goroutines and never waits for the client.
func (c *Client) evict(r *Room, tell *reply) {
	c.mu.Lock()
	mem := c.mux.rooms[r]
	if mem == nil {
		c.mu.Unlock()
		return
	}
	delete(c.mux.rooms, r)
	delete(c.mux.byName, r.name)
	r.joined.Add(-1)
	done := make(chan struct{})
	c.evictions = append(slices.DeleteFunc(c.evictions, isClosed), done)
	if mem.told {
		c.enqueueLocked(outFrame{data: tell.frame(), reply: true}, false)
	} else {
		mem.evicted = tell
		c.mu.Unlock()
	}
	go func() { // presence and the release may wait
		defer close(done)
		why := "closed"
		if tell.Op == "resync" {
			why = "resync"
		}
		r.presenceLeave(c, why)
		r.stats.leaves.Add(1)
		c.roomLeaveHook(r, why)
		r.release()
	}()
}

// publishReq publishes a client's "pub" and acks it. A pub whose id the
// registry has seen from the same sender in the same room within ackTTL is
// not published again: it gets the first one's ack, once that one is done.
func (c *Client) publishReq(req *request) error {
	c.mu.Lock()
	mem := c.mux.byName[req.Room]
	var r *Room
	if mem != nil && !mem.replaying {
		r = mem.room
	}
	c.mu.Unlock()
	if r == nil {
		return protoErr(codeNotJoined, "wsroom: not in room %q", req.Room)
	}
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
			return hookError(err)
		}
		if data, err = r.check(out); err != nil {
			return protoErr(codeBadRequest, "wsroom: the publish hook's data: %v", err)
		}
	}
	id := req.id()
	var e *ackEntry
	if id != "" && !req.Ephemeral {
		var first bool
		if e, first = c.mux.g.acks.begin(r.name, c.sender(), id); !first {
			a, err := e.wait(c.aborted)
			if err != nil {
				return err
			}
			c.reply(a.frame())
			return nil
		}
	}
	m := Message{Time: time.Now(), From: c.id, Ephemeral: req.Ephemeral, Data: data}
	c.publishing.Store(true)
	var key string
	if id != "" && !req.Ephemeral {
		key = dedupKey(c.sender(), id)
	}
	m, err = c.publishRetry(r, m, key, id != "")
	c.publishing.Store(false)
	switch {
	case errors.Is(err, ErrClosed) && !r.isOpen():
		err = protoErr(codeUnavailable, "wsroom: room %q is closing", r.name)
	case errors.Is(err, ErrClosed):
		// The connection ended first: a retry of id on another one, which
		// waits for this publish, is told to send it again.
		err = protoErr(codeUnavailable, "wsroom: the connection that published this first closed before the publish ended; send it again")
	case err != nil:
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
		c.reply(a.frame())
	}
	return nil
}

// sender returns who the client is for idempotent retries: its identity
// when that can be compared (clients without one share the anonymous
// space), else its String, else its connection (PROTOCOL.md, section 5).
func (c *Client) sender() any {
	v := c.identity
	switch {
	case v == nil || reflect.TypeOf(v).Comparable():
		return v
	}
	if s, ok := v.(fmt.Stringer); ok {
		return s.String()
	}
	return connSender(c.id)
}

// dedupKey returns the key of the publish with id by who for a
// Deduplicator: the same on every node for a sender whose identity is a
// string, a fmt.Stringer or another comparable value printed alike (the
// anonymous space included), and unique to the connection otherwise.
func dedupKey(who any, id string) string {
	var s string
	switch v := who.(type) {
	case nil:
		s = "a"
	case string:
		s = "s" + v
	case connSender:
		s = "c" + string(v)
	default:
		s = fmt.Sprintf("v%T:%v", v, v)
	}
	return strconv.Itoa(len(s)) + ":" + s + id
}

// connSender is the sender of a client whose identity cannot be compared.
type connSender string

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

// Idempotent retries keep, per room, the acks of the last acksPerRoom
// publishes with an id, each for ackTTL; ackMax bounds them in all rooms.
const (
	ackTTL      = DedupWindow
	acksPerRoom = 1024
	ackMax      = 1 << 18
)

// ackKey names a publish of a room for idempotent retries: who sent it
// (see Client.sender) and its request id.
type ackKey struct {
	who any
	id  string
}

// ackCache remembers the acks of a registry's recent publishes, and the
// publishes still under way, so that a retry is never published twice.
type ackCache struct {
	mu    sync.Mutex
	rooms map[string]*roomAcks
	n     int // entries in all rooms
}

// roomAcks are the entries of one room, oldest first in order.
type roomAcks struct {
	acks  map[ackKey]*ackEntry
	order []*ackEntry
}

type ackEntry struct {
	key  ackKey
	at   time.Time
	done chan struct{} // closed when the publish is done
	ack  *reply        // its ack, once done; nil if it failed
	err  error
	room *roomAcks
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

// begin returns the entry of the publish with id by who in room, and
// whether the caller is first: then it publishes and calls finish. Others
// wait on the entry.
func (ac *ackCache) begin(room string, who any, id string) (*ackEntry, bool) {
	now := time.Now()
	k := ackKey{who: who, id: id}
	ac.mu.Lock()
	defer ac.mu.Unlock()
	if ac.rooms == nil {
		ac.rooms = make(map[string]*roomAcks)
	}
	ra := ac.rooms[room]
	if ra == nil {
		ra = &roomAcks{acks: make(map[ackKey]*ackEntry)}
		ac.rooms[room] = ra
	}
	if e := ra.acks[k]; e != nil && now.Sub(e.at) <= ackTTL {
		return e, false
	}
	ac.trim(ra, now, acksPerRoom-1)
	if ac.n >= ackMax {
		for name, other := range ac.rooms {
			ac.trim(other, now, acksPerRoom)
			if len(other.order) == 0 && other != ra {
				delete(ac.rooms, name)
			}
		}
		for _, other := range ac.rooms {
			if ac.n < ackMax {
				break
			}
			ac.trim(other, now, len(other.order)/2)
		}
	}
	e := &ackEntry{key: k, at: now, done: make(chan struct{}), room: ra}
	ra.acks[k] = e
	ra.order = append(ra.order, e)
	ac.n++
	return e, true
}

// trim forgets the expired entries of ra and its oldest beyond keep.
func (ac *ackCache) trim(ra *roomAcks, now time.Time, keep int) {
	for len(ra.order) > 0 && (len(ra.order) > keep || now.Sub(ra.order[0].at) > ackTTL) {
		if old := ra.order[0]; ra.acks[old.key] == old {
			delete(ra.acks, old.key)
		}
		ra.order[0] = nil
		ra.order = ra.order[1:]
		ac.n--
	}
}

// finish records how the publish of e ended. A failed publish is
// forgotten, so that a retry publishes it.
func (ac *ackCache) finish(e *ackEntry, a *reply, err error) {
	ac.mu.Lock()
	e.ack, e.err = a, err
	if err != nil && e.room.acks[e.key] == e {
		delete(e.room.acks, e.key)
	}
	ac.mu.Unlock()
	close(e.done)
}
