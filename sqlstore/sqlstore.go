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

// minSweepInterval bounds how often a Store sweeps the whole messages table.
const minSweepInterval = time.Minute

type config struct {
	dialect Dialect
	prefix  string
	limit   int
	maxAge  time.Duration
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

// Store is a wsroom.Store that keeps history in a SQL database. See the
// package documentation for its schema and retention.
//
// A Store is safe for concurrent use by multiple goroutines, and any number
// of Stores, in one process or several, may share a database and a table
// prefix. A Store holds no resources of its own: it needs no closing, and
// the caller keeps ownership of the *sql.DB.
type Store struct {
	db      *sql.DB
	dialect Dialect
	limit   int64
	maxAge  time.Duration
	q       queries

	// writing serialises writes to a SQLite database, which has one writer
	// at a time; it is nil for other dialects.
	writing chan struct{}

	// lastSweep is when the Store last swept expired rooms, in Unix
	// nanoseconds.
	lastSweep atomic.Int64

	// now is the clock; tests replace it.
	now func() time.Time
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
		limit:   int64(c.limit),
		maxAge:  c.maxAge,
		q:       newQueries(c.dialect, c.prefix),
		now:     time.Now,
	}
	if s.dialect == SQLite {
		s.writing = make(chan struct{}, 1)
	}
	if err := s.createSchema(ctx, c.prefix); err != nil {
		return nil, fmt.Errorf("sqlstore: create tables: %w", err)
	}
	return s, nil
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
	var err error
	if s.dialect == Postgres {
		// One statement, in one round trip; the room's row lock orders
		// concurrent appends.
		err = s.db.QueryRowContext(ctx, s.q.appendOne, room, newID(), room, ms, m.From, data).Scan(&epoch, &seq)
		if err == nil && seq%trimEvery == 0 {
			// The message is stored; should trimming fail, the next
			// trim of the room deletes the rows as well.
			_, _ = s.db.ExecContext(ctx, s.q.trim, room, room, seq-s.limit, s.cut(now), seq+1)
		}
	} else {
		err = s.write(ctx, func(tx *sql.Tx) error {
			if err := tx.QueryRowContext(ctx, s.q.next, room, newID()).Scan(&epoch, &seq); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, s.q.insert, room, seq, ms, m.From, data); err != nil {
				return err
			}
			if seq%trimEvery == 0 {
				_, err := tx.ExecContext(ctx, s.q.trim, room, room, seq-s.limit, s.cut(now), seq+1)
				return err
			}
			return nil
		})
	}
	if err != nil {
		return wsroom.Message{}, fmt.Errorf("sqlstore: append to room %q: %w", room, err)
	}
	m.Epoch, m.Seq = epoch, uint64(seq)
	s.maybeSweep(ctx, now)
	return m, nil
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

// maybeSweep deletes the messages of rooms whose every message has expired,
// unless the Store did so recently. Append has succeeded when it runs, so a
// failure is left for the next sweep.
func (s *Store) maybeSweep(ctx context.Context, now time.Time) {
	if s.maxAge <= 0 {
		return
	}
	last := s.lastSweep.Load()
	if now.UnixNano()-last < int64(max(s.maxAge/2, minSweepInterval)) || !s.lastSweep.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	_ = s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, s.q.sweep, s.cut(now))
		return err
	})
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
