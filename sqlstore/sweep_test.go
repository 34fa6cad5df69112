package sqlstore_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/sqlstore"
)

// countTable returns how many rows a table of the Store holds.
func countTable(t *testing.T, d testDB, db *sql.DB, name string) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(t.Context(), "SELECT COUNT(*) FROM "+d.table(name)).Scan(&n); err != nil {
		t.Fatalf("count %s: %v", name, err)
	}
	return n
}

// orphans returns how many message rows the database holds that their
// room's row does not account for: of no room, or numbered past its last
// sequence number.
func orphans(t *testing.T, d testDB, db *sql.DB) int {
	t.Helper()
	var n int
	q := "SELECT COUNT(*) FROM " + d.table("messages") + " m LEFT JOIN " + d.table("rooms") +
		" r ON r.room = m.room WHERE r.room IS NULL OR m.seq > r.last_seq"
	if err := db.QueryRowContext(t.Context(), q).Scan(&n); err != nil {
		t.Fatalf("count orphan rows: %v", err)
	}
	return n
}

func appendAt(t *testing.T, s wsroom.Store, room string, at time.Time) wsroom.Message {
	t.Helper()
	m, err := s.Append(t.Context(), room, wsroom.Message{Time: at, From: "c1", Data: []byte("x")})
	if err != nil {
		t.Fatalf("Append(%q): %v", room, err)
	}
	return m
}

// TestSweepRooms checks that a sweep, going over the rooms table a batch at
// a time, deletes the rooms whose every message has expired, with their
// messages, and only those.
func TestSweepRooms(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		const n = 2*sqlstore.SweepBatch + 50
		db := d.open(t)
		t0 := time.Now()
		clk := &clock{t: t0}
		s := newStore(t, d, db, sqlstore.WithMaxAge(time.Minute), sqlstore.WithSweepInterval(-1))
		sqlstore.SetClock(s, clk.now)
		// Rooms "" and the even ones have only expired messages, the odd
		// ones recent messages, and "mixed" both.
		appendAt(t, s, "", t0)
		appendAt(t, s, "mixed", t0)
		for i := range n {
			appendAt(t, s, fmt.Sprintf("r%04d", i), t0)
			if i%2 == 1 {
				appendAt(t, s, fmt.Sprintf("r%04d", i), t0.Add(90*time.Second))
			}
		}
		appendAt(t, s, "mixed", t0.Add(90*time.Second))
		clk.advance(2 * time.Minute)

		if err := sqlstore.Sweep(s); err != nil {
			t.Fatalf("Sweep: %v", err)
		}
		if got, want := countTable(t, d, db, "rooms"), n/2+1; got != want {
			t.Errorf("rooms table holds %d rows after the sweep, want %d", got, want)
		}
		if got, want := countTable(t, d, db, "messages"), 2*(n/2)+2; got != want {
			t.Errorf("messages table holds %d rows after the sweep, want %d", got, want)
		}
		if st := s.Stats(); st.RoomsSwept != n/2+1 || st.Sweeps != 1 || st.SweepErrors != 0 {
			t.Errorf("Stats = %+v, want %d rooms swept in 1 pass, no error", st, n/2+1)
		}
		for _, room := range []string{"mixed", "r0001", fmt.Sprintf("r%04d", n-1)} {
			if got, err := s.Last(t.Context(), room, 10); err != nil || !slices.Equal(seqs(got), []uint64{2}) {
				t.Errorf("Last(%q, 10) after the sweep = %v, %v; want seq 2", room, seqs(got), err)
			}
		}
		for _, room := range []string{"", "r0000", fmt.Sprintf("r%04d", n-2)} {
			if m := appendAt(t, s, room, clk.now()); m.Seq != 1 {
				t.Errorf("Append(%q) after the sweep = seq %d, want 1", room, m.Seq)
			}
		}

		// A second pass finds nothing more to delete.
		if err := sqlstore.Sweep(s); err != nil {
			t.Fatalf("second Sweep: %v", err)
		}
		if st := s.Stats(); st.RoomsSwept != n/2+1 || st.Sweeps != 2 {
			t.Errorf("Stats after a second pass = %+v, want still %d rooms swept, 2 passes", st, n/2+1)
		}
	})
}

