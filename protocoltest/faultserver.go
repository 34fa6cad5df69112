// This file is the client side of the conformance kit: FaultServer, a small
// wsroom.v3 server of its own (not the wsroom server) that misbehaves on
// purpose, so that a client's tests can check what the client does when
// replies are lost, delayed or refused and when connections break.

package protocoltest

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"
)

// FaultSubprotocol is the subprotocol a FaultServer selects; a handshake
// that does not offer it gets HTTP 400.
const FaultSubprotocol = "wsroom.v3"

// The scenarios of a FaultServer, chosen by the last element of the URL's
// path or by its "scenario" query parameter. Each misbehaviour happens once
// per session (the "session" query parameter): on the session's first
// connection, or the first time a publish id is seen; after it the server
// behaves, so that a client that does the right thing gets through.
//
// On every join the server first appends one message of its own to the
// room (data {"n":N}), then answers "joined" with the position before it,
// then sends the messages after the join's resume position (or the new
// message alone for a join without resume). Every "pub" is appended,
// echoed to the connection as a msg and acked with its epoch and seq. A
// pub whose id the session has seen gets the original ack and is not
// appended again.
const (
	// ScenarioOK: no fault.
	ScenarioOK = "ok"
	// ScenarioAckNoSeq: acks carry no epoch and seq (a broker that does not
	// number at publish): the client must match them by id.
	ScenarioAckNoSeq = "ack-noseq"
	// ScenarioDropAck: the first pub of an id is appended and echoed but
	// its ack never comes; the server drops the TCP connection after the
	// "delay" parameter (default 100ms). The client must reconnect, resume
	// the room after the echoed message and send the pub again with the
	// same id, which is then acked.
	ScenarioDropAck = "drop-ack"
	// ScenarioDelay: every reply is written after the "delay" parameter
	// (default 200ms); the client must wait and match replies by id.
	ScenarioDelay = "delay"
	// ScenarioHalfFrame: at the first pub of the session the server writes
	// half of the ack frame and drops the TCP connection. The client must
	// reconnect, resume and send the pub again with the same id.
	ScenarioHalfFrame = "half-frame"
	// ScenarioClose1001, ScenarioClose1011 and ScenarioClose4000: after the
	// first join of the session is answered (joined, then its message),
	// the server closes with 1001, 1011 or 4000. The client must reconnect
	// and join with resume set to the last message it got.
	ScenarioClose1001 = "close-1001"
	ScenarioClose1011 = "close-1011"
	ScenarioClose4000 = "close-4000"
	// ScenarioRefuseResume: as ScenarioClose1001, then the first join with
	// resume is answered by error "resync" with resume "e2:0" (the room
	// moved to epoch e2 and its history was lost). The client must report
	// the resync to the application and join with resume "e2:0".
	ScenarioRefuseResume = "refuse-resume"
	// ScenarioRefuseResumeFresh: as ScenarioRefuseResume, but the error has
	// no resume member: the client must join without resume.
	ScenarioRefuseResumeFresh = "refuse-resume-fresh"
	// ScenarioResyncFrame: after the first join's message the server sends
	// a "resync" frame for the room (reason "trimmed", resume "e2:0") on
	// the same connection. The client must drop the room's state, report
	// the resync and join again with resume "e2:0".
	ScenarioResyncFrame = "resync-frame"
	// ScenarioPayloads: after each joined, three server messages follow
	// instead of one: {"data":{"a":1}}, {"text":"plain text"} and
	// {"bytes":"/wAB"} (the bytes ff 00 01).
	ScenarioPayloads = "payloads"
	// ScenarioInternal and ScenarioUnavailable: the first pub of an id gets
	// error "internal" or "unavailable"; the same id sent again is
	// published. The client must retry with the same id.
	ScenarioInternal    = "internal"
	ScenarioUnavailable = "unavailable"
	// ScenarioUnavailableAlways: every pub gets "unavailable". The client
	// must stop retrying at some point and surface the error.
	ScenarioUnavailableAlways = "unavailable-always"
	// ScenarioJoinInternal: the first join of each room gets error
	// "internal"; the client must join again after a while.
	ScenarioJoinInternal = "join-internal"
	// ScenarioReject: every pub gets "bad_request", a final error: the
	// client must surface it and not send the pub again.
	ScenarioReject = "reject"
)

