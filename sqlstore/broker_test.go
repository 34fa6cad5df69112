package sqlstore_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/brokertest"
	"github.com/wsroom/wsroom/sqlstore"
	"github.com/wsroom/wsroom/storetest"
)

// newBroker returns a Broker on a new Store of d over db, closed at cleanup.
func newBroker(t testing.TB, d testDB, db *sql.DB, opts ...any) *sqlstore.Broker {
	t.Helper()
	var sopts []sqlstore.Option
	var bopts []sqlstore.BrokerOption
	for _, o := range opts {
		switch o := o.(type) {
		case sqlstore.Option:
			sopts = append(sopts, o)
		case sqlstore.BrokerOption:
			bopts = append(bopts, o)
		}
	}
	b, err := sqlstore.NewBroker(newStore(t, d, db, sopts...), bopts...)
	if err != nil {
		t.Fatalf("NewBroker: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// The conformance suite, with each node a Broker on a *sql.DB of its own
// on PostgreSQL, as separate processes would have.
func TestBrokerConformance(t *testing.T) {
	t.Run("postgres", func(t *testing.T) {
		d := newPostgres(t)
		brokertest.Run(t, func(t *testing.T) wsroom.Broker {
			return newBroker(t, d, d.open(t), sqlstore.WithPresenceTTL(time.Second)) // a Crasher (export_test.go)
		})
	})
	// On SQLite, ephemeral messages stay in their Broker: every node is
	// one Broker, which no node closes or crashes (the cases that do
	// skip).
	t.Run("sqlite", func(t *testing.T) {
		d := newSQLite(t, true)
		b := shared{newBroker(t, d, d.open(t))}
		brokertest.Run(t, func(t *testing.T) wsroom.Broker { return b })
	})
}

// shared is a Broker without its Close and Crash methods.
type shared struct{ engine }

type engine interface {
	wsroom.Broker
	wsroom.Store
	wsroom.Sequencer
	wsroom.Deduplicator
	wsroom.UserPresence
}

// Real server nodes on PostgreSQL alone: clients of many rooms publish on
// both, move between them with resume, and retry publishes.
func TestBrokerNodes(t *testing.T) {
	d := newPostgres(t)
	limited := func(limit int) []any {
		if limit > 0 {
			return []any{sqlstore.WithHistoryLimit(limit)}
		}
		return nil
	}
	brokertest.RunNodes(t, brokertest.Nodes{
		New: func(t *testing.T, limit int) wsroom.Broker {
			return newBroker(t, d, d.open(t), limited(limit)...)
		},
		Cuttable: func(t *testing.T, limit int) (wsroom.Broker, func(), func()) {
			g := &gate{}
			cfg, err := pgx.ParseConfig(d.dsn)
			if err != nil {
				t.Fatal(err)
			}
			cfg.DialFunc = g.dial
			db := stdlib.OpenDB(*cfg)
			t.Cleanup(func() { db.Close() })
			return newBroker(t, d, db, limited(limit)...), g.cut, g.restore
		},
	})
}

// gate is a dialer whose connections can be cut: cut closes them and
// refuses new ones until restore.
type gate struct {
	mu    sync.Mutex
	shut  bool
	conns []net.Conn
}

func (g *gate) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.shut {
		return nil, errors.New("gate: cut")
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err == nil {
		g.conns = append(g.conns, c)
	}
	return c, err
}

func (g *gate) cut() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.shut = true
	for _, c := range g.conns {
		c.Close()
	}
	g.conns = nil
}

func (g *gate) restore() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.shut = false
}

// sub collects what a subscription delivers.
type sub struct {
	mu   sync.Mutex
	msgs []wsroom.Message
	lost int
	more chan struct{}
}

func subscribe(t *testing.T, b wsroom.Broker, room string) *sub {
	t.Helper()
	s := &sub{more: make(chan struct{}, 1)}
	unsub, err := b.Subscribe(t.Context(), room, func(m wsroom.Message) {
		s.mu.Lock()
		s.msgs = append(s.msgs, m)
		s.mu.Unlock()
		select {
		case s.more <- struct{}{}:
		default:
		}
	}, func(error) {
		s.mu.Lock()
		s.lost++
		s.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unsub)
	return s
}

// wait waits for n messages and returns them as "seq:data".
func (s *sub) wait(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		s.mu.Lock()
		var got []string
		for _, m := range s.msgs {
			got = append(got, fmt.Sprintf("%d:%s", m.Seq, m.Data))
		}
		s.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-s.more:
		case <-deadline:
			t.Fatalf("got %v, want %d messages", got, n)
		}
	}
}

