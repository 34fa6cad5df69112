package load

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// serverFrame builds an unmasked frame as a server sends it.
func serverFrame(fin bool, op byte, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	out := []byte{b0}
	switch n := len(payload); {
	case n <= 125:
		out = append(out, byte(n))
	case n <= 0xffff:
		out = append(out, 126, byte(n>>8), byte(n))
	default:
		out = append(out, 127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	return append(out, payload...)
}

// oneByteReader returns one byte per Read, the worst case for reassembly.
type oneByteReader struct{ b []byte }

func (r *oneByteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	p[0] = r.b[0]
	r.b = r.b[1:]
	return 1, nil
}

type msg struct {
	op byte
	p  string
}

func readAll(t *testing.T, rd io.Reader, size int) ([]msg, error) {
	t.Helper()
	fr := NewFrameReader(rd, size, nil)
	var out []msg
	for {
		for {
			op, p, ok, err := fr.Next()
			if err != nil {
				return out, err
			}
			if !ok {
				break
			}
			out = append(out, msg{op, string(p)})
		}
		if err := fr.Fill(); err != nil {
			return out, err
		}
	}
}

func TestFrameReader(t *testing.T) {
	big := bytes.Repeat([]byte("b"), 300)     // 16-bit length
	huge := bytes.Repeat([]byte("h"), 70_000) // 64-bit length, larger than the buffer
	var stream []byte
	stream = append(stream, serverFrame(true, OpText, []byte("hello"))...)
	stream = append(stream, serverFrame(true, OpBinary, big)...)
	stream = append(stream, serverFrame(false, OpText, []byte("frag"))...)
	stream = append(stream, serverFrame(true, OpPing, []byte("p"))...) // control frame inside a fragmented message
	stream = append(stream, serverFrame(false, OpContinuation, []byte("men"))...)
	stream = append(stream, serverFrame(true, OpContinuation, []byte("ted"))...)
	stream = append(stream, serverFrame(true, OpText, huge)...)
	stream = append(stream, serverFrame(true, OpText, nil)...)
	stream = append(stream, serverFrame(true, OpClose, []byte{0x03, 0xe8})...)
	want := []msg{
		{OpText, "hello"}, {OpBinary, string(big)}, {OpPing, "p"}, {OpText, "fragmented"},
		{OpText, string(huge)}, {OpText, ""}, {OpClose, "\x03\xe8"},
	}
	for _, tc := range []struct {
		name string
		rd   io.Reader
	}{
		{"whole", bytes.NewReader(stream)},
		{"byte by byte", &oneByteReader{stream}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readAll(t, tc.rd, 256)
			if !errors.Is(err, io.EOF) {
				t.Fatalf("err = %v, want EOF", err)
			}
			if len(got) != len(want) {
				t.Fatalf("got %d messages, want %d", len(got), len(want))
			}
			for i := range want {
				if got[i] != want[i] {
					t.Errorf("message %d: op %d len %d, want op %d len %d", i, got[i].op, len(got[i].p), want[i].op, len(want[i].p))
				}
			}
		})
	}
}

func TestFrameReaderPre(t *testing.T) {
	// Bytes read past the handshake come first.
	f := serverFrame(true, OpText, []byte("abc"))
	fr := NewFrameReader(bytes.NewReader(f[3:]), 256, f[:3])
	if err := fr.Fill(); err != nil {
		t.Fatal(err)
	}
	op, p, ok, err := fr.Next()
	if err != nil || !ok || op != OpText || string(p) != "abc" {
		t.Fatalf("Next = %d %q %v %v", op, p, ok, err)
	}
}

func TestFrameReaderErrors(t *testing.T) {
	for name, stream := range map[string][]byte{
		"masked":              {0x81, 0x81, 1, 2, 3, 4, 'a'},
		"reserved bits":       {0xC1, 0x01, 'a'},
		"bad opcode":          {0x83, 0x01, 'a'},
		"lone continuation":   {0x80, 0x01, 'a'},
		"fragmented control":  {0x09, 0x00},
		"long control":        append([]byte{0x89, 126, 0, 126}, make([]byte, 126)...),
		"message in fragment": append(serverFrame(false, OpText, []byte("a")), serverFrame(true, OpText, []byte("b"))...),
		"too large":           {0x82, 127, 0, 0, 0, 0, 0x10, 0, 0, 1},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := readAll(t, bytes.NewReader(stream), 256)
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("err = %v, want ErrProtocol", err)
			}
		})
	}
}

func TestFrameReaderNoAllocs(t *testing.T) {
	var stream []byte
	p := make([]byte, 64)
	EncodePayload(p, 1, 1, 1)
	for range 100 {
		stream = append(stream, serverFrame(true, OpText, p)...)
	}
	rd := bytes.NewReader(stream)
	fr := NewFrameReader(rd, 16<<10, nil)
	allocs := testing.AllocsPerRun(10, func() {
		rd.Reset(stream)
		for fr.Fill() == nil {
			for {
				_, p, ok, _ := fr.Next()
				if !ok {
					break
				}
				DecodePayload(p)
			}
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per run, want 0", allocs)
	}
}

func TestClientFrame(t *testing.T) {
	key := [4]byte{1, 2, 3, 4}
	for _, n := range []int{0, 64, 125, 126, 70_000} {
		p := bytes.Repeat([]byte("z"), n)
		f := AppendClientFrame(nil, OpText, p, key)
		if f[0] != 0x81 || f[1]&0x80 == 0 {
			t.Fatalf("n=%d: header % x", n, f[:2])
		}
		// Unmask and read it back as a server frame.
		hdr := 2
		switch f[1] & 0x7f {
		case 126:
			hdr = 4
		case 127:
			hdr = 10
		}
		body := f[hdr+4:]
		for i := range body {
			body[i] ^= key[i&3]
		}
		plain := append([]byte{f[0], f[1] & 0x7f}, f[2:hdr]...)
		plain = append(plain, body...)
		got, _ := readAll(t, bytes.NewReader(plain), 256)
		if len(got) != 1 || got[0].p != string(p) {
			t.Fatalf("n=%d: round trip failed", n)
		}
	}
}

func TestPayload(t *testing.T) {
	p := make([]byte, 64)
	EncodePayload(p, 1234567890123, 7, 1<<48+5)
	if bytes.ContainsAny(p, " \n") || !bytes.HasSuffix(p, []byte("xxxx")) {
		t.Fatalf("payload %q", p)
	}
	if ts, step, ok := decodeHead(p); !ok || ts != 1234567890123 || step != 7 {
		t.Fatalf("decodeHead = %d %d %v", ts, step, ok)
	}
	ts, step, seq, ok := DecodePayload(p)
	if !ok || ts != 1234567890123 || step != 7 || seq != 1<<48+5 {
		t.Fatalf("DecodePayload = %d %d %d %v", ts, step, seq, ok)
	}
	if _, _, _, ok := DecodePayload(p[:20]); ok {
		t.Fatal("short payload accepted")
	}
	p[3] = 'g'
	if _, _, _, ok := DecodePayload(p); ok {
		t.Fatal("bad hex accepted")
	}
	if _, _, ok := decodeHead(p); ok {
		t.Fatal("bad hex accepted")
	}
}