// FaultLimits are the limits of the hello frame of a FaultServer; a query
// parameter of the same name (an integer) overrides one.
var FaultLimits = map[string]int{
	"readLimit": 32768, "rooms": 100, "inflight": 64, "sendBuffer": 256, "presence": 0,
	"publishRetryMs": 10000, "rate": 20, "burst": 40, "pingMs": 30000, "pongTimeoutMs": 10000,
	"ackTTLMs": 120000, "acksPerRoom": 1024,
}

// FaultRequest is a request a FaultServer received, as its log keeps it.
type FaultRequest struct {
	Conn   int             `json:"conn"` // the session's connection, from 1
	Time   time.Time       `json:"time"`
	Op     string          `json:"op"`
	Room   string          `json:"room,omitempty"`
	ID     string          `json:"id,omitempty"`
	Resume string          `json:"resume,omitempty"`
	Data   json.RawMessage `json:"data,omitempty"`
}

// FaultServer is an http.Handler that speaks wsroom.v3 and misbehaves as the
// scenario of each request's URL says (see the Scenario constants). Its
// sessions (the "session" query parameter; "" when absent) are apart: each
// has its rooms, its log of requests and its own once-only faults.
//
// A GET without a WebSocket upgrade returns the session's log as a JSON
// array of FaultRequest; with the query parameter do=drop it drops every
// TCP connection of the session instead (204). Other query parameters:
// "delay" (a duration, for drop-ack and delay) and the names of
// FaultLimits.
type FaultServer struct {
	mu       sync.Mutex
	sessions map[string]*faultSession
}

type faultSession struct {
	conns   int
	log     []FaultRequest
	rooms   map[string]*faultRoom
	acks    map[string]map[string]any // by pub id
	faulted map[string]bool           // once-only faults done
	open    map[net.Conn]struct{}
}

type faultRoom struct {
	name  string
	epoch string
	msgs  []map[string]any
	n     int // messages of the server's own
}

// NewFaultServer returns a FaultServer with no session.
func NewFaultServer() *FaultServer {
	return &FaultServer{sessions: make(map[string]*faultSession)}
}

// Log returns the requests the session has received, in order.
func (s *FaultServer) Log(session string) []FaultRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]FaultRequest(nil), s.session(session).log...)
}

// Connections returns how many connections the session has opened.
func (s *FaultServer) Connections(session string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.session(session).conns
}

// Drop drops every TCP connection of the session, as a network failure
// would.
func (s *FaultServer) Drop(session string) {
	s.mu.Lock()
	ss := s.session(session)
	conns := ss.open
	ss.open = make(map[net.Conn]struct{})
	s.mu.Unlock()
	for c := range conns {
		c.Close()
	}
}

func (s *FaultServer) session(name string) *faultSession {
	ss := s.sessions[name]
	if ss == nil {
		ss = &faultSession{rooms: make(map[string]*faultRoom), acks: make(map[string]map[string]any),
			faulted: make(map[string]bool), open: make(map[net.Conn]struct{})}
		s.sessions[name] = ss
	}
	return ss
}

// once reports whether the fault named key has not happened yet in the
// session, and marks it done; under s.mu.
func (ss *faultSession) once(key string) bool {
	if ss.faulted[key] {
		return false
	}
	ss.faulted[key] = true
	return true
}

