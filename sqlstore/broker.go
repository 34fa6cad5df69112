package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/wsroom/wsroom"
)

// Broker is a wsroom.Broker on a Store's database, so that PostgreSQL
// alone can carry rooms across nodes, and a message written in the
// application's own transaction (PublishTx) reaches the rooms when, and
// only if, that transaction commits.
//
// Every message is numbered and stored by the Store (one statement), and
// each subscription reads the room's new messages from the table, in
// sequence order, when it learns there are some: at once for a publish of
// this Broker, on PostgreSQL's NOTIFY for a publish of any node or
// transaction (the notification is sent by the same statement, and
// PostgreSQL delivers it at commit), and every poll interval in any case
// (WithPollInterval), which covers notifications missed while the
// listening connection was down. A subscription therefore never misses a
// stored message: it reads every message after the last one it delivered.
// Ephemeral messages go out by NOTIFY alone (8,000 bytes at most; on
// SQLite they reach this Broker's subscribers only).
//
// Listening needs the pgx driver (github.com/jackc/pgx/v5/stdlib, which the
// program imports as it would for a Store); with another PostgreSQL driver,
// or on SQLite, the Broker polls.
//
// It keeps presence too (a wsroom.UserPresence): a table of the
// connections in each room with leases it renews, so that members, counts
// and a user's first join and last leave hold across nodes, and the
// members of a node that died leave once their leases end.
//
// A Broker is safe for concurrent use. It is also the Store it was made
// on (Append, After, Last), so a Room given it with wsroom.WithBroker
// uses it as its Store. Close ends its goroutines; it does not close the
// Store or the database.
type Broker struct {
	*Store
	node    string
	channel string
	poll    time.Duration
	listens bool // PostgreSQL with pgx: LISTEN on a connection of its own

	keys      string // the table of publish keys (PublishOnce)
	ttl       time.Duration
	pq        presenceQueries
	pres      presence
	published atomic.Uint64

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the listener, the poller, the subscriptions' readers

	mu     sync.Mutex
	rooms  map[string]*roomReader
	closed bool
}

var (
	_ wsroom.Broker       = (*Broker)(nil)
	_ wsroom.Presence     = (*Broker)(nil)
	_ wsroom.Sequencer    = (*Broker)(nil)
	_ wsroom.Deduplicator = (*Broker)(nil)
)

// BrokerOption configures a Broker.
type BrokerOption func(*Broker)

// WithPollInterval sets how often each subscription reads its room's new
// messages when nothing told it of one: by default every second when the
// Broker listens for notifications, every 100ms when it cannot.
func WithPollInterval(d time.Duration) BrokerOption {
	return func(b *Broker) { b.poll = d }
}

// maxNotify bounds the payload of a notification: PostgreSQL's limit is
// 8,000 bytes.
const maxNotify = 7900

// readBatch is how many messages a subscription reads at once.
const readBatch = 500

