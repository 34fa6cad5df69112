package sqlstore_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/sqlstore"
)

// ExampleNew keeps room history in a SQLite file and resumes from a position.
func ExampleNew() {
	dir, err := os.MkdirTemp("", "sqlstore-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "history.db")+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	ctx := context.Background()
	store, err := sqlstore.New(ctx, db, sqlstore.WithHistoryLimit(500), sqlstore.WithMaxAge(24*time.Hour))
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close() // ends the sweep of expired rooms
	var last wsroom.Message
	for _, text := range []string{"hello", "how are you?", "fine"} {
		if last, err = store.Append(ctx, "lobby", wsroom.Message{From: "ann", Data: []byte(text)}); err != nil {
			log.Fatal(err)
		}
	}

	// A client that saw message 1 of this epoch catches up.
	missed, err := store.After(ctx, "lobby", last.Epoch, 1, 0)
	if err != nil {
		log.Fatal(err)
	}
	for _, m := range missed {
		fmt.Printf("%d %s: %s\n", m.Seq, m.From, m.Data)
	}
	// Output:
	// 2 ann: how are you?
	// 3 ann: fine
}

// ExampleBroker_PublishTx writes an order and the message that announces
// it in one transaction: the message reaches the room's subscribers once
// the transaction commits, and a rolled-back one never does.
func ExampleBroker_PublishTx() {
	dir, err := os.MkdirTemp("", "sqlstore-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "shop.db")+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	store, err := sqlstore.New(ctx, db)
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	broker, err := sqlstore.NewBroker(store)
	if err != nil {
		log.Fatal(err)
	}
	defer broker.Close()
	if _, err := db.Exec("CREATE TABLE orders (id INTEGER PRIMARY KEY, state TEXT)"); err != nil {
		log.Fatal(err)
	}

	got := make(chan wsroom.Message, 10)
	unsubscribe, err := broker.Subscribe(ctx, "orders", func(m wsroom.Message) { got <- m }, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer unsubscribe()

	order := func(id int, commit bool) {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			log.Fatal(err)
		}
		defer tx.Rollback()
		if _, err := tx.Exec("INSERT INTO orders (id, state) VALUES (?, 'paid')", id); err != nil {
			log.Fatal(err)
		}
		if _, err := broker.PublishTx(ctx, tx, "orders", wsroom.Message{Data: fmt.Appendf(nil, "order %d paid", id)}); err != nil {
			log.Fatal(err)
		}
		if commit {
			if err := tx.Commit(); err != nil {
				log.Fatal(err)
			}
		}
	}
	order(1, false) // rolled back: no row, no message
	order(2, true)
	m := <-got
	fmt.Printf("%d %s\n", m.Seq, m.Data)
	// Output:
	// 1 order 2 paid
}

// ExampleStore_Position reads the application's state and the room's
// position in one transaction: a client that loads the state resumes
// after the position, with no message missed and none twice, even if an
// order is written in between.
func ExampleStore_Position() {
	dir, err := os.MkdirTemp("", "sqlstore-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "shop.db")+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	store, err := sqlstore.New(ctx, db)
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	broker, err := sqlstore.NewBroker(store)
	if err != nil {
		log.Fatal(err)
	}
	defer broker.Close()
	if _, err := db.Exec("CREATE TABLE orders (id INTEGER PRIMARY KEY)"); err != nil {
		log.Fatal(err)
	}
	order := func(id int) {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			log.Fatal(err)
		}
		defer tx.Rollback()
		if _, err := tx.Exec("INSERT INTO orders (id) VALUES (?)", id); err != nil {
			log.Fatal(err)
		}
		if _, err := broker.PublishTx(ctx, tx, "orders", wsroom.Message{Data: fmt.Appendf(nil, "order %d", id)}); err != nil {
			log.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			log.Fatal(err)
		}
	}
	order(1)
	order(2)

	// The snapshot: the orders, and the position they are as of (on
	// PostgreSQL, at sql.LevelRepeatableRead).
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	var n int
	if err := tx.QueryRow("SELECT COUNT(*) FROM orders").Scan(&n); err != nil {
		log.Fatal(err)
	}
	epoch, seq, err := store.Position(ctx, tx, "orders")
	if err != nil {
		log.Fatal(err)
	}
	tx.Rollback()
	fmt.Printf("%d orders, as of message %d\n", n, seq)

	order(3) // after the snapshot
	missed, err := store.After(ctx, "orders", epoch, seq, 0)
	if err != nil {
		log.Fatal(err)
	}
	for _, m := range missed {
		fmt.Printf("then %d: %s\n", m.Seq, m.Data)
	}
	// Output:
	// 2 orders, as of message 2
	// then 3: order 3
}