// ServeHTTP serves a WebSocket connection of the scenario the URL names, or
// the session's log.
func (s *FaultServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	session := q.Get("session")
	scenario := q.Get("scenario")
	if scenario == "" {
		scenario = path.Base(r.URL.Path)
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		if q.Get("do") == "drop" {
			s.Drop(session)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		log := s.Log(session)
		if log == nil {
			log = []FaultRequest{}
		}
		json.NewEncoder(w).Encode(log)
		return
	}
	key := r.Header.Get("Sec-WebSocket-Key")
	offered := false
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			offered = offered || strings.TrimSpace(p) == FaultSubprotocol
		}
	}
	if key == "" || !offered {
		http.Error(w, "wsroom: offer the subprotocol "+FaultSubprotocol, http.StatusBadRequest)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "no hijacking", http.StatusInternalServerError)
		return
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return
	}
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: %s\r\n\r\n",
		base64.StdEncoding.EncodeToString(sum[:]), FaultSubprotocol)
	if brw.Flush() != nil {
		conn.Close()
		return
	}
	limits := make(map[string]int, len(FaultLimits))
	for k, v := range FaultLimits {
		limits[k] = v
		if n, err := strconv.Atoi(q.Get(k)); err == nil {
			limits[k] = n
		}
	}
	delay, err := time.ParseDuration(q.Get("delay"))
	if err != nil {
		delay = 0
	}
	s.mu.Lock()
	ss := s.session(session)
	ss.conns++
	ss.open[conn] = struct{}{}
	fc := &faultConn{s: s, ss: ss, n: ss.conns, scenario: scenario, delay: delay, conn: conn, r: brw.Reader}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(ss.open, conn)
		s.mu.Unlock()
		conn.Close()
	}()
	fc.serve(limits)
}

// faultConn is one connection of a FaultServer.
type faultConn struct {
	s        *FaultServer
	ss       *faultSession
	n        int
	scenario string
	delay    time.Duration
	conn     net.Conn
	r        *bufio.Reader
}

func (c *faultConn) serve(limits map[string]int) {
	if c.send(map[string]any{"op": "hello", "conn": "fault-" + strconv.Itoa(c.n), "ackScope": "node", "limits": limits}) != nil {
		return
	}
	for {
		op, payload, err := c.readFrame()
		if err != nil {
			return
		}
		switch op {
		case 0x8: // close: answer it
			c.writeFrame(0x8, payload)
			return
		case 0x9:
			if c.writeFrame(0xA, payload) != nil {
				return
			}
			continue
		case 0xA:
			continue
		case 0x2:
			c.closeWith(1003, "binary frame")
			return
		}
		var req struct {
			Op     string          `json:"op"`
			Room   string          `json:"room"`
			ID     string          `json:"id"`
			Resume string          `json:"resume"`
			Data   json.RawMessage `json:"data"`
		}
		if json.Unmarshal(payload, &req) != nil {
			c.closeWith(1007, "not a JSON object")
			return
		}
		c.s.mu.Lock()
		c.ss.log = append(c.ss.log, FaultRequest{Conn: c.n, Time: time.Now(), Op: req.Op, Room: req.Room, ID: req.ID, Resume: req.Resume, Data: req.Data})
		c.s.mu.Unlock()
		var stop bool
		switch req.Op {
		case "join":
			stop = c.join(req.Room, req.ID, req.Resume)
		case "leave":
			stop = c.reply(faultWithID(map[string]any{"op": "left", "room": req.Room, "reason": "requested"}, req.ID)) != nil
		case "pub":
			stop = c.pub(req.Room, req.ID, req.Data)
		default:
			stop = c.reply(faultWithID(map[string]any{"op": "error", "code": "unknown_op", "message": "unknown op"}, req.ID)) != nil
		}
		if stop {
			return
		}
	}
}

func faultWithID(f map[string]any, id string) map[string]any {
	if id != "" {
		f["id"] = id
	}
	return f
}