// NewBroker returns a Broker on s. It starts the Broker's listener (on
// PostgreSQL with the pgx driver) and poller, which Close ends.
func NewBroker(s *Store, opts ...BrokerOption) (*Broker, error) {
	b := &Broker{Store: s, node: newID(), channel: s.prefix + "notify", keys: s.prefix + "keys", rooms: make(map[string]*roomReader)}
	for _, o := range opts {
		o(b)
	}
	if b.poll < 0 {
		return nil, fmt.Errorf("sqlstore: poll interval %v: it must be positive", b.poll)
	}
	if err := b.createKeys(); err != nil {
		return nil, fmt.Errorf("sqlstore: create the keys table: %w", err)
	}
	if err := b.startPresence(); err != nil {
		return nil, err
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	if s.dialect == Postgres {
		ready := make(chan error, 1)
		b.wg.Go(func() { b.listen(ready) })
		var err error
		select {
		case err = <-ready:
		case <-time.After(10 * time.Second):
			err = errors.New("no answer in 10s")
		}
		switch {
		case err == nil:
			b.listens = true
		case errors.Is(err, errNoListen):
		default:
			b.Close()
			return nil, fmt.Errorf("sqlstore: listening for notifications: %w", err)
		}
	}
	if b.poll == 0 {
		b.poll = 100 * time.Millisecond
		if b.listens {
			b.poll = time.Second
		}
	}
	b.wg.Go(b.poller)
	return b, nil
}

// Close stops the Broker's listener, poller and subscriptions, and waits
// for their goroutines. Publishes fail with wsroom.ErrClosed afterwards.
// Close does not close the Store.
func (b *Broker) Close() error {
	b.mu.Lock()
	was := b.closed
	b.closed = true
	b.mu.Unlock()
	if !was {
		b.closePresence()
	}
	b.cancel()
	b.wg.Wait()
	return nil
}

// notice is the payload of a notification: the node that sent it and the
// room; an ephemeral message carries itself.
type notice struct {
	Node      string `json:"n"`
	Room      string `json:"r"`
	Epoch     string `json:"p,omitempty"` // a stored message's position
	Seq       uint64 `json:"s,omitempty"`
	Ephemeral bool   `json:"e,omitempty"`
	From      string `json:"f,omitempty"`
	Except    string `json:"x,omitempty"`
	Time      int64  `json:"t,omitempty"`
	Data      []byte `json:"d,omitempty"`
}

// Publish implements wsroom.Broker.
func (b *Broker) Publish(ctx context.Context, room string, m wsroom.Message) error {
	_, err := b.PublishSeq(ctx, room, m)
	return err
}

// PublishSeq implements wsroom.Sequencer: a stored message is appended and
// announced in one statement; an ephemeral one is sent by NOTIFY to the
// other nodes and handed to this Broker's subscribers.
func (b *Broker) PublishSeq(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	if b.isClosed() {
		return wsroom.Message{}, wsroom.ErrClosed
	}
	if m.Ephemeral {
		return m, b.publishEphemeral(ctx, room, m)
	}
	var notify []any
	if b.dialect == Postgres {
		notify = []any{b.channel, b.noticeOf(room)}
	}
	out, err := b.append(ctx, nil, room, m, notify)
	if err != nil {
		return out, err
	}
	// This node's subscribers need not wait for the notice.
	b.push(room, event{upTo: &position{out.Epoch, out.Seq}})
	return out, nil
}

// PublishTx writes m to the room's history in the caller's transaction tx,
// which must be on the Store's database: the message is numbered and
// stored with the application's own rows, and reaches the room's
// subscribers on every node once tx commits (never if it rolls back), in
// commit order per room. A process that dies after the commit loses
// nothing: the message is in the table, and every subscription reads it.
//
// The returned message has its number, which holds if tx commits. The
// room's counter row stays locked until then, so that numbers follow
// commits: other publishes to the room wait for tx. Keep such transactions
// short. m must not be ephemeral. On PostgreSQL the notification goes out
// with the commit; on SQLite, subscribers find the message at their next
// poll.
func (b *Broker) PublishTx(ctx context.Context, tx *sql.Tx, room string, m wsroom.Message) (wsroom.Message, error) {
	if m.Ephemeral {
		return wsroom.Message{}, errors.New("sqlstore: PublishTx of an ephemeral message: it has no history to be written to")
	}
	if b.isClosed() {
		return wsroom.Message{}, wsroom.ErrClosed
	}
	var notify []any
	if b.dialect == Postgres {
		notify = []any{b.channel, b.noticeOf(room)}
	}
	return b.append(ctx, tx, room, m, notify)
}

// noticeOf returns the start of the notice of a stored message to room:
// the statement that stores it appends the message's epoch and number.
// PublishOnce implements wsroom.Deduplicator: the publish's key is kept
// for wsroom.DedupWindow in a table of the Broker's ({prefix}keys),
// written in the transaction that stores the message, so that a retry on
// any node, even one made at the same moment, finds it and gets the first
// publish's position.
func (b *Broker) PublishOnce(ctx context.Context, room, key string, m wsroom.Message) (wsroom.Message, bool, error) {
	if m.Ephemeral {
		return wsroom.Message{}, false, fmt.Errorf("sqlstore: publish to room %q: PublishOnce of an ephemeral message", room)
	}
	if b.isClosed() {
		return wsroom.Message{}, false, wsroom.ErrClosed
	}
	var notify []any
	if b.dialect == Postgres {
		notify = []any{b.channel, b.noticeOf(room)}
	}
	q := b.keyQueries()
	var (
		out wsroom.Message
		dup bool
	)
	err := b.write(ctx, func(tx *sql.Tx) error {
		now := time.Now().UnixMilli()
		exp := now + wsroom.DedupWindow.Milliseconds()
		res, err := tx.ExecContext(ctx, q.claim, room, key, exp)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			// The key is there (its publish committed, as the claim
			// waited for it): a duplicate unless it has expired.
			var epoch string
			var seq, until int64
			if err := tx.QueryRowContext(ctx, q.get, room, key).Scan(&epoch, &seq, &until); err != nil {
				return err
			}
			if until > now {
				out, dup = wsroom.Message{Epoch: epoch, Seq: uint64(seq), Time: m.Time, From: m.From, Data: m.Data}, true
				return nil
			}
			if _, err := tx.ExecContext(ctx, q.renew, exp, room, key); err != nil {
				return err
			}
		}
		if out, err = b.append(ctx, tx, room, m, notify); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, q.set, out.Epoch, int64(out.Seq), room, key)
		return err
	})
	if err != nil {
		return wsroom.Message{}, false, fmt.Errorf("sqlstore: publish to room %q once: %w", room, err)
	}
	if !dup {
		b.push(room, event{upTo: &position{out.Epoch, out.Seq}})
		if b.published.Add(1)%64 == 0 {
			b.forgetKeys(ctx)
		}
	}
	return out, dup, nil
}

