package wsroom_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
	"pgregory.net/rapid"
)

// This file holds the checks of the model test (model_test.go): waiting
// until the clients have read what they should, and the invariants of
// what they read and of what the store holds.

// check runs after every action: it waits until every client has read what
// it should, then checks the store.
func (m *model) check(t *rapid.T) {
	m.settle(t)
	m.checkStore(t)
}

// checkAll checks the frames every connection read since the last check.
func (m *model) checkAll(t *rapid.T) {
	for _, mc := range m.muxes {
		for _, c := range mc.conns {
			m.checkMux(t, c)
		}
	}
	for _, oc := range m.ones {
		for _, c := range oc.conns {
			m.checkOne(t, oc, c)
		}
	}
}

// settle waits, up to 10 seconds, until every live connection has read
// what it should, checking every frame as it comes:
//   - a reply to every request with an id;
//   - every pub without id of the connection in the store;
//   - in every room it is in, every stored message, or, with a drop policy
//     and no queue holding anything, every message not dropped (see
//     unsettled).
//
// A connection waiting for a pub during an outage (its next requests wait
// behind it) is left out until the outage ends.
func (m *model) settle(t *rapid.T) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		m.checkAll(t)
		why := m.unsettled(t)
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			m.fatalf(t, "after 10s, %s", why)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitRead waits, up to 10 seconds, until every live connection in room
// but paused has read the room's last stored message. A reading client
// gets each of the slow action's messages before the next is published,
// so none is dropped for it; messages dropped for it before (with a drop
// policy) do not hold the wait up, as settle's accounting would while
// another client's queue holds frames.
func (m *model) waitRead(t *rapid.T, room string, paused *wsConn) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		m.checkAll(t)
		last := uint64(len(m.history(t, room)))
		why := ""
		for _, mc := range m.muxes {
			if c := mc.current(); c != nil && c.wsConn != paused && c.rooms[room] != nil && c.rooms[room].next <= last {
				why = fmt.Sprintf("%s has read %s up to seq %d, the store up to %d", c.name, room, c.rooms[room].next-1, last)
			}
		}
		for _, oc := range m.ones {
			if c := oc.current(); c != nil && c.wsConn != paused && oc.room == room && c.next <= last {
				why = fmt.Sprintf("%s has read %s up to seq %d, the store up to %d", c.name, room, c.next-1, last)
			}
		}
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			m.fatalf(t, "after 10s, %s", why)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// stored returns, per data, the rooms and seqs it is stored at, and the
// last seq of each room.
func (m *model) stored(t *rapid.T) (where map[string][]string, last map[string]uint64) {
	where, last = map[string][]string{}, map[string]uint64{}
	for _, room := range m.rooms {
		h := m.history(t, room)
		for _, msg := range h {
			where[string(msg.Data)] = append(where[string(msg.Data)], fmt.Sprintf("%s:%d", room, msg.Seq))
		}
		last[room] = uint64(len(h))
	}
	return where, last
}

func (m *model) unsettled(t *rapid.T) string {
	where, last := m.stored(t)
	why := ""
	var tailMux uint64
	tailOne := map[string]uint64{}
	for _, mc := range m.muxes {
		c := mc.current()
		if c == nil {
			continue
		}
		c.noID = slices.DeleteFunc(c.noID, func(p *pub) bool { return len(where[string(p.data)]) > 0 })
		waitsPub := false
		for _, rs := range c.waiting {
			for _, r := range rs {
				waitsPub = waitsPub || r.op == "pub"
			}
		}
		if m.outage && (waitsPub || len(c.noID) > 0) {
			continue // blocked until the outage ends
		}
		if len(c.noID) > 0 {
			return fmt.Sprintf("%s: pub %s (without id) is not stored", c.name, c.noID[0].data)
		}
		for _, id := range slices.Sorted(maps.Keys(c.waiting)) {
			if rs := c.waiting[id]; len(rs) > 0 {
				return fmt.Sprintf("%s: no reply to %s %s (id %s)", c.name, rs[0].op, rs[0].room, id)
			}
		}
		for _, room := range slices.Sorted(maps.Keys(c.rooms)) {
			if got := c.rooms[room].next - 1; got < last[room] {
				tailMux += last[room] - got
				why = fmt.Sprintf("%s: has read %s up to seq %d, the store up to %d", c.name, room, got, last[room])
			}
		}
	}
	for _, oc := range m.ones {
		c := oc.current()
		if c == nil {
			continue
		}
		if got := c.next - 1; got < last[oc.room] {
			tailOne[oc.room] += last[oc.room] - got
			why = fmt.Sprintf("%s: has read %s up to seq %d, the store up to %d", c.name, oc.room, got, last[oc.room])
		}
	}
	if why == "" || m.policy == wsroom.CloseSlow {
		return why
	}
	// With DropOldest or DropNewest a message dropped last never comes:
	// once no queue holds a frame, every message missing must have been
	// dropped, as the Dropped counters say.
	if s := m.reg.Stats(); s.Queued != 0 || m.gapsMux+tailMux > s.Dropped {
		return why + fmt.Sprintf(" (connections of many rooms: %d queued, %d missing, %d dropped)", s.Queued, m.gapsMux+tailMux, s.Dropped)
	}
	for _, r := range m.reg.Rooms() {
		if s := r.Stats(); s.Queued != 0 || m.gapsOne[r.Name()]+tailOne[r.Name()] > s.Dropped {
			return why + fmt.Sprintf(" (clients of room %s: %d queued, %d missing, %d dropped)", r.Name(), s.Queued, m.gapsOne[r.Name()]+tailOne[r.Name()], s.Dropped)
		}
	}
	return ""
}

