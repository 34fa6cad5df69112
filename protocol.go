package wsroom

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/coder/websocket"
)

// This file holds the wire format of the wsroom.v1 protocol (PROTOCOL.md):
// the requests a connection of many rooms sends, and the frames it gets.

// Subprotocol is the WebSocket subprotocol of the protocol of connections in
// many rooms, described in PROTOCOL.md. A new version of the protocol gets a
// new name.
const Subprotocol = "wsroom.v1"

// request is a frame from a client of many rooms.
type request struct {
	Op        string          `json:"op"`
	Room      string          `json:"room"`
	ID        *string         `json:"id"`
	Resume    string          `json:"resume"`
	Last      int             `json:"last"`
	Members   bool            `json:"members"`
	Data      json.RawMessage `json:"data"`
	Ephemeral bool            `json:"ephemeral"`
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
// a *protoError to answer.
func parseRequest(b []byte) (*request, error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' || !json.Valid(b) {
		return nil, errNotObject
	}
	var req request
	if err := json.Unmarshal(b, &req); err != nil {
		return &req, protoErr(codeBadRequest, "wsroom: bad request: %v", err)
	}
	if req.ID != nil && (len(*req.ID) == 0 || len(*req.ID) > 64) {
		return &req, protoErr(codeBadRequest, "wsroom: an id is 1 to 64 bytes")
	}
	return &req, nil
}

// id returns the request's id, or "".
func (req *request) id() string {
	if req.ID == nil {
		return ""
	}
	return *req.ID
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

// muxFrame returns the frame of m for clients of the wsroom.v1 protocol:
//
//	{"op":"msg","room":"lobby","seq":7,"epoch":"k2x...","time":1700000000000,"from":"c5r...","data":<the JSON value>}
//
// The room's name is in it, so the frame is the same for every member; a
// message for one connection alone (room "") has none. A payload that is
// not JSON (from a client of a raw codec) is sent as a JSON string.
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
	b = append(b, `,"data":`...)
	if json.Valid(m.Data) {
		b = append(b, m.Data...)
	} else {
		q, err := json.Marshal(string(m.Data))
		if err != nil {
			return nil, err
		}
		b = append(b, q...)
	}
	b = append(b, '}')
	return appendFrame(make([]byte, 0, len(b)+10), websocket.MessageText, b), nil
}