// TestSweepRace checks the two ways an Append can meet a sweep deleting its
// room: appended after the sweep found the room empty, the room and its new
// message stay, in the same epoch; appended while the sweep deletes it, the
// message starts the room again in a new epoch. Either way no sequence
// number is handed out twice in an epoch.
func TestSweepRace(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		db := d.open(t)
		t0 := time.Now()
		clk := &clock{t: t0}
		var hook func(stage string)
		open := func(db *sql.DB) *sqlstore.Store {
			s := newStore(t, d, db, sqlstore.WithMaxAge(time.Minute), sqlstore.WithSweepInterval(-1))
			sqlstore.SetClock(s, clk.now)
			sqlstore.SetSweepHook(s, func(stage string) {
				if hook != nil {
					hook(stage)
				}
			})
			return s
		}
		s, other := open(db), open(d.open(t))

		t.Run("after the read", func(t *testing.T) {
			room := "after-read"
			epoch := appendN(t, s, room, 3)[0].Epoch
			clk.advance(2 * time.Minute)
			var fresh wsroom.Message
			hook = func(stage string) {
				if stage == "selected" && fresh.Seq == 0 {
					fresh = appendAt(t, other, room, clk.now())
				}
			}
			defer func() { hook = nil }()
			if err := sqlstore.Sweep(s); err != nil {
				t.Fatalf("Sweep: %v", err)
			}
			if fresh.Seq != 4 || fresh.Epoch != epoch {
				t.Fatalf("Append during the sweep = seq %d, epoch %q; want seq 4, epoch %q", fresh.Seq, fresh.Epoch, epoch)
			}
			if got, err := s.Last(t.Context(), room, 10); err != nil || !slices.Equal(seqs(got), []uint64{4}) || got[0].Epoch != epoch {
				t.Errorf("Last(10) after the sweep = %v, %v; want seq 4 of epoch %q", seqs(got), err, epoch)
			}
			if m := appendAt(t, s, room, clk.now()); m.Seq != 5 || m.Epoch != epoch {
				t.Errorf("next Append = seq %d, epoch %q; want seq 5, epoch %q", m.Seq, m.Epoch, epoch)
			}
		})

		t.Run("during the delete", func(t *testing.T) {
			room := "during-delete"
			epoch := appendN(t, s, room, 3)[0].Epoch
			clk.advance(2 * time.Minute)
			type result struct {
				m   wsroom.Message
				err error
			}
			done := make(chan result, 1)
			started := false
			hook = func(stage string) {
				if stage != "deleted" || started {
					return
				}
				started = true
				go func() {
					m, err := other.Append(context.Background(), room, wsroom.Message{Data: []byte("fresh")})
					done <- result{m, err}
				}()
				if d.name == "postgres" {
					waitForLockWait(t, db, d.table("rooms"))
				}
			}
			defer func() { hook = nil }()
			if err := sqlstore.Sweep(s); err != nil {
				t.Fatalf("Sweep: %v", err)
			}
			if !started {
				t.Fatal("the sweep deleted nothing")
			}
			res := <-done
			if res.err != nil {
				t.Fatalf("Append during the sweep: %v", res.err)
			}
			if res.m.Seq != 1 || res.m.Epoch == epoch {
				t.Fatalf("Append during the sweep = seq %d, epoch %q; want seq 1 in an epoch other than %q", res.m.Seq, res.m.Epoch, epoch)
			}
			if got, err := s.After(t.Context(), room, epoch, 3, 0); !errors.Is(err, wsroom.ErrGap) {
				t.Errorf("After(old epoch, 3) = %v, %v; want ErrGap", seqs(got), err)
			}
			got, err := s.After(t.Context(), room, res.m.Epoch, 0, 0)
			if err != nil || !slices.Equal(seqs(got), []uint64{1}) || string(got[0].Data) != "fresh" {
				t.Errorf("After(new epoch, 0) = %v, %v; want the fresh message as seq 1", got, err)
			}
			if n := countRows(t, d, db, room); n != 1 {
				t.Errorf("room holds %d message rows, want 1", n)
			}
		})
		if n := orphans(t, d, db); n != 0 {
			t.Errorf("%d message rows are past their room's numbering or of no room", n)
		}
	})
}

// waitForLockWait waits until a query on table waits for a lock.
func waitForLockWait(t *testing.T, db *sql.DB, table string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		var n int
		err := db.QueryRowContext(t.Context(), `SELECT COUNT(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%'`, table).Scan(&n)
		if err != nil {
			t.Errorf("read pg_stat_activity: %v", err)
			return
		}
		if n > 0 {
			return
		}
	}
	t.Error("no query waited for the sweep's lock within 10s")
}

