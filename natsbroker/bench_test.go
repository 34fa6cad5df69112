package natsbroker

import (
	"context"
	"encoding/binary"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/storetest"
)

// BenchmarkPublish publishes from one node to a room subscribed on another
// and reports publishes per second and the cross-node delivery latency,
// from the call to Publish to the deliver function on the other node.
func BenchmarkPublish(b *testing.B) {
	for _, rooms := range []int{1, 16} {
		b.Run(fmt.Sprintf("rooms=%d", rooms), func(b *testing.B) {
			prefix := testPrefix(b)
			pub, sub := newNode(b, prefix), newNode(b, prefix)
			base := storetest.RoomName(b)
			var (
				mu        sync.Mutex
				latencies []time.Duration
				received  atomic.Int64
			)
			for r := range rooms {
				unsub, err := sub.Subscribe(context.Background(), fmt.Sprintf("%s-%d", base, r), func(m wsroom.Message) {
					d := time.Duration(time.Now().UnixNano() - int64(binary.BigEndian.Uint64(m.Data)))
					mu.Lock()
					latencies = append(latencies, d)
					mu.Unlock()
					received.Add(1)
				}, nil)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(unsub)
			}
			var next atomic.Int64
			b.ReportAllocs()
			start := time.Now()
			b.SetParallelism(max(1, rooms/2))
			b.RunParallel(func(pb *testing.PB) {
				room := fmt.Sprintf("%s-%d", base, next.Add(1)%int64(rooms))
				data := make([]byte, 8)
				for pb.Next() {
					binary.BigEndian.PutUint64(data, uint64(time.Now().UnixNano()))
					if err := pub.Publish(context.Background(), room, wsroom.Message{Data: slices.Clone(data)}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			elapsed := time.Since(start)
			deadline := time.Now().Add(10 * time.Second)
			for received.Load() < int64(b.N) && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			if n := received.Load(); n != int64(b.N) {
				b.Fatalf("received %d of %d messages", n, b.N)
			}
			mu.Lock()
			slices.Sort(latencies)
			p50, p99 := latencies[len(latencies)/2], latencies[len(latencies)*99/100]
			mu.Unlock()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "publishes/s")
			b.ReportMetric(float64(p50.Microseconds()), "p50-µs")
			b.ReportMetric(float64(p99.Microseconds()), "p99-µs")
		})
	}
}

// BenchmarkResume1000 measures reading the 1,000 messages a resuming client
// missed: one After call.
func BenchmarkResume1000(b *testing.B) {
	br := newNode(b, testPrefix(b), WithHistoryLimit(2000))
	room := "resume"
	data := make([]byte, 64)
	var first wsroom.Message
	for i := range 1001 {
		m, err := br.Append(b.Context(), room, wsroom.Message{Data: data})
		if err != nil {
			b.Fatal(err)
		}
		if i == 0 {
			first = m
		}
	}
	for b.Loop() {
		ms, err := br.After(b.Context(), room, first.Epoch, first.Seq, 0)
		if err != nil || len(ms) != 1000 {
			b.Fatalf("After = %d messages, %v; want 1000", len(ms), err)
		}
	}
}

// BenchmarkReadRecent measures a join's read of the last 50 messages and a
// resume's read of the last 10, in a room of 10,000 messages whose history
// is interleaved with another room's.
func BenchmarkReadRecent(b *testing.B) {
	const total = 10000
	br := newNode(b, testPrefix(b), WithHistoryLimit(2*total))
	ms := fillRoom(b, br, "recent", total)
	b.Run("Last50", func(b *testing.B) {
		for b.Loop() {
			got, err := br.Last(b.Context(), "recent", 50)
			if err != nil || len(got) != 50 {
				b.Fatalf("Last(50) = %d messages, %v", len(got), err)
			}
		}
	})
	// A resume that wants one message of the last 64 (a client's resume
	// with a small send window, or the first page of a history read).
	b.Run("After64Limit1", func(b *testing.B) {
		for b.Loop() {
			got, err := br.After(b.Context(), "recent", ms[0].Epoch, ms[total-65].Seq, 1)
			if err != nil || len(got) != 1 {
				b.Fatalf("After = %d messages, %v", len(got), err)
			}
		}
	})
	b.Run("After10", func(b *testing.B) {
		for b.Loop() {
			got, err := br.After(b.Context(), "recent", ms[0].Epoch, ms[total-11].Seq, 0)
			if err != nil || len(got) != 10 {
				b.Fatalf("After = %d messages, %v", len(got), err)
			}
		}
	})
}

// BenchmarkAppendOneRoom measures the throughput of one room on one node,
// whose appends are made one at a time (each waits for the JetStream
// acknowledgement of the one before), with one publisher and with 8
// concurrent ones, and each Append's latency; and, for comparison, 8
// publishers on 8 rooms, which do not wait for each other.
func BenchmarkAppendOneRoom(b *testing.B) {
	for _, c := range []struct {
		name       string
		publishers int
		rooms      int
	}{{"publishers=1", 1, 1}, {"publishers=8", 8, 1}, {"publishers=8/rooms=8", 8, 8}} {
		b.Run(c.name, func(b *testing.B) {
			br := newNode(b, testPrefix(b), WithHistoryLimit(1000))
			base := storetest.RoomName(b)
			var (
				mu        sync.Mutex
				latencies []time.Duration
				next      atomic.Int64
				wg        sync.WaitGroup
			)
			start := time.Now()
			for p := range c.publishers {
				room := fmt.Sprintf("%s-%d", base, p%c.rooms)
				wg.Go(func() {
					var own []time.Duration
					for next.Add(1) <= int64(b.N) {
						t0 := time.Now()
						if _, err := br.Append(context.Background(), room, wsroom.Message{Data: []byte("x")}); err != nil {
							b.Error(err)
							return
						}
						own = append(own, time.Since(t0))
					}
					mu.Lock()
					latencies = append(latencies, own...)
					mu.Unlock()
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			if len(latencies) == 0 {
				return
			}
			slices.Sort(latencies)
			b.ReportMetric(float64(len(latencies))/elapsed.Seconds(), "appends/s")
			b.ReportMetric(float64(latencies[len(latencies)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(latencies[len(latencies)*99/100].Microseconds()), "p99-µs")
		})
	}
}

// BenchmarkReplicas compares the stored publishes a second of one NATS
// server (R1) and of a cluster of three (R3), both private to the
// benchmark: 8 publishers on three nodes (each node on its own server in
// the cluster) append to 1,000 rooms, each publish to a random room. The
// two run in turn, three rounds, so that both see the same load of the
// machine: R1, R3, R1, R3, R1, R3. Run it with a fixed count:
//
//	go test -run '^$' -bench Replicas -benchtime 3000x
func BenchmarkReplicas(b *testing.B) {
	const (
		rooms      = 1000
		publishers = 8
	)
	single := startNATS(b)
	cluster := startCluster(b)
	prefix := "wsroomtest.b" + newID()
	var r1, r3 []*Broker
	for i := range clusterSize {
		r1 = append(r1, newNodeOn(b, connectTo(b, single.url), prefix, WithHistoryLimit(100)))
		r3 = append(r3, clusterNode(b, cluster, i, prefix, WithHistoryLimit(100)))
	}
	run := func(b *testing.B, nodes []*Broker) {
		var next atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for p := range publishers {
			node := nodes[p%len(nodes)]
			wg.Go(func() {
				for next.Add(1) <= int64(b.N) {
					room := fmt.Sprintf("bench-%d", mrand.IntN(rooms))
					if _, err := node.Append(context.Background(), room, wsroom.Message{Data: []byte("benchmark")}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
	}
	for range 3 {
		b.Run("R1", func(b *testing.B) { run(b, r1) })
		b.Run("R3", func(b *testing.B) { run(b, r3) })
	}
}
