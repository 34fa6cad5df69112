package load

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config describes one run of the load tool.
type Config struct {
	URL          string        // ws:// URL of the server, on loopback
	Clients      int           // subscribers
	Size         int           // bytes per message, at least MinSize
	Rates        []float64     // the ladder, in deliveries per second
	Step         time.Duration // how long each rate is held
	Drain        time.Duration // longest wait after a step for late deliveries
	Settle       time.Duration // wait after connecting before reading memory
	Publishers   int           // publishing connections (default 1)
	PID          int           // server process, for CPU and memory; 0: none
	Idle         bool          // connect, report memory, stop
	ReadBuf      int           // bytes of read buffer per connection; 0: auto
	DialParallel int           // handshakes in flight at once (default 64)
	AllSteps     bool          // go on climbing after a step fails
	MaxP99       time.Duration // a step fails with a p99 at or above this (default 250ms)
	Progress     io.Writer     // live progress; nil: none
}

// StepResult is what one step of the ladder measured.
type StepResult struct {
	Target      float64       // deliveries/s asked for
	PublishRate float64       // messages/s published for it (Target / Clients)
	Published   int64         // messages published
	Achieved    float64       // deliveries/s received while publishing
	Delivered   int64         // deliveries, late ones included
	Expected    int64         // Published × Clients
	Loss        int64         // Expected − Delivered
	Latency     Latency       // publish to receipt
	Dropped     int           // subscribers that lost their connection
	Publishing  time.Duration // time spent publishing
	Duration    time.Duration // publishing plus draining
	ServerCPU   time.Duration // server user + system time over Duration
	ToolCPU     time.Duration // this process's user + system time over Duration
	OtherCPU    time.Duration // the rest of the machine's busy time over Duration
	OK          bool          // no loss, no drop, p99 < MaxP99, ≥ 95% published

	PublisherError string // why a publisher stopped, if one did
}

// CPUPerDelivery returns the server's CPU time per delivery, or 0 when
// unknown.
func (s StepResult) CPUPerDelivery() time.Duration {
	if s.Delivered == 0 {
		return 0
	}
	return s.ServerCPU / time.Duration(s.Delivered)
}

// Result is what a run measured.
type Result struct {
	Clients     int
	Size        int
	ConnectTime time.Duration // to connect every subscriber
	RSSBefore   int64         // server RSS before subscribers connected
	RSSAfter    int64         // and with all of them connected and idle
	Steps       []StepResult
	Dropped     int            // subscribers dropped over the whole run
	CloseCodes  map[int]int    // close codes servers sent, with counts
	Errors      map[string]int // other reasons readers stopped, with counts
}

// MemPerConn returns the growth of the server's RSS per idle subscriber, or
// 0 when unknown.
func (r *Result) MemPerConn() float64 {
	if r.RSSBefore == 0 || r.Clients == 0 {
		return 0
	}
	return float64(r.RSSAfter-r.RSSBefore) / float64(r.Clients)
}

// Sustained returns the highest step that passed, and false if none did.
func (r *Result) Sustained() (StepResult, bool) {
	for i := len(r.Steps) - 1; i >= 0; i-- {
		if r.Steps[i].OK {
			return r.Steps[i], true
		}
	}
	return StepResult{}, false
}

type runner struct {
	cfg    Config
	target Target
	base   time.Time

	steps   []StepStats // by step; [0] is unused
	probe   []atomic.Uint64
	probeN  atomic.Uint64
	closing atomic.Bool
	dropped atomic.Int64
	badMsg  atomic.Int64

	mu         sync.Mutex
	closeCodes map[int]int
	errs       map[string]int

	wg   sync.WaitGroup
	pubs []*Conn
	subs []*Conn
}

func (r *runner) now() int64 { return int64(time.Since(r.base)) }

func (r *runner) progressf(format string, args ...any) {
	if r.cfg.Progress != nil {
		fmt.Fprintf(r.cfg.Progress, format, args...)
	}
}

// livef writes a progress line that the next one replaces on a terminal,
// and that stands on its own line elsewhere.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func (r *runner) livef(format string, args ...any) {
	if r.cfg.Progress == nil {
		return
	}
	if isTerminal(r.cfg.Progress) {
		fmt.Fprintf(r.cfg.Progress, "\r\033[K"+format, args...)
		return
	}
	fmt.Fprintf(r.cfg.Progress, format+"\n", args...)
}

