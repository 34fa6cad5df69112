package redisbroker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"
	"github.com/wsroom/wsroom"
)

// This file runs rooms on two nodes through a Redis of the test's own, which
// it kills and restarts empty while a client keeps sending: every message
// the client sent must reach the receivers, old epoch or new, or the client
// must be told to send it again (1013).

// redisProc is a redis-server of the test's own, without persistence, on a
// port of its own, which the test can kill and start again, empty, on the
// same port.
type redisProc struct {
	t    testing.TB
	bin  string
	port int
	addr string

	cmd    *exec.Cmd
	exited chan struct{}
	out    *syncBuffer
}

// startRedis starts a private redis-server, killed at cleanup. It skips t
// when the binary is missing, or fails it when CI is set.
func startRedis(t testing.TB) *redisProc {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		msg := "redis-server binary not found: install it (apt-get install redis-server) to run this test"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	p := &redisProc{t: t, bin: bin, port: port, addr: fmt.Sprintf("127.0.0.1:%d", port), out: &syncBuffer{}}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("redis-server output:\n%s", p.out.String())
		}
	})
	p.start()
	return p
}

// start starts the server, empty, and waits until it answers.
func (p *redisProc) start() {
	p.t.Helper()
	p.cmd = exec.Command(p.bin, "--port", strconv.Itoa(p.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning")
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.exited = make(chan struct{})
	cmd, exited := p.cmd, p.exited
	go func() {
		cmd.Wait()
		close(exited)
	}()
	c := redis.NewClient(&redis.Options{Addr: p.addr, DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		select {
		case <-exited:
			p.t.Fatalf("redis-server on port %d exited: %s", p.port, p.out.String())
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("redis-server on port %d did not start: %v\n%s", p.port, err, p.out.String())
		}
	}
}

// kill kills the server, losing everything it holds, and waits for it to
// exit.
func (p *redisProc) kill() {
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Kill()
	<-p.exited
	p.cmd = nil
}

// syncBuffer is a bytes.Buffer safe for concurrent writes, for logs.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// pos is a position in a room's history, as a client keeps it.
type pos struct {
	epoch string
	seq   uint64
}

func (p pos) String() string { return p.epoch + ":" + strconv.FormatUint(p.seq, 10) }

// closeInfo is how one connection of a test client ended.
type closeInfo struct {
	at     time.Time
	code   websocket.StatusCode // -1 if it ended without a close frame
	reason string
	err    error
}

func closeOf(err error) closeInfo {
	ci := closeInfo{at: time.Now(), code: websocket.CloseStatus(err), err: err}
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		ci.reason = ce.Reason
	}
	return ci
}

// receiver is a client that reads a room the way a real one does: it keeps
// the position of the last message it got, reconnects with ?resume= after
// any close, and after a 4000 resumes from the position the close reason
// names, or from scratch if it names none.
type receiver struct {
	name string
	url  string

	mu       sync.Mutex
	at       pos
	known    bool
	seen     map[int]int                  // message number: times received
	byEpoch  map[string][]uint64          // sequence numbers received per epoch, in order
	firstAt  map[string]time.Time         // when the first message of each epoch arrived
	closes   []closeInfo                  // of its connections, in order
	dials    int                          // handshakes that failed
	problems []string                     // gaps, duplicates, epoch changes without a 4000
	fresh    int                          // 4000s that named no position: resumed from scratch
	more     chan struct{}                // signalled on every message
	up       bool                         // a connection is open
	stats    map[websocket.StatusCode]int // closes by code
}

func newReceiver(name, url string) *receiver {
	return &receiver{name: name, url: url, seen: make(map[int]int), byEpoch: make(map[string][]uint64),
		firstAt: make(map[string]time.Time), more: make(chan struct{}, 1), stats: make(map[websocket.StatusCode]int)}
}

func (r *receiver) isUp() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.up
}

func (r *receiver) position() (pos, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.at, r.known
}

// run connects and reads until ctx ends; ready is closed once the first
// connection is up.
func (r *receiver) run(ctx context.Context, ready chan<- struct{}) {
	for ctx.Err() == nil {
		u := r.url
		if p, ok := r.position(); ok {
			u += "?resume=" + p.String()
		}
		conn, _, err := websocket.Dial(ctx, u, nil)
		if err != nil {
			r.mu.Lock()
			r.dials++
			r.mu.Unlock()
			pause(ctx, 50*time.Millisecond)
			continue
		}
		if ready != nil {
			close(ready)
			ready = nil
		}
		conn.SetReadLimit(1 << 20)
		r.mu.Lock()
		r.up = true
		r.mu.Unlock()
		ci := r.read(ctx, conn)
		r.mu.Lock()
		r.up = false
		r.mu.Unlock()
		conn.CloseNow()
		if ctx.Err() != nil {
			return
		}
		r.mu.Lock()
		r.closes = append(r.closes, ci)
		r.stats[ci.code]++
		if ci.code == wsroom.StatusResync {
			if _, p, ok := strings.Cut(ci.reason, "resume="); ok {
				ep, seq, _ := strings.Cut(p, ":")
				n, err := strconv.ParseUint(seq, 10, 64)
				if err != nil || (ep == "" && n != 0) { // ":0": whichever epoch comes
					r.problems = append(r.problems, fmt.Sprintf("4000 with a malformed resume position in %q", ci.reason))
				}
				r.at, r.known = pos{ep, n}, true
			} else {
				r.known = false
				r.fresh++
			}
		}
		r.mu.Unlock()
		pause(ctx, 20*time.Millisecond)
	}
}

func (r *receiver) read(ctx context.Context, conn *websocket.Conn) closeInfo {
	for {
		_, b, err := conn.Read(ctx)
		if err != nil {
			return closeOf(err)
		}
		var e struct {
			Seq   uint64 `json:"seq"`
			Epoch string `json:"epoch"`
			Data  struct {
				N int `json:"n"`
			} `json:"data"`
		}
		if err := json.Unmarshal(b, &e); err != nil || e.Seq == 0 {
			r.mu.Lock()
			r.problems = append(r.problems, fmt.Sprintf("unexpected frame %q (%v)", b, err))
			r.mu.Unlock()
			continue
		}
		r.mu.Lock()
		fromAny := r.at.epoch == "" && r.at.seq == 0 // resumed at ":0"
		if r.known && (fromAny && e.Seq != 1 || !fromAny && (e.Epoch != r.at.epoch || e.Seq != r.at.seq+1)) {
			r.problems = append(r.problems, fmt.Sprintf("after %v got %s:%d (n=%d)", r.at, e.Epoch, e.Seq, e.Data.N))
		}
		r.at, r.known = pos{e.Epoch, e.Seq}, true
		r.seen[e.Data.N]++
		if _, ok := r.firstAt[e.Epoch]; !ok {
			r.firstAt[e.Epoch] = time.Now()
		}
		r.byEpoch[e.Epoch] = append(r.byEpoch[e.Epoch], e.Seq)
		r.mu.Unlock()
		select {
		case r.more <- struct{}{}:
		default:
		}
	}
}

// sender is a client that sends the numbered messages {"n":0}, {"n":1} ...
// at a steady pace, reconnecting (without resume: it reads nothing) when
// its connection ends.
type sender struct {
	url string

	mu    sync.Mutex
	next  int         // number of the next message
	sent  []time.Time // when each message was written
	conns []sentConn  // its connections, in order
	dials int
}

// sentConn is what one connection of the sender carried and how it ended.
type sentConn struct {
	first, end int // messages [first, end) were written on it
	close      closeInfo
}

func (s *sender) run(ctx context.Context, every time.Duration) {
	for ctx.Err() == nil {
		conn, _, err := websocket.Dial(ctx, s.url, nil)
		if err != nil {
			s.mu.Lock()
			s.dials++
			s.mu.Unlock()
			pause(ctx, 50*time.Millisecond)
			continue
		}
		closed := make(chan closeInfo, 1)
		go func() {
			for {
				if _, _, err := conn.Read(context.Background()); err != nil {
					closed <- closeOf(err)
					return
				}
			}
		}()
		s.mu.Lock()
		sc := sentConn{first: s.next, end: s.next}
		s.mu.Unlock()
		tick := time.NewTicker(every)
	send:
		for {
			select {
			case <-ctx.Done():
				break send
			case ci := <-closed:
				sc.close = ci
				break send
			case <-tick.C:
			}
			s.mu.Lock()
			n := s.next
			s.mu.Unlock()
			// Not ctx: a write cut short by it would close the connection
			// abruptly, with the message maybe unread.
			wctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := conn.Write(wctx, websocket.MessageText, fmt.Appendf(nil, `{"n":%d}`, n))
			cancel()
			if err != nil {
				continue // the reader tells how the connection ended
			}
			s.mu.Lock()
			s.next++
			s.sent = append(s.sent, time.Now())
			sc.end = s.next
			s.mu.Unlock()
		}
		tick.Stop()
		if sc.close.at.IsZero() {
			// Stopped by ctx: wait for the server to close the connection.
			conn.Close(websocket.StatusNormalClosure, "")
			sc.close = <-closed
		} else {
			conn.CloseNow()
		}
		s.mu.Lock()
		s.conns = append(s.conns, sc)
		s.mu.Unlock()
		pause(ctx, 50*time.Millisecond)
	}
}

func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// outageRun is the outcome of one outage, for the assertions.
type outageRun struct {
	start, killed, restarted time.Time
	final                    pos
	firstEpoch               string
	receivers                []*receiver
	sender                   *sender
	rooms                    []*wsroom.Room
}

// TestRedisRestartsEmpty runs one room on two nodes, each with its own
// Broker and go-redis client on a private Redis. A client of node A sends a
// numbered message every 5ms; receivers on both nodes read like real
// clients. Redis is killed for 3s and started again empty, so the room's
// history moves to a new epoch. Every message the sender wrote must have
// reached a receiver, in the old or the new epoch, unless the sender was
// closed with 1013 afterwards; the receivers must get the new epoch from
// seq 1 without a gap, through the resume position of their 4000.
func TestRedisRestartsEmpty(t *testing.T) {
	t.Run("RetryOutlastsOutage", func(t *testing.T) {
		run := runRedisOutage(t, outageSetup{retry: 15 * time.Second})
		checkOutage(t, run)
		if n := run.sender.closedWith(websocket.StatusTryAgainLater); n != 0 {
			t.Errorf("sender closed %d times with 1013 although the publish retry (15s) outlasts the outage", n)
		}
		if unseen := run.unseen(); len(unseen) != 0 {
			t.Errorf("%d messages the sender sent reached no receiver: %v", len(unseen), unseen)
		}
	})
	// Node A reaches Redis with 2ms of latency, so the messages its client
	// sent during the outage, held back by the publish retry, take over a
	// second to publish once Redis is back; the room's resync (4000) must
	// not drop those it has not read yet.
	t.Run("SlowPublishes", func(t *testing.T) {
		run := runRedisOutage(t, outageSetup{retry: 15 * time.Second, slowA: 2 * time.Millisecond})
		checkOutage(t, run)
	})
	t.Run("RetryShorterThanOutage", func(t *testing.T) {
		run := runRedisOutage(t, outageSetup{retry: 500 * time.Millisecond})
		checkOutage(t, run)
		if n := run.sender.closedWith(websocket.StatusTryAgainLater); n == 0 {
			t.Errorf("sender never closed with 1013 although the publish retry (500ms) is shorter than the outage")
		}
		if got := run.rooms[0].Stats().ClosedRetry; got == 0 {
			t.Errorf("node A's Stats().ClosedRetry = 0, want the sender's 1013s counted")
		}
	})
}

// outageSetup varies an outage run.
type outageSetup struct {
	retry time.Duration // the rooms' publish retry
	// slowA, if not 0, delays every write of node A towards Redis by as
	// much, so that its publishes are slow.
	slowA time.Duration
}

func runRedisOutage(t *testing.T, setup outageSetup) *outageRun {
	retry := setup.retry
	const (
		every  = 5 * time.Millisecond
		before = time.Second      // sending before the kill
		outage = 3 * time.Second  // Redis down
		after  = 3 * time.Second  // sending after the restart
		settle = 15 * time.Second // for the receivers to get the last message
	)
	srv := startRedis(t)
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("OUTAGE_LOGS") != "" {
			t.Logf("logs:\n%s", logs.String())
		}
	})
	name := "outage-" + newEpoch()[:10]
	var nodes []node
	var brokers []*Broker
	for i := range 2 {
		addr := srv.addr
		if i == 0 && setup.slowA > 0 {
			addr = newProxy(t, srv.addr, setup.slowA).addr()
		}
		b := New(newClientAt(t, addr), WithMaxAge(testMaxAge), WithLogger(logger.With("node", i)))
		t.Cleanup(func() { b.Close() })
		brokers = append(brokers, b)
		nodes = append(nodes, newNode(t, name, b,
			wsroom.WithPublishRetry(retry),
			wsroom.WithRateLimit(0, 1, wsroom.Throttle),
			wsroom.WithLogger(logger.With("node", i))))
	}
	run := &outageRun{sender: &sender{url: nodes[0].url}}
	for i, n := range []node{nodes[0], nodes[1], nodes[1]} {
		run.receivers = append(run.receivers, newReceiver(fmt.Sprintf("r%d", i), n.url))
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	for _, r := range run.receivers {
		ready := make(chan struct{})
		wg.Go(func() { r.run(ctx, ready) })
		select {
		case <-ready:
		case <-time.After(wait):
			t.Fatalf("receiver %s could not connect", r.name)
		}
	}
	for _, n := range nodes {
		run.rooms = append(run.rooms, n.room(t, name))
	}
	waitUntil(t, "receivers joined", func() bool { return run.rooms[0].Len() == 1 && run.rooms[1].Len() == 2 })

	sendCtx, stopSending := context.WithCancel(ctx)
	defer stopSending()
	run.start = time.Now()
	senderDone := make(chan struct{})
	wg.Go(func() {
		defer close(senderDone)
		run.sender.run(sendCtx, every)
	})
	time.Sleep(before)
	srv.kill()
	run.killed = time.Now()
	time.Sleep(outage)
	srv.start()
	run.restarted = time.Now()
	time.Sleep(after)
	stopSending()
	select {
	case <-senderDone:
	case <-time.After(wait):
		t.Fatal("sender did not stop")
	}

	// Node A may still be reading and publishing what the sender wrote
	// before its connection was closed (a 4000 waits for the messages sent
	// before the client knew of it): the last message is known once the
	// sender's connections have left the room: r0 is connected and the
	// room has one client.
	waitUntil(t, "node A done with the sender's connections", func() bool {
		st := run.rooms[0].Stats()
		return run.receivers[0].isUp() && st.Joins == st.Leaves+1
	})
	last, err := brokers[0].Last(t.Context(), name, 1)
	if err != nil || len(last) != 1 {
		t.Fatalf("Last after the outage = %v, %v; want the last message", last, err)
	}
	run.final = pos{last[0].Epoch, last[0].Seq}
	deadline := time.Now().Add(settle)
	for _, r := range run.receivers {
		for {
			if p, _ := r.position(); p == run.final {
				break
			}
			if time.Now().After(deadline) {
				p, ok := r.position()
				t.Errorf("receiver %s is at %v (known %v) %v after sending stopped; the room's last message is %v",
					r.name, p, ok, settle, run.final)
				break
			}
			select {
			case <-r.more:
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	cancel()
	wg.Wait()
	for _, r := range run.receivers {
		for ep := range r.byEpoch {
			if ep != run.final.epoch {
				run.firstEpoch = ep
			}
		}
	}
	run.report(t, retry, outage)
	return run
}

// closedWith counts the sender's connections closed with code.
func (s *sender) closedWith(code websocket.StatusCode) int {
	n := 0
	for _, c := range s.conns {
		if c.close.code == code {
			n++
		}
	}
	return n
}

// seen reports how many times any receiver got message n.
func (run *outageRun) seen(n int) int {
	k := 0
	for _, r := range run.receivers {
		k += r.seen[n]
	}
	return k
}

// unseen lists the messages sent that no receiver got, with how their
// connection ended.
func (run *outageRun) unseen() []string {
	var out []string
	for _, c := range run.sender.conns {
		for n := c.first; n < c.end; n++ {
			if run.seen(n) == 0 {
				out = append(out, fmt.Sprintf("n=%d (written %v before its connection got %v %q)",
					n, c.close.at.Sub(run.sender.sent[n]).Round(time.Microsecond), c.close.code, c.close.reason))
			}
		}
	}
	return out
}

func (run *outageRun) report(t *testing.T, retry, outage time.Duration) {
	t.Helper()
	s := run.sender
	told, lost := 0, 0
	for _, c := range s.conns {
		for n := c.first; n < c.end; n++ {
			if run.seen(n) == 0 {
				if c.close.code == websocket.StatusTryAgainLater {
					told++
				} else {
					lost++
				}
			}
		}
	}
	t.Logf("publish retry %v, Redis down %v; sender wrote %d messages on %d connections (%d failed handshakes), closes: %s",
		retry, outage, s.next, len(s.conns), s.dials, s.closeSummary())
	t.Logf("unseen by any receiver: %d on connections closed with 1013, %d otherwise; final position %v (first epoch %s)",
		told, lost, run.final, run.firstEpoch)
	for i, c := range s.conns {
		t.Logf("sender connection %d: n=%d..%d, closed with %v at restart%+v", i, c.first, c.end-1, c.close.code, c.close.at.Sub(run.restarted).Round(time.Millisecond))
	}
	for _, r := range run.receivers {
		var epochs []string
		for ep, seqs := range r.byEpoch {
			first := r.firstAt[ep].Sub(run.restarted).Round(time.Millisecond)
			epochs = append(epochs, fmt.Sprintf("%s: %d msgs seq %d..%d (first at restart%+v)", ep, len(seqs), seqs[0], seqs[len(seqs)-1], first))
		}
		slices.Sort(epochs)
		var closes []string
		for _, c := range r.closes {
			closes = append(closes, fmt.Sprintf("%v %q at restart%+v", c.code, c.reason, c.at.Sub(run.restarted).Round(time.Millisecond)))
		}
		t.Logf("receiver %s: %s; closes [%s]; failed handshakes %d; problems %d", r.name, strings.Join(epochs, ", "), strings.Join(closes, "; "), r.dials, len(r.problems))
	}
	for i, room := range run.rooms {
		st := room.Stats()
		t.Logf("node %d: MessagesIn %d PublishRetries %d ClosedRetry %d Resyncs %d Errors %d", i, st.MessagesIn, st.PublishRetries, st.ClosedRetry, st.Resyncs, st.Errors)
	}
}

func (s *sender) closeSummary() string {
	count := map[string]int{}
	for _, c := range s.conns {
		count[fmt.Sprintf("%v", c.close.code)]++
	}
	var out []string
	for k, v := range count {
		out = append(out, fmt.Sprintf("%s×%d", k, v))
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

// checkOutage asserts what holds for any publish retry: no message sent
// vanished without a 1013, the history moved to a new epoch, every receiver
// got that epoch whole from seq 1, and none saw a gap or a duplicate.
func checkOutage(t *testing.T, run *outageRun) {
	t.Helper()
	for _, c := range run.sender.conns {
		if c.close.code == websocket.StatusTryAgainLater {
			continue
		}
		for n := c.first; n < c.end; n++ {
			if run.seen(n) == 0 {
				t.Errorf("message n=%d reached no receiver, and its connection ended with %v %q, not 1013 (written %v before the close arrived)",
					n, c.close.code, c.close.reason, c.close.at.Sub(run.sender.sent[n]).Round(time.Microsecond))
			}
		}
	}
	// Every message before a 1013 that was not the last before it reached
	// someone too: a client closed with 1013 lost only its last messages.
	for _, c := range run.sender.conns {
		if c.close.code != websocket.StatusTryAgainLater {
			continue
		}
		seenAfter := -1
		for n := c.first; n < c.end; n++ {
			if run.seen(n) > 0 {
				seenAfter = n
			}
		}
		for n := c.first; n < seenAfter; n++ {
			if run.seen(n) == 0 {
				t.Errorf("message n=%d reached no receiver though n=%d, sent after it on the same connection, did", n, seenAfter)
			}
		}
	}
	var firstEpoch string
	for _, r := range run.receivers {
		for _, p := range r.problems {
			t.Errorf("receiver %s: %s", r.name, p)
		}
		if r.fresh > 0 {
			// The room resynchronised while the engine held no message
			// yet, so it had no epoch to name: the client starts afresh
			// and misses what is stored before it is back. The check
			// below fails if that happened.
			t.Logf("receiver %s got %d 4000s without a resume position", r.name, r.fresh)
		}
		seqs := r.byEpoch[run.final.epoch]
		want := make([]uint64, run.final.seq)
		for i := range want {
			want[i] = uint64(i + 1)
		}
		if !slices.Equal(seqs, want) {
			t.Errorf("receiver %s got %d messages of the last epoch %s, want seq 1..%d each once: %v", r.name, len(seqs), run.final.epoch, run.final.seq, seqs)
		}
		for ep, seqs := range r.byEpoch {
			if ep != run.final.epoch {
				if firstEpoch != "" && ep != firstEpoch {
					t.Errorf("receiver %s saw a third epoch %s", r.name, ep)
				}
				firstEpoch = ep
				_ = seqs
			}
		}
	}
	if firstEpoch == "" {
		t.Errorf("no receiver saw a message of the epoch before the outage")
	}
}