// join answers a join as the package comment of the scenarios says; it
// reports whether the connection ends.
func (c *faultConn) join(name, id, resume string) bool {
	c.s.mu.Lock()
	ss := c.ss
	room := ss.rooms[name]
	if room == nil {
		room = &faultRoom{name: name, epoch: "e1"}
		ss.rooms[name] = room
	}
	if c.scenario == ScenarioJoinInternal && ss.once("join-internal:"+name) {
		c.s.mu.Unlock()
		return c.reply(faultWithID(map[string]any{"op": "error", "room": name, "code": "internal", "message": "fault: internal"}, id)) != nil
	}
	refuse := (c.scenario == ScenarioRefuseResume || c.scenario == ScenarioRefuseResumeFresh) && resume != "" && ss.once("refuse:"+name)
	if refuse {
		room.epoch, room.msgs = "e2", nil
		c.s.mu.Unlock()
		f := faultWithID(map[string]any{"op": "error", "room": name, "code": "resync", "message": "history lost"}, id)
		if c.scenario == ScenarioRefuseResume {
			f["resume"] = "e2:0"
		}
		return c.reply(f) != nil
	}
	before := uint64(len(room.msgs))
	var out []map[string]any
	if c.scenario == ScenarioPayloads {
		out = append(out, room.add(map[string]any{"data": map[string]any{"a": 1}}),
			room.add(map[string]any{"text": "plain text"}),
			room.add(map[string]any{"bytes": base64.StdEncoding.EncodeToString([]byte{0xff, 0x00, 0x01})}))
	} else {
		room.n++
		out = append(out, room.add(map[string]any{"data": map[string]any{"n": room.n}}))
	}
	if ep, seq, ok := strings.Cut(resume, ":"); ok && (ep == room.epoch || ep == "") {
		if s, err := strconv.ParseUint(seq, 10, 64); err == nil && s <= before {
			out = append([]map[string]any(nil), room.msgs[s:]...)
		}
	}
	joined := faultWithID(map[string]any{"op": "joined", "room": name, "epoch": room.epoch, "seq": before}, id)
	first := ss.once("join")
	var closeCode int
	switch c.scenario {
	case ScenarioClose1001:
		closeCode = 1001
	case ScenarioClose1011:
		closeCode = 1011
	case ScenarioClose4000:
		closeCode = 4000
	case ScenarioRefuseResume, ScenarioRefuseResumeFresh:
		closeCode = 1001
	}
	resync := c.scenario == ScenarioResyncFrame && first
	if resync {
		room.epoch, room.msgs = "e2", nil
	}
	c.s.mu.Unlock()
	if c.reply(joined) != nil {
		return true
	}
	for _, m := range out {
		if c.send(m) != nil {
			return true
		}
	}
	switch {
	case resync:
		return c.send(map[string]any{"op": "resync", "room": name, "reason": "trimmed", "resume": "e2:0"}) != nil
	case first && closeCode != 0:
		c.closeWith(closeCode, "fault: "+c.scenario)
		return true
	}
	return false
}

// add appends a message with the payload members of p to the room and
// returns its msg frame; under s.mu.
func (room *faultRoom) add(p map[string]any) map[string]any {
	m := map[string]any{"op": "msg", "room": room.name, "epoch": room.epoch, "seq": len(room.msgs) + 1, "time": time.Now().UnixMilli()}
	for k, v := range p {
		m[k] = v
	}
	room.msgs = append(room.msgs, m)
	return m
}

// pub answers a pub; it reports whether the connection ends.
func (c *faultConn) pub(name, id string, data json.RawMessage) bool {
	c.s.mu.Lock()
	ss := c.ss
	room := ss.rooms[name]
	if room == nil {
		c.s.mu.Unlock()
		return c.reply(faultWithID(map[string]any{"op": "error", "room": name, "code": "not_joined", "message": "not in room"}, id)) != nil
	}
	var code string
	switch c.scenario {
	case ScenarioInternal, ScenarioUnavailable:
		if ss.once("pub:" + id) {
			code = c.scenario
		}
	case ScenarioUnavailableAlways:
		code = "unavailable"
	case ScenarioReject:
		code = "bad_request"
	}
	if code != "" {
		c.s.mu.Unlock()
		return c.reply(faultWithID(map[string]any{"op": "error", "room": name, "code": code, "message": "fault: " + code}, id)) != nil
	}
	ack := ss.acks[id]
	var echo map[string]any
	if ack == nil {
		echo = room.add(map[string]any{"data": data, "from": "fault-" + strconv.Itoa(c.n)})
		ack = map[string]any{"op": "ack", "room": name, "epoch": room.epoch, "seq": echo["seq"]}
		if c.scenario == ScenarioAckNoSeq {
			ack = map[string]any{"op": "ack", "room": name}
		}
		if id != "" {
			ack["id"] = id
			ss.acks[id] = ack
		}
	}
	dropAck := c.scenario == ScenarioDropAck && ss.once("pub:"+id)
	halfFrame := c.scenario == ScenarioHalfFrame && ss.once("half")
	c.s.mu.Unlock()
	if echo != nil && c.send(echo) != nil {
		return true
	}
	switch {
	case dropAck:
		d := c.delay
		if d == 0 {
			d = 100 * time.Millisecond
		}
		time.Sleep(d)
		return true // the connection is dropped
	case halfFrame:
		b, _ := json.Marshal(ack)
		f := faultFrame(0x1, b)
		c.conn.Write(f[:len(f)/2])
		return true
	}
	if id == "" {
		return false
	}
	return c.reply(ack) != nil
}

