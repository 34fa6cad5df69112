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
