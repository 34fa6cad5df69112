//go:build unix

package wsroom

import (
	"net"
	"syscall"
)

// tryWrite writes as much of p as the socket takes now, without waiting,
// and returns how much that was. ok is false when it could not try: another
// write holds the connection, or it is not a TCP connection. A failed
// connection is reported as err.
func (fc *frameConn) tryWrite(p []byte) (n int, ok bool, err error) {
	if fc.raw == nil || !fc.mu.TryLock() {
		return 0, false, nil
	}
	defer fc.mu.Unlock()
	if fc.closeFrame {
		return 0, true, net.ErrClosed
	}
	var werr error
	rerr := fc.raw.Write(func(fd uintptr) bool {
		n, werr = syscall.Write(int(fd), p)
		return true // never wait: the writer goroutine does that
	})
	switch {
	case rerr != nil:
		return 0, true, rerr
	case werr == syscall.EAGAIN || werr == syscall.EINTR:
		return 0, true, nil
	case werr != nil:
		return 0, true, werr
	}
	return n, true, nil
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
