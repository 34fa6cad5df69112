package wsroom

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// This file holds the room's loop, which alone owns the set of clients and
// the room's place in its history, and the keeper, the room's other
// goroutine, which does what may wait: it subscribes to the Broker, reads
// the Store for the loop, and reports errors to the application.

const (
	// inboxSize is how many messages from the Broker may wait for the loop.
	// When the inbox is full, the default LocalBroker waits for the loop
	// (its publishers are slowed); any other Broker is not held up: a
	// numbered message is read back from the Store, an ephemeral one is
	// dropped (counted in Stats.Overflow).
	inboxSize = 1024
	// catchUpPage is how many messages the keeper reads from the Store at a
	// time when the loop catches up.
	catchUpPage = 256
	// errQueue is how many errors may wait for the keeper to report them.
	errQueue = 64
	// storeRetry bounds how long the keeper retries a failing Store read
	// for the loop before the room's clients are resynchronised.
	storeRetry = 30 * time.Second
)

// deliverWait hands a message from the room's LocalBroker to the room's
// loop, waiting while the inbox is full, until ctx ends or the room stops:
// on one node a publisher is slowed rather than the loop left behind. If
// ctx ends first, m takes the path of deliver.
func (r *Room) deliverWait(ctx context.Context, m Message) {
	if !r.inbox.put(ctx, r.quit, m) && ctx.Err() != nil {
		r.deliver(m)
	}
}

// deliver hands a message from the broker to the room's loop. It never
// blocks: if the loop is behind, a numbered message is read back from the
// store later and an ephemeral one is dropped. A Broker across nodes calls
// it from its own goroutine, which must not wait.
func (r *Room) deliver(m Message) {
	if r.inbox.offer(m) {
		return
	}
	r.stats.overflow.Add(1)
	if !m.Ephemeral {
		r.overflow.Store(true)
		r.nudge()
	}
}

// inbox holds the messages from the Broker that wait for the room's loop,
// oldest first, at most max of them. It costs no message slot while empty:
// its buffer grows as messages queue up and is let go once the loop has
// taken them all, so that an idle room holds none.
type inbox struct {
	mu      sync.Mutex
	msgs    []Message // msgs[head:] wait
	head    int
	max     int
	waiting int          // publishers waiting for a place (put)
	n       atomic.Int64 // len(msgs) - head, read without mu
	// ready holds a token while a message may wait; space gets one when
	// the loop takes a message while publishers wait.
	ready, space chan struct{}
}

// inboxKeep is the most message slots an empty inbox keeps: a room that
// takes its messages one at a time allocates no buffer per message.
const inboxKeep = 16

func newInbox(max int) *inbox {
	return &inbox{max: max, ready: make(chan struct{}, 1), space: make(chan struct{}, 1)}
}

// len returns the number of messages waiting.
func (q *inbox) len() int { return int(q.n.Load()) }

// offer queues m unless max messages wait, and reports whether it did.
func (q *inbox) offer(m Message) bool {
	q.mu.Lock()
	if len(q.msgs)-q.head >= q.max {
		q.mu.Unlock()
		return false
	}
	q.pushLocked(m)
	q.mu.Unlock()
	signal(q.ready)
	return true
}

// put queues m, waiting while max messages wait, until ctx ends or quit
// closes; it reports whether m was queued.
func (q *inbox) put(ctx context.Context, quit <-chan struct{}, m Message) bool {
	for {
		q.mu.Lock()
		if len(q.msgs)-q.head < q.max {
			q.pushLocked(m)
			q.mu.Unlock()
			signal(q.ready)
			return true
		}
		q.waiting++
		q.mu.Unlock()
		ok := true
		select {
		case <-q.space:
		case <-quit:
			ok = false
		case <-ctx.Done():
			ok = false
		}
		q.mu.Lock()
		q.waiting--
		q.mu.Unlock()
		if !ok {
			return false
		}
	}
}

