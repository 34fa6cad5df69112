package wsroom

import "time"

// SetMemoryStoreClock sets the clock a MemoryStore reads, for tests.
func SetMemoryStoreClock(s *MemoryStore, now func() time.Time) { s.now = now }

// SetFanoutShard sets the least number of clients of each part of a
// parallel fan-out until the returned function restores it.
func SetFanoutShard(n int) (restore func()) {
	prev := fanoutShard
	fanoutShard = n
	return func() { fanoutShard = prev }
}
