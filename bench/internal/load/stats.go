package load

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// Latencies go into log-linear buckets: exact below 32 ns, then 32 buckets
// per power of two, so a bucket's width is at most 1/32 (3.1%) of its values.
const (
	subBits  = 5
	subCount = 1 << subBits
	nBuckets = (64 - subBits) * subCount
)

func bucketOf(v int64) int {
	if v < subCount {
		return int(max(v, 0))
	}
	e := bits.Len64(uint64(v)) - subBits - 1
	return e*subCount + int(uint64(v)>>e)
}

// bucketBounds returns the smallest and largest value of bucket i.
func bucketBounds(i int) (lo, hi int64) {
	if i < subCount {
		return int64(i), int64(i)
	}
	e := i/subCount - 1
	m := int64(i%subCount + subCount)
	return m << e, (m+1)<<e - 1
}

// Histogram counts latencies in nanoseconds. Its zero value is empty.
type Histogram struct {
	counts [nBuckets]uint64
	n      uint64
	max    int64
}

// Add counts one value.
func (h *Histogram) Add(v int64) {
	h.counts[bucketOf(v)]++
	h.n++
	h.max = max(h.max, v)
}

// Count returns how many values were added.
func (h *Histogram) Count() uint64 { return h.n }

// Max returns the largest value added, exactly.
func (h *Histogram) Max() int64 { return h.max }

// Quantile returns the q-quantile (0 < q <= 1): the upper bound of the
// bucket that holds it, at most Max. It is 0 for an empty histogram.
func (h *Histogram) Quantile(q float64) int64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			_, hi := bucketBounds(i)
			return min(hi, h.max)
		}
	}
	return h.max
}

// nShards spreads the recording of many readers over independent cache
// lines.
const nShards = 16

type shard struct {
	n      atomic.Int64
	max    atomic.Int64
	counts [nBuckets]atomic.Uint32
	_      [64]byte
}

// StepStats records the deliveries of one step from many goroutines at
// once: the reader of connection i records into shard i % nShards.
type StepStats struct {
	shards [nShards]shard
}

// Record counts one delivery with latency lat (ns) by reader id.
func (s *StepStats) Record(id int, lat int64) {
	sh := &s.shards[id%nShards]
	sh.counts[bucketOf(lat)].Add(1)
	sh.n.Add(1)
	for {
		m := sh.max.Load()
		if lat <= m || sh.max.CompareAndSwap(m, lat) {
			return
		}
	}
}

// Count returns the deliveries recorded so far.
func (s *StepStats) Count() int64 {
	var n int64
	for i := range s.shards {
		n += s.shards[i].n.Load()
	}
	return n
}

// Histogram merges the shards into one histogram.
func (s *StepStats) Histogram() *Histogram {
	h := new(Histogram)
	for i := range s.shards {
		sh := &s.shards[i]
		for j := range sh.counts {
			c := uint64(sh.counts[j].Load())
			h.counts[j] += c
			h.n += c
		}
		h.max = max(h.max, sh.max.Load())
	}
	return h
}

// Latency summarises a histogram.
type Latency struct {
	P50, P99, Max time.Duration
}

// Summary returns the median, the 99th percentile and the maximum.
func (h *Histogram) Summary() Latency {
	return Latency{
		P50: time.Duration(h.Quantile(0.50)),
		P99: time.Duration(h.Quantile(0.99)),
		Max: time.Duration(h.max),
	}
}