// Run connects, climbs the ladder and disconnects. It stops by itself:
// every step is bounded by Step + Drain, and a failing step ends the
// ladder unless AllSteps is set.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	t, err := ParseTarget(cfg.URL)
	if err != nil {
		return nil, err
	}
	if cfg.Clients < 1 {
		return nil, errors.New("need at least one client")
	}
	if cfg.Size == 0 {
		cfg.Size = 64
	}
	if cfg.Size < MinSize || cfg.Size > 125 {
		return nil, fmt.Errorf("size %d: must be %d to 125 bytes", cfg.Size, MinSize)
	}
	if !cfg.Idle && len(cfg.Rates) == 0 {
		return nil, errors.New("no rates")
	}
	if len(cfg.Rates) >= probeStep {
		return nil, errors.New("too many steps")
	}
	if cfg.Step <= 0 {
		cfg.Step = 5 * time.Second
	}
	if cfg.Drain <= 0 {
		cfg.Drain = 3 * time.Second
	}
	if cfg.Settle <= 0 {
		cfg.Settle = time.Second
	}
	cfg.Publishers = max(cfg.Publishers, 1)
	if cfg.DialParallel <= 0 {
		cfg.DialParallel = 64
	}
	if cfg.MaxP99 <= 0 {
		cfg.MaxP99 = 250 * time.Millisecond
	}
	if cfg.ReadBuf <= 0 {
		switch {
		case cfg.Idle:
			cfg.ReadBuf = 1 << 10
		case cfg.Clients <= 2000:
			cfg.ReadBuf = 16 << 10
		default:
			cfg.ReadBuf = 4 << 10
		}
	}
	r := &runner{
		cfg:        cfg,
		target:     t,
		base:       time.Now(),
		steps:      make([]StepStats, len(cfg.Rates)+1),
		probe:      make([]atomic.Uint64, cfg.Publishers+cfg.Clients),
		closeCodes: map[int]int{},
		errs:       map[string]int{},
	}
	// Each connection is a file descriptor here and one in the server.
	need := uint64(cfg.Clients + cfg.Publishers + 32)
	if lim, err := ProcNoFile(os.Getpid()); err == nil && lim < need {
		return nil, fmt.Errorf("%d connections need %d open files, but this process may open %d (raise the hard limit: ulimit -Hn, or CAP_SYS_RESOURCE)", cfg.Clients+cfg.Publishers, need, lim)
	}
	if cfg.PID > 0 {
		if lim, err := ProcNoFile(cfg.PID); err == nil && lim < need {
			return nil, fmt.Errorf("%d connections need %d open files in the server, but process %d may open %d", cfg.Clients+cfg.Publishers, need, cfg.PID, lim)
		}
	}
	defer r.shutdown()
	return r.run(ctx)
}

