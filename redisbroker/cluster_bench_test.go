package redisbroker

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wsroom/wsroom"
)

// benchRooms is the number of rooms the cluster benchmarks publish to.
const benchRooms = 1000

// benchPublishers is the number of goroutines that publish at once.
const benchPublishers = 32

// BenchmarkEngines measures stored publishes per second over 1,000 rooms,
// from 32 goroutines of one Broker, against a private single Redis, a
// cluster of one master and a cluster of three masters (no replicas),
// interleaved: each round runs the three in turn, twice. Run it with
// -benchtime 20000x or so.
func BenchmarkEngines(b *testing.B) {
	single := startRedis(b)
	one := startCluster(b, 1, 0)
	three := startCluster(b, 3, 0)
	engines := []struct {
		name   string
		client func(b *testing.B) redis.UniversalClient
		c      *testCluster
	}{
		{"single", func(b *testing.B) redis.UniversalClient {
			return newClientAt(b, single.addr)
		}, nil},
		{"cluster-1-shard", func(b *testing.B) redis.UniversalClient { return one.newClient(b) }, one},
		{"cluster-3-shards", func(b *testing.B) redis.UniversalClient { return three.newClient(b) }, three},
	}
	rooms := make([]string, benchRooms)
	base := roomName(b)
	for i := range rooms {
		rooms[i] = fmt.Sprintf("%s-%d", base, i)
	}
	spread := map[string]int{}
	probe := &Broker{cfg: config{prefix: DefaultPrefix}}
	for _, r := range rooms {
		spread[three.masterOf(probe.channel(r)).addr]++
	}
	b.Logf("%d rooms over the 3-shard cluster's masters: %v", benchRooms, spread)
	for round := range 2 {
		for _, e := range engines {
			b.Run(fmt.Sprintf("%s/round-%d", e.name, round), func(b *testing.B) {
				br := New(e.client(b), WithMaxAge(time.Minute), WithHistoryLimit(100))
				b.Cleanup(func() { br.Close() })
				benchPublishRooms(b, br, rooms)
			})
		}
	}
}

// BenchmarkReplicaAcks measures stored publishes per second and their
// latency on a cluster of three masters with a replica each, with and
// without WithReplicaAcks(1, ...), interleaved.
func BenchmarkReplicaAcks(b *testing.B) {
	c := startCluster(b, 3, 1)
	rooms := make([]string, benchRooms)
	base := roomName(b)
	for i := range rooms {
		rooms[i] = fmt.Sprintf("%s-%d", base, i)
	}
	for round := range 2 {
		for _, acks := range []bool{false, true} {
			name := "no-acks"
			opts := []Option{WithMaxAge(time.Minute), WithHistoryLimit(100)}
			if acks {
				name = "replica-acks-1"
				opts = append(opts, WithReplicaAcks(1, 2*time.Second))
			}
			b.Run(fmt.Sprintf("%s/round-%d", name, round), func(b *testing.B) {
				br := New(c.newClient(b), opts...)
				b.Cleanup(func() { br.Close() })
				benchPublishRooms(b, br, rooms)
			})
		}
	}
}

// benchPublishRooms publishes b.N stored messages over rooms from
// benchPublishers goroutines, and reports the rate and the latencies.
func benchPublishRooms(b *testing.B, br *Broker, rooms []string) {
	data := make([]byte, 128)
	// Warm up: every room has its keys, every connection is open.
	for _, r := range rooms[:100] {
		if _, err := br.PublishSeq(b.Context(), r, wsroom.Message{Data: data}); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Int64
	lat := make([][]time.Duration, benchPublishers)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range benchPublishers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				t0 := time.Now()
				if _, err := br.PublishSeq(b.Context(), rooms[(int(i)*7919)%len(rooms)], wsroom.Message{Data: data}); err != nil {
					b.Error(err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) > 0 {
		b.ReportMetric(float64(len(all))/elapsed.Seconds(), "msgs/s")
		b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
	}
}