// reply sends a reply, after the delay of ScenarioDelay.
func (c *faultConn) reply(f map[string]any) error {
	if c.scenario == ScenarioDelay {
		d := c.delay
		if d == 0 {
			d = 200 * time.Millisecond
		}
		time.Sleep(d)
	}
	return c.send(f)
}

func (c *faultConn) send(f map[string]any) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	return c.writeFrame(0x1, b)
}

// closeWith sends a close frame with code and reason and waits a little
// for the client's, then the connection is closed.
func (c *faultConn) closeWith(code int, reason string) {
	p := binary.BigEndian.AppendUint16(nil, uint16(code))
	if c.writeFrame(0x8, append(p, reason...)) != nil {
		return
	}
	c.conn.SetReadDeadline(time.Now().Add(time.Second))
	for {
		op, _, err := c.readFrame()
		if err != nil || op == 0x8 {
			return
		}
	}
}

func (c *faultConn) writeFrame(op byte, payload []byte) error {
	_, err := c.conn.Write(faultFrame(op, payload))
	return err
}

// faultFrame returns a final, unmasked frame (a server's).
func faultFrame(op byte, payload []byte) []byte {
	b := []byte{0x80 | op}
	switch n := len(payload); {
	case n < 126:
		b = append(b, byte(n))
	case n <= 0xffff:
		b = binary.BigEndian.AppendUint16(append(b, 126), uint16(n))
	default:
		b = binary.BigEndian.AppendUint64(append(b, 127), uint64(n))
	}
	return append(b, payload...)
}

var errFaultFrame = errors.New("protocoltest: bad frame")

// readFrame reads one message (a control frame, or a data frame with its
// continuations) from the client.
func (c *faultConn) readFrame() (op byte, payload []byte, err error) {
	for {
		var h [2]byte
		if _, err = io.ReadFull(c.r, h[:]); err != nil {
			return 0, nil, err
		}
		fin, fop, masked := h[0]&0x80 != 0, h[0]&0x0f, h[1]&0x80 != 0
		n := uint64(h[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err = io.ReadFull(c.r, b[:]); err != nil {
				return 0, nil, err
			}
			n = uint64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err = io.ReadFull(c.r, b[:]); err != nil {
				return 0, nil, err
			}
			n = binary.BigEndian.Uint64(b[:])
		}
		if !masked || n > 1<<24 {
			return 0, nil, errFaultFrame
		}
		var mask [4]byte
		if _, err = io.ReadFull(c.r, mask[:]); err != nil {
			return 0, nil, err
		}
		p := make([]byte, n)
		if _, err = io.ReadFull(c.r, p); err != nil {
			return 0, nil, err
		}
		for i := range p {
			p[i] ^= mask[i%4]
		}
		if fop >= 0x8 {
			return fop, p, nil // control frames may come between fragments
		}
		if fop != 0 {
			op = fop
		}
		payload = append(payload, p...)
		if fin {
			return op, payload, nil
		}
	}
}