func (q *inbox) pushLocked(m Message) {
	if q.head > 0 && len(q.msgs) == cap(q.msgs) && q.head >= cap(q.msgs)/2 {
		// Reuse the taken half rather than grow.
		k := copy(q.msgs, q.msgs[q.head:])
		clear(q.msgs[k:])
		q.msgs, q.head = q.msgs[:k], 0
	}
	q.msgs = append(q.msgs, m)
	q.n.Add(1)
}

// take returns the oldest waiting message, if any.
func (q *inbox) take() (Message, bool) {
	q.mu.Lock()
	if q.head == len(q.msgs) {
		q.mu.Unlock()
		return Message{}, false
	}
	m := q.msgs[q.head]
	q.msgs[q.head] = Message{}
	q.head++
	if q.head == len(q.msgs) {
		if cap(q.msgs) > inboxKeep {
			q.msgs = nil
		} else {
			q.msgs = q.msgs[:0]
		}
		q.head = 0
	}
	q.n.Add(-1)
	more, wake := q.head < len(q.msgs), q.waiting > 0
	q.mu.Unlock()
	if more {
		signal(q.ready)
	}
	if wake {
		signal(q.space)
	}
	return m, true
}

// signal puts a token in c, a channel of one slot, unless one is there.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// lost is told by the broker that it may have missed messages; the loop
// then catches up from the store.
func (r *Room) lost(err error) {
	r.reportAsync(nil, fmt.Errorf("wsroom: room %q may have missed messages: %w", r.name, err))
	r.overflow.Store(true)
	r.nudge()
}

func (r *Room) nudge() {
	select {
	case r.catchup <- struct{}{}:
	default:
	}
}

// fetchRequest asks the keeper for what the store holds: the room's last
// message (start), or the messages after a position.
type fetchRequest struct {
	start bool
	after position
	era   uint64 // the loop's era when it asked
}

// fetchResult is the keeper's answer. When the store could not serve the
// messages after the position, gap is set and current is the room's
// position in the store now (current.epoch is empty if it is unknown).
type fetchResult struct {
	answer  bool // to a fetchRequest (not the keeper's first start)
	start   bool
	msgs    []Message
	gap     bool
	current position
	known   bool // current is known
	err     error
	era     uint64 // that of the request answered
}

// loop is the state of the room's loop.
type loop struct {
	r       *Room
	clients map[*Client]int // each client's index in list
	list    []*Client       // the clients, in the order fanout visits them
	muxes   int             // clients of many rooms in list
	helpers *helpers        // for parallel fan-out; nil until first needed
	pos     position        // the last numbered message delivered
	known   bool            // pos is known: the start was read or a message came
	behind  bool            // the store may hold messages after pos not delivered
	asked   bool            // a fetchRequest is with the keeper
	era     uint64          // resyncs so far: an answer to a request of an earlier era is stale
}

// run is the room's loop. It alone owns the set of clients and pos. It
// never calls the application, the Store or the Broker, and never waits
// for a client.
func (r *Room) run() {
	l := &loop{r: r, clients: make(map[*Client]int)}
	defer func() {
		l.helpers.stop()
		r.final = l.list
		close(r.done)
	}()
	for {
		select {
		case req := <-r.joinc:
			l.add(req.c)
			req.at <- cut{pos: l.pos, known: l.known}
		case c := <-r.leavec:
			l.remove(c)
		case <-r.inbox.ready:
			if m, ok := r.inbox.take(); ok {
				l.handle(m)
			}
		case q := <-r.queryc:
			q <- slices.Clone(l.list)
		case <-r.catchup:
			if r.overflow.Swap(false) {
				l.behind = true
				l.ask()
			}
		case res := <-r.fetchc:
			if res.answer {
				l.asked = false
			}
			l.result(res)
			l.ask()
		case <-r.quit:
			// Deliver what the broker handed over before the stop.
			for {
				m, ok := r.inbox.take()
				if !ok {
					return
				}
				l.handle(m)
			}
		}
	}
}