func (r *runner) run(ctx context.Context) (*Result, error) {
	cfg := r.cfg
	res := &Result{Clients: cfg.Clients, Size: cfg.Size}
	spread := net.ParseIP(strings.Trim(r.target.Addr[:strings.LastIndexByte(r.target.Addr, ':')], "[]")).To4() != nil

	// Publishers first: they are not counted in the memory per subscriber.
	for i := range cfg.Publishers {
		c, err := Dial(ctx, r.target, localIP(i, spread), 16<<10)
		if err != nil {
			return nil, fmt.Errorf("publisher: %w", err)
		}
		r.pubs = append(r.pubs, c)
		r.wg.Add(1)
		go r.read(c, i, false)
	}
	if err := r.probeAll(ctx, 0, cfg.Publishers); err != nil {
		return nil, err
	}
	if cfg.PID > 0 {
		rss, err := ProcRSS(cfg.PID)
		if err != nil {
			return nil, err
		}
		res.RSSBefore = rss
	}

	start := time.Now()
	if err := r.dialSubscribers(ctx, spread); err != nil {
		return nil, err
	}
	res.ConnectTime = time.Since(start)
	r.progressf("connected %d subscribers in %v\n", cfg.Clients, res.ConnectTime.Round(time.Millisecond))
	if err := sleep(ctx, cfg.Settle); err != nil {
		return nil, err
	}
	if cfg.PID > 0 {
		rss, err := ProcRSS(cfg.PID)
		if err != nil {
			return nil, err
		}
		res.RSSAfter = rss
		r.progressf("server RSS %.1f MiB before, %.1f MiB after: %.0f B per connection\n",
			float64(res.RSSBefore)/(1<<20), float64(res.RSSAfter)/(1<<20), res.MemPerConn())
	}
	if err := r.probeAll(ctx, 0, cfg.Publishers+cfg.Clients); err != nil {
		return nil, err
	}
	if !cfg.Idle {
		for i := range cfg.Rates {
			s, err := r.step(ctx, i+1)
			if err != nil {
				return nil, err
			}
			res.Steps = append(res.Steps, s)
			if !s.OK && !cfg.AllSteps || s.PublisherError != "" {
				break
			}
			if int(r.dropped.Load()) >= cfg.Clients {
				break
			}
		}
	}
	res.Dropped = int(r.dropped.Load())
	r.mu.Lock()
	res.CloseCodes, res.Errors = r.closeCodes, r.errs
	r.mu.Unlock()
	if n := r.badMsg.Load(); n > 0 {
		return res, fmt.Errorf("%d messages were not the tool's own", n)
	}
	return res, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *runner) dialSubscribers(ctx context.Context, spread bool) error {
	cfg := r.cfg
	r.subs = make([]*Conn, cfg.Clients)
	var next, done atomic.Int64
	var firstErr error
	var errOnce sync.Once
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for range min(cfg.DialParallel, cfg.Clients) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= cfg.Clients || dctx.Err() != nil {
					return
				}
				id := cfg.Publishers + i
				c, err := Dial(dctx, r.target, localIP(id, spread), cfg.ReadBuf)
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("subscriber %d: %w", i, err) })
					cancel()
					return
				}
				r.subs[i] = c
				r.wg.Add(1)
				go r.read(c, id, true)
				done.Add(1)
			}
		})
	}
	stop := make(chan struct{})
	var pwg sync.WaitGroup
	pwg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				r.livef("connecting: %d/%d", done.Load(), cfg.Clients)
			}
		}
	})
	wg.Wait()
	close(stop)
	pwg.Wait()
	return firstErr
}

// read is the reader of connection c, number id: it parses every buffered
// frame, stamping all the messages of one read with one clock reading, and
// records the deliveries of subscribers.
func (r *runner) read(c *Conn, id int, sub bool) {
	defer r.wg.Done()
	fr := c.FR
	nsteps := len(r.steps)
	size := r.cfg.Size
	for {
		now := r.now()
		for {
			op, p, ok, err := fr.Next()
			if err != nil {
				r.stopped(sub, err)
				c.Close()
				return
			}
			if !ok {
				break
			}
			switch op {
			case OpText, OpBinary:
				// A frame holds one message, or several of exactly size
				// bytes separated by '\n' from servers that merge them.
				for len(p) > 0 {
					m := p
					if len(p) > size {
						if p[size] != '\n' {
							r.badMsg.Add(1)
							break
						}
						m, p = p[:size], p[size+1:]
					} else {
						p = nil
					}
					ts, step, ok := decodeHead(m)
					switch {
					case !ok:
						r.badMsg.Add(1)
					case step == probeStep:
						if _, _, seq, ok := DecodePayload(m); ok && seq > r.probe[id].Load() {
							r.probe[id].Store(seq)
						}
					case sub && step < nsteps:
						r.steps[step].Record(id, now-ts)
					}
				}
			case OpPing:
				c.Pong(p)
			case OpClose:
				code := 1005
				if len(p) >= 2 {
					code = int(binary.BigEndian.Uint16(p))
				}
				if !r.closing.Load() {
					r.mu.Lock()
					r.closeCodes[code]++
					r.mu.Unlock()
					if sub {
						r.dropped.Add(1)
					}
				}
				c.Close()
				return
			}
		}
		if err := fr.Fill(); err != nil {
			r.stopped(sub, err)
			c.Close()
			return
		}
	}
}

