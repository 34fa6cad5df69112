//go:build !unix

package wsroom

import (
	"net"
	"syscall"
)

// tryWrite never writes here: every frame goes through the writer.
func (fc *frameConn) tryWrite(p []byte) (res tryResult, n int, err error) { return tryBusy, 0, nil }

func rawConn(c net.Conn) syscall.RawConn { return nil }