// keyQueries are the statements of PublishOnce.
type keyQueries struct{ claim, get, renew, set, forget string }

func (b *Broker) keyQueries() keyQueries {
	q := keyQueries{
		claim:  `INSERT INTO {k} (room, key, epoch, seq, expires_ms) VALUES (?, ?, '', 0, ?) ON CONFLICT (room, key) DO NOTHING`,
		get:    `SELECT epoch, seq, expires_ms FROM {k} WHERE room = ? AND key = ?`,
		renew:  `UPDATE {k} SET expires_ms = ? WHERE room = ? AND key = ?`,
		set:    `UPDATE {k} SET epoch = ?, seq = ? WHERE room = ? AND key = ?`,
		forget: `DELETE FROM {k} WHERE expires_ms < ?`,
	}
	if b.dialect == Postgres {
		q.get += " FOR UPDATE"
	}
	for _, p := range []*string{&q.claim, &q.get, &q.renew, &q.set, &q.forget} {
		*p = strings.ReplaceAll(*p, "{k}", b.keys)
		if b.dialect == Postgres {
			*p = numberParams(*p)
		}
	}
	return q
}

// createKeys creates the keys table if it does not exist.
func (b *Broker) createKeys() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stmt := `CREATE TABLE IF NOT EXISTS ` + b.keys + ` (
		room TEXT NOT NULL,
		key TEXT NOT NULL,
		epoch TEXT NOT NULL,
		seq BIGINT NOT NULL,
		expires_ms BIGINT NOT NULL,
		PRIMARY KEY (room, key)
	)`
	return b.write(ctx, func(tx *sql.Tx) error {
		if b.dialect == Postgres {
			// As createSchema: Brokers starting at once take turns.
			if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(hashtext($1))", "wsroom/sqlstore/keys:"+b.keys); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, stmt)
		return err
	})
}

// forgetKeys deletes the keys whose window has passed.
func (b *Broker) forgetKeys(ctx context.Context) {
	err := b.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, b.keyQueries().forget, time.Now().UnixMilli())
		return err
	})
	if err != nil {
		b.report(fmt.Errorf("sqlstore: deleting expired publish keys: %w", err))
	}
}