// add adds c to the room's clients.
func (l *loop) add(c *Client) {
	if _, ok := l.clients[c]; ok {
		return
	}
	l.clients[c] = len(l.list)
	l.list = append(l.list, c)
	if c.mux != nil {
		l.muxes++
	}
}

// remove takes c out of the room's clients; the last client of list takes
// its place.
func (l *loop) remove(c *Client) {
	i, ok := l.clients[c]
	if !ok {
		return
	}
	last := len(l.list) - 1
	if i != last {
		l.list[i] = l.list[last]
		l.clients[l.list[i]] = i
	}
	l.list[last] = nil
	l.list = l.list[:last]
	delete(l.clients, c)
	if c.mux != nil {
		l.muxes--
	}
}

// handle delivers m from the broker, or notes that the room must catch up.
func (l *loop) handle(m Message) {
	if m.Ephemeral {
		l.fanout(m)
		return
	}
	switch {
	case !l.known:
	case l.pos.epoch != "" && m.Epoch != l.pos.epoch:
		// The history was reset: what the old epoch's clients had and
		// what the new one holds before m cannot be stitched together.
		l.resync(position{epoch: m.Epoch, seq: m.Seq}, true, true, fmt.Errorf("wsroom: room %q history moved to a new epoch", l.r.name))
		return
	case m.Seq <= l.pos.seq:
		return // delivered already
	case m.Seq > l.pos.seq+1:
		// The broker missed some: the store has them, m included.
		l.behind = true
		l.ask()
		return
	}
	l.pos, l.known = position{epoch: m.Epoch, seq: m.Seq}, true
	l.fanout(m)
}

// ask asks the keeper for what the loop needs, unless it has asked already.
func (l *loop) ask() {
	if l.asked || (l.known && !l.behind) {
		return
	}
	req := fetchRequest{start: !l.known, after: l.pos, era: l.era}
	l.r.wantc <- req // never blocks: the loop sends one request at a time
	l.asked = true
}

// result applies the keeper's answer, unless the room has been
// resynchronised since it asked: then the answer is of a position the room
// has left (say, the messages of an epoch it moved on from while the store
// was read), and applying it would resynchronise the room's clients again.
// The loop asks again if it still needs to.
func (l *loop) result(res fetchResult) {
	if res.answer && res.era != l.era {
		return
	}
	switch {
	case res.start:
		if !l.known && res.known {
			l.pos, l.known = res.current, true
		}
	case res.gap:
		err := fmt.Errorf("wsroom: room %q cannot recover the messages after %v: %w", l.r.name, l.pos, ErrGap)
		if res.err != nil {
			err = fmt.Errorf("wsroom: room %q cannot recover the messages after %v: %w", l.r.name, l.pos, res.err)
		}
		// A new epoch, or none yet (the engine came back empty): clients
		// can have all of it.
		l.resync(res.current, res.known, res.known && res.current.epoch != l.pos.epoch, err)
	default:
		for _, m := range res.msgs {
			l.handle(m)
		}
		if len(res.msgs) < catchUpPage {
			l.behind = false
		}
	}
}

// resync closes every client with StatusResync, as the room cannot give
// them every message after their position, and moves the room to now
// (unknown unless known is set). If
// fromStart is set, now is in a new epoch whose messages the store holds
// from the first: the close reason tells clients to resume from its start.
func (l *loop) resync(now position, known, fromStart bool, err error) {
	l.r.reportAsync(nil, err)
	reason := "wsroom: messages lost, resync"
	if fromStart {
		reason += " resume=" + position{epoch: now.epoch}.String()
	}
	req := &closeRequest{code: StatusResync, reason: truncate(reason, maxReason), mode: closeDiscard, err: ErrGap}
	tell := &reply{Op: "resync", Room: l.r.name, Reason: "messages lost"}
	if fromStart {
		tell.Resume = position{epoch: now.epoch}.String()
	}
	l.r.stats.resyncs.Add(uint64(len(l.list)))
	for _, c := range slices.Clone(l.list) {
		if c.mux != nil {
			// Only this room is resynchronised: the connection stays.
			l.remove(c)
			c.evict(l.r, tell)
			continue
		}
		c.resyncClose(req)
	}
	l.pos, l.known, l.behind = now, known, false
	l.era++
}

