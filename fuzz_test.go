package wsroom_test

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/wsroom/wsroom"
)

// Message's binary form carries messages between nodes: any input must
// decode or fail cleanly, and what decodes must encode back to itself.
func FuzzMessageBinary(f *testing.F) {
	seed, _ := wsroom.Message{Seq: 7, Epoch: "e", Time: time.UnixMilli(1700000000000), From: "c", Except: "x", Ephemeral: true, Data: []byte("hi")}.MarshalBinary()
	f.Add(seed)
	f.Add([]byte{1, 0})
	f.Add([]byte{1, 1, 0x80})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var m wsroom.Message
		if err := m.UnmarshalBinary(b); err != nil {
			return
		}
		again, err := m.MarshalBinary()
		if err != nil {
			t.Fatalf("MarshalBinary of a decoded message: %v", err)
		}
		var m2 wsroom.Message
		if err := m2.UnmarshalBinary(again); err != nil {
			t.Fatalf("UnmarshalBinary of re-encoded %x: %v", again, err)
		}
		if m2.Seq != m.Seq || m2.Epoch != m.Epoch || m2.From != m.From || m2.Except != m.Except ||
			m2.Ephemeral != m.Ephemeral || !m2.Time.Equal(m.Time) || !bytes.Equal(m2.Data, m.Data) {
			t.Fatalf("round trip changed %+v into %+v", m, m2)
		}
	})
}

// The JSON codec must accept exactly valid JSON, and its envelope must be
// valid JSON carrying the payload unchanged, whatever the IDs hold.
func FuzzJSONCodec(f *testing.F) {
	f.Add([]byte(`{"a":1}`), "epoch", "from")
	f.Add([]byte(`"\u0000"`), "e\"\\\x00", "\xff")
	f.Add([]byte(`{"a":`), "", "")
	codec := wsroom.JSON()
	f.Fuzz(func(t *testing.T, frame []byte, epoch, from string) {
		payload, err := codec.Decode(frame)
		if (err == nil) != json.Valid(frame) {
			t.Fatalf("Decode(%q) error = %v, json.Valid = %v", frame, err, json.Valid(frame))
		}
		if err != nil {
			return
		}
		env, err := codec.Encode(wsroom.Message{Seq: 3, Epoch: epoch, From: from, Data: payload})
		if err != nil {
			t.Fatalf("Encode: %v", err)
		}
		var got struct {
			Seq  uint64
			Data json.RawMessage
		}
		if err := json.Unmarshal(env, &got); err != nil {
			t.Fatalf("envelope %q is not JSON: %v", env, err)
		}
		if got.Seq != 3 || !bytes.Equal(bytes.TrimSpace(got.Data), bytes.TrimSpace(payload)) {
			t.Fatalf("envelope %q lost the payload %q", env, payload)
		}
	})
}
