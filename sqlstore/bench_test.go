package sqlstore_test

import (
	"bytes"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/sqlstore"
)

// benchDBs runs fn as a sub-benchmark for every database.
func benchDBs(b *testing.B, fn func(b *testing.B, d testDB)) {
	b.Run("db=sqlite", func(b *testing.B) { fn(b, newSQLite(b, true)) })
	b.Run("db=postgres", func(b *testing.B) { fn(b, newPostgres(b)) })
}

var payload = bytes.Repeat([]byte("x"), 100)

// BenchmarkAppend measures appending 100-byte messages to one room, one at a
// time.
func BenchmarkAppend(b *testing.B) {
	benchDBs(b, func(b *testing.B, d testDB) {
		s := newStore(b, d, d.open(b))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.Append(b.Context(), "bench", wsroom.Message{From: "c1", Data: payload}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
}

// BenchmarkAppendParallel measures appending 100-byte messages to one room
// from GOMAXPROCS goroutines.
func BenchmarkAppendParallel(b *testing.B) {
	benchDBs(b, func(b *testing.B, d testDB) {
		s := newStore(b, d, d.open(b))
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.Append(b.Context(), "bench", wsroom.Message{From: "c1", Data: payload}); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
}

// BenchmarkAfter1000 measures a resume that reads back 1,000 messages of 100
// bytes.
func BenchmarkAfter1000(b *testing.B) {
	const n = 1000
	benchDBs(b, func(b *testing.B, d testDB) {
		s := newStore(b, d, d.open(b), sqlstore.WithHistoryLimit(n))
		var epoch string
		for range n {
			m, err := s.Append(b.Context(), "bench", wsroom.Message{From: "c1", Data: payload})
			if err != nil {
				b.Fatal(err)
			}
			epoch = m.Epoch
		}
		b.ReportAllocs()
		for b.Loop() {
			ms, err := s.After(b.Context(), "bench", epoch, 0, 0)
			if err != nil || len(ms) != n {
				b.Fatalf("After = %d messages, %v; want %d", len(ms), err, n)
			}
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
}

// BenchmarkBrokerPublish measures stored publishes through the Broker on
// PostgreSQL alone, from 32 goroutines over 100 rooms: msgs/s is
// publishes returned per second. With subscribed=true every room is
// subscribed on a second node (its own *sql.DB), and delivered/s is what
// that node got, each message read from the table after its notice, from
// the first publish to the last delivery.
func BenchmarkBrokerPublish(b *testing.B) {
	for _, subscribed := range []bool{false, true} {
		b.Run(fmt.Sprint("subscribed=", subscribed), func(b *testing.B) { benchBrokerPublish(b, subscribed) })
	}
}

func benchBrokerPublish(b *testing.B, subscribed bool) {
	d := newPostgres(b)
	a, other := newBroker(b, d, d.open(b)), newBroker(b, d, d.open(b))
	const rooms = 100
	var delivered atomic.Int64
	for i := range rooms {
		if !subscribed {
			break
		}
		unsub, err := other.Subscribe(b.Context(), fmt.Sprint("bench-", i), func(wsroom.Message) { delivered.Add(1) }, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(unsub)
	}
	var n atomic.Int64
	b.SetParallelism(max(1, 32/runtime.GOMAXPROCS(0)))
	b.ReportAllocs()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			room := fmt.Sprint("bench-", n.Add(1)%rooms)
			if err := a.Publish(b.Context(), room, wsroom.Message{From: "c1", Data: payload}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	if !subscribed {
		return
	}
	deadline := time.Now().Add(30 * time.Second)
	for delivered.Load() < int64(b.N) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	b.ReportMetric(float64(delivered.Load())/time.Since(start).Seconds(), "delivered/s")
	if got := delivered.Load(); got != int64(b.N) {
		b.Errorf("node B got %d of %d messages", got, b.N)
	}
}
