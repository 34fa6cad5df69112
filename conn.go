package wsroom

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// This file holds the fast write path. Server frames are not masked, so the
// bytes of a message frame are the same for every client: the room builds
// each frame once (appendFrame) and every client's writer hands its whole
// queue to the kernel in one writev (frameConn.writeFrames). coder/websocket
// still reads, answers pings, sends pings and closes; its writes and ours meet
// in frameConn, which keeps them whole and in order.

// Sizes of the buffers each connection keeps. The writer only needs to hold
// one control frame (at most 2+125 bytes plus header); the reader's buffer
// bounds how much one read syscall takes.
const (
	connReadBuffer  = 1024
	connWriteBuffer = 256
)

// hijackWriter wraps the ResponseWriter given to websocket.Accept so that the
// hijacked connection is a frameConn with small buffers.
type hijackWriter struct {
	http.ResponseWriter
	timeout time.Duration // the room's write timeout
	conn    *frameConn
}

func (h *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	fc := &frameConn{Conn: nc, raw: rawConn(nc), timeout: h.timeout}
	h.conn = fc
	// Keep what the client sent right after its handshake.
	var r io.Reader = fc
	size := connReadBuffer
	n := brw.Reader.Buffered()
	if n > 0 {
		early, _ := brw.Reader.Peek(n)
		r = io.MultiReader(bytes.NewReader(bytes.Clone(early)), fc)
		size = max(size, n)
	}
	br := bufio.NewReaderSize(r, size)
	if n > 0 {
		br.Peek(n)
	}
	return fc, bufio.NewReadWriter(br, bufio.NewWriterSize(fc, connWriteBuffer)), nil
}

// WriteHeaderNow writes the status and headers that WriteHeader set, for
// writers that hold them back until asked: Gin's WriteHeader only records
// the status, and coder/websocket calls WriteHeaderNow after
// WriteHeader(101) so that the 101 goes out before the connection is
// hijacked. Wrappers with an Unwrap method are looked through, as
// http.ResponseController does.
func (h *hijackWriter) WriteHeaderNow() {
	w := h.ResponseWriter
	for {
		switch t := w.(type) {
		case interface{ WriteHeaderNow() }:
			t.WriteHeaderNow()
			return
		case interface{ Unwrap() http.ResponseWriter }:
			w = t.Unwrap()
		default:
			return
		}
	}
}

// frameConn is a hijacked connection shared by coder/websocket, which writes
// control frames through Write, and the client's writer, which writes
// message frames through writeFrames. Each call writes whole frames, under
// one lock, so frames never interleave.
//
// Every write sets its own deadline, so none lingers from an earlier one.
type frameConn struct {
	net.Conn
	raw        syscall.RawConn // for writes that must not wait; nil if none
	timeout    time.Duration   // bound on each write
	mu         sync.Mutex
	closeFrame bool // a close frame went out: no message frame may follow
}

// Write writes a frame from coder/websocket, which flushes one whole control
// frame per call.
func (fc *frameConn) Write(p []byte) (int, error) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if len(p) > 0 && p[0]&0x0f == 0x8 {
		fc.closeFrame = true
	}
	if err := fc.Conn.SetWriteDeadline(time.Now().Add(fc.timeout)); err != nil {
		return 0, err
	}
	return fc.Conn.Write(p)
}

// writeFrames writes frames in as few system calls as the connection allows.
func (fc *frameConn) writeFrames(frames net.Buffers) error {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.closeFrame {
		return net.ErrClosed
	}
	if err := fc.Conn.SetWriteDeadline(time.Now().Add(fc.timeout)); err != nil {
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

func buffersLen(b net.Buffers) int {
	n := 0
	for _, p := range b {
		n += len(p)
	}
	return n
}

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

// newFrame returns the frame of payload for the room's clients: a whole
// WebSocket frame when the room writes frames itself, else the payload, for
// coder/websocket to frame (and compress) per connection.
func (r *Room) newFrame(payload []byte) []byte {
	if !r.rawFrames {
		return payload
	}
	return appendFrame(make([]byte, 0, len(payload)+10), r.cfg.codec.MessageType(), payload)
}
