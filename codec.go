package wsroom

import (
	"encoding/json"
	"errors"
	"strconv"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// Codec turns frames from clients into payloads, and messages into frames
// for clients. A room encodes each message once and writes the same bytes to
// every client.
//
// A Codec's methods may be called concurrently.
type Codec interface {
	// MessageType is the WebSocket frame type the codec reads and writes.
	// Frames of the other type are refused with
	// websocket.StatusUnsupportedData (1003).
	MessageType() websocket.MessageType

	// Decode checks a frame received from a client and returns the payload
	// to publish. An error closes the client with
	// websocket.StatusInvalidFramePayloadData (1007).
	Decode(frame []byte) ([]byte, error)

	// Encode returns the frame that carries m to clients. It must not keep
	// or modify m.Data.
	Encode(m Message) ([]byte, error)
}

var errInvalidUTF8 = errors.New("wsroom: text frame is not valid UTF-8")

// Text returns the default codec: text frames whose payload is the frame
// itself, checked to be valid UTF-8. Messages are sent as their bare
// payload, so sequence numbers are not visible to clients.
func Text() Codec { return rawCodec{websocket.MessageText} }

// Binary returns a codec of binary frames whose payload is the frame itself,
// unchecked. Messages are sent as their bare payload.
func Binary() Codec { return rawCodec{websocket.MessageBinary} }

type rawCodec struct{ typ websocket.MessageType }

func (c rawCodec) MessageType() websocket.MessageType { return c.typ }

func (c rawCodec) Decode(frame []byte) ([]byte, error) {
	if c.typ == websocket.MessageText && !utf8.Valid(frame) {
		return nil, errInvalidUTF8
	}
	return frame, nil
}

func (c rawCodec) Encode(m Message) ([]byte, error) { return m.Data, nil }

var errInvalidJSON = errors.New("wsroom: message is not valid JSON")

// JSON returns a codec of text frames holding JSON. A client sends any JSON
// value; it is checked and published as it is. Clients receive an envelope
// that carries the message's place in the room's history:
//
//	{"seq":7,"epoch":"k2x...","time":1700000000000,"from":"c5r...","data":<the JSON value>}
//
// seq and epoch are absent for ephemeral messages, from for messages that
// server code published. Payloads published by server code must be JSON too.
func JSON() Codec { return jsonCodec{} }

type jsonCodec struct{}

func (jsonCodec) MessageType() websocket.MessageType { return websocket.MessageText }

func (jsonCodec) Decode(frame []byte) ([]byte, error) {
	if !json.Valid(frame) {
		return nil, errInvalidJSON
	}
	return frame, nil
}

// Encode trusts m.Data to be JSON: Decode checked it on the way in (from a
// client, or in Room.Publish and Client.Send).
func (jsonCodec) Encode(m Message) ([]byte, error) {
	b := make([]byte, 0, len(m.Data)+len(m.Epoch)+len(m.From)+72)
	b = append(b, '{')
	if m.Seq != 0 {
		b = append(b, `"seq":`...)
		b = strconv.AppendUint(b, m.Seq, 10)
		b = append(b, `,"epoch":`...)
		b = appendJSONString(b, m.Epoch)
		b = append(b, ',')
	}
	if !m.Time.IsZero() {
		b = append(b, `"time":`...)
		b = strconv.AppendInt(b, m.Time.UnixMilli(), 10)
		b = append(b, ',')
	}
	if m.From != "" {
		b = append(b, `"from":`...)
		b = appendJSONString(b, m.From)
		b = append(b, ',')
	}
	b = append(b, `"data":`...)
	b = append(b, m.Data...)
	return append(b, '}'), nil
}

// appendJSONString appends s as a JSON string.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
