package load

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Target is a parsed ws:// URL on the loopback network.
type Target struct {
	Addr string // host:port to dial
	Host string // Host header
	Path string // request target, with the query
}

// ParseTarget parses a ws:// URL and refuses any host that is not a
// loopback address (127.0.0.0/8, ::1 or localhost): the tool only ever loads
// servers on the machine it runs on.
func ParseTarget(raw string) (Target, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Target{}, err
	}
	if u.Scheme != "ws" {
		return Target{}, fmt.Errorf("url %q: only ws:// is supported", raw)
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "80"
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return Target{}, fmt.Errorf("url %q: host must be a loopback address (127.0.0.0/8 or ::1)", raw)
	}
	path := u.RequestURI()
	return Target{Addr: net.JoinHostPort(host, port), Host: u.Host, Path: path}, nil
}

// localIP returns the source address for the i-th connection: with spread,
// connections are spread over 127.0.0.2, 127.0.0.3 ... in blocks of
// perSource, since one source address has only ~28,000 ephemeral ports
// (ip_local_port_range), some of them in TIME_WAIT from earlier runs.
// Without spread it returns nil (the kernel's choice).
func localIP(i int, spread bool) net.IP {
	const perSource = 10000
	if !spread {
		return nil
	}
	return net.IPv4(127, 0, 0, byte(2+i/perSource))
}

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (Linux 4.2).
const ipBindAddressNoPort = 24

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// Conn is a client WebSocket connection made by hand: after the handshake,
// frames are read by a FrameReader and written by hand, masked.
type Conn struct {
	net.Conn
	FR  *FrameReader
	key [4]byte
	wmu sync.Mutex
}

// Dial connects to t from local address laddr (nil for any) and performs the
// WebSocket handshake. rbuf is the size of the frame reader's buffer.
func Dial(ctx context.Context, t Target, laddr net.IP, rbuf int) (*Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if laddr != nil {
		d.LocalAddr = &net.TCPAddr{IP: laddr}
		// Let connect, not bind, choose the port, so a port is only
		// taken for the same server address and port.
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			rc.Control(func(fd uintptr) {
				syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
			})
			return nil
		}
	}
	nc, err := d.DialContext(ctx, "tcp", t.Addr)
	if err != nil {
		return nil, err
	}
	c, err := handshake(nc, t, rbuf)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

func handshake(nc net.Conn, t Target, rbuf int) (*Conn, error) {
	var nonce [16]byte
	rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET " + t.Path + " HTTP/1.1\r\nHost: " + t.Host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
		"\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := nc.Write([]byte(req)); err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(nc, 1024)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, fmt.Errorf("handshake: status %s", resp.Status)
	}
	sum := sha1.Sum([]byte(key + wsGUID))
	if resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		return nil, errors.New("handshake: bad Sec-WebSocket-Accept")
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") {
		return nil, errors.New("handshake: no Upgrade: websocket")
	}
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
		return nil, fmt.Errorf("handshake: unrequested extension %q", ext)
	}
	nc.SetDeadline(time.Time{})
	pre, _ := br.Peek(br.Buffered())
	c := &Conn{Conn: nc, FR: NewFrameReader(nc, rbuf, pre)}
	rand.Read(c.key[:])
	return c, nil
}

// WriteFrames writes frames already masked with the connection's key (see
// MaskKey), in one write.
func (c *Conn) WriteFrames(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.Write(b)
	return err
}

// MaskKey returns the key the connection masks its frames with.
func (c *Conn) MaskKey() [4]byte { return c.key }

// Pong answers a ping with its payload.
func (c *Conn) Pong(payload []byte) error {
	return c.WriteFrames(AppendClientFrame(nil, OpPong, payload, c.key))
}

// CloseNormal sends a close frame (1000) and closes the connection.
func (c *Conn) CloseNormal() {
	c.SetWriteDeadline(time.Now().Add(time.Second))
	c.WriteFrames(AppendClientFrame(nil, OpClose, []byte{0x03, 0xe8}, c.key))
	c.Close()
}
