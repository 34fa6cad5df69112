package sqlstore

import "time"

// SetClock makes s read the time from now. It must be called before s is
// used.
func SetClock(s *Store, now func() time.Time) { s.now = now }

// TrimEvery is how often, in messages per room, Append trims the room.
const TrimEvery = trimEvery
