//go:build !unix

package wsroom

import "net"

// tryWrite never writes here: every frame goes through the writer.
func (fc *frameConn) tryWrite(p []byte) (res tryResult, n int, err error) { return tryBusy, 0, nil }

func socketFD(c net.Conn) int { return -1 }
