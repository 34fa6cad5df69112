package wsroom

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Lifecycle events: with WithEvents, a Registry writes each connect,
// disconnect, join and leave of its connections, and each first join and
// last leave of a user (with WithPresenceByUser), to an event log: the
// history of a room of the Store's own, which every node of a cluster
// shares through its Broker. FeedEvents reads the log from a position and
// hands the events to the application (a Go function, or Webhook): at
// least once, in the log's order, each with an ID to de-duplicate by. The
// connections of a node that dies get their leave and disconnect events
// from the other nodes once their presence leases end.

// Event types.
const (
	EventConnect    = "connect"    // a connection started (after WithAdmit)
	EventDisconnect = "disconnect" // a connection ended; Reason says why
	EventJoin       = "join"       // a connection joined a room
	EventLeave      = "leave"      // a connection left a room; Reason says why
	EventUserJoin   = "userJoin"   // a user's first connection in a room, on every node (presence)
	EventUserLeave  = "userLeave"  // a user's last connection in a room left, on every node (presence)
)

// Reason of the leave and disconnect events of a connection whose node
// died: its presence lease ended.
const ReasonExpired = "expired"

// Event is a lifecycle event of a Registry's connections.
type Event struct {
	// ID is the event's position in the log, "epoch:seq": unique, and
	// the position FeedEvents and Events continue after.
	ID     string    `json:"id"`
	Type   string    `json:"type"`
	Conn   string    `json:"conn,omitempty"` // the connection's ID (Client.ID)
	User   string    `json:"user,omitempty"` // its identity as text, when it is a string or a fmt.Stringer
	Room   string    `json:"room,omitempty"`
	Reason string    `json:"reason,omitempty"`
	Node   string    `json:"node"` // the node that wrote it
	Time   time.Time `json:"time"`
}

// The rooms of the event log and of the connections' leases. No client can
// join them: the registry refuses names that start with ".wsroom.".
const (
	eventsRoom = ".wsroom.events"
	connsRoom  = ".wsroom.conns"
)

// WithEvents makes a Registry write lifecycle events to its event log (see
// Event, FeedEvents). Each event is one write to the Store, through the
// Broker, on the goroutine of the connection it is about, so that a join's
// event is stored before the client is told it joined. While the Broker
// fails, events queue on the node (100,000 at most) and are written, in
// order, once it takes them again; the failures are passed to the error
// hook (WithOnError). Close writes what is queued if it can within a
// second, and reports what it could not.
//
// With a Broker that implements UserPresence, each connection also holds a
// presence lease in the engine, renewed with the others, which tells the
// other nodes its rooms: when a node dies, a surviving node that sweeps the
// leases writes the leave (Reason ReasonExpired) and disconnect events of
// its connections, within the Broker's presence TTL and a second or so.
// That costs a presence write per connect, join, leave and disconnect.
// WithEvents serves NewRegistry only.
func WithEvents() Option {
	return func(cfg *config) {
		cfg.events = &eventLog{}
		cfg.set |= setEvents
	}
}

// eventLog writes a registry's events. It is shared by the registry's
// rooms, which copy its config.
type eventLog struct {
	node string
	cfg  *config // the registry's

	mu      sync.Mutex
	pending map[string]time.Time // rooms of expired connections to sweep, until then
	queue   []Message            // events to write again, oldest first
	writing bool                 // the retry goroutine runs
	stopped bool                 // Close: write no more
	stop    chan struct{}        // closed by close
	done    sync.WaitGroup       // the retry goroutine and the sweeper
}

// maxQueued bounds the events a node keeps to write again while the
// Broker fails; beyond it the oldest are dropped, and reported.
const maxQueued = 100_000

// init readies the log of a registry of cfg, and starts the sweeper of
// the connections' leases when the Broker is a UserPresence; close ends
// it.
func (l *eventLog) init(cfg *config) {
	l.node, l.cfg = newID(), cfg
	l.pending = make(map[string]time.Time)
	l.stop = make(chan struct{})
	if _, ok := l.presence(); ok {
		l.done.Go(func() { l.sweeper(l.stop) })
	}
}

// close stops the sweeper and the retry goroutine, after a last try of
// what the latter holds (a second at most), and reports the events it
// could not write.
func (l *eventLog) close() {
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		return
	}
	l.stopped = true
	close(l.stop)
	l.mu.Unlock()
	l.done.Wait()
	l.mu.Lock()
	lost := len(l.queue)
	l.queue = nil
	l.mu.Unlock()
	if lost > 0 {
		l.cfg.report(nil, "", fmt.Errorf("wsroom: %d events not written: the Broker failed until the registry closed", lost))
	}
}