// fanout encodes m once for each kind of client that gets it (the room's
// codec, the wsroom.v3 protocol) and queues the same bytes to every client
// it is for.
func (l *loop) fanout(m Message) {
	r := l.r
	fs := outFrames{r: r, m: m}
	obs := r.cfg.observer
	var start time.Time
	if obs != nil {
		start = time.Now()
		if !m.Time.IsZero() {
			fs.pub = m.Time.UnixNano()
		}
	}
	// With no other message waiting, the loop writes to idle clients
	// itself, saving a goroutine start and switch per delivery; then, with
	// more than one P and many clients, helpers take parts of the list, so
	// the writes spread over the cores. Under load the loop only queues,
	// which is cheap and never waits for a helper, and the clients'
	// writers, on every core, write all that queued up for a client in one
	// system call.
	inline := r.inbox.len() == 0
	// Encoded before any helper runs: they only read fs.
	if l.muxes < len(l.list) {
		fs.frame(false)
	}
	if l.muxes > 0 {
		fs.frame(true)
	}
	n := 0
	if parts := min(runtime.GOMAXPROCS(0), len(l.list)/fanoutShard); inline && parts > 1 {
		n = l.fanoutParallel(&fs, inline, parts)
	} else {
		n = deliverAll(&fs, l.list, inline)
	}
	if fs.err != nil {
		r.reportAsync(nil, fs.err)
	}
	if !inline {
		l.yieldToWriters()
	}
	if obs != nil {
		obs.Fanout(FanoutEvent{Room: r.name, Clients: n, Duration: time.Since(start)})
	}
}

// yieldToWriters lets the clients' writers run before the next message
// when, on average, more than a quarter of the clients' send buffers is
// taken:
// the room's loop queues faster than the writers write, because the
// server as a whole (not one slow client, which counts for only its own
// buffer) is out of CPU. Without it the loop, never waiting, would fill
// every buffer and the slow-client policy would close the room's clients
// for the server's overload; with it the loop, and through its inbox the
// publishers, slow to the pace of the writers. It yields the processor;
// it never waits for a client.
//
// The queues of connections of many rooms are counted by their Registry,
// over all its rooms: with such members the loop yields when that count,
// over the clients of this room, is past the same share, which may be
// more often than needed, never less.
func (l *loop) yieldToWriters() {
	queued, clients := l.r.stats.queued.Load(), int64(len(l.list)-l.muxes)
	if l.muxes > 0 && l.r.muxQueued != nil {
		queued += l.r.muxQueued.Load()
		clients += int64(l.muxes)
	}
	if clients > 0 && queued > clients*int64(l.r.cfg.sendBuffer)/4 {
		runtime.Gosched()
	}
}

// fanoutShard is the least number of clients each part of a parallel
// fan-out has: below it, handing a part to a helper costs more than it
// saves.
var fanoutShard = 256

// deliverAll delivers fs to clients, but for the one the message excepts,
// and returns how many it was for.
func deliverAll(fs *outFrames, clients []*Client, inline bool) int {
	n := 0
	for _, c := range clients {
		if fs.m.Except != "" && c.id == fs.m.Except {
			continue
		}
		c.deliver(fs, inline)
		n++
	}
	return n
}