// A message written in the application's transaction is numbered there,
// reaches the subscribers of every node only once the transaction commits,
// and never if it rolls back; a rolled-back one takes no number, and a
// transaction waiting behind it gets the number.
func TestPublishTx(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		db := d.open(t)
		a := newBroker(t, d, db)
		b := newBroker(t, d, d.open(t))
		room := storetest.RoomName(t)
		onA, onB := subscribe(t, a, room), subscribe(t, b, room)
		if _, err := db.Exec("CREATE TABLE " + d.table("orders") + " (id INTEGER PRIMARY KEY, state TEXT)"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Exec("DROP TABLE " + d.table("orders")) })

		// Rolled back: not delivered, no number taken.
		tx, err := db.BeginTx(t.Context(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if m, err := a.PublishTx(t.Context(), tx, room, wsroom.Message{Data: []byte("rolled back")}); err != nil || m.Seq != 1 {
			t.Fatalf("PublishTx = %+v, %v; want seq 1", m, err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		// Committed with the application's row.
		tx, err = db.BeginTx(t.Context(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("INSERT INTO " + d.table("orders") + " (id, state) VALUES (1, 'paid')"); err != nil {
			t.Fatal(err)
		}
		m, err := a.PublishTx(t.Context(), tx, room, wsroom.Message{From: "shop", Data: []byte("order 1 paid")})
		if err != nil || m.Seq != 1 {
			t.Fatalf("PublishTx after the rollback = %+v, %v; want seq 1 again", m, err)
		}
		// Nothing is delivered before the commit: a later publish goes
		// first in the history only if it commits first, and here it
		// waits for the room's row, held by tx.
		done := make(chan error, 1)
		go func() { done <- a.Publish(context.Background(), room, wsroom.Message{Data: []byte("after")}) }()
		if got := onB.snapshot(); len(got) != 0 {
			t.Errorf("node B got %v before the commit", got)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		want := []string{"1:order 1 paid", "2:after"}
		for name, s := range map[string]*sub{"A": onA, "B": onB} {
			if got := s.wait(t, 2); !slices.Equal(got, want) {
				t.Errorf("node %s got %v, want %v", name, got, want)
			}
		}
		if _, err := a.PublishTx(t.Context(), nil, room, wsroom.Message{Ephemeral: true}); err == nil {
			t.Error("PublishTx of an ephemeral message: no error")
		}
	})
}

func (s *sub) snapshot() []wsroom.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}

// A process that commits a message and dies at once loses nothing: the
// subscribers of a live node get it, and a node that was down when it was
// committed reads it from the history when it subscribes from before it.
func TestPublishTxThenCrash(t *testing.T) {
	if os.Getenv("SQLSTORE_CRASH_DSN") != "" {
		crashAfterCommit()
		return
	}
	d := newPostgres(t)
	live := newBroker(t, d, d.open(t))
	room := storetest.RoomName(t)
	onLive := subscribe(t, live, room)
	for i := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestPublishTxThenCrash$")
		cmd.Env = append(os.Environ(), "SQLSTORE_CRASH_DSN="+d.dsn, "SQLSTORE_CRASH_PREFIX="+d.prefix,
			"SQLSTORE_CRASH_ROOM="+room, fmt.Sprintf("SQLSTORE_CRASH_DATA=crash %d", i))
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
			t.Fatalf("the publishing process: %v, want exit status 3 right after its commit\n%s", err, out)
		}
	}
	want := []string{"1:crash 0", "2:crash 1", "3:crash 2"}
	if got := onLive.wait(t, 3); !slices.Equal(got, want) {
		t.Errorf("the live node got %v, want %v", got, want)
	}
	// A node that comes up afterwards resumes from before the first.
	later := newBroker(t, d, d.open(t))
	msgs, err := later.After(t.Context(), room, "", 0, 0)
	if err != nil || len(msgs) != 3 || string(msgs[0].Data) != "crash 0" {
		t.Errorf("a later node's After = %d messages, %v; want the 3", len(msgs), err)
	}
}

// crashAfterCommit is the publishing process of TestPublishTxThenCrash: it
// commits one message in a transaction and exits at once, with status 3,
// before any Close.
func crashAfterCommit() {
	db, err := sql.Open("pgx", os.Getenv("SQLSTORE_CRASH_DSN"))
	if err != nil {
		os.Exit(1)
	}
	ctx := context.Background()
	s, err := sqlstore.New(ctx, db, sqlstore.WithTablePrefix(os.Getenv("SQLSTORE_CRASH_PREFIX")))
	if err != nil {
		os.Exit(1)
	}
	b, err := sqlstore.NewBroker(s)
	if err != nil {
		os.Exit(1)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		os.Exit(1)
	}
	if _, err := b.PublishTx(ctx, tx, os.Getenv("SQLSTORE_CRASH_ROOM"), wsroom.Message{Data: []byte(os.Getenv("SQLSTORE_CRASH_DATA"))}); err != nil {
		os.Exit(1)
	}
	if err := tx.Commit(); err != nil {
		os.Exit(1)
	}
	os.Exit(3)
}

// State and position from one snapshot: a reader of the application's
// rows that takes the room's position in the same REPEATABLE READ
// transaction resumes with exactly the messages of the rows it did not
// see, even when a transaction commits between its two reads.
func TestPositionWithState(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		db := d.open(t)
		b := newBroker(t, d, db)
		room := storetest.RoomName(t)
		orders := d.table("orders_pos")
		if _, err := db.Exec("CREATE TABLE " + orders + " (id INTEGER PRIMARY KEY)"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Exec("DROP TABLE " + orders) })
		order := func(id int) {
			t.Helper()
			tx, err := db.BeginTx(t.Context(), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			if _, err := tx.Exec(fmt.Sprintf("INSERT INTO %s (id) VALUES (%d)", orders, id)); err != nil {
				t.Fatal(err)
			}
			if _, err := b.PublishTx(t.Context(), tx, room, wsroom.Message{Data: fmt.Appendf(nil, "order %d", id)}); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		}
		if epoch, seq, err := func() (string, uint64, error) {
			tx, err := db.BeginTx(t.Context(), nil)
			if err != nil {
				return "", 0, err
			}
			defer tx.Rollback()
			return b.Position(t.Context(), tx, room)
		}(); err != nil || epoch != "" || seq != 0 {
			t.Errorf("Position of a room with no history = %q, %d, %v; want none", epoch, seq, err)
		}
		order(1)
		order(2)

		opts := &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true}
		if d.name == "sqlite" {
			opts = nil // a SQLite transaction reads one snapshot
		}
		tx, err := db.BeginTx(t.Context(), opts)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		var seen []int
		rows, err := tx.Query("SELECT id FROM " + orders + " ORDER BY id")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var id int
			rows.Scan(&id)
			seen = append(seen, id)
		}
		rows.Close()
		if d.name == "postgres" {
			order(3) // commits between the two reads of the snapshot
		}
		epoch, seq, err := b.Position(t.Context(), tx, room)
		if err != nil {
			t.Fatal(err)
		}
		tx.Rollback()
		if d.name == "sqlite" {
			order(3) // after the snapshot
		}
		if !slices.Equal(seen, []int{1, 2}) || seq != 2 {
			t.Fatalf("snapshot: orders %v at seq %d; want orders [1 2] at seq 2", seen, seq)
		}
		missed, err := b.After(t.Context(), room, epoch, seq, 0)
		if err != nil || len(missed) != 1 || string(missed[0].Data) != "order 3" {
			t.Errorf("resuming from the snapshot's position: %d messages, %v; want order 3 alone", len(missed), err)
		}
	})
}

// A message stored with no notice (by a plain Store, or while the
// listening connection was down) reaches the subscribers at the next poll.
func TestBrokerPollsWithoutNotice(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		b, err := sqlstore.NewBroker(newStore(t, d, d.open(t)), sqlstore.WithPollInterval(50*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		rooms := []string{storetest.RoomName(t) + "-a", storetest.RoomName(t) + "-b"}
		subs := []*sub{subscribe(t, b, rooms[0]), subscribe(t, b, rooms[1])}
		plain := newStore(t, d, d.open(t))
		for i := range 3 {
			if _, err := plain.Append(t.Context(), rooms[1], wsroom.Message{Data: fmt.Appendf(nil, "m%d", i)}); err != nil {
				t.Fatal(err)
			}
		}
		if got := subs[1].wait(t, 3); !slices.Equal(got, []string{"1:m0", "2:m1", "3:m2"}) {
			t.Errorf("polled room got %v", got)
		}
		if got := subs[0].snapshot(); len(got) != 0 {
			t.Errorf("the other room got %v", got)
		}
	})
}
