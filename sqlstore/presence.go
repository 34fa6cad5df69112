package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/wsroom/wsroom"
)

// Presence of the Broker: a table of connections, {prefix}presence, one row
// per client in a room with its user, info, node and the end of its lease.
// The Broker renews its rows' leases every third of the TTL, in one
// statement; a user's first join and last leave are decided in a
// transaction that holds the user's lock (an advisory lock on PostgreSQL;
// SQLite has one writer), so that of the nodes that act on one user at
// once, one is told each transition.

// DefaultPresenceTTL is how long a Broker's presence rows outlive its last
// renewal unless WithPresenceTTL says otherwise.
const DefaultPresenceTTL = 30 * time.Second

// WithPresenceTTL sets how long the presence rows of a Broker that stopped
// without removing them (its process died) stay members: at most d after
// its last renewal. At least a second.
func WithPresenceTTL(d time.Duration) BrokerOption {
	return func(b *Broker) { b.ttl = d }
}

var _ wsroom.UserPresence = (*Broker)(nil)

// presence is the Broker's presence state.
type presence struct {
	mu     sync.Mutex
	local  map[string]map[string]localMember // room -> conn -> member, renewed by this node
	swept  map[string]time.Time              // when this node last swept a room
	halt   chan struct{}                     // closed to stop renewing (Close, or a test's crash)
	halted sync.Once
	done   chan struct{} // closed when the renewer has returned
}

type localMember struct{ user, info string }

// presenceQueries are the presence statements, for the Broker's dialect.
type presenceQueries struct {
	schema                        []string
	lock                          string // args: key; empty for SQLite
	upsert                        string // args: room, conn, user, info, node, exp
	remove                        string // args: room, conn
	members, count, page, expired string
	dropExpired                   string // args: room, user, now: returns nothing
	oneExpired                    string // args: room, user, now: a conn and info of the user's expired rows
	renew, removeNode, userLive   string
}

func (b *Broker) presenceQueries() presenceQueries {
	t := b.prefix + "presence"
	q := presenceQueries{
		schema: []string{
			`CREATE TABLE IF NOT EXISTS {p} (
				room TEXT NOT NULL,
				conn TEXT NOT NULL,
				usr TEXT NOT NULL,
				info TEXT NOT NULL,
				node TEXT NOT NULL,
				exp_ms BIGINT NOT NULL,
				PRIMARY KEY (room, conn)
			)`,
			`CREATE INDEX IF NOT EXISTS {p}_usr ON {p} (room, usr)`,
			`CREATE INDEX IF NOT EXISTS {p}_node ON {p} (node)`,
		},
		upsert:  `INSERT INTO {p} (room, conn, usr, info, node, exp_ms) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (room, conn) DO UPDATE SET usr = excluded.usr, info = excluded.info, node = excluded.node, exp_ms = excluded.exp_ms`,
		remove:  `DELETE FROM {p} WHERE room = ? AND conn = ?`,
		members: `SELECT conn, usr, info FROM {p} WHERE room = ? AND exp_ms > ?`,
		count:   `SELECT COUNT(DISTINCT usr) FROM {p} WHERE room = ? AND exp_ms > ?`,
		page: `SELECT p.usr, p.conn, p.info FROM (
				SELECT usr, MIN(conn) AS c FROM {p} WHERE room = ? AND exp_ms > ? AND usr > ?
				GROUP BY usr ORDER BY usr LIMIT ?
			) f JOIN {p} p ON p.room = ? AND p.conn = f.c ORDER BY p.usr`,
		expired:     `SELECT DISTINCT usr FROM {p} WHERE room = ? AND exp_ms <= ?`,
		oneExpired:  `SELECT conn, info FROM {p} WHERE room = ? AND usr = ? AND exp_ms <= ? ORDER BY conn LIMIT 1`,
		dropExpired: `DELETE FROM {p} WHERE room = ? AND usr = ? AND exp_ms <= ?`,
		userLive:    `SELECT COUNT(*) FROM {p} WHERE room = ? AND usr = ? AND exp_ms > ?`,
		renew:       `UPDATE {p} SET exp_ms = ? WHERE node = ?`,
		removeNode:  `DELETE FROM {p} WHERE node = ?`,
	}
	if b.dialect == Postgres {
		q.lock = `SELECT pg_advisory_xact_lock(hashtext(?))`
	}
	for _, p := range []*string{&q.lock, &q.upsert, &q.remove, &q.members, &q.count, &q.page, &q.expired,
		&q.oneExpired, &q.dropExpired, &q.userLive, &q.renew, &q.removeNode} {
		*p = strings.ReplaceAll(*p, "{p}", t)
		if b.dialect == Postgres {
			*p = numberParams(*p)
		}
	}
	for i := range q.schema {
		q.schema[i] = strings.ReplaceAll(q.schema[i], "{p}", t)
	}
	return q
}