func (r *runner) stopped(sub bool, err error) {
	if r.closing.Load() {
		return
	}
	if sub {
		r.dropped.Add(1)
	}
	msg := err.Error()
	if errors.Is(err, io.EOF) {
		msg = "EOF"
	} else if errors.Is(err, net.ErrClosed) {
		msg = "closed"
	} else if i := strings.LastIndex(msg, ": "); i >= 0 && strings.HasPrefix(msg, "read tcp") {
		msg = msg[i+2:]
	}
	r.mu.Lock()
	r.errs[msg]++
	r.mu.Unlock()
}

// probeAll publishes probes until connections [from, to) have all received
// one: then the server has them all subscribed.
func (r *runner) probeAll(ctx context.Context, from, to int) error {
	key := r.pubs[0].MaskKey()
	payload := make([]byte, r.cfg.Size)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		seq := r.probeN.Add(1)
		EncodePayload(payload, r.now(), probeStep, seq)
		if err := r.pubs[0].WriteFrames(AppendClientFrame(nil, OpText, payload, key)); err != nil {
			return fmt.Errorf("probe: %w", err)
		}
		wait := time.Now().Add(time.Second)
		for time.Now().Before(wait) {
			missing := 0
			for i := from; i < to; i++ {
				if r.probe[i].Load() < seq {
					missing++
				}
			}
			if missing == 0 {
				return nil
			}
			if err := sleep(ctx, 10*time.Millisecond); err != nil {
				return err
			}
		}
		if d := r.dropped.Load(); d > 0 {
			return fmt.Errorf("probe: %d subscribers dropped while subscribing (%v)", d, r.reasons())
		}
	}
	return errors.New("probe: not every connection received a probe within 30s")
}

