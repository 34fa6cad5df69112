package sqlstore

import (
	"context"
	crand "crypto/rand"
	"database/sql"
	"encoding/base32"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsroom/wsroom"
)

// Dialect is the SQL dialect a Store speaks.
type Dialect int

const (
	// SQLite is SQLite 3.35 or later, through any database/sql driver, such
	// as modernc.org/sqlite.
	SQLite Dialect = iota + 1

	// Postgres is PostgreSQL 12 or later, through any database/sql driver,
	// such as the stdlib package of github.com/jackc/pgx/v5.
	Postgres
)

// String returns the dialect's name.
func (d Dialect) String() string {
	switch d {
	case SQLite:
		return "SQLite"
	case Postgres:
		return "PostgreSQL"
	}
	return fmt.Sprintf("Dialect(%d)", int(d))
}

// DefaultTablePrefix is the prefix of the table names a Store uses unless
// WithTablePrefix sets another.
const DefaultTablePrefix = "wsroom_"

// trimEvery is how often, in messages per room, Append deletes the room's
// rows that retention has dropped.
const trimEvery = 16

// minSweepInterval bounds how often, by default, a Store sweeps the rooms
// table.
const minSweepInterval = time.Minute

// sweepBatch is how many rooms a sweep looks at in one query.
const sweepBatch = 100

// sweepRows bounds how many messages a sweep deletes in one transaction,
// unless one room holds more.
const sweepRows = 1000

type config struct {
	dialect    Dialect
	prefix     string
	limit      int
	maxAge     time.Duration
	sweepEvery time.Duration
	onError    func(error)
}

func defaultConfig() config {
	return config{prefix: DefaultTablePrefix, limit: wsroom.DefaultHistoryLimit}
}

// Option configures a Store.
type Option func(*config)

// WithDialect tells New which SQL dialect the database speaks. By default New
// detects it from the package of db's driver: a package path containing
// "sqlite" selects SQLite; one containing "pgx", "lib/pq" or "postgres"
// selects Postgres. If the option is passed more than once, the last value
// wins.
func WithDialect(d Dialect) Option {
	return func(c *config) { c.dialect = d }
}

// WithTablePrefix sets the prefix of the Store's table names. It must be a
// SQL identifier of letters, digits and underscores, not starting with a
// digit, of at most 40 characters. Stores with different prefixes share
// nothing. The default is DefaultTablePrefix; the last value passed wins.
func WithTablePrefix(prefix string) Option {
	return func(c *config) { c.prefix = prefix }
}

// WithHistoryLimit sets how many messages per room the Store keeps. n < 1
// selects the default, wsroom.DefaultHistoryLimit. The last value passed
// wins.
func WithHistoryLimit(n int) Option {
	return func(c *config) {
		if n < 1 {
			n = wsroom.DefaultHistoryLimit
		}
		c.limit = n
	}
}

// WithMaxAge sets how long the Store keeps a message. d <= 0, the default,
// keeps messages regardless of age. Expiry follows the order of the history:
// a message is dropped once it and every message before it are older than d.
// The last value passed wins.
func WithMaxAge(d time.Duration) Option {
	return func(c *config) { c.maxAge = max(d, 0) }
}

// WithSweepInterval sets how often a Store with a maximum age (WithMaxAge)
// sweeps the rooms table for rooms whose every message has expired, from a
// goroutine of its own that Close stops. d == 0, the default, selects half
// the maximum age, and at least a minute. d < 0 turns the sweep off, for
// example in all but one of the processes that share the tables. The last
// value passed wins.
func WithSweepInterval(d time.Duration) Option {
	return func(c *config) { c.sweepEvery = d }
}

// WithErrorHandler sets a function told of each error the Store recovers
// from by itself, which no method returns: a trim that failed after Append
// stored its message (on PostgreSQL), or a failed sweep of some rooms. Both
// are retried later, and counted in Stats. f is called on the goroutine of
// the Append or of the sweep, so possibly concurrently: it must be safe for
// concurrent use and should return quickly. nil, the default, reports
// nothing. The last value passed wins.
func WithErrorHandler(f func(error)) Option {
	return func(c *config) { c.onError = f }
}

