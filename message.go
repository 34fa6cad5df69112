package wsroom

import (
	"encoding/binary"
	"errors"
	"time"
)

// Message is one message of a room, as it travels from its publisher through
// the Broker and the Store to every client.
//
// A Message is a value; its Data is shared by every client it is sent to and
// must not be modified once published.
type Message struct {
	// Seq is the message's position in its room's history: 1, 2, 3 and so
	// on, assigned by the Broker (through a Store) when it is published.
	// Ephemeral messages have Seq 0.
	Seq uint64

	// Epoch names the history that Seq counts in. A Store gives each room an
	// epoch when it first stores a message there and keeps it for as long as
	// it keeps the room's history; a new epoch means the history was lost or
	// reset. Together, Epoch and Seq name one message forever.
	Epoch string

	// Time is when the message was published, to the millisecond.
	Time time.Time

	// From is the ID of the client that sent the message, or empty when
	// server code published it.
	From string

	// Except, when not empty, is the ID of the one client that does not
	// receive the message. Such messages are always ephemeral.
	Except string

	// Ephemeral messages get no sequence number, are not stored and are
	// never replayed: typing indicators, presence, cursors.
	Ephemeral bool

	// Presence, when not empty, marks an event a room publishes about its
	// members (see WithPresenceEvents): "join" or "leave", with From the
	// member's client ID and Data the JSON object {"user": ..., "info":
	// ...} (info on joins only; Data of earlier versions is the Info
	// alone); or "count", with Data the number of members in decimal. Such messages are ephemeral and reach
	// only clients of many rooms.
	Presence string

	// Data is the payload, as the room's Codec decoded it.
	Data []byte
}

// Presence events.
const (
	presenceJoin  = "join"
	presenceLeave = "leave"
	presenceCount = "count"
)

// presenceFlags maps presence events to flag bits of the binary form.
var presenceFlags = map[string]byte{presenceJoin: 2, presenceLeave: 4, presenceCount: 6}

// messageVersion is the first byte of a Message's binary form.
const messageVersion = 1

var errBadMessage = errors.New("wsroom: malformed binary message")

// MarshalBinary encodes m in a compact binary form that UnmarshalBinary
// reads back. Brokers and stores may use it to carry messages.
func (m Message) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, 2+3*binary.MaxVarintLen64+len(m.Epoch)+len(m.From)+len(m.Except)+len(m.Data)+8)
	b = append(b, messageVersion)
	var flags byte
	if m.Ephemeral {
		flags |= 1
	}
	flags |= presenceFlags[m.Presence]
	b = append(b, flags)
	b = binary.AppendUvarint(b, m.Seq)
	var ms int64
	if !m.Time.IsZero() {
		ms = m.Time.UnixMilli()
	}
	b = binary.AppendVarint(b, ms)
	for _, s := range []string{m.Epoch, m.From, m.Except} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return append(b, m.Data...), nil
}

// UnmarshalBinary decodes a message written by MarshalBinary. Data is
// copied, so b may be reused afterwards.
func (m *Message) UnmarshalBinary(b []byte) error {
	if len(b) < 2 || b[0] != messageVersion || b[1]&^7 != 0 {
		return errBadMessage
	}
	var out Message
	out.Ephemeral = b[1]&1 != 0
	for name, f := range presenceFlags {
		if b[1]&6 == f {
			out.Presence = name
		}
	}
	b = b[2:]
	seq, n := binary.Uvarint(b)
	if n <= 0 {
		return errBadMessage
	}
	out.Seq = seq
	b = b[n:]
	ms, n := binary.Varint(b)
	if n <= 0 {
		return errBadMessage
	}
	if ms != 0 {
		out.Time = time.UnixMilli(ms)
	}
	b = b[n:]
	for _, s := range []*string{&out.Epoch, &out.From, &out.Except} {
		l, n := binary.Uvarint(b)
		if n <= 0 || l > uint64(len(b)-n) {
			return errBadMessage
		}
		*s = string(b[n : n+int(l)])
		b = b[n+int(l):]
	}
	if len(b) > 0 {
		out.Data = append([]byte(nil), b...)
	}
	*m = out
	return nil
}