func (b *Broker) noticeOf(room string) string {
	p, _ := json.Marshal(notice{Node: b.node, Room: room})
	return string(p[:len(p)-1]) + `,"p":"`
}

func (b *Broker) publishEphemeral(ctx context.Context, room string, m wsroom.Message) error {
	if m.Time.IsZero() {
		m.Time = time.Now()
	}
	if b.dialect == Postgres {
		p, _ := json.Marshal(notice{Node: b.node, Room: room, Ephemeral: true, From: m.From, Except: m.Except, Time: m.Time.UnixMilli(), Data: m.Data})
		if len(p) > maxNotify {
			return fmt.Errorf("sqlstore: an ephemeral message of %d bytes: a notification holds %d at most", len(m.Data), maxNotify)
		}
		if _, err := b.db.ExecContext(ctx, "SELECT pg_notify($1, $2)", b.channel, string(p)); err != nil {
			return fmt.Errorf("sqlstore: publish to room %q: %w", room, err)
		}
	}
	m.Time = time.UnixMilli(m.Time.UnixMilli())
	b.push(room, event{msg: &m})
	return nil
}

// Subscribe implements wsroom.Broker. The subscription gets every message
// stored after the room's last one as of Subscribe (or, when this Broker
// reads the room for other subscriptions already, after the last one it
// read): once each, in order. If the history moves on past what the
// Broker read (trimmed, or a new epoch), it calls lost with wsroom.ErrGap
// and goes on from the room's last message.
func (b *Broker) Subscribe(ctx context.Context, room string, deliver func(wsroom.Message), lost func(error)) (func(), error) {
	if b.isClosed() {
		return nil, wsroom.ErrClosed
	}
	last, err := b.Last(ctx, room, 1)
	if err != nil {
		return nil, err
	}
	s := &subscription{deliver: deliver, lost: lost}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, wsroom.ErrClosed
	}
	r := b.rooms[room]
	if r == nil {
		r = &roomReader{b: b, name: room, subs: make(map[*subscription]struct{})}
		if len(last) == 1 {
			r.at = position{last[0].Epoch, last[0].Seq}
		}
		r.polled = r.at
		b.rooms[room] = r
	}
	r.subs[s] = struct{}{}
	b.mu.Unlock()
	// A message stored between Last and now whose notice came before the
	// reader was made is read at the next poll, or with the next message.
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		delete(r.subs, s)
		if len(r.subs) == 0 && b.rooms[room] == r {
			delete(b.rooms, room)
			r.gone = true
		}
	}, nil
}

func (b *Broker) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// wakeAll has every room read its new messages.
func (b *Broker) wakeAll() {
	b.mu.Lock()
	rooms := make([]string, 0, len(b.rooms))
	for name := range b.rooms {
		rooms = append(rooms, name)
	}
	b.mu.Unlock()
	for _, name := range rooms {
		b.push(name, event{})
	}
}

func (b *Broker) poller() {
	t := time.NewTicker(b.poll)
	defer t.Stop()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-t.C:
			b.pollRooms()
		}
	}
}

// pollBatch is how many rooms one query of pollRooms looks at.
const pollBatch = 200

// pollRooms wakes the readers of the rooms whose last message is past what
// they read, looking at the rooms table a batch of rooms per query, so
// that a poll of idle rooms costs a query per 200 rooms, not one per room.
func (b *Broker) pollRooms() {
	b.mu.Lock()
	at := make(map[string]position, len(b.rooms))
	for name, r := range b.rooms {
		at[name] = r.polled
	}
	b.mu.Unlock()
	names := make([]string, 0, len(at))
	for name := range at {
		names = append(names, name)
	}
	for len(names) > 0 && b.ctx.Err() == nil {
		batch := names[:min(pollBatch, len(names))]
		names = names[len(batch):]
		last, err := b.lastOf(batch)
		if err != nil {
			if b.ctx.Err() == nil {
				b.report(fmt.Errorf("sqlstore: polling rooms: %w", err))
			}
			for _, name := range batch {
				b.push(name, event{}) // each reader tries for itself
			}
			continue
		}
		for _, name := range batch {
			if p := last[name]; p != at[name] {
				b.push(name, event{})
			}
		}
	}
}

