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

// BenchmarkPresenceCount measures counting the users of a room of 10,000
// users (20,000 connections) three ways: Count (one ZCOUNT), the length of
// Members (the whole list, as rooms counted before UserPresence), and a
// page of 100 users.
func BenchmarkPresenceCount(b *testing.B) {
	requireRedis(b)
	br := newBroker(b, WithPresenceTTL(time.Minute))
	room := roomName(b)
	const users = 10000
	for i := range 2 * users {
		u := "user-" + strconv.Itoa(i%users)
		if _, err := br.JoinUser(b.Context(), room, wsroom.Member{ID: "c" + strconv.Itoa(i), User: u, Info: u}); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("Count", func(b *testing.B) {
		for b.Loop() {
			if n, err := br.Count(b.Context(), room); err != nil || n != users {
				b.Fatalf("Count = %d, %v", n, err)
			}
		}
	})
	b.Run("Members", func(b *testing.B) {
		for b.Loop() {
			if ms, err := br.Members(b.Context(), room); err != nil || len(ms) != 2*users {
				b.Fatalf("Members = %d, %v", len(ms), err)
			}
		}
	})
	b.Run("MembersPage100", func(b *testing.B) {
		for b.Loop() {
			if ms, _, err := br.MembersPage(b.Context(), room, "user-5", 100); err != nil || len(ms) != 100 {
				b.Fatalf("MembersPage = %d, %v", len(ms), err)
			}
		}
	})
}
