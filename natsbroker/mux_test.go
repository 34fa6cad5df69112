package natsbroker

import (
	"io"
	"net"
	"net/url"
	"sync"
	"testing"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/brokertest"
)

// Connections of many rooms on two nodes (brokertest.RunNodes); a node is
// cut off by closing its connection to NATS, and refusing new ones, at a
// proxy.
func TestNodes(t *testing.T) {
	prefix := testPrefix(t)
	brokertest.RunNodes(t, brokertest.Nodes{
		New: func(t *testing.T, limit int) wsroom.Broker {
			return newNode(t, prefix, WithHistoryLimit(limit))
		},
		Cuttable: func(t *testing.T, limit int) (wsroom.Broker, func(), func()) {
			u, err := url.Parse(natsURL())
			if err != nil {
				t.Fatal(err)
			}
			p := newCutProxy(t, u.Host)
			b := newNodeOn(t, connectTo(t, "nats://"+p.addr()), prefix, WithHistoryLimit(limit))
			return b, p.cut, p.restore
		},
	})
}

// cutProxy forwards TCP connections to target. cut closes those open and
// refuses new ones until restore, as when a node loses the network.
type cutProxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	conns   []net.Conn
	refuse  bool
	stopped bool
	wg      sync.WaitGroup
}

func newCutProxy(t testing.TB, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.refuse || p.stopped {
			p.mu.Unlock()
			c.Close()
			s.Close()
			continue
		}
		p.conns = append(p.conns, c, s)
		p.wg.Go(func() { io.Copy(s, c); s.Close(); c.Close() })
		p.wg.Go(func() { io.Copy(c, s); c.Close(); s.Close() })
		p.mu.Unlock()
	}
}

// cut closes every connection and refuses new ones until restore.
func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *cutProxy) restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = false
}

func (p *cutProxy) close() {
	p.mu.Lock()
	p.stopped = true
	p.ln.Close()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
