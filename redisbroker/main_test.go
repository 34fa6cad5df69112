package redisbroker

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wsroom/wsroom"
	"go.uber.org/goleak"
)

// TestMain fails the run if any goroutine outlives the tests: every Broker
// and client the tests make is closed in their cleanup.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testMaxAge bounds how long the tests' keys stay in Redis.
const testMaxAge = 2 * time.Minute

// wait bounds how long a test waits for a delivery.
const wait = 10 * time.Second

func redisAddr() string {
	if a := os.Getenv("REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// redisErr reports, once per run, whether the test Redis answers.
var redisErr = sync.OnceValue(func() error {
	c := redis.NewClient(&redis.Options{Addr: redisAddr(), DialTimeout: time.Second, MaxRetries: -1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.Ping(ctx).Err()
})

// requireRedis skips t, or fails it when CI is set, if Redis cannot be
// reached.
func requireRedis(t testing.TB) {
	t.Helper()
	if err := redisErr(); err != nil {
		msg := fmt.Sprintf("Redis not reachable at %s (%v); start it with: redis-server --daemonize yes --save '' --appendonly no", redisAddr(), err)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// newClient returns a client of the test Redis, closed when t ends. It
// calls requireRedis first.
func newClient(t testing.TB) *redis.Client {
	t.Helper()
	requireRedis(t)
	return newClientAt(t, redisAddr())
}

func newClientAt(t testing.TB, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { c.Close() })
	return c
}

// newBroker returns a Broker on a client of its own, closed when t ends.
func newBroker(t testing.TB, opts ...Option) *Broker {
	t.Helper()
	b := New(newClient(t), append([]Option{WithMaxAge(testMaxAge)}, opts...)...)
	t.Cleanup(func() { b.Close() })
	return b
}

// roomName returns a room name unique to this test and call.
func roomName(t testing.TB) string {
	return fmt.Sprintf("rb-%s-%s", t.Name(), newEpoch()[:8])
}

// sink collects one subscription's deliveries.
type sink struct {
	mu   sync.Mutex
	msgs []wsroom.Message
	more chan struct{}
}

func newSink() *sink { return &sink{more: make(chan struct{}, 1)} }

func (s *sink) deliver(m wsroom.Message) {
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	s.mu.Unlock()
	select {
	case s.more <- struct{}{}:
	default:
	}
}

func (s *sink) snapshot() []wsroom.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}

// waitFor returns the deliveries once one satisfies ok, failing t after wait.
func (s *sink) waitFor(t testing.TB, ok func(wsroom.Message) bool) []wsroom.Message {
	t.Helper()
	deadline := time.After(wait)
	for {
		got := s.snapshot()
		if slices.ContainsFunc(got, ok) {
			return got
		}
		select {
		case <-s.more:
		case <-deadline:
			t.Fatalf("awaited delivery did not arrive within %v; got %d deliveries", wait, len(got))
		}
	}
}

// waitN returns the deliveries once there are n or more, failing t after
// wait.
func (s *sink) waitN(t testing.TB, n int) []wsroom.Message {
	t.Helper()
	deadline := time.After(wait)
	for {
		got := s.snapshot()
		if len(got) >= n {
			return got
		}
		select {
		case <-s.more:
		case <-deadline:
			t.Fatalf("%d deliveries did not arrive within %v; got %d", n, wait, len(got))
		}
	}
}

func subscribe(t testing.TB, b *Broker, room string) *sink {
	t.Helper()
	s := newSink()
	unsub, err := b.Subscribe(t.Context(), room, s.deliver, nil)
	if err != nil {
		t.Fatalf("Subscribe(%q) error: %v", room, err)
	}
	t.Cleanup(unsub)
	return s
}

func seqs(ms []wsroom.Message) []uint64 {
	var out []uint64
	for _, m := range ms {
		out = append(out, m.Seq)
	}
	return out
}

// errorLog collects the errors a Broker reports.
type errorLog struct {
	mu   sync.Mutex
	errs []error
}

func (l *errorLog) add(err error) {
	l.mu.Lock()
	l.errs = append(l.errs, err)
	l.mu.Unlock()
}

func (l *errorLog) all() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.errs)
}

// proxy forwards TCP connections to Redis and can stall them: a stalled
// connection stays open but carries no more bytes either way, as when a
// network path dies without a reset.
type proxy struct {
	ln     net.Listener
	target string
	delay  time.Duration // added to every write towards Redis

	mu      sync.Mutex
	conns   []*proxyConn
	stopped bool
	wg      sync.WaitGroup
}

type proxyConn struct {
	client, server net.Conn
	stalled        chan struct{}
}

func newProxy(t testing.TB, target string, delay time.Duration) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, delay: delay}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) accept() {
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
		pc := &proxyConn{client: c, server: s, stalled: make(chan struct{})}
		p.mu.Lock()
		if p.stopped {
			p.mu.Unlock()
			c.Close()
			s.Close()
			return
		}
		p.conns = append(p.conns, pc)
		p.mu.Unlock()
		p.wg.Go(func() { pc.pipe(c, s, 0) })
		p.wg.Go(func() { pc.pipe(s, c, p.delay) })
	}
}

