package natsbroker

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/storetest"
	"go.uber.org/goleak"
)

// TestCloseLeavesNoGoroutines checks that Close ends every goroutine the
// Broker started, presence included, while the connection stays open.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	prefix := testPrefix(t)
	nc := connect(t)
	other := newNode(t, prefix)
	// Let the connection start its own lasting goroutines (the response
	// multiplexer) before taking the baseline.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.AccountInfo(t.Context()); err != nil {
		t.Fatal(err)
	}
	baseline := goleak.IgnoreCurrent()

	b, err := New(t.Context(), nc, WithPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	room := storetest.RoomName(t)
	var sinks []*sink
	for i := range 20 {
		sinks = append(sinks, subscribe(t, b, fmt.Sprintf("%s-%d", room, i)))
	}
	for i := range 20 {
		if err := other.Publish(t.Context(), fmt.Sprintf("%s-%d", room, i), wsroom.Message{Data: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range sinks {
		s.wait(t, 1, 5*time.Second)
	}
	if _, err := b.Last(t.Context(), room+"-0", 10); err != nil {
		t.Fatal(err)
	}
	if err := b.Join(t.Context(), room, wsroom.Member{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Members(t.Context(), room); err != nil {
		t.Fatal(err)
	}
	b.refresh()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := goleak.Find(baseline); err != nil {
		t.Errorf("goroutines left after Close: %v", err)
	}
}
