package wsroom

import "time"

// SetMemoryStoreClock sets the clock a MemoryStore reads, for tests.
func SetMemoryStoreClock(s *MemoryStore, now func() time.Time) { s.now = now }