// TestSweepConcurrentAppends appends to rooms whose messages expire at once
// while two Stores sweep them over and over, and checks every room's
// numbering as the appends saw it: consecutive within an epoch, from 1 in
// each new epoch, and no epoch used twice.
func TestSweepConcurrentAppends(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		const rooms, each = 6, 60
		db := d.open(t)
		var stores []*sqlstore.Store
		for _, db := range []*sql.DB{db, d.open(t)} {
			stores = append(stores, newStore(t, d, db, sqlstore.WithMaxAge(time.Minute), sqlstore.WithSweepInterval(-1)))
		}
		old := time.Now().Add(-time.Hour) // every message has expired
		ctx, cancel := context.WithCancel(t.Context())
		var sweepers, appenders sync.WaitGroup
		for _, s := range stores {
			sweepers.Go(func() {
				for ctx.Err() == nil {
					if err := sqlstore.Sweep(s); err != nil {
						t.Errorf("Sweep: %v", err)
						return
					}
				}
			})
		}
		errs := make(chan error, rooms)
		for r := range rooms {
			appenders.Go(func() {
				room := fmt.Sprintf("room%d", r)
				var last wsroom.Message
				seen := map[string]bool{}
				for i := range each {
					m, err := stores[i%2].Append(ctx, room, wsroom.Message{Time: old, Data: []byte("x")})
					if err != nil {
						errs <- fmt.Errorf("Append %d to %s: %w", i, room, err)
						return
					}
					switch {
					case m.Epoch == last.Epoch && m.Seq != last.Seq+1:
						errs <- fmt.Errorf("%s: seq %d followed seq %d in epoch %s", room, m.Seq, last.Seq, m.Epoch)
						return
					case m.Epoch != last.Epoch && (m.Seq != 1 && last.Epoch != "" || seen[m.Epoch]):
						errs <- fmt.Errorf("%s: epoch %s (seen before: %v) began at seq %d", room, m.Epoch, seen[m.Epoch], m.Seq)
						return
					}
					seen[m.Epoch], last = true, m
				}
			})
		}
		appenders.Wait()
		cancel()
		sweepers.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		var swept uint64
		for _, s := range stores {
			swept += s.Stats().RoomsSwept
		}
		t.Logf("%d rooms swept during %d appends", swept, rooms*each)
		if n := orphans(t, d, db); n != 0 {
			t.Errorf("%d message rows are past their room's numbering or of no room", n)
		}
	})
}

// sweepers returns how many goroutines run a Store's sweep, waiting up to 5
// seconds for there to be want: a goroutine just started, or about to
// return, may not be seen at once.
func sweepers(want int) int {
	deadline := time.Now().Add(5 * time.Second)
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n == len(buf) {
			buf = make([]byte, 2*len(buf))
			continue
		}
		got := strings.Count(string(buf[:n]), "sqlstore.(*Store).sweepLoop(")
		if got == want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(time.Millisecond)
	}
}

