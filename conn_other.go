//go:build !unix

package wsroom

import (
	"net"
	"syscall"
)

// tryWrite never writes here: every frame goes through the writer.
func (fc *frameConn) tryWrite(p []byte) (n int, ok bool, err error) { return 0, false, nil }

func rawConn(c net.Conn) syscall.RawConn { return nil }
