package natsbroker

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/storetest"
)

// TestConcurrentStart starts many nodes at once on a fresh prefix, so that
// they race to create the stream and the presence bucket, and checks that
// every one of them starts, joins its member, and lists every member at
// once. It runs a server of its own: a race of stream updates and creations
// can crash a NATS 2.9 server.
func TestConcurrentStart(t *testing.T) {
	const nodes, rounds = 16, 20
	url := startServer(t)
	clients := make([]*nats.Conn, nodes)
	for i := range clients {
		clients[i] = connectTo(t, url)
	}
	for r := range rounds {
		prefix := "wsroomtest.r" + newID()
		room := storetest.RoomName(t)
		brokers := make([]*Broker, nodes)
		errs := make([]error, nodes)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range nodes {
			wg.Go(func() {
				<-start
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				b, err := New(ctx, clients[i], WithPrefix(prefix))
				if err != nil {
					errs[i] = fmt.Errorf("New: %w", err)
					return
				}
				brokers[i] = b
				if err := b.Join(ctx, room, wsroom.Member{ID: fmt.Sprintf("m%02d", i)}); err != nil {
					errs[i] = fmt.Errorf("Join: %w", err)
				}
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("round %d, node %d: %v", r, i, err)
			}
		}
		var want []string
		for i := range nodes {
			want = append(want, fmt.Sprintf("m%02d", i))
		}
		for i, b := range brokers {
			if b == nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			ms, err := b.Members(ctx, room)
			cancel()
			var got []string
			for _, m := range ms {
				got = append(got, m.ID)
			}
			slices.Sort(got)
			if err != nil || !slices.Equal(got, want) {
				t.Errorf("round %d: node %d lists %v, %v; want %v", r, i, got, err, want)
			}
		}
		for _, b := range brokers {
			if b != nil {
				b.Close()
			}
		}
		if t.Failed() {
			return
		}
	}
}

// TestEnsureStreamCreatedMeanwhile has another client create the stream
// between ensureStream's look-up and its create, with other limits: the
// create fails with "stream name already in use", and ensureStream looks
// again and brings the limits to its own.
func TestEnsureStreamCreatedMeanwhile(t *testing.T) {
	nc := connect(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	other, err := jetstream.New(connect(t))
	if err != nil {
		t.Fatal(err)
	}
	name := "WSROOMTEST_ENSURE_" + strings.ToUpper(newID())
	t.Cleanup(func() { js.DeleteStream(context.Background(), name) })
	cfg := jetstream.StreamConfig{Name: name, Subjects: []string{strings.ToLower(name) + ".*"}, MaxAge: time.Minute}
	creates, updates := 0, 0
	s, err := ensureStream(t.Context(), js, name,
		func(c jetstream.StreamConfig) bool { return c.MaxAge == cfg.MaxAge },
		func(ctx context.Context) error {
			creates++
			if creates == 1 {
				theirs := cfg
				theirs.MaxAge = time.Hour
				if _, err := other.CreateStream(ctx, theirs); err != nil {
					t.Fatal(err)
				}
			}
			_, err := js.CreateStream(ctx, cfg)
			if !isCreateRace(err) {
				t.Errorf("create error = %v, want one isCreateRace accepts", err)
			}
			return err
		},
		func(ctx context.Context) error {
			updates++
			_, err := js.UpdateStream(ctx, cfg)
			return err
		})
	if err != nil {
		t.Fatalf("ensureStream error: %v", err)
	}
	if got := s.CachedInfo().Config.MaxAge; got != cfg.MaxAge || creates != 1 || updates != 1 {
		t.Errorf("stream MaxAge %v after %d creates and %d updates, want %v after 1 and 1", got, creates, updates, cfg.MaxAge)
	}
}
