package wsroom

import (
	"encoding/binary"
	"net"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// This file holds the socket end of the write path. Server frames are not
// masked, so the bytes of a message frame are the same for every client: the
// room builds each frame once (appendFrame) and every client's writer hands
// its whole queue to the kernel in one writev (frameConn.writeFrames).
// coder/websocket still reads, answers pings, sends pings and closes; its
// writes and ours meet in frameConn, which keeps frames whole and in order.

// Sizes of the buffers each connection keeps. The writer only needs to hold
// one control frame (at most 2+125 bytes plus header). The reader's buffer
// bounds how much one read system call takes: a frame header and a small
// message; a payload larger than the buffer is read into the message
// directly, so a small buffer costs idle connections little and big
// messages no extra reads.
const (
	connReadBuffer  = 256
	connWriteBuffer = 256
)

// Opcodes of the control frames frameConn looks at.
const (
	opClose = 0x8
	opPong  = 0xa
)

// Pongs a peer may make the server send: a burst, then this many per
// second. A peer that pings faster is closed (see frameConn.Write).
const (
	pongBurst = 20
	pongRate  = 10
)

// frameConn is a hijacked connection shared by coder/websocket, which writes
// control frames through Write, and the client's writer, which writes
// message frames through writeFrames and tryWrite.
//
// Frames never interleave: every write holds mu, and a frame that tryWrite
// could only begin leaves its unwritten rest in rest, which every later
// write sends first, control frames included. Nothing drops it.
//
// Each blocking write sets its own deadline. tryWrite writes to the socket
// with a system call of its own (see conn_unix.go), which deadlines and the
// runtime's poller do not see; so that it never writes to a descriptor
// that was closed, and maybe reused, every close goes through Close, which
// waits for a raw write under way and stops later ones.
type frameConn struct {
	net.Conn
	fd      int           // the socket, for tryWrite; -1 if none
	timeout time.Duration // bound on each write
	framed  bool          // coder/websocket writes only whole control frames
	abuse   func()        // called once, with mu held, when the peer pings too often; must not wait

	mu         sync.Mutex
	rest       []byte // the unwritten end of a frame tryWrite began
	closeFrame bool   // a close frame went out: no other frame may follow
	pongs      *limiter
	pongAbuse  bool

	rawMu     sync.Mutex // held by tryWrite's system call
	rawClosed bool       // the socket is closed or closing: no raw write
}

func newFrameConn(nc net.Conn, timeout time.Duration, framed bool) *frameConn {
	fc := &frameConn{Conn: nc, fd: -1, timeout: timeout, framed: framed}
	if framed {
		fc.fd = socketFD(nc)
		fc.pongs = newLimiter(pongRate, pongBurst)
	}
	return fc
}

// Close closes the connection once no raw write is under way, and keeps
// tryWrite from starting another.
func (fc *frameConn) Close() error {
	fc.rawMu.Lock()
	fc.rawClosed = true
	fc.rawMu.Unlock()
	return fc.Conn.Close()
}

// Write writes a frame from coder/websocket. When the room frames messages
// itself, coder/websocket writes nothing but control frames, each whole in
// one call, so the first byte names the frame: a second close frame is
// dropped, and so are pongs beyond the peer's budget, after which the
// client is closed.
func (fc *frameConn) Write(p []byte) (int, error) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if !fc.framed && fc.closeFrame && len(p) > 0 && p[0]&0x0f == opClose {
		// Our close frame went out (closeGracefully): coder/websocket, which
		// writes nothing else after it, answers the peer's with another.
		return len(p), nil
	}
	if fc.framed && len(p) > 0 {
		switch p[0] & 0x0f {
		case opClose:
			if fc.closeFrame {
				return len(p), nil
			}
			fc.closeFrame = true
		case opPong:
			if fc.pongs.take(time.Now()) > 0 {
				if !fc.pongAbuse && fc.abuse != nil {
					fc.pongAbuse = true
					fc.abuse()
				}
				return len(p), nil
			}
		}
	}
	if err := fc.setDeadlineLocked(); err != nil {
		return 0, err
	}
	if fc.rest != nil {
		if _, err := fc.Conn.Write(fc.rest); err != nil {
			return 0, err
		}
		fc.rest = nil
	}
	return fc.Conn.Write(p)
}

func (fc *frameConn) setDeadlineLocked() error {
	return fc.Conn.SetWriteDeadline(time.Now().Add(fc.timeout))
}

// writeFrames writes the rest of a frame begun by tryWrite, if any, and
// frames, in as few system calls as the connection allows.
func (fc *frameConn) writeFrames(frames net.Buffers) error {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.closeFrame {
		return net.ErrClosed
	}
	if fc.rest != nil {
		frames = append(net.Buffers{fc.rest}, frames...)
		fc.rest = nil
	}
	if len(frames) == 0 {
		return nil
	}
	if err := fc.setDeadlineLocked(); err != nil {
		return err
	}
	var err error
	if _, ok := fc.Conn.(*net.TCPConn); ok || len(frames) == 1 {
		_, err = frames.WriteTo(fc.Conn) // writev
	} else {
		// A TLS connection would make a record of each buffer: join them.
		buf := make([]byte, 0, buffersLen(frames))
		for _, f := range frames {
			buf = append(buf, f...)
		}
		_, err = fc.Conn.Write(buf)
	}
	return err
}

// writeClose writes a close frame with code and reason, after the rest of a
// begun frame, and no frame after it.
func (fc *frameConn) writeClose(code websocket.StatusCode, reason string) error {
	payload := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(reason)), uint16(code))
	payload = append(payload, reason...)
	err := fc.writeFrames(net.Buffers{appendFrame(nil, opClose, payload)})
	fc.mu.Lock()
	fc.closeFrame = true
	fc.mu.Unlock()
	return err
}

func buffersLen(b net.Buffers) int {
	n := 0
	for _, p := range b {
		n += len(p)
	}
	return n
}

// tryResult is what tryWrite did with a frame.
type tryResult int

const (
	tryBusy    tryResult = iota // not tried: the frame goes to the writer
	tryWhole                    // written whole
	tryPartial                  // begun: the rest is in frameConn, for the writer
)

// appendFrame appends a whole, unmasked, final WebSocket frame carrying
// payload to b.
func appendFrame(b []byte, typ websocket.MessageType, payload []byte) []byte {
	b = append(b, 0x80|byte(typ)) // FIN and the opcode, which MessageType matches
	switch n := len(payload); {
	case n <= 125:
		b = append(b, byte(n))
	case n <= 0xffff:
		b = append(b, 126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(b, payload...)
}

// framePayload returns the type and payload of a frame appendFrame built,
// for a connection that coder/websocket frames itself (one that negotiated
// compression).
func framePayload(f []byte) (websocket.MessageType, []byte) {
	typ := websocket.MessageType(f[0] & 0x0f)
	switch n := f[1]; n {
	case 126:
		return typ, f[4:]
	case 127:
		return typ, f[10:]
	default:
		return typ, f[2:]
	}
}

// newFrame returns the whole WebSocket frame of payload for the room's
// clients. Every client is handed the same frame; one whose connection
// negotiated compression writes its payload through coder/websocket.
func (r *Room) newFrame(payload []byte) []byte {
	return appendFrame(make([]byte, 0, len(payload)+10), r.cfg.codec.MessageType(), payload)
}