// checkStore checks the model against the store:
//   - every stored message is one the model published, stored once: no
//     retry and no pub is published twice;
//   - every acked pub is stored (exactly once, by the above), and server
//     code's publishes are stored when Publish returned nil, never when it
//     failed.
func (m *model) checkStore(t *rapid.T) {
	where, _ := m.stored(t)
	for data, at := range where {
		if m.known[data] == nil {
			m.fatalf(t, "store: %s at %v was never published", data, at)
		}
		if len(at) > 1 {
			m.fatalf(t, "store: %s stored %d times, at %v", data, len(at), at)
		}
	}
	for _, p := range m.pubs {
		n := len(where[string(p.data)])
		switch {
		case p.acked && n != 1:
			m.fatalf(t, "store: pub %s of %s (id %s) was acked but is not stored", p.data, p.who, p.id)
		case p.ok && n != 1:
			m.fatalf(t, "store: Registry.Publish of %s returned nil but it is not stored", p.data)
		case p.refused && n != 0:
			m.fatalf(t, "store: Registry.Publish of %s failed but it is stored at %v", p.data, where[string(p.data)])
		}
	}
}

// take removes and returns the request with this id, op and room the
// connection waits a reply for.
func (c *muxConn) take(id, op, room string) *request {
	rs := c.waiting[id]
	for i, r := range rs {
		if r.op == op && r.room == room {
			c.waiting[id] = slices.Delete(rs, i, i+1)
			if len(c.waiting[id]) == 0 {
				delete(c.waiting, id)
			}
			return r
		}
	}
	return nil
}