// TestSweepGoroutine checks that a Store with a maximum age sweeps from a
// goroutine of its own, which Close ends, and that other Stores start none.
func TestSweepGoroutine(t *testing.T) {
	d := newSQLite(t, true)
	db := d.open(t)
	base := sweepers(0)
	for _, opts := range [][]sqlstore.Option{nil, {sqlstore.WithMaxAge(time.Minute), sqlstore.WithSweepInterval(-1)}} {
		s := newStore(t, d, db, opts...)
		if n := sweepers(base); n != base {
			t.Errorf("a Store made with %d options runs %d sweep goroutines, want none", len(opts), n-base)
		}
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}

	s, err := sqlstore.New(t.Context(), db, sqlstore.WithMaxAge(time.Minute), sqlstore.WithSweepInterval(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n := sweepers(base + 1); n != base+1 {
		t.Errorf("a Store with a maximum age runs %d sweep goroutines, want 1", n-base)
	}
	appendAt(t, s, "room", time.Now().Add(-2*time.Minute)) // expired at once
	for deadline := time.Now().Add(10 * time.Second); s.Stats().RoomsSwept == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the sweep did not delete the expired room within 10s: %+v", s.Stats())
		}
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if n := sweepers(base); n != base {
		t.Errorf("%d sweep goroutines run once Close has returned, want none", n-base)
	}
	passes := s.Stats().Sweeps
	s.Close()
	if m := appendAt(t, s, "room", time.Now()); m.Seq != 1 {
		t.Errorf("Append after Close = seq %d, want 1", m.Seq)
	}
	if st := s.Stats(); st.Sweeps != passes || st.SweepErrors != 0 {
		t.Errorf("Stats after Close = %+v, want %d passes as at Close, no error", st, passes)
	}
}

// TestTrimErrorsCounted makes a PostgreSQL trim fail, through a role that
// may not delete rows, and checks that the failure is counted and reported
// while Append succeeds; and likewise for a sweep.
func TestTrimErrorsCounted(t *testing.T) {
	d := newPostgres(t)
	admin := d.open(t)
	newStore(t, d, admin) // creates the tables
	role := d.prefix + "nodelete"
	for _, stmt := range []string{
		"CREATE ROLE " + role + " LOGIN",
		// New runs CREATE TABLE IF NOT EXISTS, which needs it.
		"GRANT CREATE ON SCHEMA public TO " + role,
		"GRANT SELECT, INSERT, UPDATE ON " + d.table("rooms") + ", " + d.table("messages") + " TO " + role,
	} {
		if _, err := admin.ExecContext(t.Context(), stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	t.Cleanup(func() {
		for _, stmt := range []string{"DROP OWNED BY " + role, "DROP ROLE " + role} {
			if _, err := admin.ExecContext(context.Background(), stmt); err != nil {
				t.Errorf("%s: %v", stmt, err)
			}
		}
	})
	dsn := os.Getenv("POSTGRES_DSN")
	if dsn == "" {
		dsn = defaultPostgresDSN
	}
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("POSTGRES_DSN: %v", err)
	}
	u.User = url.User(role)
	db, err := sql.Open("pgx", u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })

	var (
		mu       sync.Mutex
		reported []error
	)
	t0 := time.Now()
	clk := &clock{t: t0}
	s := newStore(t, d, db, sqlstore.WithMaxAge(time.Hour), sqlstore.WithSweepInterval(-1), sqlstore.WithErrorHandler(func(err error) {
		mu.Lock()
		defer mu.Unlock()
		reported = append(reported, err)
	}))
	sqlstore.SetClock(s, clk.now)
	room := "room"
	appendN(t, s, room, 2*sqlstore.TrimEvery) // each TrimEvery-th Append trims
	if st := s.Stats(); st.TrimErrors != 2 {
		t.Errorf("Stats().TrimErrors = %d after two failed trims, want 2", st.TrimErrors)
	}
	mu.Lock()
	if len(reported) != 2 || !strings.Contains(reported[0].Error(), "permission denied") || !strings.Contains(reported[0].Error(), `trim room "room"`) {
		t.Errorf("reported errors = %v, want two trim failures for permission denied", reported)
	}
	reported = nil
	mu.Unlock()
	if got, err := s.Last(t.Context(), room, 100); err != nil || len(got) != 2*sqlstore.TrimEvery {
		t.Errorf("Last(100) = %d messages, %v; want %d", len(got), err, 2*sqlstore.TrimEvery)
	}

	clk.advance(2 * time.Hour)
	if err := sqlstore.Sweep(s); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("Sweep error = %v, want permission denied", err)
	}
	if st := s.Stats(); st.SweepErrors != 1 || st.RoomsSwept != 0 || st.Sweeps != 0 {
		t.Errorf("Stats after a failed sweep = %+v, want 1 sweep error, nothing swept", st)
	}
	mu.Lock()
	if len(reported) != 1 || !strings.HasPrefix(reported[0].Error(), "sqlstore: sweep: ") {
		t.Errorf("reported errors = %v, want the sweep's", reported)
	}
	mu.Unlock()
}

// TestSweepTransactions checks that a sweep deletes about
// sqlstore.SweepRows messages per transaction, and one room's at least.
func TestSweepTransactions(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		const rooms, each = 30, 40 // 25 rooms of 40 messages make 1,000
		db := d.open(t)
		t0 := time.Now()
		clk := &clock{t: t0}
		commits := 0
		s := newStore(t, d, db, sqlstore.WithMaxAge(time.Minute), sqlstore.WithSweepInterval(-1))
		sqlstore.SetClock(s, clk.now)
		sqlstore.SetSweepHook(s, func(stage string) {
			if stage == "deleted" {
				commits++
			}
		})
		for r := range rooms {
			appendN(t, s, fmt.Sprintf("room%02d", r), each)
		}
		big := "zz-big" // holds more than SweepRows messages alone
		appendN(t, s, big, sqlstore.SweepRows+10)
		clk.advance(2 * time.Minute)
		if err := sqlstore.Sweep(s); err != nil {
			t.Fatalf("Sweep: %v", err)
		}
		if commits != 3 {
			t.Errorf("the sweep deleted in %d transactions, want 3: 25 rooms, 5, then the big one", commits)
		}
		if st := s.Stats(); st.RoomsSwept != rooms+1 {
			t.Errorf("Stats().RoomsSwept = %d, want %d", st.RoomsSwept, rooms+1)
		}
		if n := countTable(t, d, db, "messages"); n != 0 {
			t.Errorf("messages table holds %d rows after the sweep, want 0", n)
		}
	})
}
