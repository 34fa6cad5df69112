package natsbroker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/wsroom/wsroom"
)

// TestAppendNotSentWhileDisconnected appends a message while the server is
// down, with a context that ends before it is back: the message must not
// wait in the connection's reconnect buffer, to be stored on reconnection
// after its caller was told it failed.
func TestAppendNotSentWhileDisconnected(t *testing.T) {
	srv := startNATS(t)
	nc := connectTo(t, srv.url)
	b := newNodeOn(t, nc, "wsroomtest.r"+newID())
	ctx := t.Context()
	const room = "down"
	if _, err := b.Append(ctx, room, wsroom.Message{Data: []byte("first")}); err != nil {
		t.Fatal(err)
	}
	srv.kill()
	waitUntil(t, "the connection lost", func() bool { return !nc.IsConnected() })
	actx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err := b.Append(actx, room, wsroom.Message{Data: []byte("lost")})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Append while the server is down = %v, want a deadline exceeded", err)
	}
	srv.start()
	actx, cancel = context.WithTimeout(ctx, outageWait)
	_, err = b.Append(actx, room, wsroom.Message{Data: []byte("third")})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	all, err := b.Last(ctx, room, 10)
	if err != nil {
		t.Fatal(err)
	}
	var datas []string
	for _, m := range all {
		datas = append(datas, string(m.Data))
	}
	if len(datas) != 2 || datas[1] != "third" {
		t.Errorf("room holds %q, want [first third]: the failed Append was stored", datas)
	}
}
