package sqlstore

import (
	"context"
	"time"
)

// SetClock makes s read the time from now. It must be called before s is
// used.
func SetClock(s *Store, now func() time.Time) { s.now = now }

// TrimEvery is how often, in messages per room, Append trims the room.
const TrimEvery = trimEvery

// Sweep runs one sweep pass of s.
func Sweep(s *Store) error { return s.sweep(context.Background()) }

// SetSweepHook makes s call hook at stages of a sweep: "selected" once a
// batch of rooms has been read, "deleted" once the empty rooms of a batch
// have been deleted, before the transaction commits. It must be called
// before s is used.
func SetSweepHook(s *Store, hook func(stage string)) { s.sweepHook = hook }

// SweepBatch is how many rooms a sweep reads at a time.
const SweepBatch = sweepBatch

// SweepRows bounds how many messages a sweep deletes per transaction.
const SweepRows = sweepRows

// Crash stops b renewing its presence leases and forgets its members,
// without removing their rows, as a crash would.
func (b *Broker) Crash() { b.stopRenewing() }
