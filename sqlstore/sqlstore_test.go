package sqlstore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/sqlstore"
	"github.com/wsroom/wsroom/storetest"
)

const (
	defaultPostgresDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	startPostgres      = "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
)

// testDB is a database that the tests of one test function share. Each call
// of open returns a new *sql.DB on it, as a separate process would have.
type testDB struct {
	name   string
	prefix string
	dsn    string // PostgreSQL's
	open   func(t testing.TB) *sql.DB
}

// table returns the name of one of the Store's tables.
func (d testDB) table(name string) string { return d.prefix + name }

// newSQLite returns a SQLite database in a file of its own. busyTimeout
// selects whether its connections wait for locks themselves.
func newSQLite(t testing.TB, busyTimeout bool) testDB {
	path := filepath.Join(t.TempDir(), "history.db")
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)"
	if busyTimeout {
		dsn += "&_pragma=busy_timeout(5000)"
	}
	return testDB{
		name:   "sqlite",
		prefix: sqlstore.DefaultTablePrefix,
		open: func(t testing.TB) *sql.DB {
			db, err := sql.Open("sqlite", dsn)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			return db
		},
	}
}

// newPostgres returns the PostgreSQL test database, with a table prefix
// unique to the caller whose tables are dropped when it ends.
func newPostgres(t testing.TB) testDB {
	dsn := os.Getenv("POSTGRES_DSN")
	if dsn == "" {
		dsn = defaultPostgresDSN
	}
	open := func(t testing.TB) *sql.DB {
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}
	db := open(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		msg := fmt.Sprintf("PostgreSQL at %s is unreachable (%v); %s", dsn, err, startPostgres)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	var b [4]byte
	rand.Read(b[:])
	prefix := "wsroomtest_" + hex.EncodeToString(b[:]) + "_"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := db.ExecContext(ctx, "DROP TABLE IF EXISTS "+prefix+"rooms, "+prefix+"messages, "+prefix+"keys, "+prefix+"presence"); err != nil {
			t.Errorf("drop test tables: %v", err)
		}
	})
	return testDB{name: "postgres", prefix: prefix, dsn: dsn, open: open}
}

// eachDB runs fn as a subtest for every database.
func eachDB(t *testing.T, fn func(t *testing.T, d testDB)) {
	t.Run("sqlite", func(t *testing.T) { fn(t, newSQLite(t, true)) })
	t.Run("postgres", func(t *testing.T) { fn(t, newPostgres(t)) })
}

func newStore(t testing.TB, d testDB, db *sql.DB, opts ...sqlstore.Option) *sqlstore.Store {
	t.Helper()
	s, err := sqlstore.New(context.Background(), db, append([]sqlstore.Option{sqlstore.WithTablePrefix(d.prefix)}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func seqs(ms []wsroom.Message) []uint64 {
	var out []uint64
	for _, m := range ms {
		out = append(out, m.Seq)
	}
	return out
}

func seqRange(from, to uint64) []uint64 {
	var out []uint64
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

func appendN(t *testing.T, s wsroom.Store, room string, n int) []wsroom.Message {
	t.Helper()
	var out []wsroom.Message
	for range n {
		m, err := s.Append(t.Context(), room, wsroom.Message{From: "c1", Data: []byte("x")})
		if err != nil {
			t.Fatalf("Append: %v", err)
		}
		out = append(out, m)
	}
	return out
}

// countRows returns how many message rows the database holds for room.
func countRows(t *testing.T, d testDB, db *sql.DB, room string) int {
	t.Helper()
	q := "SELECT COUNT(*) FROM " + d.table("messages") + " WHERE room = ?"
	if d.name == "postgres" {
		q = strings.Replace(q, "?", "$1", 1)
	}
	var n int
	if err := db.QueryRowContext(t.Context(), q, room).Scan(&n); err != nil {
		t.Fatalf("count rows: %v", err)
	}
	return n
}

func TestConformance(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		db := d.open(t)
		storetest.Run(t, func(t *testing.T) wsroom.Store { return newStore(t, d, db) })
	})
}

// TestConformanceWithRetention runs the conformance cases with both
// retention bounds set, which the history queries then apply.
func TestConformanceWithRetention(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		db := d.open(t)
		storetest.Run(t, func(t *testing.T) wsroom.Store {
			return newStore(t, d, db, sqlstore.WithHistoryLimit(100), sqlstore.WithMaxAge(time.Hour))
		})
	})
}

