package wsroom

import "time"

// Observer receives measurements of events that Stats, a set of counters
// and gauges, cannot express: how long the room's loop takes to queue a
// message to its clients, and how long after a message was published a
// client's writer writes it. A metrics library turns them into histograms
// (see the otelwsroom module).
//
// Its methods are called concurrently: Fanout from each room's loop, Write
// from the writers of every client (and, on a single P, from the loop). They
// must be safe for concurrent use, must not block and should return
// quickly: the loop and the writers wait for them, and an Observer that
// panics takes the process down. The events are values the Observer may
// keep.
//
// Further events, if any, will come as new interfaces an Observer may also
// implement, checked by type assertion, so that existing Observers keep
// compiling.
type Observer interface {
	// Fanout is called by a room's loop each time it has queued (or, on a
	// single P, written) one message to the clients it is for.
	Fanout(FanoutEvent)
	// Write is called by a client's writer each time it has written a
	// batch of frames to the connection, before the batch is counted in
	// Stats.MessagesOut.
	Write(WriteEvent)
}

// FanoutEvent describes the room's loop queuing one message to its clients.
type FanoutEvent struct {
	// Room is the name of the room ("" for a room made by New).
	Room string
	// Clients is how many clients the message was handed to.
	Clients int
	// Duration is how long the loop took to queue the message to them:
	// encoding it, and each client's queue or (on a single P) write.
	Duration time.Duration
}

// WriteEvent describes a client's writer writing a batch of frames: live
// messages, history being replayed, and protocol replies.
type WriteEvent struct {
	// Room is the name of the client's room or, for a connection of many
	// rooms (see Registry.MuxHandler), of the room of the batch's oldest
	// live message ("" if it holds none).
	Room string
	// Frames and Bytes are how many frames, and bytes of them, were written.
	Frames, Bytes int
	// Live is how many of the frames are live messages, whose publish
	// time (Message.Time) the room's loop handed on; history and replies
	// have none.
	Live int
	// Latency is how long after the oldest live message of the batch was
	// published the batch was written: the time through the Broker, the
	// room's loop, the client's queue and the write. It is 0 when Live is
	// 0. The publish time is that of the node that published the message,
	// to the millisecond when it came through a Broker that carries
	// messages as MarshalBinary does; a latency that a clock difference
	// between nodes makes negative is 0.
	Latency time.Duration
}

// WithObserver sets an Observer that receives the room's fan-out and write
// measurements (default: none, which costs nothing). Its methods are called
// concurrently from the rooms' loops and the clients' writers, and must
// not block (see Observer). A nil Observer selects the default.
func WithObserver(o Observer) Option {
	return func(cfg *config) { cfg.observer = o }
}

// observeWrite reports a written batch to the observer. oldest is the
// publish time, in Unix nanoseconds, of its oldest live frame, and mem
// that frame's membership.
func (c *Client) observeWrite(frames, bytes, live int, oldest int64, mem *membership) {
	ev := WriteEvent{Frames: frames, Bytes: bytes, Live: live}
	switch {
	case c.room != nil:
		ev.Room = c.room.name
	case mem != nil && mem.room != nil:
		ev.Room = mem.room.name
	}
	if live > 0 {
		ev.Latency = max(time.Duration(time.Now().UnixNano()-oldest), 0)
	}
	c.cfg.observer.Write(ev)
}
