package load

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

func TestBuckets(t *testing.T) {
	prevHi := int64(-1)
	for i := range nBuckets {
		lo, hi := bucketBounds(i)
		if lo != prevHi+1 || hi < lo {
			t.Fatalf("bucket %d: [%d, %d] after %d", i, lo, hi, prevHi)
		}
		if bucketOf(lo) != i || bucketOf(hi) != i {
			t.Fatalf("bucket %d: bucketOf(%d)=%d, bucketOf(%d)=%d", i, lo, bucketOf(lo), hi, bucketOf(hi))
		}
		if lo >= subCount && float64(hi-lo+1)/float64(lo) > 1.0/subCount+1e-9 {
			t.Fatalf("bucket %d too wide: [%d, %d]", i, lo, hi)
		}
		prevHi = hi
		if hi < 0 || hi == 1<<63-1 {
			break
		}
	}
	if bucketOf(-5) != 0 {
		t.Fatal("negative values go to bucket 0")
	}
}

func TestQuantiles(t *testing.T) {
	var h Histogram
	if h.Quantile(0.5) != 0 {
		t.Fatal("empty histogram")
	}
	// 1 µs .. 10 ms, uniformly, shuffled.
	vals := make([]int64, 10_000)
	for i := range vals {
		vals[i] = int64(i+1) * 1000
	}
	rand.Shuffle(len(vals), func(i, j int) { vals[i], vals[j] = vals[j], vals[i] })
	for _, v := range vals {
		h.Add(v)
	}
	for _, tc := range []struct {
		q    float64
		want int64
	}{{0.5, 5_000_000}, {0.99, 9_900_000}, {0.999, 9_990_000}, {1, 10_000_000}} {
		got := h.Quantile(tc.q)
		if got < tc.want || float64(got) > float64(tc.want)*(1+1.0/subCount) {
			t.Errorf("q%v = %d, want %d (+3.1%%)", tc.q, got, tc.want)
		}
	}
	if h.Max() != 10_000_000 || h.Count() != 10_000 {
		t.Fatalf("max %d count %d", h.Max(), h.Count())
	}
	s := h.Summary()
	if s.Max != 10*time.Millisecond || s.P50 < 5*time.Millisecond || s.P99 > s.Max {
		t.Fatalf("summary %+v", s)
	}

	// One outlier: the p99 of 99 fast and 1 slow is fast, the max is slow.
	var h2 Histogram
	for range 99 {
		h2.Add(100)
	}
	h2.Add(int64(time.Second))
	if h2.Quantile(0.99) > 103 || h2.Max() != int64(time.Second) {
		t.Fatalf("p99 %d max %d", h2.Quantile(0.99), h2.Max())
	}
}

func TestStepStatsConcurrent(t *testing.T) {
	var s StepStats
	var wg sync.WaitGroup
	for id := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				s.Record(id, int64(i*1000+id))
			}
		})
	}
	wg.Wait()
	h := s.Histogram()
	if s.Count() != 8000 || h.Count() != 8000 {
		t.Fatalf("count %d, histogram %d", s.Count(), h.Count())
	}
	if h.Max() != 999*1000+7 {
		t.Fatalf("max %d", h.Max())
	}
	if p50 := h.Quantile(0.5); p50 < 495_000 || p50 > 520_000 {
		t.Fatalf("p50 %d", p50)
	}
}