// TestRestart checks that a room's history and numbering survive a restart:
// a second Store on a new connection to the same database continues it.
func TestRestart(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		room := storetest.RoomName(t)
		db1 := d.open(t)
		before := appendN(t, newStore(t, d, db1), room, 5)
		db1.Close()

		s2 := newStore(t, d, d.open(t))
		m, err := s2.Append(t.Context(), room, wsroom.Message{Data: []byte("after restart")})
		if err != nil {
			t.Fatal(err)
		}
		if m.Seq != 6 || m.Epoch != before[0].Epoch {
			t.Errorf("Append after restart = seq %d, epoch %q; want seq 6, epoch %q", m.Seq, m.Epoch, before[0].Epoch)
		}
		got, err := s2.After(t.Context(), room, before[0].Epoch, 3, 0)
		if err != nil || !slices.Equal(seqs(got), []uint64{4, 5, 6}) {
			t.Fatalf("After(epoch, 3) after restart = %v, %v; want seqs 4..6", seqs(got), err)
		}
		if string(got[0].Data) != "x" || got[0].From != "c1" || string(got[2].Data) != "after restart" {
			t.Errorf("After(epoch, 3) after restart = %+v, want the stored data", got)
		}
	})
}

// TestEverythingExpired checks that a room whose every message has expired
// keeps its epoch and numbering, across a restart too, until a sweep deletes
// it; then the room starts again in a new epoch, and a resume from the old
// one is refused.
func TestEverythingExpired(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		clk := &clock{t: time.Now()}
		open := func(db *sql.DB) *sqlstore.Store {
			s := newStore(t, d, db, sqlstore.WithMaxAge(time.Minute), sqlstore.WithSweepInterval(-1))
			sqlstore.SetClock(s, clk.now)
			return s
		}
		room := storetest.RoomName(t)
		db1 := d.open(t)
		epoch := appendN(t, open(db1), room, 3)[0].Epoch
		clk.advance(2 * time.Minute)
		db1.Close()

		db2 := d.open(t)
		s2 := open(db2)
		if got, err := s2.Last(t.Context(), room, 10); err != nil || len(got) != 0 {
			t.Errorf("Last(10) with every message expired = %v, %v; want none", seqs(got), err)
		}
		if got, err := s2.After(t.Context(), room, epoch, 3, 0); err != nil || len(got) != 0 {
			t.Errorf("After(epoch, 3) with every message expired = %v, %v; want none, nil", seqs(got), err)
		}
		m := appendN(t, s2, room, 1)[0]
		if m.Seq != 4 || m.Epoch != epoch {
			t.Errorf("Append after expiry and restart = seq %d, epoch %q; want seq 4, epoch %q", m.Seq, m.Epoch, epoch)
		}
		if got, err := s2.After(t.Context(), room, epoch, 3, 0); err != nil || !slices.Equal(seqs(got), []uint64{4}) {
			t.Errorf("After(epoch, 3) = %v, %v; want seq 4", seqs(got), err)
		}
		if _, err := s2.After(t.Context(), room, epoch, 2, 0); !errors.Is(err, wsroom.ErrGap) {
			t.Errorf("After(epoch, 2) over expired messages error = %v, want ErrGap", err)
		}

		clk.advance(2 * time.Minute)
		if err := sqlstore.Sweep(s2); err != nil {
			t.Fatalf("Sweep: %v", err)
		}
		if n := countRows(t, d, db2, room); n != 0 {
			t.Errorf("room holds %d message rows after the sweep, want 0", n)
		}
		if st := s2.Stats(); st.RoomsSwept != 1 || st.Sweeps != 1 || st.SweepErrors != 0 {
			t.Errorf("Stats after one sweep = %+v, want 1 room swept in 1 pass", st)
		}
		if got, err := s2.After(t.Context(), room, epoch, 4, 0); !errors.Is(err, wsroom.ErrGap) {
			t.Errorf("After(old epoch, 4) once the room was swept = %v, %v; want ErrGap", seqs(got), err)
		}
		m = appendN(t, s2, room, 1)[0]
		if m.Seq != 1 || m.Epoch == epoch {
			t.Errorf("Append once the room was swept = seq %d, epoch %q; want seq 1 in an epoch other than %q", m.Seq, m.Epoch, epoch)
		}
		if _, err := s2.After(t.Context(), room, epoch, 4, 0); !errors.Is(err, wsroom.ErrGap) {
			t.Errorf("After(old epoch, 4) in the new epoch error = %v, want ErrGap", err)
		}
		if got, err := s2.After(t.Context(), room, m.Epoch, 0, 0); err != nil || !slices.Equal(seqs(got), []uint64{1}) {
			t.Errorf("After(new epoch, 0) = %v, %v; want seq 1", seqs(got), err)
		}
	})
}

