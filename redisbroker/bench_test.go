package redisbroker

import (
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/wsroom/wsroom"
)

// BenchmarkPublish measures messages per second published through Redis by
// one node, one at a time and from several goroutines.
func BenchmarkPublish(b *testing.B) {
	data := make([]byte, 128)
	for _, bc := range []struct {
		name      string
		ephemeral bool
		parallel  bool
	}{
		{"stored", false, false},
		{"stored-parallel", false, true},
		{"ephemeral", true, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			br := newBroker(b, WithMaxAge(time.Minute))
			room := roomName(b)
			m := wsroom.Message{Data: data, Ephemeral: bc.ephemeral}
			b.ReportAllocs()
			start := time.Now()
			if bc.parallel {
				b.SetParallelism(4)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := br.Publish(b.Context(), room, m); err != nil {
							b.Error(err)
							return
						}
					}
				})
			} else {
				for b.Loop() {
					if err := br.Publish(b.Context(), room, m); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}

// BenchmarkCrossNodeLatency measures the time from Publish on one node to
// delivery on another, one message at a time.
func BenchmarkCrossNodeLatency(b *testing.B) {
	sub, pub := newBroker(b), newBroker(b, WithMaxAge(time.Minute))
	room := roomName(b)
	got := make(chan wsroom.Message, 1)
	unsub, err := sub.Subscribe(b.Context(), room, func(m wsroom.Message) { got <- m }, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer unsub()
	data := make([]byte, 128)
	var lat []time.Duration
	i := 0
	for b.Loop() {
		i++
		start := time.Now()
		if err := pub.Publish(b.Context(), room, wsroom.Message{Data: data, From: strconv.Itoa(i)}); err != nil {
			b.Fatal(err)
		}
		select {
		case m := <-got:
			lat = append(lat, time.Since(start))
			if m.From != strconv.Itoa(i) {
				b.Fatalf("got message %q, want %d", m.From, i)
			}
		case <-time.After(wait):
			b.Fatal("no delivery")
		}
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkResume1000 measures reading the 1,000 messages a resuming client
// missed: one After call.
func BenchmarkResume1000(b *testing.B) {
	br := newBroker(b, WithMaxAge(time.Minute))
	room := roomName(b)
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