// pipe copies src to dst, delaying each write by delay, until src fails;
// once the connection is stalled it reads and drops what arrives, so the
// sender sees no error.
func (pc *proxyConn) pipe(dst, src net.Conn, delay time.Duration) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			time.Sleep(delay)
			select {
			case <-pc.stalled:
			default:
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

// stall stalls every connection open now; later ones are forwarded.
func (p *proxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pc := range p.conns {
		select {
		case <-pc.stalled:
		default:
			close(pc.stalled)
		}
	}
}

func (p *proxy) close() {
	p.mu.Lock()
	p.stopped = true
	p.ln.Close()
	for _, pc := range p.conns {
		pc.client.Close()
		pc.server.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// gatedClient is a client of Redis at addr whose new connections can be
// held back, so that a connection killed from Redis' side cannot come back
// until the test lets it.
type gatedClient struct {
	client *redis.Client
	name   string // CLIENT SETNAME of its connections
	admin  *redis.Client

	mu   sync.Mutex
	gate chan struct{} // while not nil, dialling waits for it to close
	held chan struct{} // signalled when a dial starts waiting for the gate
}

func newGatedClient(t testing.TB, addr, name string) *gatedClient {
	t.Helper()
	return newGatedClientWith(t, addr, name, nil)
}

// newGatedClientWith is newGatedClient with the client's options adjusted
// by opt, if not nil.
func newGatedClientWith(t testing.TB, addr, name string, opt func(*redis.Options)) *gatedClient {
	t.Helper()
	g := &gatedClient{name: name, admin: newClient(t), held: make(chan struct{}, 1)}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		g.mu.Lock()
		gate := g.gate
		g.mu.Unlock()
		if gate != nil {
			select {
			case g.held <- struct{}{}:
			default:
			}
			select {
			case <-gate:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	o := &redis.Options{Addr: addr, ClientName: name, Dialer: dial}
	if opt != nil {
		opt(o)
	}
	g.client = redis.NewClient(o)
	t.Cleanup(func() { g.client.Close() })
	t.Cleanup(g.release) // runs before the cleanups registered earlier
	return g
}

// hold makes new connections wait until release.
func (g *gatedClient) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.gate == nil {
		g.gate = make(chan struct{})
	}
}

// release lets new connections through.
func (g *gatedClient) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.gate != nil {
		close(g.gate)
		g.gate = nil
	}
}

// killPubSub kills the client's pub/sub connection from Redis' side.
func (g *gatedClient) killPubSub(t testing.TB) {
	t.Helper()
	list, err := g.admin.ClientList(t.Context()).Result()
	if err != nil {
		t.Fatal(err)
	}
	var id string
	for line := range strings.Lines(list) {
		if strings.Contains(line, " name="+g.name+" ") && !strings.Contains(line, " sub=0 ") {
			for f := range strings.FieldsSeq(line) {
				if v, ok := strings.CutPrefix(f, "id="); ok {
					id = v
				}
			}
		}
	}
	if id == "" {
		t.Fatalf("no pub/sub connection named %s in CLIENT LIST:\n%s", g.name, list)
	}
	if err := g.admin.Do(t.Context(), "CLIENT", "KILL", "ID", id).Err(); err != nil {
		t.Fatal(err)
	}
}
