//go:build unix

package wsroom

import (
	"net"
	"syscall"
	"unsafe"
)

// tryWrite writes as much of p as the socket takes now, without waiting. It
// does not try (tryBusy) when another write holds the connection, when the
// rest of an earlier frame is still unwritten, or when the connection is
// not TCP. When the socket takes only part of p, the rest stays in fc and
// goes out before any other frame (tryPartial): the caller must make sure a
// writer runs. A failed connection is reported as err.
func (fc *frameConn) tryWrite(p []byte) (res tryResult, n int, err error) {
	if fc.fd < 0 || !fc.mu.TryLock() {
		return tryBusy, 0, nil
	}
	defer fc.mu.Unlock()
	if fc.rest != nil {
		return tryBusy, 0, nil
	}
	if fc.closeFrame {
		return tryBusy, 0, net.ErrClosed
	}
	// The socket does not block, so the write needs neither the poller nor
	// the runtime's bookkeeping around a system call that may: without it,
	// back-to-back writes from the room's loop do not wake the runtime's
	// monitor thread, which otherwise preempts the loop, and touch only
	// this connection's state.
	fc.rawMu.Lock()
	if fc.rawClosed {
		fc.rawMu.Unlock()
		return tryBusy, 0, net.ErrClosed
	}
	r, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fc.fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	fc.rawMu.Unlock()
	switch {
	case errno == syscall.EAGAIN || errno == syscall.EINTR:
		return tryBusy, 0, nil // the writer waits for the socket
	case errno != 0:
		return tryBusy, 0, errno
	case int(r) == len(p):
		return tryWhole, len(p), nil
	case r == 0:
		return tryBusy, 0, nil
	}
	n = int(r)
	fc.rest = p[n:]
	return tryPartial, n, nil
}

// socketFD returns the descriptor of a TCP connection's socket, or -1. It
// stays valid until the connection is closed.
func socketFD(c net.Conn) int {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return -1
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return -1
	}
	fd := -1
	if raw.Control(func(s uintptr) { fd = int(s) }) != nil {
		return -1
	}
	return fd
}