// TestConcurrentStores appends to one room from several goroutines of two
// Stores, each with its own connections, and checks that the room's
// messages are numbered once each, without gaps.
func TestConcurrentStores(t *testing.T) {
	run := func(t *testing.T, d testDB) {
		const stores, workers, each = 2, 4, 25
		room := storetest.RoomName(t)
		var (
			mu   sync.Mutex
			sent = make(map[uint64]wsroom.Message)
			wg   sync.WaitGroup
		)
		errs := make(chan error, stores*workers)
		for i := range stores {
			s := newStore(t, d, d.open(t))
			for w := range workers {
				wg.Go(func() {
					for k := range each {
						m, err := s.Append(context.Background(), room, wsroom.Message{Data: fmt.Appendf(nil, "%d-%d-%d", i, w, k)})
						if err != nil {
							errs <- err
							return
						}
						mu.Lock()
						if prev, ok := sent[m.Seq]; ok {
							errs <- fmt.Errorf("seq %d assigned to both %q and %q", m.Seq, prev.Data, m.Data)
						}
						sent[m.Seq] = m
						mu.Unlock()
					}
				})
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		got := slices.Sorted(func(yield func(uint64) bool) {
			for seq := range sent {
				if !yield(seq) {
					return
				}
			}
		})
		if want := seqRange(1, stores*workers*each); !slices.Equal(got, want) {
			t.Fatalf("concurrent Append seqs (sorted) = %v, want 1..%d each once", got, len(want))
		}
		stored, err := newStore(t, d, d.open(t)).After(t.Context(), room, "", 0, 0)
		if err != nil || len(stored) != stores*workers*each {
			t.Fatalf("After(start) = %d messages, %v; want %d", len(stored), err, stores*workers*each)
		}
		for _, m := range stored {
			if want := sent[m.Seq]; m.Epoch != want.Epoch || !bytes.Equal(m.Data, want.Data) {
				t.Errorf("stored message %d = %q in epoch %q, want %q in epoch %q", m.Seq, m.Data, m.Epoch, want.Data, want.Epoch)
			}
		}
	}
	t.Run("sqlite", func(t *testing.T) { run(t, newSQLite(t, true)) })
	// Without a busy timeout, SQLite reports a lock held by the other
	// Store's connection at once, and Append must wait and retry itself.
	t.Run("sqlite-no-busy-timeout", func(t *testing.T) { run(t, newSQLite(t, false)) })
	t.Run("postgres", func(t *testing.T) { run(t, newPostgres(t)) })
}

func TestRetentionCount(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		const limit, n = 10, 40
		db := d.open(t)
		s := newStore(t, d, db, sqlstore.WithHistoryLimit(limit))
		room := storetest.RoomName(t)
		epoch := appendN(t, s, room, n)[0].Epoch

		if got, err := s.Last(t.Context(), room, 100); err != nil || !slices.Equal(seqs(got), seqRange(n-limit+1, n)) {
			t.Errorf("Last(100) = %v, %v; want %v", seqs(got), err, seqRange(n-limit+1, n))
		}
		if got, err := s.After(t.Context(), room, epoch, n-limit, 0); err != nil || !slices.Equal(seqs(got), seqRange(n-limit+1, n)) {
			t.Errorf("After(epoch, %d) = %v, %v; want %v", n-limit, seqs(got), err, seqRange(n-limit+1, n))
		}
		for _, pos := range []struct {
			epoch string
			seq   uint64
		}{{epoch, n - limit - 1}, {epoch, 0}, {"", 0}} {
			if got, err := s.After(t.Context(), room, pos.epoch, pos.seq, 0); !errors.Is(err, wsroom.ErrGap) {
				t.Errorf("After(%q, %d) past the limit = %v, %v; want ErrGap", pos.epoch, pos.seq, seqs(got), err)
			}
		}
		if rows := countRows(t, d, db, room); rows < limit || rows >= limit+sqlstore.TrimEvery {
			t.Errorf("room holds %d message rows, want %d to %d", rows, limit, limit+sqlstore.TrimEvery-1)
		}
	})
}

