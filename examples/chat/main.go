// Command chat is a multi-room chat server built on wsroom: names, presence,
// typing indicators, history that survives restarts, reconnect with resume,
// and file sharing. Run it and open http://localhost:8800 in two browsers:
//
//	go run ./examples/chat
//
// See README.md for the flags and for how each feature maps to wsroom.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // PostgreSQL driver "pgx"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
	_ "modernc.org/sqlite" // SQLite driver "sqlite", pure Go

	"github.com/wsroom/wsroom/natsbroker"
	"github.com/wsroom/wsroom/redisbroker"
	"github.com/wsroom/wsroom/sqlstore"
)

func main() {
	log.SetFlags(0)
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	addr := flag.String("addr", "localhost:8800", "address to listen on")
	token := flag.String("token", os.Getenv("CHAT_TOKEN"), "shared token required to join (default $CHAT_TOKEN; empty: anyone may join)")
	dbPath := flag.String("db", "chat.db", "SQLite file for the history; empty keeps history in memory only")
	pgDSN := flag.String("postgres", "", "PostgreSQL URL for the history, instead of -db (postgres://user@host/db)")
	redisAddr := flag.String("redis", "", "Redis address (host:port): run as one node of many, with history and presence in Redis")
	natsURL := flag.String("nats", "", "NATS URL (nats://host:4222): run as one node of many, with history and presence in JetStream")
	filesDir := flag.String("files", "chat-files", "directory for shared files; empty keeps them in memory (at most 64 MiB, oldest dropped first)")
	verbose := flag.Bool("v", false, "log joins, leaves and errors of every client")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	opts := Options{Token: *token, Logger: logger}
	history := "in memory"
	switch {
	case *redisAddr != "" && *natsURL != "":
		return errors.New("use -redis or -nats, not both")
	case *redisAddr != "":
		client := redis.NewClient(&redis.Options{Addr: *redisAddr})
		defer client.Close()
		if err := client.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("redis %s: %w", *redisAddr, err)
		}
		b := redisbroker.New(client, redisbroker.WithHistoryLimit(1000), redisbroker.WithLogger(logger))
		defer b.Close()
		opts.Broker = b
		opts.StoredRooms, opts.RoomUsed = redisRooms(client, "wsroom-chat:rooms")
		history = "in Redis " + *redisAddr
	case *natsURL != "":
		nc, err := nats.Connect(*natsURL, nats.MaxReconnects(-1))
		if err != nil {
			return fmt.Errorf("nats %s: %w", *natsURL, err)
		}
		defer nc.Close()
		b, err := natsbroker.New(ctx, nc, natsbroker.WithHistoryLimit(1000))
		if err != nil {
			return fmt.Errorf("nats %s: %w", *natsURL, err)
		}
		defer b.Close()
		opts.Broker = b
		history = "in NATS " + *natsURL
	case *pgDSN != "" || *dbPath != "":
		var db *sql.DB
		var err error
		if *pgDSN != "" {
			db, err = sql.Open("pgx", *pgDSN)
			history = "in PostgreSQL"
		} else {
			db, err = openDB(*dbPath)
			history = "in " + *dbPath
		}
		if err != nil {
			return err
		}
		defer db.Close()
		store, err := sqlstore.New(ctx, db, sqlstore.WithHistoryLimit(1000))
		if err != nil {
			return fmt.Errorf("open history %s: %w", history, err)
		}
		opts.Store = store
		opts.StoredRooms = storedRooms(db)
	}
	if *filesDir != "" {
		files, err := newDiskFiles(*filesDir)
		if err != nil {
			return err
		}
		opts.Files = files
	}
	chat, err := NewServer(opts)
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           chat,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute, // uploads; WebSockets clear it when upgraded
		WriteTimeout:      time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	logger.Info("chat: listening", "url", "http://"+ln.Addr().String(), "history", history, "token", *token != "")

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	stop() // a second Ctrl-C kills the process
	logger.Info("chat: shutting down")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The server stops accepting and finishes plain HTTP requests; it does
	// not wait for WebSockets, so the rooms then say goodbye to each client
	// with 1001 (going away), which makes the pages reconnect and resume.
	err = srv.Shutdown(ctx)
	if e := chat.Shutdown(ctx); err == nil {
		err = e
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// openDB opens a SQLite history file, with WAL and a busy timeout as
// sqlstore recommends.
func openDB(path string) (*sql.DB, error) {
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)")
	if err != nil {
		return nil, fmt.Errorf("open history %s: %w", path, err)
	}
	return db, nil
}

// storedRooms lists the rooms with history in sqlstore's tables.
func storedRooms(db *sql.DB) func(context.Context) ([]string, error) {
	return func(ctx context.Context) ([]string, error) {
		rows, err := db.QueryContext(ctx, "SELECT room FROM "+sqlstore.DefaultTablePrefix+"rooms ORDER BY room LIMIT 200")
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		var names []string
		for rows.Next() {
			var name string
			if err := rows.Scan(&name); err != nil {
				return nil, err
			}
			names = append(names, name)
		}
		return names, rows.Err()
	}
}

// redisRooms keeps the names of the rooms with history in a Redis set.
func redisRooms(client redis.UniversalClient, key string) (list func(context.Context) ([]string, error), add func(context.Context, string) error) {
	list = func(ctx context.Context) ([]string, error) {
		names, err := client.SRandMemberN(ctx, key, 200).Result()
		slices.Sort(names)
		return names, err
	}
	add = func(ctx context.Context, room string) error {
		return client.SAdd(ctx, key, room).Err()
	}
	return list, add
}