// Stats is a snapshot of a Store's counters since New.
type Stats struct {
	// TrimErrors counts the trims, on PostgreSQL, that failed after
	// Append had stored its message. Append still succeeds; the room's
	// next trim deletes the rows as well.
	TrimErrors uint64
	// Sweeps counts the sweep passes that went over the whole rooms table.
	Sweeps uint64
	// SweepErrors counts the sweep passes that stopped on an error; the
	// next pass starts again.
	SweepErrors uint64
	// RoomsSwept counts the rooms a sweep deleted, with their messages.
	RoomsSwept uint64
}

type counters struct {
	trimErrors, sweeps, sweepErrors, roomsSwept atomic.Uint64
}

// Store is a wsroom.Store that keeps history in a SQL database. See the
// package documentation for its schema and retention.
//
// A Store is safe for concurrent use by multiple goroutines, and any number
// of Stores, in one process or several, may share a database and a table
// prefix. The caller keeps ownership of the *sql.DB. A Store with a maximum
// age runs a sweep in a goroutine of its own, which Close ends.
type Store struct {
	db      *sql.DB
	dialect Dialect
	prefix  string
	limit   int64
	maxAge  time.Duration
	q       queries
	onError func(error)
	stats   counters

	// writing serialises writes to a SQLite database, which has one writer
	// at a time; it is nil for other dialects.
	writing chan struct{}

	// cancel ends the sweep's context, and swept is closed when the
	// sweep's goroutine has returned; both are nil if it does not run.
	cancel    context.CancelFunc
	swept     chan struct{}
	closeOnce sync.Once

	// now is the clock and sweepHook, if not nil, is called at stages of
	// a sweep; tests set them before the Store is used.
	now       func() time.Time
	sweepHook func(stage string)
}

var _ wsroom.Store = (*Store)(nil)

var prefixPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,39}$`)

// New returns a Store that keeps history in db, creating its tables if they
// do not exist yet. It fails if the options are invalid, the dialect cannot
// be detected, or the tables cannot be created.
func New(ctx context.Context, db *sql.DB, opts ...Option) (*Store, error) {
	c := defaultConfig()
	for _, o := range opts {
		o(&c)
	}
	if !prefixPattern.MatchString(c.prefix) {
		return nil, fmt.Errorf("sqlstore: invalid table prefix %q: use up to 40 letters, digits and underscores, not starting with a digit", c.prefix)
	}
	switch c.dialect {
	case 0:
		d, err := detectDialect(db)
		if err != nil {
			return nil, err
		}
		c.dialect = d
	case SQLite, Postgres:
	default:
		return nil, fmt.Errorf("sqlstore: unknown dialect %v: use SQLite or Postgres", c.dialect)
	}
	s := &Store{
		db:      db,
		dialect: c.dialect,
		prefix:  c.prefix,
		limit:   int64(c.limit),
		maxAge:  c.maxAge,
		q:       newQueries(c.dialect, c.prefix),
		onError: c.onError,
		now:     time.Now,
	}
	if s.dialect == SQLite {
		s.writing = make(chan struct{}, 1)
	}
	if err := s.createSchema(ctx, c.prefix); err != nil {
		return nil, fmt.Errorf("sqlstore: create tables: %w", err)
	}
	if every := c.sweepEvery; s.maxAge > 0 && every >= 0 {
		if every == 0 {
			every = max(s.maxAge/2, minSweepInterval)
		}
		var sweepCtx context.Context
		sweepCtx, s.cancel = context.WithCancel(context.Background())
		s.swept = make(chan struct{})
		go s.sweepLoop(sweepCtx, every)
	}
	return s, nil
}

// Close stops the Store's sweep, if it runs one, and waits for its
// goroutine to return; a pass under way stops at its next query. Close does
// not close the *sql.DB, and the Store's other methods keep working after
// it. Close may be called more than once, and concurrently; it returns nil.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		if s.cancel != nil {
			s.cancel()
			<-s.swept
		}
	})
	return nil
}

// Stats returns a snapshot of the Store's counters. It is cheap: a few
// atomic loads, no lock and no query.
func (s *Store) Stats() Stats {
	return Stats{
		TrimErrors:  s.stats.trimErrors.Load(),
		Sweeps:      s.stats.sweeps.Load(),
		SweepErrors: s.stats.sweepErrors.Load(),
		RoomsSwept:  s.stats.roomsSwept.Load(),
	}
}

// report passes err to the error handler, if there is one.
func (s *Store) report(err error) {
	if s.onError != nil {
		s.onError(err)
	}
}

// detectDialect guesses the dialect from the package of db's driver.
func detectDialect(db *sql.DB) (Dialect, error) {
	t := reflect.TypeOf(db.Driver())
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch path := strings.ToLower(t.PkgPath()); {
	case strings.Contains(path, "sqlite"):
		return SQLite, nil
	case strings.Contains(path, "pgx"), strings.Contains(path, "lib/pq"), strings.Contains(path, "postgres"):
		return Postgres, nil
	}
	return 0, fmt.Errorf("sqlstore: cannot tell the SQL dialect of driver %T: use WithDialect", db.Driver())
}

func (s *Store) createSchema(ctx context.Context, prefix string) error {
	if s.dialect == SQLite {
		return s.write(ctx, func(tx *sql.Tx) error {
			for _, stmt := range s.q.schema {
				if _, err := tx.ExecContext(ctx, stmt); err != nil {
					return err
				}
			}
			return nil
		})
	}
	// Concurrent CREATE TABLE IF NOT EXISTS can fail in PostgreSQL, so
	// Stores starting at once take turns under an advisory lock.
	h := fnv.New64a()
	h.Write([]byte("wsroom/sqlstore:" + prefix))
	return s.write(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", int64(h.Sum64())); err != nil {
			return err
		}
		for _, stmt := range s.q.schema {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return err
			}
		}
		return nil
	})
}

// Append implements wsroom.Store. The message's Time, when zero, is set to
// the current time; it is stored, and returned, to the millisecond. Except
// and Ephemeral are cleared: they are not stored. Reads return empty Data as
// nil.
func (s *Store) Append(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	return s.append(ctx, nil, room, m, nil)
}

// querier is what append runs its statements on: the database, or a
// transaction.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// append stores m as Append does. With tx, it runs in that transaction (the
// caller's, which commits it), else on its own. With notify (PostgreSQL
// only: a channel and a payload), the statement also sends that
// notification, which PostgreSQL delivers when the write commits.
func (s *Store) append(ctx context.Context, tx *sql.Tx, room string, m wsroom.Message, notify []any) (wsroom.Message, error) {
	if err := ctx.Err(); err != nil {
		return wsroom.Message{}, err
	}
	now := s.now()
	if m.Time.IsZero() {
		m.Time = now
	}
	ms := m.Time.UnixMilli()
	m.Time = time.UnixMilli(ms)
	m.Ephemeral, m.Except = false, ""
	data := m.Data
	if data == nil {
		data = []byte{}
	}
	var (
		epoch string
		seq   int64
	)
	trim := func(q querier) error {
		_, err := q.ExecContext(ctx, s.q.trim, room, room, seq-s.limit, s.cut(now), seq+1)
		return err
	}
	var err error
	switch {
	case s.dialect == Postgres:
		// One statement, in one round trip; the room's row lock orders
		// concurrent appends, and holds until the write commits, so that
		// the numbers follow the commits.
		var q querier = s.db
		if tx != nil {
			q = tx
		}
		query, args := s.q.appendOne, []any{room, newID(), room, ms, m.From, data}
		if notify != nil {
			query, args = s.q.appendNotify, append(args, notify...)
		}
		err = q.QueryRowContext(ctx, query, args...).Scan(&epoch, &seq)
		if err == nil && seq%trimEvery == 0 {
			// The message is stored; should trimming fail, the next
			// trim of the room deletes the rows as well.
			if terr := trim(q); terr != nil {
				s.stats.trimErrors.Add(1)
				s.report(fmt.Errorf("sqlstore: trim room %q: %w", room, terr))
				if tx != nil {
					// A failed statement ends a PostgreSQL transaction.
					err = terr
				}
			}
		}
	default:
		write := func(tx *sql.Tx) error {
			if err := tx.QueryRowContext(ctx, s.q.next, room, newID()).Scan(&epoch, &seq); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, s.q.insert, room, seq, ms, m.From, data); err != nil {
				return err
			}
			if seq%trimEvery == 0 {
				return trim(tx)
			}
			return nil
		}
		if tx != nil {
			err = write(tx)
		} else {
			err = s.write(ctx, write)
		}
	}
	if err != nil {
		return wsroom.Message{}, fmt.Errorf("sqlstore: append to room %q: %w", room, err)
	}
	m.Epoch, m.Seq = epoch, uint64(seq)
	return m, nil
}

// Position returns the position of the room's last message as tx sees
// it: its epoch and sequence number, or ("", 0) for a room with no
// history. Read in the transaction that reads the application's state (at
// REPEATABLE READ on PostgreSQL, so that every statement sees one
// snapshot; any SQLite transaction), it is the position that state is as
// of, provided the state's changes and their messages are written together
// with Broker.PublishTx: a client that loads the state and resumes from the
// position misses nothing and gets nothing twice, since messages are
// numbered in commit order.
func (s *Store) Position(ctx context.Context, tx *sql.Tx, room string) (epoch string, seq uint64, err error) {
	var last int64
	err = tx.QueryRowContext(ctx, s.q.position, room).Scan(&epoch, &last)
	if errors.Is(err, sql.ErrNoRows) {
		return "", 0, nil
	}
	if err != nil {
		return "", 0, fmt.Errorf("sqlstore: position of room %q: %w", room, err)
	}
	return epoch, uint64(last), nil
}

// After implements wsroom.Store.
func (s *Store) After(ctx context.Context, room, epoch string, seq uint64, limit int) ([]wsroom.Message, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if (epoch == "" && seq != 0) || seq > math.MaxInt64 {
		// No history has such a position.
		return nil, wsroom.ErrGap
	}
	var epochArg any // nil matches the room's epoch, whatever it is
	if epoch != "" {
		epochArg = epoch
	}
	lim := int64(math.MaxInt64)
	if limit > 0 {
		lim = int64(limit)
	}
	w, msgs, err := s.read(ctx, s.q.after, s.limit, s.cut(s.now()), room, room, int64(seq), int64(seq), epochArg, lim)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: read room %q: %w", room, err)
	}
	if !w.found {
		if epoch == "" {
			return nil, nil
		}
		return nil, wsroom.ErrGap
	}
	if (epoch != "" && epoch != w.epoch) || seq > w.last || seq+1 < w.first {
		return nil, wsroom.ErrGap
	}
	return msgs, nil
}

// Last implements wsroom.Store.
func (s *Store) Last(ctx context.Context, room string, n int) ([]wsroom.Message, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if n <= 0 {
		return nil, nil
	}
	_, msgs, err := s.read(ctx, s.q.last, s.limit, s.cut(s.now()), room, room, int64(n))
	if err != nil {
		return nil, fmt.Errorf("sqlstore: read room %q: %w", room, err)
	}
	return msgs, nil
}

// window is what a read learns about a room's history.
type window struct {
	found bool
	epoch string
	last  uint64 // last sequence number handed out
	first uint64 // first retained message, last+1 if none
}

// read runs one of the history queries, which return a row with the room's
// window followed by its selected messages, or nothing if the room has never
// had a message.
func (s *Store) read(ctx context.Context, query string, args ...any) (window, []wsroom.Message, error) {
	var (
		w    window
		msgs []wsroom.Message
	)
	err := s.retry(ctx, func() error {
		w, msgs = window{}, nil
		rows, err := s.db.QueryContext(ctx, query, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				last, first int64
				seq, ms     sql.NullInt64
				from        sql.NullString
				data        []byte
			)
			if err := rows.Scan(&w.epoch, &last, &first, &seq, &ms, &from, &data); err != nil {
				return err
			}
			w.found, w.last, w.first = true, uint64(last), uint64(first)
			if !seq.Valid {
				continue // the room has no message to return
			}
			if len(data) == 0 {
				data = nil
			}
			msgs = append(msgs, wsroom.Message{
				Seq:   uint64(seq.Int64),
				Epoch: w.epoch,
				Time:  time.UnixMilli(ms.Int64),
				From:  from.String,
				Data:  data,
			})
		}
		return rows.Err()
	})
	return w, msgs, err
}

// cut returns the time, in Unix milliseconds, before which messages have
// expired at now.
func (s *Store) cut(now time.Time) int64 {
	if s.maxAge <= 0 {
		return math.MinInt64
	}
	return now.Add(-s.maxAge).UnixMilli()
}

// sweepLoop runs a sweep pass every interval until ctx is done, then closes
// s.swept.
func (s *Store) sweepLoop(ctx context.Context, every time.Duration) {
	defer close(s.swept)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_ = s.sweep(ctx) // counted and reported by sweep
	}
}

// sweep goes over the rooms table once, sweepBatch rooms at a time in the
// order of their names, and deletes the rooms whose history is empty, every
// message in it having expired, together with their messages. Each batch
// is one indexed read followed, if it found such rooms, by short write
// transactions of about sweepRows messages each, so that appends are not
// held up for long and no statement scans the whole table.
//
// A room is deleted only if no message was appended to it since the read
// that found it empty: the write deletes its row only if its last sequence
// number is still the one read. An Append that comes after the deletion
// creates the row anew, with a new epoch and numbering from 1, so that no
// sequence number is handed out twice in an epoch, and a resume from the
// old epoch is refused.
//
// A failed pass is counted and reported, unless ctx was done.
func (s *Store) sweep(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("sqlstore: sweep: %w", err)
			if ctx.Err() == nil {
				s.stats.sweepErrors.Add(1)
				s.report(err)
			}
		}
	}()
	type room struct {
		name string
		last int64
	}
	var (
		after   string
		started bool
		found   []room
	)
	for {
		n := 0
		err := s.retry(ctx, func() error {
			found, n = found[:0], 0
			var rows *sql.Rows
			var err error
			if started {
				rows, err = s.db.QueryContext(ctx, s.q.sweepNext, s.limit, s.cut(s.now()), after, sweepBatch)
			} else {
				rows, err = s.db.QueryContext(ctx, s.q.sweepFirst, s.limit, s.cut(s.now()), sweepBatch)
			}
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var (
					r     room
					empty int
				)
				if err := rows.Scan(&r.name, &r.last, &empty); err != nil {
					return err
				}
				n++
				after = r.name
				if empty == 1 {
					found = append(found, r)
				}
			}
			return rows.Err()
		})
		if err != nil {
			return err
		}
		started = true
		if s.sweepHook != nil {
			s.sweepHook("selected")
		}
		for len(found) > 0 {
			// As many rooms as hold about sweepRows messages at most,
			// and at least one, per transaction.
			k, rows := 0, int64(0)
			for k < len(found) {
				rows += min(found[k].last, s.limit+trimEvery)
				if k > 0 && rows > sweepRows {
					break
				}
				k++
			}
			chunk := found[:k]
			found = found[k:]
			var deleted uint64
			err := s.write(ctx, func(tx *sql.Tx) error {
				deleted = 0
				for _, r := range chunk {
					res, err := tx.ExecContext(ctx, s.q.deleteRoom, r.name, r.last)
					if err != nil {
						return err
					}
					if k, err := res.RowsAffected(); err != nil {
						return err
					} else if k == 0 {
						continue // appended to since, or deleted by another Store
					}
					if _, err := tx.ExecContext(ctx, s.q.deleteMessages, r.name); err != nil {
						return err
					}
					deleted++
				}
				if s.sweepHook != nil {
					s.sweepHook("deleted")
				}
				return nil
			})
			if err != nil {
				return err
			}
			s.stats.roomsSwept.Add(deleted)
		}
		if n < sweepBatch {
			s.stats.sweeps.Add(1)
			return nil
		}
	}
}

// write runs fn in a transaction, again if the database is busy, and commits.
func (s *Store) write(ctx context.Context, fn func(*sql.Tx) error) error {
	if s.writing != nil {
		select {
		case s.writing <- struct{}{}:
			defer func() { <-s.writing }()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	var opts *sql.TxOptions
	if s.dialect == Postgres {
		// Row locks order the writers; stricter levels would only add
		// serialisation failures.
		opts = &sql.TxOptions{Isolation: sql.LevelReadCommitted}
	}
	return s.retry(ctx, func() error {
		tx, err := s.db.BeginTx(ctx, opts)
		if err != nil {
			return err
		}
		if err := fn(tx); err != nil {
			tx.Rollback()
			return err
		}
		return tx.Commit()
	})
}

// retry calls fn until it does not fail because a SQLite database is locked
// by another connection, or ctx is done.
func (s *Store) retry(ctx context.Context, fn func() error) error {
	wait := time.Millisecond
	for {
		err := fn()
		if err == nil || s.dialect != SQLite || !isBusy(err) {
			return err
		}
		t := time.NewTimer(wait/2 + rand.N(wait))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return errors.Join(err, ctx.Err())
		}
		wait = min(2*wait, 100*time.Millisecond)
	}
}

// isBusy reports whether err says a SQLite database is locked. Drivers
// differ in their error types but agree on the message.
func isBusy(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "SQLITE_BUSY") || strings.Contains(msg, "database is locked")
}

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// newID returns a random 16-character epoch.
func newID() string {
	var b [10]byte
	crand.Read(b[:])
	return idEncoding.EncodeToString(b[:])
}