// presence returns the Broker's UserPresence, if it is one.
func (l *eventLog) presence() (UserPresence, bool) {
	p, ok := l.cfg.broker.(UserPresence)
	return p, ok
}

// emit writes ev to the log, on the caller's goroutine. If the Broker
// fails, the event is queued, and a goroutine of the log writes it and
// those after it, in order, as soon as the Broker takes them; while the
// queue is not empty, events join it.
func (l *eventLog) emit(c *Client, ev Event) {
	if l == nil {
		return
	}
	ev.Node, ev.Time = l.node, time.Now()
	data, err := json.Marshal(ev)
	if err != nil {
		l.cfg.report(c, ev.Room, fmt.Errorf("wsroom: a %s event: %w", ev.Type, err))
		return
	}
	m := Message{Time: ev.Time, Data: data}
	l.mu.Lock()
	queued := len(l.queue) > 0 || l.writing
	l.mu.Unlock()
	if !queued {
		ctx, cancel := context.WithTimeout(context.Background(), l.cfg.writeTimeout)
		err = l.cfg.broker.Publish(ctx, eventsRoom, m)
		cancel()
		if err == nil {
			return
		}
		l.cfg.report(c, ev.Room, fmt.Errorf("wsroom: writing a %s event (queued to write again): %w", ev.Type, err))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		l.cfg.report(c, ev.Room, fmt.Errorf("wsroom: a %s event after Close: not written", ev.Type))
		return
	}
	if len(l.queue) >= maxQueued {
		l.queue = l.queue[1:]
		l.cfg.report(c, ev.Room, fmt.Errorf("wsroom: %d events wait to be written: the oldest is dropped", maxQueued))
	}
	l.queue = append(l.queue, m)
	if !l.writing {
		l.writing = true
		l.done.Add(1)
		go l.writeQueued()
	}
}

