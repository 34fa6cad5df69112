package wsclient

import (
	"context"
	"errors"
	"testing"
)

// A publish past the bound of frames waiting to be written returns
// ErrQueueFull at once, and queues nothing.
func TestQueueFull(t *testing.T) {
	c := &Client{cfg: newConfig([]Option{WithQueue(2)}), done: make(chan struct{}), rooms: map[string]*Room{}, pending: map[string]*pending{}}
	c.sess = &session{wake: make(chan struct{}, 1)} // no writer: nothing leaves the queue
	r := &Room{c: c, name: "a", onServer: true, joined: true, ready: make(chan struct{})}
	r.buf = newBuffer(&c.mu, func() {})
	c.rooms["a"] = r
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // each publish is queued, then given up
	for i := range 2 {
		if _, err := r.Publish(ctx, []byte(`1`)); !errors.Is(err, context.Canceled) {
			t.Fatalf("Publish %d = %v, want context.Canceled once queued", i, err)
		}
	}
	if _, err := r.Publish(ctx, []byte(`1`)); !errors.Is(err, ErrQueueFull) {
		t.Errorf("third Publish = %v, want ErrQueueFull", err)
	}
	if n := len(c.sess.out); n != 2 {
		t.Errorf("%d frames queued, want 2", n)
	}
	// The default bound follows the hello's inflight and burst.
	c.cfg.queue = 0
	c.hello, c.limits = true, Limits{Inflight: 3, Burst: 20}
	if n := c.queueLimitLocked(); n != 23 {
		t.Errorf("queue bound %d with inflight 3 and burst 20, want 23", n)
	}
}