func TestRetentionAge(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		db := d.open(t)
		s := newStore(t, d, db, sqlstore.WithMaxAge(time.Minute))
		t0 := time.Now()
		clk := &clock{t: t0}
		sqlstore.SetClock(s, clk.now)
		room := storetest.RoomName(t)
		epoch := appendN(t, s, room, 3)[0].Epoch // 1..3 at t0
		clk.advance(40 * time.Second)
		appendN(t, s, room, 2) // 4, 5 at t0+40s
		clk.advance(30 * time.Second)

		// 1..3 have expired. 6 is older still, but it follows messages
		// that have not, and stays as long as they do.
		if _, err := s.Append(t.Context(), room, wsroom.Message{Time: t0, Data: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		if got, err := s.Last(t.Context(), room, 10); err != nil || !slices.Equal(seqs(got), []uint64{4, 5, 6}) {
			t.Errorf("Last(10) at t0+70s = %v, %v; want 4..6", seqs(got), err)
		}
		if got, err := s.After(t.Context(), room, epoch, 3, 0); err != nil || !slices.Equal(seqs(got), []uint64{4, 5, 6}) {
			t.Errorf("After(epoch, 3) at t0+70s = %v, %v; want 4..6", seqs(got), err)
		}
		if _, err := s.After(t.Context(), room, epoch, 2, 0); !errors.Is(err, wsroom.ErrGap) {
			t.Errorf("After(epoch, 2) over expired messages error = %v, want ErrGap", err)
		}

		clk.advance(35 * time.Second) // everything has expired
		if got, err := s.Last(t.Context(), room, 10); err != nil || len(got) != 0 {
			t.Errorf("Last(10) at t0+105s = %v, %v; want none", seqs(got), err)
		}
		if got, err := s.After(t.Context(), room, epoch, 6, 0); err != nil || len(got) != 0 {
			t.Errorf("After(epoch, 6) at t0+105s = %v, %v; want none, nil", seqs(got), err)
		}
		if _, err := s.After(t.Context(), room, epoch, 5, 0); !errors.Is(err, wsroom.ErrGap) {
			t.Errorf("After(epoch, 5) at t0+105s error = %v, want ErrGap", err)
		}

		// Appending up to the next multiple of TrimEvery deletes the
		// expired rows of the room.
		ms := appendN(t, s, room, sqlstore.TrimEvery-6)
		if last := ms[len(ms)-1]; last.Seq != sqlstore.TrimEvery || last.Epoch != epoch {
			t.Fatalf("last Append = seq %d, epoch %q; want seq %d, epoch %q", last.Seq, last.Epoch, sqlstore.TrimEvery, epoch)
		}
		if rows := countRows(t, d, db, room); rows != sqlstore.TrimEvery-6 {
			t.Errorf("room holds %d message rows after trimming, want %d", rows, sqlstore.TrimEvery-6)
		}
		if got, err := s.After(t.Context(), room, epoch, 6, 0); err != nil || !slices.Equal(seqs(got), seqRange(7, sqlstore.TrimEvery)) {
			t.Errorf("After(epoch, 6) after trimming = %v, %v; want 7..%d", seqs(got), err, sqlstore.TrimEvery)
		}
	})
}