// lastOf returns the epoch and last sequence number of each of rooms that
// has a row.
func (b *Broker) lastOf(rooms []string) (map[string]position, error) {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	query := "SELECT room, epoch, last_seq FROM " + b.prefix + "rooms WHERE room IN (?" + strings.Repeat(", ?", len(rooms)-1) + ")"
	if b.dialect == Postgres {
		query = numberParams(query)
	}
	args := make([]any, len(rooms))
	for i, r := range rooms {
		args[i] = r
	}
	rows, err := b.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[string]position, len(rooms))
	for rows.Next() {
		var (
			room, epoch string
			seq         int64
		)
		if err := rows.Scan(&room, &epoch, &seq); err != nil {
			return nil, err
		}
		out[room] = position{epoch, uint64(seq)}
	}
	return out, rows.Err()
}

// listen holds a connection of its own that LISTENs on the Broker's
// channel, and hands each notification to the reader of its room. It
// reports on ready whether the first LISTEN worked; after a broken
// connection it listens again, and wakes every room, which reads what the
// notifications it missed announced.
func (b *Broker) listen(ready chan<- error) {
	first := true
	for wait := 100 * time.Millisecond; b.ctx.Err() == nil; {
		err := b.listenOnce(func() {
			if first {
				first = false
				ready <- nil
			} else {
				b.wakeAll()
			}
			wait = 100 * time.Millisecond
		})
		if first || errors.Is(err, errNoListen) {
			ready <- err
			return
		}
		if b.ctx.Err() != nil {
			return
		}
		b.report(fmt.Errorf("sqlstore: listening for notifications (polling meanwhile): %w", err))
		select {
		case <-b.ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// errNoListen is listenOnce's error for a driver it cannot listen with.
var errNoListen = errors.New("sqlstore: the driver is not pgx's: polling")

// listenOnce LISTENs on a connection until it breaks or the Broker
// closes; listening is called once the LISTEN took.
func (b *Broker) listenOnce(listening func()) error {
	conn, err := b.db.Conn(b.ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		c, ok := dc.(interface{ Conn() *pgx.Conn })
		if !ok {
			return errNoListen
		}
		pc := c.Conn()
		if _, err := pc.Exec(b.ctx, `LISTEN "`+b.channel+`"`); err != nil {
			return err
		}
		listening()
		for {
			n, err := pc.WaitForNotification(b.ctx)
			if err != nil {
				// The connection may be in any state: have database/sql
				// drop it rather than reuse it.
				pc.Close(context.Background())
				return err
			}
			var no notice
			if json.Unmarshal([]byte(n.Payload), &no) != nil {
				continue
			}
			switch {
			case !no.Ephemeral:
				b.push(no.Room, event{upTo: &position{no.Epoch, no.Seq}})
			case no.Node != b.node: // this Broker handed its own already
				m := wsroom.Message{From: no.From, Except: no.Except, Ephemeral: true, Time: time.UnixMilli(no.Time), Data: no.Data}
				b.push(no.Room, event{msg: &m})
			}
		}
	})
}

// position is a place in a room's history.
type position struct {
	epoch string
	seq   uint64
}

// subscription is one Subscribe's functions.
type subscription struct {
	deliver func(wsroom.Message)
	lost    func(error)
}

// roomReader reads one room for this Broker's subscriptions, from the
// position of the last message it delivered, and delivers each message to
// all of them, in order. Its events (reads and ephemeral messages) are
// handled in the order they came by one goroutine at a time, started when
// there are some and ended when there are none. Its fields are guarded by
// the Broker's mutex, but for at, which only that goroutine uses once the
// reader is made.
type roomReader struct {
	b      *Broker
	name   string
	subs   map[*subscription]struct{}
	events []event
	run    bool
	gone   bool     // its last subscription ended
	at     position // where it has read to
	polled position // at, for the poller, as of the reader's last read
}

// event is a read of the room's new messages (msg nil), up to upTo when
// it is known (the messages after it are the reads of their own notices),
// or an ephemeral message to deliver.
type event struct {
	msg  *wsroom.Message
	upTo *position
}

// push queues ev for the reader of room, if the room has subscribers, and
// starts its goroutine if it is idle. A read queued right behind a read
// joins it.
func (b *Broker) push(room string, ev event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.rooms[room]
	if r == nil || b.closed {
		return
	}
	if n := len(r.events); ev.msg == nil && n > 0 && r.events[n-1].msg == nil {
		// Reads in a row are one read, up to the furthest.
		last := &r.events[n-1]
		switch {
		case last.upTo == nil:
		case ev.upTo == nil || ev.upTo.epoch != last.upTo.epoch:
			last.upTo = nil
		case ev.upTo.seq > last.upTo.seq:
			last.upTo = ev.upTo
		}
		return
	}
	r.events = append(r.events, ev)
	if !r.run {
		r.run = true
		b.wg.Go(r.loop)
	}
}

// loop handles the reader's events until there are none.
func (r *roomReader) loop() {
	b := r.b
	for {
		b.mu.Lock()
		if len(r.events) == 0 || r.gone || b.ctx.Err() != nil {
			r.run = false
			b.mu.Unlock()
			return
		}
		ev := r.events[0]
		r.events = r.events[1:]
		b.mu.Unlock()
		if ev.msg != nil {
			r.deliver(*ev.msg)
			continue
		}
		r.read(ev.upTo)
		b.mu.Lock()
		r.polled = r.at
		b.mu.Unlock()
	}
}

// subscribers returns the room's subscriptions now.
func (r *roomReader) subscribers() []*subscription {
	r.b.mu.Lock()
	defer r.b.mu.Unlock()
	subs := make([]*subscription, 0, len(r.subs))
	for s := range r.subs {
		subs = append(subs, s)
	}
	return subs
}

// deliver hands m to every subscription of the room.
func (r *roomReader) deliver(m wsroom.Message) {
	for _, s := range r.subscribers() {
		s.deliver(m)
	}
}

// read delivers the room's messages after the reader's position, up to
// upTo if it is not nil. A failed read is left to the next wake-up (a
// notice or the poller): the messages stay in the table.
func (r *roomReader) read(upTo *position) {
	b := r.b
	for b.ctx.Err() == nil {
		if upTo != nil && upTo.epoch == r.at.epoch && upTo.seq <= r.at.seq {
			return // read already
		}
		ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
		msgs, err := b.After(ctx, r.name, r.at.epoch, r.at.seq, readBatch)
		cancel()
		if errors.Is(err, wsroom.ErrGap) {
			r.skip(err)
			return
		}
		if err != nil {
			if b.ctx.Err() == nil {
				b.report(fmt.Errorf("sqlstore: reading room %q for its subscribers (again at the next poll): %w", r.name, err))
			}
			return
		}
		for _, m := range msgs {
			if upTo != nil && m.Epoch == upTo.epoch && m.Seq > upTo.seq {
				return // the read of its own notice delivers it, in its turn
			}
			r.deliver(m)
			r.at = position{m.Epoch, m.Seq}
		}
		if len(msgs) < readBatch {
			return
		}
	}
}

// skip moves the reader to the room's last message after the history
// moved on past its position, and tells the subscribers.
func (r *roomReader) skip(cause error) {
	ctx, cancel := context.WithTimeout(r.b.ctx, 10*time.Second)
	last, err := r.b.Last(ctx, r.name, 1)
	cancel()
	if err != nil {
		return // the next read tries again
	}
	r.at = position{}
	if len(last) == 1 {
		r.at = position{last[0].Epoch, last[0].Seq}
	}
	for _, s := range r.subscribers() {
		if s.lost != nil {
			s.lost(fmt.Errorf("sqlstore: room %q: %w", r.name, cause))
		}
	}
}