// fanoutParallel delivers fs to the room's clients in parts: the loop
// takes the first, helpers the others, and it returns when all are
// delivered, so each client still gets the room's messages in order.
func (l *loop) fanoutParallel(fs *outFrames, inline bool, parts int) int {
	if l.helpers == nil {
		l.helpers = &helpers{work: make(chan *fanoutPart)}
	}
	l.helpers.ensure(parts - 1)
	size := (len(l.list) + parts - 1) / parts
	var wg sync.WaitGroup
	ps := make([]fanoutPart, parts)
	for i := range ps {
		end := min((i+1)*size, len(l.list))
		ps[i] = fanoutPart{fs: fs, clients: l.list[i*size : end], inline: inline, wg: &wg}
	}
	wg.Add(parts - 1)
	for i := 1; i < parts; i++ {
		l.helpers.work <- &ps[i]
	}
	n := deliverAll(fs, ps[0].clients, inline)
	wg.Wait()
	for i := 1; i < parts; i++ {
		n += ps[i].n
	}
	return n
}

// fanoutPart is one helper's part of a fan-out.
type fanoutPart struct {
	fs      *outFrames
	clients []*Client
	inline  bool
	n       int // clients delivered to, set by the helper
	wg      *sync.WaitGroup
}

// helpers are the goroutines of a room's loop that deliver parts of a
// fan-out. The loop starts them when a fan-out first needs them and stops
// them when it returns.
type helpers struct {
	work    chan *fanoutPart
	running int
	wg      sync.WaitGroup
}

// ensure starts helpers until n run.
func (h *helpers) ensure(n int) {
	for ; h.running < n; h.running++ {
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			for p := range h.work {
				p.n = deliverAll(p.fs, p.clients, p.inline)
				p.wg.Done()
			}
		}()
	}
}

// stop stops the helpers, if any, and waits for them.
func (h *helpers) stop() {
	if h == nil {
		return
	}
	close(h.work)
	h.wg.Wait()
}

// outFrames is one message's frames for a room's clients, each encoded
// when first needed.
type outFrames struct {
	r          *Room
	m          Message
	codec, mux []byte
	err        error // the first encoding error
	pub        int64 // m.Time in Unix ns, with an Observer; else 0
}

// frame returns the frame for clients of the room's codec or, if mux, of
// the wsroom.v3 protocol; ok is false if m cannot be encoded so.
func (fs *outFrames) frame(mux bool) (f outFrame, ok bool) {
	if fs.m.Presence != "" && !mux {
		return outFrame{}, false // only clients of many rooms get presence
	}
	p := &fs.codec
	if mux {
		p = &fs.mux
	}
	if *p == nil {
		var err error
		if mux {
			*p, err = muxFrame(fs.r.name, fs.m)
		} else {
			*p, err = fs.r.codecFrame(fs.m)
		}
		if err != nil {
			*p = []byte{}
			if fs.err == nil {
				fs.err = err
			}
		}
	}
	if len(*p) == 0 {
		return outFrame{}, false
	}
	return outFrame{seq: fs.m.Seq, epoch: fs.m.Epoch, data: *p, pub: fs.pub}, true
}

// codecFrame returns the frame of m for clients of the room's codec.
func (r *Room) codecFrame(m Message) ([]byte, error) {
	payload, err := r.encode(m)
	if err != nil {
		return nil, fmt.Errorf("wsroom: encode message %d: %w", m.Seq, err)
	}
	return r.newFrame(payload), nil
}

// keep is the room's keeper: it subscribes the room to its broker, reads
// the store for the loop and reports errors, until the room stops. Every
// call it makes may wait; none holds up the loop.
func (r *Room) keep() {
	if !r.subscribe() {
		return
	}
	var tick <-chan time.Time
	if r.cfg.presenceEvents > 0 {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		tick = t.C
	}
	sent := int64(-1) // the member count last sent
	for {
		select {
		case <-tick:
			sent = r.countMembers(sent)
		case req := <-r.wantc:
			res := r.fetch(req)
			res.era = req.era
			select {
			case r.fetchc <- res:
			case <-r.quit:
				return
			}
		case e := <-r.errc:
			r.report(e.c, e.err)
		case <-r.quit:
			return
		}
	}
}