// checkMux checks the frames a connection of many rooms read since the
// last check, in order. The invariants, per PROTOCOL.md and
// V2-DECISIONS.md:
//   - hello, if any, is the first frame;
//   - every reply answers a request the connection sent and waits a reply
//     for, in the same room (joined, ack, left), and no request fails
//     (the model only sends requests that must succeed);
//   - joined comes while the connection is not in the room; after it, the
//     room's messages are numbered from joined.seq+1 (plain join), from
//     joined.seq-last+1 (last), or from the resume position + 1 (resume),
//     with no gap and no duplicate, each the stored message with its seq
//     (same epoch, same data); no message of the room comes outside a
//     membership (after left, before joined);
//   - a gap is allowed only with a drop policy, and counted, to be
//     accounted for by Stats.Dropped (see unsettled);
//   - an ack carries the stored position of its pub, the same for a retry;
//   - the connection ends only by the test, or told: 1008 with CloseSlow
//     for a client that stopped reading, 1001 at Shutdown; a client that
//     always read is never closed.
func (m *model) checkMux(t *rapid.T, c *muxConn) {
	frames, stopped, rerr := c.unread()
	if len(frames) == 0 && (!stopped || c.ended) {
		return
	}
	mc := c.client
	hist := map[string][]wsroom.Message{}
	h := func(room string) []wsroom.Message {
		if _, ok := hist[room]; !ok {
			hist[room] = m.history(t, room)
		}
		return hist[room]
	}
	first := c.seen - len(frames)
	for i, b := range frames {
		var f frame
		if err := json.Unmarshal(b, &f); err != nil {
			m.fatalf(t, "%s: frame %q is not a JSON object: %v", c.name, b, err)
		}
		switch f.Op {
		case "hello":
			if first+i != 0 {
				m.fatalf(t, "%s: hello is frame %d, not the first", c.name, first+i+1)
			}
		case "joined":
			r := c.take(f.ID, "join", f.Room)
			if r == nil {
				m.fatalf(t, "%s: %s answers no join it sent", c.name, b)
			}
			if c.rooms[f.Room] != nil {
				m.fatalf(t, "%s: %s while in the room", c.name, b)
			}
			if last := uint64(len(h(f.Room))); f.Seq > last {
				m.fatalf(t, "%s: %s: seq past the store's last, %d", c.name, b, last)
			}
			ep := &episode{next: f.Seq + 1}
			switch {
			case r.resume != nil:
				if r.resume.epoch != "" && f.Epoch != r.resume.epoch || f.Seq < r.resume.seq {
					m.fatalf(t, "%s: %s for a resume from %s:%d", c.name, b, r.resume.epoch, r.resume.seq)
				}
				ep.next = r.resume.seq + 1
			case r.last > 0:
				ep.next = f.Seq - min(f.Seq, uint64(r.last)) + 1
			case f.Epoch != "":
				mc.pos[f.Room] = position{epoch: f.Epoch, seq: f.Seq}
			}
			c.rooms[f.Room] = ep
		case "msg":
			ep := c.rooms[f.Room]
			if ep == nil {
				m.fatalf(t, "%s: %s outside a membership of %s (before joined or after left)", c.name, b, f.Room)
			}
			hr := h(f.Room)
			if f.Seq == 0 || f.Seq > uint64(len(hr)) {
				m.fatalf(t, "%s: %s: no such stored message (the store has %d)", c.name, b, len(hr))
			}
			if want := hr[f.Seq-1]; f.Epoch != want.Epoch || !bytes.Equal(f.Data, want.Data) {
				m.fatalf(t, "%s: %s, stored as %s:%d %s", c.name, b, want.Epoch, want.Seq, want.Data)
			}
			switch {
			case f.Seq < ep.next:
				m.fatalf(t, "%s: %s: duplicate or out of order, the next of %s is seq %d", c.name, b, f.Room, ep.next)
			case f.Seq > ep.next && m.policy == wsroom.CloseSlow:
				m.fatalf(t, "%s: %s: gap, the next of %s is seq %d", c.name, b, f.Room, ep.next)
			case f.Seq > ep.next:
				m.gapsMux += f.Seq - ep.next
			}
			ep.next = f.Seq + 1
			mc.pos[f.Room] = position{epoch: f.Epoch, seq: f.Seq}
		case "ack":
			r := c.take(f.ID, "pub", f.Room)
			if r == nil {
				m.fatalf(t, "%s: %s answers no pub it sent", c.name, b)
			}
			p := r.pub
			if f.Seq != 0 {
				hr := h(f.Room)
				if f.Seq > uint64(len(hr)) || !bytes.Equal(hr[f.Seq-1].Data, p.data) || hr[f.Seq-1].Epoch != f.Epoch {
					m.fatalf(t, "%s: %s, but %s is not stored there", c.name, b, p.data)
				}
				at := &position{epoch: f.Epoch, seq: f.Seq}
				if p.ack != nil && *p.ack != *at {
					m.fatalf(t, "%s: %s, the first ack of %s was at %v", c.name, b, p.id, *p.ack)
				}
				p.ack = at
			}
			p.acked = true
		case "left":
			switch {
			case f.Reason == "requested":
				if c.take(f.ID, "leave", f.Room) == nil {
					m.fatalf(t, "%s: %s answers no leave it sent", c.name, b)
				}
			case f.Reason == "closed" && (m.ending == f.Room || m.ending == "shutdown"):
				mc.in[f.Room] = false
			default:
				m.fatalf(t, "%s: unexpected %s", c.name, b)
			}
			if c.rooms[f.Room] == nil {
				m.fatalf(t, "%s: %s while not in the room", c.name, b)
			}
			delete(c.rooms, f.Room)
		case "error":
			// A pub may fail with unavailable (the engine is down, or the
			// room closing): the client sends it again later, with the same
			// id. No other request of the model may fail.
			r := c.take(f.ID, "pub", f.Room)
			if r == nil || f.Code != "unavailable" {
				m.fatalf(t, "%s: unexpected %s", c.name, b)
			}
			m.logf(t, "%s: told %s", c.name, b)
		case "resync":
			// Told: it is no longer in the room. (Not expected here: nothing
			// is trimmed and the epoch never changes.)
			m.logf(t, "%s: told %s", c.name, b)
			delete(c.rooms, f.Room)
			mc.in[f.Room] = false
		default:
			m.fatalf(t, "%s: unexpected %s", c.name, b)
		}
	}
	if stopped && !c.ended {
		c.ended = true
		code := websocket.CloseStatus(rerr)
		switch {
		case c.byTest:
		case code == websocket.StatusGoingAway && m.ending == "shutdown":
		case code == websocket.StatusPolicyViolation && m.policy == wsroom.CloseSlow && c.pausedEver:
			m.logf(t, "%s: told it was too slow: %v", c.name, rerr)
		default:
			m.fatalf(t, "%s: closed by the server: %v (it stopped reading at some point: %v)", c.name, rerr, c.pausedEver)
		}
		// The pubs without id it waited for may or may not be stored; its
		// pubs with an id are sent again on reconnect.
		c.noID = nil
	}
}

