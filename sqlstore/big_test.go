package sqlstore_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/sqlstore"
)

const (
	bigRooms    = 10_000
	bigPerRoom  = 100 // messages per room: 1M in all
	bigPublish  = 2000
	bigMaxAge   = time.Hour
	bigEnv      = "SQLSTORE_BIG"
	bigSkipText = "set SQLSTORE_BIG=1 to measure sweeps and publishes on a table of 1M messages in 10k rooms"
)

// fillBig fills the Store's tables with bigRooms rooms of bigPerRoom
// messages of 100 bytes each; the messages of every other room, from
// room00000 on, expired an hour ago.
func fillBig(t *testing.T, d testDB, db *sql.DB) {
	t.Helper()
	now := time.Now()
	old, fresh := now.Add(-2*bigMaxAge).UnixMilli(), now.UnixMilli()
	var stmts []string
	if d.name == "postgres" {
		stmts = []string{
			fmt.Sprintf(`INSERT INTO %s (room, epoch, last_seq)
				SELECT 'room' || lpad(r::text, 5, '0'), 'epoch' || r, %d FROM generate_series(0, %d) r`,
				d.table("rooms"), bigPerRoom, bigRooms-1),
			fmt.Sprintf(`INSERT INTO %s (room, seq, time_ms, sender, data)
				SELECT 'room' || lpad(r::text, 5, '0'), s, CASE WHEN r %% 2 = 0 THEN %d ELSE %d END, 'c1', decode(repeat('78', 100), 'hex')
				FROM generate_series(0, %d) r, generate_series(1, %d) s`,
				d.table("messages"), old, fresh, bigRooms-1, bigPerRoom),
			"ANALYZE " + d.table("rooms"),
			"ANALYZE " + d.table("messages"),
		}
	} else {
		stmts = []string{
			fmt.Sprintf(`WITH RECURSIVE r(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM r WHERE i < %d)
				INSERT INTO %s (room, epoch, last_seq) SELECT printf('room%%05d', i), 'epoch' || i, %d FROM r`,
				bigRooms-1, d.table("rooms"), bigPerRoom),
			fmt.Sprintf(`WITH RECURSIVE r(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM r WHERE i < %d),
				s(j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM s WHERE j < %d)
				INSERT INTO %s (room, seq, time_ms, sender, data)
				SELECT printf('room%%05d', i), j, CASE WHEN i %% 2 = 0 THEN %d ELSE %d END, 'c1', CAST(printf('%%.100c', 'x') AS BLOB)
				FROM r, s ORDER BY 1, 2`,
				bigRooms-1, bigPerRoom, d.table("messages"), old, fresh),
			"ANALYZE",
		}
	}
	start := time.Now()
	for _, stmt := range stmts {
		if _, err := db.ExecContext(t.Context(), stmt); err != nil {
			t.Fatalf("fill: %v\n%s", err, stmt)
		}
	}
	var n int
	if err := db.QueryRowContext(t.Context(), "SELECT COUNT(*) FROM "+d.table("messages")).Scan(&n); err != nil || n != bigRooms*bigPerRoom {
		t.Fatalf("filled %d messages, %v; want %d", n, err, bigRooms*bigPerRoom)
	}
	t.Logf("filled %d messages in %d rooms in %v", n, bigRooms, time.Since(start).Round(time.Millisecond))
}

// publishBig appends bigPublish messages, one at a time, each to a random
// room whose messages have not expired, and returns how long each took.
func publishBig(t *testing.T, s wsroom.Store) []time.Duration {
	t.Helper()
	lat := make([]time.Duration, 0, bigPublish)
	for range bigPublish {
		room := fmt.Sprintf("room%05d", 2*rand.IntN(bigRooms/2)+1)
		start := time.Now()
		if _, err := s.Append(t.Context(), room, wsroom.Message{From: "c1", Data: payload}); err != nil {
			t.Fatalf("Append: %v", err)
		}
		lat = append(lat, time.Since(start))
	}
	return lat
}

// latencies summarises durations as "p50 p99 max", and names the first.
func latencies(lat []time.Duration) string {
	first := lat[0]
	lat = slices.Clone(lat)
	slices.Sort(lat)
	r := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
	return fmt.Sprintf("p50 %v, p99 %v, max %v (first %v)", r(lat[len(lat)/2]), r(lat[len(lat)*99/100]), r(lat[len(lat)-1]), r(first))
}

// TestBigSweep measures, on a table of 1M messages in 10k rooms of which
// half have expired, the publish latency without a sweep and while sweeps
// run back to back, and how long a sweep pass takes: the first, which
// deletes the expired rooms, and the next ones, which find nothing to
// delete. It runs only with SQLSTORE_BIG=1, and reports in the log.
func TestBigSweep(t *testing.T) {
	if os.Getenv(bigEnv) == "" {
		t.Skip(bigSkipText)
	}
	eachDB(t, func(t *testing.T, d testDB) {
		db := d.open(t)
		s := newStore(t, d, db, sqlstore.WithMaxAge(bigMaxAge), sqlstore.WithSweepInterval(-1))
		fillBig(t, d, db)

		t.Logf("publish, no sweep: %s", latencies(publishBig(t, s)))

		ctx, cancel := context.WithCancel(t.Context())
		passes := make(chan []time.Duration)
		go func() {
			var took []time.Duration
			for ctx.Err() == nil {
				start := time.Now()
				if err := sqlstore.Sweep(s); err != nil {
					t.Errorf("Sweep: %v", err)
					break
				}
				took = append(took, time.Since(start))
			}
			passes <- took
		}()
		lat := publishBig(t, s)
		cancel()
		took := <-passes
		t.Logf("publish, sweeps back to back: %s", latencies(lat))
		if len(took) > 0 {
			t.Logf("sweep passes during it: %d; first (deletes %d rooms) %v; %s", len(took), s.Stats().RoomsSwept, took[0].Round(time.Millisecond), passSummary(took[1:]))
		}
		start := time.Now()
		if err := sqlstore.Sweep(s); err != nil {
			t.Fatal(err)
		}
		t.Logf("one more pass, nothing to delete: %v", time.Since(start).Round(time.Millisecond))
		if got, want := countTable(t, d, db, "rooms"), bigRooms/2; got != want {
			t.Errorf("rooms table holds %d rows after the sweeps, want %d", got, want)
		}
	})
}

func passSummary(took []time.Duration) string {
	if len(took) == 0 {
		return "no further pass"
	}
	var sum time.Duration
	for _, d := range took {
		sum += d
	}
	return fmt.Sprintf("further passes (nothing to delete) %v on average", (sum / time.Duration(len(took))).Round(time.Millisecond))
}
