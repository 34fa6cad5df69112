package wsroom

import "sync/atomic"

// Stats is a snapshot of a room's counters on this node, since it was made.
// Its JSON names are its fields' with a lower-case first letter, as the
// server API (Registry.API) sends them.
type Stats struct {
	Clients     int    `json:"clients"`     // clients now
	Queued      int    `json:"queued"`      // frames waiting in clients' queues now, for their writers
	Joins       uint64 `json:"joins"`       // clients that joined
	Leaves      uint64 `json:"leaves"`      // clients that left
	MessagesIn  uint64 `json:"messagesIn"`  // messages read from clients
	BytesIn     uint64 `json:"bytesIn"`     // bytes of those messages
	MessagesOut uint64 `json:"messagesOut"` // messages written to clients (one per client)
	BytesOut    uint64 `json:"bytesOut"`    // bytes of those messages
	Replayed    uint64 `json:"replayed"`    // history messages written to joining or resuming clients
	Resyncs     uint64 `json:"resyncs"`     // resumes refused with StatusResync, and clients the room resynchronised because it lost messages it owed them
	Dropped     uint64 `json:"dropped"`     // messages dropped by the DropOldest or DropNewest policy
	Throttled   uint64 `json:"throttled"`   // messages delayed by the Throttle rate policy
	Errors      uint64 `json:"errors"`      // errors counted: passed to the error hook, or too many at once to report
	Overflow    uint64 `json:"overflow"`    // broker messages the loop was too far behind to take: read back from the store, or dropped if ephemeral (a Broker across nodes; the LocalBroker waits instead, unless the publish's context ends)

	// Messages from clients the Broker did not take at first.
	PublishRetries uint64 `json:"publishRetries"` // retries of a client's message while the Broker failed

	// Clients closed by the room, by reason.
	ClosedSlow      uint64 `json:"closedSlow"`      // send buffer full (CloseSlow)
	ClosedRateLimit uint64 `json:"closedRateLimit"` // over the rate limit (CloseOverLimit), or pinging too often
	ClosedInvalid   uint64 `json:"closedInvalid"`   // bad input: too big, bad UTF-8, codec error, wrong frame type
	ClosedPing      uint64 `json:"closedPing"`      // no pong in time
	ClosedWrite     uint64 `json:"closedWrite"`     // a write failed or timed out: dropped without a close frame
	ClosedRetry     uint64 `json:"closedRetry"`     // the Broker failed for the publish retry time (1013)
}

type counters struct {
	joins, leaves, messagesIn, bytesIn, messagesOut, bytesOut atomic.Uint64
	replayed, resyncs, dropped, throttled, errors             atomic.Uint64
	closedSlow, closedRate, closedInvalid, closedPing         atomic.Uint64
	overflow, publishRetries, closedWrite, closedUnavailable  atomic.Uint64
	queued                                                    atomic.Int64 // a gauge
}

// Stats returns a snapshot of the room's counters. It is cheap: a few atomic
// loads, no lock.
func (r *Room) Stats() Stats {
	st := r.stats.snapshot()
	st.Clients = r.Len()
	return st
}

func (s *counters) snapshot() Stats {
	return Stats{
		Joins:           s.joins.Load(),
		Leaves:          s.leaves.Load(),
		MessagesIn:      s.messagesIn.Load(),
		BytesIn:         s.bytesIn.Load(),
		MessagesOut:     s.messagesOut.Load(),
		BytesOut:        s.bytesOut.Load(),
		Replayed:        s.replayed.Load(),
		Resyncs:         s.resyncs.Load(),
		Dropped:         s.dropped.Load(),
		Throttled:       s.throttled.Load(),
		Errors:          s.errors.Load(),
		ClosedSlow:      s.closedSlow.Load(),
		ClosedRateLimit: s.closedRate.Load(),
		ClosedInvalid:   s.closedInvalid.Load(),
		ClosedPing:      s.closedPing.Load(),
		ClosedWrite:     s.closedWrite.Load(),
		ClosedRetry:     s.closedUnavailable.Load(),
		Overflow:        s.overflow.Load(),
		PublishRetries:  s.publishRetries.Load(),
		Queued:          int(s.queued.Load()),
	}
}