// subscribe reads the room's last stored message, for the loop to start
// from, then subscribes to the broker, each retried with backoff until it
// succeeds or the room stops. Reading first means that a message published
// between the two is noticed as a gap and read back from the store.
func (r *Room) subscribe() bool {
	var start position
	if !r.retry(0, func(ctx context.Context) error {
		last, err := r.cfg.store.Last(ctx, r.name, 1)
		if err == nil && len(last) == 1 {
			start = position{epoch: last[0].Epoch, seq: last[0].Seq}
		}
		return err
	}) {
		return false
	}
	select {
	case r.fetchc <- fetchResult{start: true, current: start, known: true}:
	case <-r.quit:
		return false
	}
	close(r.ready) // clients may join: the loop knows where it starts
	var unsub func()
	if !r.retry(0, func(ctx context.Context) (err error) {
		if lb, ok := r.cfg.broker.(*LocalBroker); ok {
			// A single node: publishers wait for a loop that is behind.
			unsub, err = lb.subscribe(ctx, r.name, &subscription{deliver: r.deliver, wait: r.deliverWait})
			return err
		}
		unsub, err = r.cfg.broker.Subscribe(ctx, r.name, r.deliver, r.lost)
		return err
	}) {
		return false
	}
	r.mu.Lock()
	stopped := isClosed(r.quit) // stop closes quit under mu
	if !stopped {
		r.unsubscribe = unsub
		close(r.heard)
	}
	r.mu.Unlock()
	if stopped {
		unsub()
		return false
	}
	// Messages published between reading the start and subscribing are in
	// the store only: have the loop look.
	r.overflow.Store(true)
	r.nudge()
	return true
}

// fetch serves a request of the loop.
func (r *Room) fetch(req fetchRequest) fetchResult {
	if req.start {
		// The loop lost its place (its clients were resynchronised): start
		// from the store's last message.
		res := fetchResult{answer: true, start: true}
		res.known = r.retry(storeRetry, func(ctx context.Context) error {
			last, err := r.cfg.store.Last(ctx, r.name, 1)
			if err == nil && len(last) == 1 {
				res.current = position{epoch: last[0].Epoch, seq: last[0].Seq}
			}
			return err
		})
		return res
	}
	var msgs []Message
	var gap error
	ok := r.retry(storeRetry, func(ctx context.Context) error {
		var err error
		msgs, err = r.cfg.store.After(ctx, r.name, req.after.epoch, req.after.seq, catchUpPage)
		if errors.Is(err, ErrGap) {
			gap = err
			return nil // no use retrying
		}
		return err
	})
	if ok && gap == nil {
		return fetchResult{answer: true, msgs: msgs}
	}
	res := fetchResult{answer: true, gap: true}
	if !ok {
		res.err = errors.New("store unavailable")
		return res
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.writeTimeout)
	defer cancel()
	if last, err := r.cfg.store.Last(ctx, r.name, 1); err == nil {
		res.known = true
		if len(last) == 1 {
			res.current = position{epoch: last[0].Epoch, seq: last[0].Seq}
		}
	}
	return res
}

// retry runs op, each try bounded by the write timeout, until it succeeds,
// the room stops, or (if limit > 0) limit has passed, waiting between tries
// from 50ms doubling up to 5s. Failures are reported. It reports whether op
// succeeded.
func (r *Room) retry(limit time.Duration, op func(context.Context) error) bool {
	backoff := 50 * time.Millisecond
	var deadline time.Time
	if limit > 0 {
		deadline = time.Now().Add(limit)
	}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.writeTimeout)
		err := op(ctx)
		cancel()
		if err == nil {
			return true
		}
		r.stats.errors.Add(1)
		r.report(nil, fmt.Errorf("wsroom: room %q: %w", r.name, err))
		if !deadline.IsZero() && time.Now().Add(backoff).After(deadline) {
			return false
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
			backoff = min(2*backoff, 5*time.Second)
		case <-r.quit:
			t.Stop()
			return false
		}
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