func (r *runner) reasons() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var parts []string
	for c, n := range r.closeCodes {
		parts = append(parts, fmt.Sprintf("close %d ×%d", c, n))
	}
	for e, n := range r.errs {
		parts = append(parts, fmt.Sprintf("%s ×%d", e, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// step runs step number step (1-based) of the ladder.
func (r *runner) step(ctx context.Context, step int) (StepResult, error) {
	cfg := r.cfg
	rate := cfg.Rates[step-1]
	s := StepResult{Target: rate, PublishRate: rate / float64(cfg.Clients)}
	st := &r.steps[step]
	drop0 := r.dropped.Load()
	self := os.Getpid()
	srv0, _ := r.serverCPU()
	tool0, _ := ProcCPU(self)
	busy0, busyErr := MachineBusy()
	t0 := time.Now()

	var published atomic.Int64
	var pubErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for i, c := range r.pubs {
		wg.Go(func() {
			if err := r.publish(ctx, c, i, step, s.PublishRate/float64(len(r.pubs)), &published); err != nil {
				errOnce.Do(func() { pubErr = err })
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(time.Second)
	last, lastT := int64(0), t0
	label := fmt.Sprintf("step %d/%d %s/s", step, len(cfg.Rates), FormatRate(rate))
wait:
	for {
		select {
		case <-done:
			break wait
		case now := <-tick.C:
			n := st.Count()
			r.livef("%s: %s deliveries/s, %d published, %d dropped", label,
				HumanRate(float64(n-last)/now.Sub(lastT).Seconds()), published.Load(), r.dropped.Load()-drop0)
			last, lastT = n, now
		}
	}
	tick.Stop()
	pubDur := time.Since(t0)
	s.Published = published.Load()
	s.Publishing = pubDur
	s.Achieved = float64(st.Count()) / pubDur.Seconds()
	if pubErr != nil {
		s.PublisherError = pubErr.Error()
		r.progressf("\n%s: publisher: %v (connections stopped: %s)\n", label, pubErr, r.reasons())
	}

	// Drain: wait for late deliveries until all are in, none came for
	// 500ms, or Drain is over.
	alive := int64(cfg.Clients) - r.dropped.Load()
	s.Expected = s.Published * int64(cfg.Clients)
	drainEnd := time.Now().Add(cfg.Drain)
	prev, prevT := st.Count(), time.Now()
	for time.Now().Before(drainEnd) {
		n := st.Count()
		if n >= s.Published*alive {
			break
		}
		if n != prev {
			prev, prevT = n, time.Now()
		} else if time.Since(prevT) > 500*time.Millisecond {
			break
		}
		if err := sleep(ctx, 10*time.Millisecond); err != nil {
			return s, err
		}
	}
	s.Duration = time.Since(t0)
	if srv1, ok := r.serverCPU(); ok {
		s.ServerCPU = srv1 - srv0
	}
	if tool1, err := ProcCPU(self); err == nil {
		s.ToolCPU = tool1 - tool0
	}
	if busy1, err := MachineBusy(); err == nil && busyErr == nil {
		s.OtherCPU = max(busy1-busy0-s.ToolCPU-s.ServerCPU, 0)
	}
	h := st.Histogram()
	s.Delivered = int64(h.Count())
	s.Loss = max(s.Expected-s.Delivered, 0)
	s.Latency = h.Summary()
	s.Dropped = int(r.dropped.Load() - drop0)
	want := s.PublishRate * cfg.Step.Seconds()
	s.OK = s.PublisherError == "" && s.Loss == 0 && s.Dropped == 0 && s.Latency.P99 < cfg.MaxP99 &&
		float64(s.Published) >= 0.95*want && s.Delivered > 0
	verdict := "ok"
	if !s.OK {
		verdict = "FAIL"
	}
	r.livef("%s: achieved %s/s, loss %d, p50 %v p99 %v max %v, dropped %d, server %v/delivery, %s\n",
		label, HumanRate(s.Achieved), s.Loss, roundDur(s.Latency.P50), roundDur(s.Latency.P99),
		roundDur(s.Latency.Max), s.Dropped, s.CPUPerDelivery(), verdict)
	if r.cfg.Progress != nil && isTerminal(r.cfg.Progress) {
		fmt.Fprintln(r.cfg.Progress)
	}
	if s.Dropped > 0 {
		r.progressf("  dropped: %s\n", r.reasons())
	}
	return s, nil
}

func (r *runner) serverCPU() (time.Duration, bool) {
	if r.cfg.PID <= 0 {
		return 0, false
	}
	d, err := ProcCPU(r.cfg.PID)
	return d, err == nil
}

func roundDur(d time.Duration) time.Duration {
	switch {
	case d >= 100*time.Millisecond:
		return d.Round(time.Millisecond)
	case d >= 100*time.Microsecond:
		return d.Round(time.Microsecond)
	}
	return d.Round(100 * time.Nanosecond)
}

// publish publishes at rate messages/s from c for one step: every
// millisecond tick it writes, in one write, the messages due by then. A
// publisher that falls more than 250ms (and 100 messages) behind skips what
// it owes beyond that, so a server that reads slowly shows as fewer
// messages published.
func (r *runner) publish(ctx context.Context, c *Conn, idx, step int, rate float64, published *atomic.Int64) error {
	key := c.MaskKey()
	payload := make([]byte, r.cfg.Size)
	maxBatch := max(int64(rate/4), 100)
	buf := make([]byte, 0, 256)
	start := time.Now()
	end := start.Add(r.cfg.Step)
	c.SetWriteDeadline(end.Add(10 * time.Second))
	defer c.SetWriteDeadline(time.Time{})
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	var sent, skipped int64
	seq := uint64(idx) << 48
	for now := start; now.Before(end); {
		due := int64(rate*now.Sub(start).Seconds()) + 1 - sent - skipped
		if due > maxBatch {
			skipped += due - maxBatch
			due = maxBatch
		}
		if due > 0 {
			buf = buf[:0]
			ts := r.now()
			for range due {
				seq++
				EncodePayload(payload, ts, step, seq)
				buf = AppendClientFrame(buf, OpText, payload, key)
			}
			if err := c.WriteFrames(buf); err != nil {
				return err
			}
			sent += due
			published.Add(due)
		}
		select {
		case now = <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// shutdown closes every connection and waits for the readers.
func (r *runner) shutdown() {
	r.closing.Store(true)
	for _, c := range r.pubs {
		c.CloseNormal()
	}
	for _, c := range r.subs {
		if c != nil {
			c.Close()
		}
	}
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
}
