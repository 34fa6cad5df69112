//go:build unix

package wsroom

import (
	"net"
	"syscall"
	"time"
	"unsafe"
)

// tryWrite writes as much of p as the socket takes now, without waiting. It
// does not try (tryBusy) when another write holds the connection, when the
// rest of an earlier frame is still unwritten, or when the connection is
// not TCP. When the socket takes only part of p, the rest stays in fc and
// goes out before any other frame (tryPartial): the caller must make sure a
// writer runs. A failed connection is reported as err.
func (fc *frameConn) tryWrite(p []byte) (res tryResult, n int, err error) {
	if fc.raw == nil || !fc.mu.TryLock() {
		return tryBusy, 0, nil
	}
	defer fc.mu.Unlock()
	if fc.rest != nil {
		return tryBusy, 0, nil
	}
	if fc.closeFrame {
		return tryBusy, 0, net.ErrClosed
	}
	if fc.deadline {
		// The poller would fail this write if an earlier write's deadline
		// has passed.
		if err := fc.Conn.SetWriteDeadline(time.Time{}); err != nil {
			return tryBusy, 0, err
		}
		fc.deadline = false
	}
	var werr error
	rerr := fc.raw.Write(func(fd uintptr) bool {
		// The socket does not block, so the write needs none of the
		// runtime's bookkeeping around a system call that may: without
		// it, back-to-back writes from the room's loop do not wake the
		// runtime's monitor thread, which otherwise preempts the loop.
		r, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
		n = int(r)
		if errno != 0 {
			n, werr = -1, errno
		}
		return true // never wait: the writer goroutine does that
	})
	switch {
	case rerr != nil:
		return tryBusy, 0, rerr
	case werr == syscall.EAGAIN || werr == syscall.EINTR:
		return tryBusy, 0, nil
	case werr != nil:
		return tryBusy, 0, werr
	case n == len(p):
		return tryWhole, n, nil
	}
	n = max(n, 0)
	if n == 0 {
		return tryBusy, 0, nil
	}
	fc.rest = p[n:]
	return tryPartial, n, nil
}

// rawConn returns the connection's syscall.RawConn for tryWrite, if any.
func rawConn(c net.Conn) syscall.RawConn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}
