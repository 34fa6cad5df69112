package wsroom

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// This file holds the wire format of the wsroom.v3 protocol (PROTOCOL.md):
// the requests a connection of many rooms sends, and the frames it gets.

// Subprotocol is the WebSocket subprotocol of the protocol of connections in
// many rooms, described in PROTOCOL.md. A new version of the protocol gets a
// new name.
const Subprotocol = "wsroom.v3"

// SubprotocolV2 is the previous version of the protocol, which
// Registry.MuxHandler still speaks to the clients that offer only it: a
// wsroom.v3 server serves them as it serves v3 clients (every v3 addition
// is one a v2 client ignores; PROTOCOL.md, section 9).
const SubprotocolV2 = "wsroom.v2"

// request is a frame from a client of many rooms, as parseRequest read it:
// a member given as null is absent.
type request struct {
	Op        string
	Room      string
	ID        *string
	Resume    *string
	Last      int
	Members   bool
	Data      json.RawMessage
	Ephemeral bool
	hasRoom   bool
}

// Error codes of the protocol (PROTOCOL.md, section 6).
const (
	codeBadRequest   = "bad_request"
	codeUnknownOp    = "unknown_op"
	codeBadRoom      = "bad_room"
	codeNotJoined    = "not_joined"
	codeForbidden    = "forbidden"
	codeTooManyRooms = "too_many_rooms"
	codeUnavailable  = "unavailable"
	codeInternal     = "internal"
	codeResync       = "resync"
)

// protoError is a request's failure, answered with an error frame.
type protoError struct {
	code   string
	msg    string
	resume string // for codeResync: where the room's history can be resumed
}

func (e *protoError) Error() string { return e.msg }

func protoErr(code, format string, args ...any) *protoError {
	return &protoError{code: code, msg: fmt.Sprintf(format, args...)}
}

var errNotObject = errors.New("wsroom: frame is not a JSON object")

// parseRequest parses a client's frame. A frame that is not a JSON object
// is an error that closes the client; a request that is wrong otherwise is
// a *protoError to answer, with the request as far as it was read (its id
// only if that is valid).
//
// Member names are matched exactly, a member given twice is a bad request,
// a member whose value is null is absent, and unknown members are ignored
// (PROTOCOL.md, section 1).
func parseRequest(b []byte) (*request, error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' || !json.Valid(b) {
		return nil, errNotObject
	}
	req := &request{}
	var perr *protoError
	bad := func(format string, args ...any) {
		if perr == nil {
			perr = protoErr(codeBadRequest, "wsroom: bad request: "+format, args...)
		}
	}
	var seen map[string]bool
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.Token() // the '{': b is a valid object
	var hasOp bool
	var op json.RawMessage
	for dec.More() {
		t, _ := dec.Token()
		name, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, errNotObject
		}
		if seen == nil {
			seen = make(map[string]bool, 8)
		}
		if seen[name] {
			bad("member %q given twice", truncate(name, 32))
			continue
		}
		seen[name] = true
		if string(v) == "null" {
			continue // absent
		}
		switch name {
		case "op":
			hasOp, op = true, v
		case "room":
			req.hasRoom = true
			if json.Unmarshal(v, &req.Room) != nil {
				req.hasRoom = false
				bad("room must be a string")
			}
		case "id":
			var id string
			if json.Unmarshal(v, &id) != nil || len(id) == 0 || len(id) > 64 {
				bad("an id is a string of 1 to 64 bytes")
				continue
			}
			req.ID = &id
		case "resume":
			var s string
			if json.Unmarshal(v, &s) != nil {
				bad("resume must be a string")
				continue
			}
			req.Resume = &s
		case "last":
			n, err := strconv.ParseInt(string(v), 10, 0)
			if err != nil || n < 0 {
				bad("last must be an integer of 0 or more")
				continue
			}
			req.Last = int(min(n, maxLast))
		case "members":
			if json.Unmarshal(v, &req.Members) != nil {
				bad("members must be true or false")
			}
		case "ephemeral":
			if json.Unmarshal(v, &req.Ephemeral) != nil {
				bad("ephemeral must be true or false")
			}
		case "data":
			req.Data = v
		}
	}
	switch {
	case perr != nil:
	case !hasOp:
		bad("no op")
	case json.Unmarshal(op, &req.Op) != nil:
		bad("op must be a string")
	case req.Op != "join" && req.Op != "leave" && req.Op != "pub":
		perr = protoErr(codeUnknownOp, "wsroom: unknown op %q", truncate(req.Op, 32))
	case !req.hasRoom:
		bad("no room")
	}
	if perr != nil {
		return req, perr
	}
	return req, nil
}

// id returns the request's id, or "".
func (req *request) id() string {
	if req.ID == nil {
		return ""
	}
	return *req.ID
}

