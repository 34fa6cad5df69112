package sqlstore_test

import (
	"bytes"
	"testing"

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