func TestNotStored(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := newStore(t, d, d.open(t))
		room := storetest.RoomName(t)
		m, err := s.Append(t.Context(), room, wsroom.Message{Ephemeral: true, Except: "c2", From: "c1", Data: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		if m.Ephemeral || m.Except != "" || m.Seq != 1 {
			t.Errorf("Append = %+v, want seq 1, not ephemeral, no Except", m)
		}
		got, err := s.Last(t.Context(), room, 1)
		if err != nil || len(got) != 1 || got[0].Ephemeral || got[0].Except != "" || got[0].From != "c1" {
			t.Errorf("Last(1) = %+v, %v; want one message from c1 without Ephemeral or Except", got, err)
		}
	})
}

func TestCanceledContext(t *testing.T) {
	d := newSQLite(t, true)
	s := newStore(t, d, d.open(t))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Append(ctx, "r", wsroom.Message{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Append with a canceled context error = %v, want context.Canceled", err)
	}
	if _, err := s.After(ctx, "r", "", 0, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("After with a canceled context error = %v, want context.Canceled", err)
	}
}

// unknownDriver is a driver from a package whose path names no database.
type unknownDriver struct{}

func (unknownDriver) Open(string) (driver.Conn, error) { return nil, errors.New("no database") }

func init() { sql.Register("sqlstore-test-unknown", unknownDriver{}) }

func TestNewOptions(t *testing.T) {
	d := newSQLite(t, true)
	db := d.open(t)
	for _, prefix := range []string{"", "1abc_", "a-b", "x; DROP TABLE y", strings.Repeat("a", 41)} {
		if _, err := sqlstore.New(t.Context(), db, sqlstore.WithTablePrefix(prefix)); err == nil || !strings.HasPrefix(err.Error(), "sqlstore: ") {
			t.Errorf("New(WithTablePrefix(%q)) error = %v, want a sqlstore error", prefix, err)
		}
	}
	if _, err := sqlstore.New(t.Context(), db, sqlstore.WithDialect(sqlstore.Dialect(9))); err == nil {
		t.Error("New(WithDialect(9)) succeeded, want an error")
	}

	unknown, err := sql.Open("sqlstore-test-unknown", "")
	if err != nil {
		t.Fatal(err)
	}
	defer unknown.Close()
	if _, err := sqlstore.New(t.Context(), unknown); err == nil || !strings.Contains(err.Error(), "WithDialect") {
		t.Errorf("New on an unknown driver error = %v, want one that suggests WithDialect", err)
	}

	// Stores with different prefixes share nothing; New is idempotent.
	a := newStore(t, d, db, sqlstore.WithDialect(sqlstore.SQLite))
	b, err := sqlstore.New(t.Context(), db, sqlstore.WithTablePrefix("other_"))
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, a, "room", 3)
	if m := appendN(t, b, "room", 1)[0]; m.Seq != 1 {
		t.Errorf("first Append under another prefix = seq %d, want 1", m.Seq)
	}
	if m := appendN(t, newStore(t, d, db), "room", 1)[0]; m.Seq != 4 {
		t.Errorf("Append through a second Store with the same prefix = seq %d, want 4", m.Seq)
	}
}