// writeQueued writes the queued events, oldest first, each until the
// Broker takes it (a backoff of 50ms doubling to 5s), until the queue is
// empty or the log is closed (then with a last try of a second).
func (l *eventLog) writeQueued() {
	defer l.done.Done()
	backoff := 50 * time.Millisecond
	for {
		l.mu.Lock()
		if len(l.queue) == 0 {
			l.writing = false
			l.mu.Unlock()
			return
		}
		m, stopped := l.queue[0], l.stopped
		l.mu.Unlock()
		timeout := l.cfg.writeTimeout
		if stopped {
			timeout = time.Second
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		err := l.cfg.broker.Publish(ctx, eventsRoom, m)
		cancel()
		if err == nil {
			l.mu.Lock()
			l.queue = l.queue[1:]
			l.mu.Unlock()
			backoff = 50 * time.Millisecond
			continue
		}
		if stopped {
			l.mu.Lock()
			l.writing = false
			l.mu.Unlock()
			return // close reports what is left
		}
		select {
		case <-l.stop:
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// connInfo is what a connection's lease tells the other nodes: its user
// and rooms.
type connInfo struct {
	User  string   `json:"u,omitempty"`
	Rooms []string `json:"r,omitempty"`
}

// lease writes or rewrites the connection's lease, with its rooms.
func (l *eventLog) lease(c *Client, rooms []string) {
	p, ok := l.presence()
	if !ok {
		return
	}
	info, _ := json.Marshal(connInfo{User: identityText(c), Rooms: rooms})
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.writeTimeout)
	defer cancel()
	if _, err := p.JoinUser(ctx, connsRoom, Member{ID: c.id, User: c.id, Info: string(info)}); err != nil {
		l.cfg.report(c, "", fmt.Errorf("wsroom: the connection's lease: %w", err))
	}
}

// connected writes a connection's connect event and lease.
func (l *eventLog) connected(c *Client) {
	if l == nil {
		return
	}
	l.emit(c, Event{Type: EventConnect, Conn: c.id, User: identityText(c)})
	l.lease(c, c.Rooms())
}

// disconnected writes a connection's disconnect event and ends its lease.
func (l *eventLog) disconnected(c *Client, reason error) {
	if l == nil {
		return
	}
	if p, ok := l.presence(); ok {
		ctx, cancel := context.WithTimeout(context.Background(), l.cfg.writeTimeout)
		if _, err := p.LeaveUser(ctx, connsRoom, c.id, c.id); err != nil {
			l.cfg.report(c, "", fmt.Errorf("wsroom: the connection's lease: %w", err))
		}
		cancel()
	}
	l.emit(c, Event{Type: EventDisconnect, Conn: c.id, User: identityText(c), Reason: disconnectReason(reason)})
}

// disconnectReason is the Reason of a leave or disconnect event of a
// connection that ended with err: the client's close code and reason
// ("1000 bye") when it closed, else what ended it.
func disconnectReason(err error) string {
	var ce websocket.CloseError
	switch {
	case err == nil:
		return "closed"
	case errors.As(err, &ce):
		return strings.TrimSpace(fmt.Sprintf("%d %s", int(ce.Code), ce.Reason))
	}
	return err.Error()
}

// joined writes a join event, and the userJoin event of a user's first
// connection, and renews the lease with the connection's rooms.
func (l *eventLog) joined(c *Client, room string, first bool, user string) {
	if l == nil {
		return
	}
	l.emit(c, Event{Type: EventJoin, Conn: c.id, User: identityText(c), Room: room})
	if first {
		l.emit(c, Event{Type: EventUserJoin, User: user, Room: room})
	}
	if c.mux != nil {
		l.lease(c, c.Rooms())
	}
}

// left is joined's counterpart.
func (l *eventLog) left(c *Client, room, reason string, last bool, user string) {
	if l == nil {
		return
	}
	l.emit(c, Event{Type: EventLeave, Conn: c.id, User: identityText(c), Room: room, Reason: reason})
	if last {
		l.emit(c, Event{Type: EventUserLeave, User: user, Room: room, Reason: reason})
	}
	c.mu.Lock()
	stopped := c.stopped
	c.mu.Unlock()
	if c.mux != nil && !stopped {
		l.lease(c, slices.DeleteFunc(c.Rooms(), func(n string) bool { return n == room }))
	}
}

// swept writes the userLeave events of users whose leases in room a sweep
// removed.
func (l *eventLog) swept(room string, gone []Member) {
	if l == nil {
		return
	}
	for _, m := range gone {
		l.emit(nil, Event{Type: EventUserLeave, User: cmp.Or(m.User, m.ID), Room: room, Reason: ReasonExpired})
	}
}

// sweepConns removes the leases of connections whose node stopped renewing
// them, and writes their leave and disconnect events; it sweeps their
// rooms too, for a while, so that their users' last leaves are written
// even where no node holds the room.
func (l *eventLog) sweepConns() {
	p, ok := l.presence()
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.writeTimeout)
	defer cancel()
	gone, err := p.Sweep(ctx, connsRoom)
	if err != nil {
		l.cfg.report(nil, "", fmt.Errorf("wsroom: sweeping connections' leases: %w", err))
	}
	now := time.Now()
	for _, m := range gone {
		var info connInfo
		json.Unmarshal([]byte(m.Info), &info)
		for _, room := range info.Rooms {
			l.emit(nil, Event{Type: EventLeave, Conn: m.ID, User: info.User, Room: room, Reason: ReasonExpired})
			l.mu.Lock()
			l.pending[room] = now.Add(time.Minute)
			l.mu.Unlock()
		}
		l.emit(nil, Event{Type: EventDisconnect, Conn: m.ID, User: info.User, Reason: ReasonExpired})
	}
	l.mu.Lock()
	var rooms []string
	for room, until := range l.pending {
		if !l.cfg.presenceByUser {
			delete(l.pending, room)
			continue
		}
		if now.After(until) {
			delete(l.pending, room)
		} else {
			rooms = append(rooms, room)
		}
	}
	l.mu.Unlock()
	for _, room := range rooms {
		gone, err := p.Sweep(ctx, room)
		if err != nil {
			continue // again at the next pass
		}
		l.swept(room, gone)
	}
}

// sweepEvery is how often a node sweeps the connections' leases: well
// within the time an engine keeps a room whose every node died
// (redisbroker forgets its keys two TTLs after the last write, at least 2s),
// so that the rooms of a dead connection are swept while they are there.
const sweepEvery = 250 * time.Millisecond

// sweeper runs sweepConns every sweepEvery until stop is closed.
func (l *eventLog) sweeper(stop <-chan struct{}) {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			l.sweepConns()
		}
	}
}

// eventOf decodes a message of the log.
func eventOf(m Message) (Event, error) {
	var ev Event
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		return Event{}, fmt.Errorf("wsroom: event %s:%d: %w", m.Epoch, m.Seq, err)
	}
	ev.ID = position{m.Epoch, m.Seq}.String()
	return ev, nil
}

// parseEventID splits an event ID, a position of the log; "" is its start.
func parseEventID(id string) (string, uint64, error) {
	p, err := parseResume(id)
	switch {
	case err != nil || p != nil && p.epoch == "":
		return "", 0, fmt.Errorf("wsroom: %q is not an event ID", id)
	case p == nil:
		return "", 0, nil
	}
	return p.epoch, p.seq, nil
}