// hello returns the frame a connection of many rooms gets first: its id
// and the limits it is served with (PROTOCOL.md, section 1).
func (c *Client) hello() []byte {
	cfg := c.cfg
	ms := func(d time.Duration) int64 { return d.Milliseconds() }
	type limits struct {
		ReadLimit      int64   `json:"readLimit"`
		Rooms          int     `json:"rooms"`
		Inflight       int     `json:"inflight"`
		SendBuffer     int     `json:"sendBuffer"`
		Presence       int     `json:"presence"`
		PublishRetryMs int64   `json:"publishRetryMs"`
		Rate           float64 `json:"rate"`
		Burst          int     `json:"burst"`
		PingMs         int64   `json:"pingMs"`
		PongTimeoutMs  int64   `json:"pongTimeoutMs"`
		AckTTLMs       int64   `json:"ackTTLMs"`
		AcksPerRoom    int     `json:"acksPerRoom"`
	}
	h := struct {
		Op       string `json:"op"`
		Conn     string `json:"conn"`
		AckScope string `json:"ackScope"`
		Limits   limits `json:"limits"`
	}{"hello", c.id, "node", limits{
		ReadLimit: cfg.readLimit, Rooms: cfg.maxRoomsPerClient, Inflight: maxInflight,
		SendBuffer: cfg.sendBuffer, Presence: max(cfg.presenceEvents, 0),
		PublishRetryMs: ms(cfg.publishRetry), Rate: max(cfg.rateLimit, 0), Burst: cfg.rateBurst,
		PingMs: ms(cfg.pingInterval), PongTimeoutMs: ms(cfg.pongTimeout),
		AckTTLMs: ms(ackTTL), AcksPerRoom: acksPerRoom,
	}}
	if _, ok := cfg.broker.(Deduplicator); ok {
		h.AckScope = "cluster"
	}
	if cfg.rateLimit <= 0 {
		h.Limits.Burst = 0
	}
	if cfg.pingInterval <= 0 {
		h.Limits.PongTimeoutMs = 0
	}
	b, _ := json.Marshal(h)
	return appendFrame(make([]byte, 0, len(b)+4), websocket.MessageText, b)
}

// reply is a frame to a client of many rooms other than a message.
type reply struct {
	Op      string   `json:"op"`
	ID      string   `json:"id,omitempty"`
	Room    string   `json:"room,omitempty"`
	Epoch   *string  `json:"epoch,omitempty"`
	Seq     *uint64  `json:"seq,omitempty"`
	Members []Member `json:"members,omitempty"`
	Count   *int     `json:"count,omitempty"`
	Code    string   `json:"code,omitempty"`
	Message string   `json:"message,omitempty"`
	Reason  string   `json:"reason,omitempty"`
	Resume  string   `json:"resume,omitempty"`
}

// frame returns the reply as a frame.
func (rp *reply) frame() []byte {
	b, _ := json.Marshal(rp)
	return appendFrame(make([]byte, 0, len(b)+4), websocket.MessageText, b)
}

// at sets the reply's position.
func (rp *reply) at(p position) *reply {
	rp.Epoch, rp.Seq = &p.epoch, &p.seq
	return rp
}

// presenceFrame returns the frame of a presence event of the room:
//
//	{"op":"presence","room":"lobby","join":[{"id":"c5r...","info":"ana"}]}
//	{"op":"presence","room":"lobby","leave":["c5r..."]}
//	{"op":"presence","room":"lobby","count":250}
func presenceFrame(room string, m Message) ([]byte, error) {
	rp := struct {
		Op    string   `json:"op"`
		Room  string   `json:"room"`
		Join  []Member `json:"join,omitempty"`
		Leave []string `json:"leave,omitempty"`
		Count *int     `json:"count,omitempty"`
	}{Op: "presence", Room: room}
	switch m.Presence {
	case presenceJoin:
		rp.Join = []Member{{ID: m.From, Info: string(m.Data)}}
	case presenceLeave:
		rp.Leave = []string{m.From}
	case presenceCount:
		n, err := strconv.Atoi(string(m.Data))
		if err != nil {
			return nil, err
		}
		rp.Count = &n
	default:
		return nil, fmt.Errorf("wsroom: unknown presence event %q", m.Presence)
	}
	b, err := json.Marshal(rp)
	if err != nil {
		return nil, err
	}
	return appendFrame(make([]byte, 0, len(b)+4), websocket.MessageText, b), nil
}

// muxFrame returns the frame of m for clients of the wsroom.v3 protocol:
//
//	{"op":"msg","room":"lobby","seq":7,"epoch":"k2x...","time":1700000000000,"from":"c5r...","data":<the JSON value>}
//
// The room's name is in it, so the frame is the same for every member; a
// message for one connection alone (room "") has none. A payload that is
// not JSON is sent as a string in "text" when it is UTF-8 text (from server
// code, or a client of a raw text codec), else base64-encoded in "bytes"
// (PROTOCOL.md, section 3).
func muxFrame(room string, m Message) ([]byte, error) {
	if m.Presence != "" {
		return presenceFrame(room, m)
	}
	b := make([]byte, 0, len(m.Data)+len(m.Epoch)+len(m.From)+len(room)+96)
	b = append(b, `{"op":"msg"`...)
	if room != "" {
		b = append(b, `,"room":`...)
		b = appendJSONString(b, room)
	}
	if m.Seq != 0 {
		b = append(b, `,"seq":`...)
		b = strconv.AppendUint(b, m.Seq, 10)
		b = append(b, `,"epoch":`...)
		b = appendJSONString(b, m.Epoch)
	}
	if !m.Time.IsZero() {
		b = append(b, `,"time":`...)
		b = strconv.AppendInt(b, m.Time.UnixMilli(), 10)
	}
	if m.From != "" {
		b = append(b, `,"from":`...)
		b = appendJSONString(b, m.From)
	}
	switch {
	case json.Valid(m.Data):
		b = append(b, `,"data":`...)
		b = append(b, m.Data...)
	case utf8.Valid(m.Data):
		b = append(b, `,"text":`...)
		b = appendJSONString(b, string(m.Data))
	default:
		b = append(b, `,"bytes":"`...)
		b = base64.StdEncoding.AppendEncode(b, m.Data)
		b = append(b, '"')
	}
	b = append(b, '}')
	return appendFrame(make([]byte, 0, len(b)+10), websocket.MessageText, b), nil
}