// checkOne checks the frames a connection of one room read since the last
// check: the room's messages from the first it must get (the resume
// position + 1, or the last WithHistory ones), in order, no gap (but with
// a drop policy, counted) and no duplicate, each the stored message (for
// the Text codec the payload is found in the store by its data); and that
// it ends only by the test, or told (1008 after it stopped reading, 4000,
// 1001 at Shutdown, dropped when its room is closed).
func (m *model) checkOne(t *rapid.T, oc *oneClient, c *oneConn) {
	frames, stopped, rerr := c.unread()
	if len(frames) == 0 && (!stopped || c.ended) {
		return
	}
	hr := m.history(t, oc.room)
	for _, b := range frames {
		var seq uint64
		var f frame
		if m.jsonCodec {
			if err := json.Unmarshal(b, &f); err != nil {
				m.fatalf(t, "%s: frame %q is not a JSON envelope: %v", c.name, b, err)
			}
			seq = f.Seq
		} else {
			f.Data = b
			for _, msg := range hr {
				if bytes.Equal(msg.Data, b) {
					seq, f.Epoch = msg.Seq, msg.Epoch
					break
				}
			}
		}
		if seq == 0 || seq > uint64(len(hr)) {
			m.fatalf(t, "%s: %s: no such stored message (the store has %d)", c.name, b, len(hr))
		}
		if want := hr[seq-1]; f.Epoch != want.Epoch || !bytes.Equal(f.Data, want.Data) {
			m.fatalf(t, "%s: %s, stored as %s:%d %s", c.name, b, want.Epoch, want.Seq, want.Data)
		}
		switch {
		case seq < c.next:
			m.fatalf(t, "%s: seq %d (%s): duplicate or out of order, the next is seq %d", c.name, seq, b, c.next)
		case seq > c.next && m.policy == wsroom.CloseSlow:
			m.fatalf(t, "%s: seq %d (%s): gap, the next is seq %d", c.name, seq, b, c.next)
		case seq > c.next:
			m.gapsOne[oc.room] += seq - c.next
		}
		c.next = seq + 1
		oc.pos = &position{epoch: hr[seq-1].Epoch, seq: seq}
	}
	if stopped && !c.ended {
		c.ended = true
		code := websocket.CloseStatus(rerr)
		switch {
		case c.byTest:
		case code == websocket.StatusGoingAway && m.ending == "shutdown":
		case code == -1 && m.ending == oc.room:
		case code == wsroom.StatusResync:
			m.logf(t, "%s: told to resync: %v", c.name, rerr)
		case code == websocket.StatusPolicyViolation && m.policy == wsroom.CloseSlow && c.pausedEver:
			m.logf(t, "%s: told it was too slow: %v", c.name, rerr)
		default:
			m.fatalf(t, "%s: closed by the server: %v (it stopped reading at some point: %v)", c.name, rerr, c.pausedEver)
		}
	}
}
