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

// MemoryStoreBytes returns the bytes a MemoryStore counts against its
// bound, and the size it counts a message of no data and no From as.
func MemoryStoreBytes(s *MemoryStore) (total, perMessage int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bytes, msgOverhead
}

// APIRoutes returns the patterns of the server API's routes.
func APIRoutes() []string {
	var out []string
	for _, rt := range (&api{}).routes() {
		out = append(out, rt.pattern)
	}
	return out
}
