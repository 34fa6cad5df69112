package wsclient

import (
	"context"
	"sync"
)

// buffer holds what a reader of a room gets next: messages, a bounded
// number of them, and resyncs, then the error that ended the room.
type buffer struct {
	mu      *sync.Mutex // the owner's
	items   []item
	nmsgs   int           // messages in items
	wake    chan struct{} // closed when items grow or the buffer ends, for waiting readers
	waiting int
	err     error
	done    chan struct{}
	drained func() // called, under mu, when a reader takes the last message
}

// item is what a reader gets next.
type item struct {
	msg Message
	err error // a *ResyncError
}

func newBuffer(mu *sync.Mutex, drained func()) buffer {
	return buffer{mu: mu, wake: make(chan struct{}), done: make(chan struct{}), drained: drained}
}

// next returns the next item, waiting for one until ctx is done; once the
// buffer has ended and is empty, its error.
func (b *buffer) next(ctx context.Context) (Message, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		if len(b.items) > 0 {
			it := b.items[0]
			b.items[0] = item{}
			b.items = b.items[1:]
			if it.err == nil {
				b.nmsgs--
				if b.nmsgs == 0 {
					b.drained()
				}
			}
			return it.msg, it.err
		}
		if b.err != nil {
			return Message{}, b.err
		}
		wake := b.wake
		b.waiting++
		b.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
		}
		b.mu.Lock()
		b.waiting--
		if err := ctx.Err(); err != nil {
			return Message{}, err
		}
	}
}

func (b *buffer) pushLocked(it item) {
	if it.err == nil {
		b.nmsgs++
	} else if n := len(b.items); n > 0 && b.items[n-1].err != nil {
		return // one resync says it
	}
	b.items = append(b.items, it)
	b.wakeLocked()
}

func (b *buffer) wakeLocked() {
	if b.waiting > 0 {
		close(b.wake)
		b.wake = make(chan struct{})
	}
}

// endLocked ends the buffer with err; it reports false if it had ended.
func (b *buffer) endLocked(err error) bool {
	if b.err != nil {
		return false
	}
	b.err = err
	close(b.done)
	b.wakeLocked()
	return true
}
