package load

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// WebSocket opcodes (RFC 6455, section 5.2).
const (
	OpContinuation = 0x0
	OpText         = 0x1
	OpBinary       = 0x2
	OpClose        = 0x8
	OpPing         = 0x9
	OpPong         = 0xA
)

// maxFrame bounds the size of one frame, and of one reassembled message, the
// reader accepts.
const maxFrame = 16 << 20

// ErrProtocol is wrapped by errors for frames a server must not send.
var ErrProtocol = errors.New("websocket protocol error")

// FrameReader reads the frames a server sends (unmasked, RFC 6455) from a
// stream into one reusable buffer. Fill reads once from the stream; Next
// then returns the complete messages and control frames now buffered,
// without reading and without allocating: a payload aliases the buffer and
// is valid until the next Fill. Fragmented messages are reassembled into a
// second buffer that is reused too.
type FrameReader struct {
	rd   io.Reader
	buf  []byte
	r, w int
	need int // length of the incomplete frame at r, once its header is in

	frag   []byte // payload of a fragmented message so far
	fragOp byte   // its opcode; 0 when no message is fragmented
}

// NewFrameReader returns a reader of rd with a buffer of size bytes holding
// the bytes in pre first (those read past a handshake response, say).
func NewFrameReader(rd io.Reader, size int, pre []byte) *FrameReader {
	size = max(size, 256, len(pre))
	f := &FrameReader{rd: rd, buf: make([]byte, size)}
	f.w = copy(f.buf, pre)
	return f
}

// Fill reads once from the stream into the buffer, first moving what is
// left unparsed to its start, and growing it when one frame needs more room.
func (f *FrameReader) Fill() error {
	if f.r > 0 {
		f.w = copy(f.buf, f.buf[f.r:f.w])
		f.r = 0
	}
	if f.need > len(f.buf) {
		nb := make([]byte, f.need)
		copy(nb, f.buf[:f.w])
		f.buf = nb
	}
	n, err := f.rd.Read(f.buf[f.w:])
	f.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// Buffered returns how many bytes are buffered and not yet parsed.
func (f *FrameReader) Buffered() int { return f.w - f.r }

// Next returns the next complete message (OpText or OpBinary, reassembled if
// it came in fragments) or control frame in the buffer. ok is false when the
// buffer holds no complete one; call Fill then.
func (f *FrameReader) Next() (op byte, payload []byte, ok bool, err error) {
	for {
		b := f.buf[f.r:f.w]
		if len(b) < 2 {
			return 0, nil, false, nil
		}
		b0, b1 := b[0], b[1]
		if b0&0x70 != 0 {
			return 0, nil, false, fmt.Errorf("%w: reserved bits set (0x%02x)", ErrProtocol, b0)
		}
		if b1&0x80 != 0 {
			return 0, nil, false, fmt.Errorf("%w: masked frame from server", ErrProtocol)
		}
		fin, opcode := b0&0x80 != 0, b0&0x0f
		hdr, n := 2, uint64(b1&0x7f)
		switch n {
		case 126:
			if len(b) < 4 {
				return 0, nil, false, nil
			}
			hdr, n = 4, uint64(binary.BigEndian.Uint16(b[2:4]))
		case 127:
			if len(b) < 10 {
				return 0, nil, false, nil
			}
			hdr, n = 10, binary.BigEndian.Uint64(b[2:10])
		}
		if n > maxFrame {
			return 0, nil, false, fmt.Errorf("%w: frame of %d bytes", ErrProtocol, n)
		}
		total := hdr + int(n)
		if len(b) < total {
			f.need = total
			return 0, nil, false, nil
		}
		f.need = 0
		f.r += total
		p := b[hdr:total]
		switch opcode {
		case OpText, OpBinary:
			if f.fragOp != 0 {
				return 0, nil, false, fmt.Errorf("%w: new message inside a fragmented one", ErrProtocol)
			}
			if fin {
				return opcode, p, true, nil
			}
			f.fragOp = opcode
			f.frag = append(f.frag[:0], p...)
		case OpContinuation:
			if f.fragOp == 0 {
				return 0, nil, false, fmt.Errorf("%w: continuation without a message", ErrProtocol)
			}
			if len(f.frag)+len(p) > maxFrame {
				return 0, nil, false, fmt.Errorf("%w: message over %d bytes", ErrProtocol, maxFrame)
			}
			f.frag = append(f.frag, p...)
			if fin {
				op := f.fragOp
				f.fragOp = 0
				return op, f.frag, true, nil
			}
		case OpClose, OpPing, OpPong:
			if !fin || n > 125 {
				return 0, nil, false, fmt.Errorf("%w: bad control frame", ErrProtocol)
			}
			return opcode, p, true, nil
		default:
			return 0, nil, false, fmt.Errorf("%w: opcode %d", ErrProtocol, opcode)
		}
	}
}

// AppendClientFrame appends a final, masked client frame with the given
// opcode and payload to dst, masked with key as RFC 6455 requires of
// clients.
func AppendClientFrame(dst []byte, opcode byte, payload []byte, key [4]byte) []byte {
	dst = append(dst, 0x80|opcode)
	switch n := len(payload); {
	case n <= 125:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x80|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	dst = append(dst, key[:]...)
	start := len(dst)
	dst = append(dst, payload...)
	for i := range payload {
		dst[start+i] ^= key[i&3]
	}
	return dst
}