// LastEvent returns the ID of the newest event of the log, "" if it has
// none: the position to follow the log from now on (FeedEvents after it).
func (g *Registry) LastEvent(ctx context.Context) (string, error) {
	if g.cfg.events == nil {
		return "", errors.New("wsroom: LastEvent of a registry without WithEvents")
	}
	msgs, err := g.cfg.store.Last(ctx, eventsRoom, 1)
	if err != nil || len(msgs) == 0 {
		return "", err
	}
	return position{msgs[0].Epoch, msgs[0].Seq}.String(), nil
}

// Events returns up to n events of the log after the one whose ID is
// after ("" for the start of the log), oldest first. It returns an error
// wrapping ErrGap when the log no longer holds the events after it: they
// were trimmed (the Store's history limit and age apply to the log; ""
// too, once the log's first events are gone: start from LastEvent then).
func (g *Registry) Events(ctx context.Context, after string, n int) ([]Event, error) {
	if g.cfg.events == nil {
		return nil, errors.New("wsroom: Events of a registry without WithEvents")
	}
	epoch, seq, err := parseEventID(after)
	if err != nil {
		return nil, err
	}
	msgs, err := g.cfg.store.After(ctx, eventsRoom, epoch, seq, n)
	if err != nil {
		return nil, fmt.Errorf("wsroom: events after %q: %w", after, err)
	}
	out := make([]Event, 0, len(msgs))
	for _, m := range msgs {
		ev, err := eventOf(m)
		if err != nil {
			return out, err
		}
		out = append(out, ev)
	}
	return out, nil
}

// FeedEvents hands the events of the log after the one whose ID is after
// ("" for the start of the log) to fn, in batches of up to 100, in order,
// as they are written, until ctx ends. A batch fn fails is given again,
// after a backoff of 100ms doubling to 30s, until fn takes it: each event
// reaches fn at least once (more than once if fn failed after acting on
// it, or when FeedEvents starts again from an older ID), so fn
// de-duplicates by Event.ID. fn should record the last ID it took, for the
// next FeedEvents to start after.
//
// FeedEvents runs on the caller's goroutine and returns ctx's error, or
// an error wrapping ErrGap if the log no longer holds the events after the
// last one given (the application was away longer than the log keeps).
// Any node may run it, or several: each gets every event.
func (g *Registry) FeedEvents(ctx context.Context, after string, fn func(ctx context.Context, events []Event) error) error {
	if g.cfg.events == nil {
		return errors.New("wsroom: FeedEvents of a registry without WithEvents")
	}
	if _, _, err := parseEventID(after); err != nil {
		return err
	}
	wake := make(chan struct{}, 1)
	poke := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	var unsubscribe func()
	defer func() {
		if unsubscribe != nil {
			unsubscribe()
		}
	}()
	backoff := 100 * time.Millisecond
	for {
		if unsubscribe == nil {
			// Told of new events by the Broker; read once a second
			// anyway, and at once after a (re)subscription.
			if u, err := g.cfg.broker.Subscribe(ctx, eventsRoom, func(Message) { poke() }, func(error) { poke() }); err == nil {
				unsubscribe = u
			}
		}
		evs, err := g.Events(ctx, after, 100)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, ErrGap):
			return err
		case err != nil:
			g.cfg.report(nil, "", fmt.Errorf("wsroom: reading events: %w", err))
		}
		for len(evs) > 0 {
			if err := fn(ctx, evs); err == nil {
				after = evs[len(evs)-1].ID
				backoff = 100 * time.Millisecond
				break
			} else if ctx.Err() == nil {
				g.cfg.report(nil, "", fmt.Errorf("wsroom: handing events to the application (again in %v): %w", backoff, err))
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
		}
		if len(evs) == 100 {
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		case <-time.After(time.Second):
		}
	}
}

// Webhook returns a function for FeedEvents that POSTs each batch of
// events to url as {"events":[...]}, signed with secret: the header
// Wsroom-Signature is "t=<unix seconds>,v1=<hex HMAC-SHA256 of secret
// over t, '.', and the body>", for the receiver to check. An answer other
// than 2xx, or none within 10s, fails the batch, which FeedEvents sends
// again.
func Webhook(url string, secret []byte) func(context.Context, []Event) error {
	client := &http.Client{Timeout: 10 * time.Second}
	return func(ctx context.Context, events []Event) error {
		body, err := json.Marshal(struct {
			Events []Event `json:"events"`
		}{events})
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Wsroom-Signature", SignWebhook(secret, time.Now(), body))
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("wsroom: webhook %s answered %s", url, resp.Status)
		}
		return nil
	}
}

// SignWebhook returns the Wsroom-Signature header of a webhook body sent
// at t: a receiver computes it again, compares it in constant time
// (hmac.Equal), and refuses a t far from its own clock.
func SignWebhook(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts + "."))
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}