// startPresence creates the presence table and starts the renewer.
func (b *Broker) startPresence() error {
	if b.ttl == 0 {
		b.ttl = DefaultPresenceTTL
	}
	if b.ttl < time.Second {
		return fmt.Errorf("sqlstore: presence TTL %v: at least a second", b.ttl)
	}
	b.pq = b.presenceQueries()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := b.write(ctx, func(tx *sql.Tx) error {
		if b.dialect == Postgres {
			if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(hashtext($1))", "wsroom/sqlstore/presence:"+b.prefix); err != nil {
				return err
			}
		}
		for _, stmt := range b.pq.schema {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sqlstore: create the presence table: %w", err)
	}
	b.pres = presence{local: make(map[string]map[string]localMember), swept: make(map[string]time.Time),
		halt: make(chan struct{}), done: make(chan struct{})}
	go b.renewer()
	return nil
}

// renewer renews this node's leases every third of the TTL until halted.
func (b *Broker) renewer() {
	defer close(b.pres.done)
	t := time.NewTicker(b.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-b.pres.halt:
			return
		case <-t.C:
			if err := b.renew(); err != nil {
				b.report(fmt.Errorf("sqlstore: renewing presence leases: %w", err))
			}
		}
	}
}

// renew moves this node's leases one TTL ahead, in one statement, and
// writes back the rows of its members that are gone (a sweep removed them
// while this node could not renew). It holds the presence lock throughout,
// so that a leave under way is written after it, not undone by it.
func (b *Broker) renew() error {
	p := &b.pres
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, ms := range p.local {
		n += len(ms)
	}
	if n == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.ttl/3)
	defer cancel()
	exp := time.Now().Add(b.ttl).UnixMilli()
	res, err := b.db.ExecContext(ctx, b.pq.renew, exp, b.node)
	if err != nil {
		return err
	}
	if got, err := res.RowsAffected(); err != nil || got >= int64(n) {
		return err
	}
	return b.write(ctx, func(tx *sql.Tx) error {
		for room, ms := range p.local {
			for conn, m := range ms {
				if _, err := tx.ExecContext(ctx, b.pq.upsert, room, conn, m.user, m.info, b.node, exp); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// stopRenewing stops the renewal of this node's leases and forgets its
// members, without removing their rows: what a crash leaves behind.
// Tests use it.
func (b *Broker) stopRenewing() {
	b.pres.halted.Do(func() { close(b.pres.halt) })
	<-b.pres.done
	b.pres.mu.Lock()
	clear(b.pres.local)
	b.pres.mu.Unlock()
}

// closePresence stops renewing and removes this node's rows.
func (b *Broker) closePresence() {
	b.stopRenewing()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := b.db.ExecContext(ctx, b.pq.removeNode, b.node); err != nil {
		b.report(fmt.Errorf("sqlstore: removing presence rows on close (their leases end after %v): %w", b.ttl, err))
	}
}

// lockUser takes the user's lock in tx, on PostgreSQL.
func (b *Broker) lockUser(ctx context.Context, tx *sql.Tx, room, user string) error {
	if b.pq.lock == "" {
		return nil
	}
	_, err := tx.ExecContext(ctx, b.pq.lock, fmt.Sprintf("%s%q%q", b.prefix, room, user))
	return err
}

// Join implements wsroom.Presence: it is JoinUser with m's ID as its user
// when m.User is empty.
func (b *Broker) Join(ctx context.Context, room string, m wsroom.Member) error {
	_, err := b.JoinUser(ctx, room, m)
	return err
}

// Leave implements wsroom.Presence: it is LeaveUser, with the user the
// client joined with.
func (b *Broker) Leave(ctx context.Context, room, id string) error {
	_, err := b.LeaveUser(ctx, room, id, "")
	return err
}

// JoinUser implements wsroom.UserPresence: in one transaction holding the
// user's lock, it counts the user's other live rows and writes the
// client's. The Broker renews the lease until LeaveUser or Close.
func (b *Broker) JoinUser(ctx context.Context, room string, m wsroom.Member) (bool, error) {
	if b.isClosed() {
		return false, wsroom.ErrClosed
	}
	user := cmp.Or(m.User, m.ID)
	p := &b.pres
	p.mu.Lock()
	ms := p.local[room]
	if ms == nil {
		ms = make(map[string]localMember)
		p.local[room] = ms
	}
	ms[m.ID] = localMember{user, m.Info}
	p.mu.Unlock()
	var first bool
	err := b.write(ctx, func(tx *sql.Tx) error {
		if err := b.lockUser(ctx, tx, room, user); err != nil {
			return err
		}
		now := time.Now()
		var had int // live rows of the user, this client's included

		if err := tx.QueryRowContext(ctx, b.pq.userLive, room, user, now.UnixMilli()).Scan(&had); err != nil {
			return err
		}
		first = had == 0
		_, err := tx.ExecContext(ctx, b.pq.upsert, room, m.ID, user, m.Info, b.node, now.Add(b.ttl).UnixMilli())
		return err
	})
	if err != nil {
		return false, fmt.Errorf("sqlstore: join %q to room %q: %w", m.ID, room, err)
	}
	return first, nil
}

// LeaveUser implements wsroom.UserPresence: in one transaction holding the
// user's lock, it removes the client's row and counts the user's live rows
// left.
func (b *Broker) LeaveUser(ctx context.Context, room, id, user string) (bool, error) {
	if b.isClosed() {
		return false, wsroom.ErrClosed
	}
	p := &b.pres
	p.mu.Lock()
	if l, ok := p.local[room][id]; ok && user == "" {
		user = l.user
	}
	delete(p.local[room], id)
	if len(p.local[room]) == 0 {
		delete(p.local, room)
	}
	p.mu.Unlock()
	user = cmp.Or(user, id)
	var last bool
	err := b.write(ctx, func(tx *sql.Tx) error {
		if err := b.lockUser(ctx, tx, room, user); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, b.pq.remove, room, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			last = false // gone already: a sweep told of it
			return nil
		}
		last, err = b.noneLive(ctx, tx, room, user)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("sqlstore: leave %q from room %q: %w", id, room, err)
	}
	return last, nil
}

// noneLive reports whether the user has no live row left in room.
func (b *Broker) noneLive(ctx context.Context, tx *sql.Tx, room, user string) (bool, error) {
	var live int
	err := tx.QueryRowContext(ctx, b.pq.userLive, room, user, time.Now().UnixMilli()).Scan(&live)
	return live == 0, err
}

// Members implements wsroom.Presence: the room's clients whose lease has
// not ended, on every node.
func (b *Broker) Members(ctx context.Context, room string) ([]wsroom.Member, error) {
	rows, err := b.db.QueryContext(ctx, b.pq.members, room, time.Now().UnixMilli())
	if err != nil {
		return nil, fmt.Errorf("sqlstore: members of room %q: %w", room, err)
	}
	defer rows.Close()
	var out []wsroom.Member
	for rows.Next() {
		var m wsroom.Member
		if err := rows.Scan(&m.ID, &m.User, &m.Info); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// Count implements wsroom.UserPresence: the users with a live lease in the
// room, counted by the database over the room's rows (an index range).
func (b *Broker) Count(ctx context.Context, room string) (int, error) {
	var n int
	if err := b.db.QueryRowContext(ctx, b.pq.count, room, time.Now().UnixMilli()).Scan(&n); err != nil {
		return 0, fmt.Errorf("sqlstore: counting members of room %q: %w", room, err)
	}
	return n, nil
}

// MembersPage implements wsroom.UserPresence: one query per page, in the
// order of the users, each with its least connection ID.
func (b *Broker) MembersPage(ctx context.Context, room, cursor string, n int) ([]wsroom.Member, string, error) {
	n = max(n, 1)
	rows, err := b.db.QueryContext(ctx, b.pq.page, room, time.Now().UnixMilli(), cursor, n+1, room)
	if err != nil {
		return nil, "", fmt.Errorf("sqlstore: members of room %q: %w", room, err)
	}
	defer rows.Close()
	var page []wsroom.Member
	for rows.Next() {
		var m wsroom.Member
		if err := rows.Scan(&m.User, &m.ID, &m.Info); err != nil {
			return nil, "", err
		}
		page = append(page, m)
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	next := ""
	if len(page) > n {
		page = page[:n]
		next = page[n-1].User
	}
	return page, next, nil
}

// Sweep implements wsroom.UserPresence: at most once every third of the
// TTL per room (it returns nothing otherwise), it removes the rows whose
// lease ended, user by user under the user's lock, and returns the users
// left with none.
func (b *Broker) Sweep(ctx context.Context, room string) ([]wsroom.Member, error) {
	if b.isClosed() {
		return nil, wsroom.ErrClosed
	}
	p := &b.pres
	p.mu.Lock()
	if time.Since(p.swept[room]) < b.ttl/3 {
		p.mu.Unlock()
		return nil, nil
	}
	p.swept[room] = time.Now()
	for r, at := range p.swept {
		if time.Since(at) > 2*b.ttl {
			delete(p.swept, r)
		}
	}
	p.mu.Unlock()
	now := time.Now().UnixMilli()
	rows, err := b.db.QueryContext(ctx, b.pq.expired, room, now)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: sweeping room %q: %w", room, err)
	}
	var users []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			rows.Close()
			return nil, err
		}
		users = append(users, u)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var gone []wsroom.Member
	for _, user := range users {
		var m wsroom.Member
		var last bool
		err := b.write(ctx, func(tx *sql.Tx) error {
			last = false
			if err := b.lockUser(ctx, tx, room, user); err != nil {
				return err
			}
			m = wsroom.Member{User: user}
			err := tx.QueryRowContext(ctx, b.pq.oneExpired, room, user, now).Scan(&m.ID, &m.Info)
			if err == sql.ErrNoRows {
				return nil // another node swept it
			}
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, b.pq.dropExpired, room, user, now); err != nil {
				return err
			}
			last, err = b.noneLive(ctx, tx, room, user)
			return err
		})
		if err != nil {
			return gone, fmt.Errorf("sqlstore: sweeping room %q: %w", room, err)
		}
		if last {
			gone = append(gone, m)
		}
	}
	return gone, nil
}
