package redisbroker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wsroom/wsroom"
	"go.uber.org/goleak"
)

func publish(t testing.TB, b *Broker, room, data string) {
	t.Helper()
	if err := b.Publish(t.Context(), room, wsroom.Message{Data: []byte(data)}); err != nil {
		t.Fatalf("Publish(%q) error: %v", room, err)
	}
}

func hasData(data string) func(wsroom.Message) bool {
	return func(m wsroom.Message) bool { return string(m.Data) == data }
}

// checkResumed checks that deliveries are in order without duplicates, and
// that from the first delivery after index i onwards there is no gap.
func checkResumed(t *testing.T, got []wsroom.Message, i int) {
	t.Helper()
	for k := 1; k < len(got); k++ {
		if got[k].Seq <= got[k-1].Seq {
			t.Fatalf("delivery %d has seq %d after seq %d: want increasing (in order, once)", k, got[k].Seq, got[k-1].Seq)
		}
		if k > i+1 && got[k].Seq != got[k-1].Seq+1 {
			t.Errorf("delivery %d has seq %d after seq %d: a gap after delivery resumed", k, got[k].Seq, got[k-1].Seq)
		}
	}
}

// publishUntilDelivered publishes probes to room until s receives one.
func publishUntilDelivered(t *testing.T, pub *Broker, room string, s *sink) {
	t.Helper()
	n := len(s.snapshot())
	deadline := time.Now().Add(wait)
	for i := 0; len(s.snapshot()) == n; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no delivery within %v of the fault", wait)
		}
		publish(t, pub, room, fmt.Sprintf("probe-%d", i))
		time.Sleep(20 * time.Millisecond)
	}
}

// testRecovery subscribes on node a, breaks its connection with fault, and
// checks that deliveries resume in order, once each, and that the messages
// missed meanwhile are in the history.
func testRecovery(t *testing.T, a *Broker, errs *errorLog, fault func(), wantErr string) {
	pub := newBroker(t)
	room := roomName(t)
	s := subscribe(t, a, room)
	publish(t, pub, room, "before")
	before := s.waitN(t, 1)[0]

	fault()
	publishUntilDelivered(t, pub, room, s)
	resumed := len(s.snapshot()) - 1
	const more = 20
	for i := range more {
		publish(t, pub, room, fmt.Sprintf("after-%d", i))
	}
	s.waitFor(t, hasData(fmt.Sprintf("after-%d", more-1)))
	time.Sleep(50 * time.Millisecond) // let a duplicate, if any, arrive
	got := s.snapshot()
	checkResumed(t, got, resumed)
	if n := len(got) - resumed - 1; n != more {
		t.Errorf("got %d deliveries after the first one following the fault, want %d", n, more)
	}

	// What the connection missed is in the history, as a room would ask.
	hist, err := a.After(t.Context(), room, before.Epoch, before.Seq, 0)
	if err != nil {
		t.Fatalf("After(%d) error: %v", before.Seq, err)
	}
	if last := got[len(got)-1]; len(hist) == 0 || hist[len(hist)-1].Seq != last.Seq || hist[0].Seq != before.Seq+1 {
		t.Errorf("After(%d) = seqs %v, want %d..%d", before.Seq, seqs(hist), before.Seq+1, last.Seq)
	}

	var told bool
	for _, err := range errs.all() {
		if strings.HasPrefix(err.Error(), "redisbroker: ") && strings.Contains(err.Error(), wantErr) {
			told = true
		}
	}
	if !told {
		t.Errorf("error handler was told %v, want an error containing %q", errs.all(), wantErr)
	}
}

// TestReconnectAfterKill kills the Broker's pub/sub connection from Redis'
// side.
func TestReconnectAfterKill(t *testing.T) {
	errs := &errorLog{}
	a := newBroker(t, WithErrorHandler(errs.add))
	admin := newClient(t)
	testRecovery(t, a, errs, func() {
		n, err := admin.ClientKillByFilter(t.Context(), "TYPE", "pubsub").Result()
		if err != nil || n < 1 {
			t.Fatalf("CLIENT KILL TYPE pubsub = %d, %v; want at least one connection killed", n, err)
		}
	}, "pub/sub connection failed")
}

// TestReconnectAfterStall makes the Broker's pub/sub connection go silent
// without closing it; the health check must notice and reconnect.
func TestReconnectAfterStall(t *testing.T) {
	requireRedis(t)
	p := newProxy(t, redisAddr(), 0)
	errs := &errorLog{}
	fast := func(c *config) { c.healthInterval, c.pingTimeout = 200*time.Millisecond, 300*time.Millisecond }
	a := New(newClientAt(t, p.addr()), WithMaxAge(testMaxAge), WithErrorHandler(errs.add), fast)
	t.Cleanup(func() { a.Close() })
	testRecovery(t, a, errs, p.stall, "no reply to ping")
}

// TestManyRooms checks that a node receives the traffic of the rooms it has
// subscribers for, and only that.
func TestManyRooms(t *testing.T) {
	a, pub := newBroker(t), newBroker(t)
	admin := newClient(t)
	base := roomName(t)
	rooms := make([]string, 1000)
	for i := range rooms {
		rooms[i] = fmt.Sprintf("%s-%d", base, i)
	}
	target := rooms[500]
	s := newSink()
	unsub, err := a.Subscribe(t.Context(), target, s.deliver, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer unsub()
	before := a.received.Load()
	for _, r := range rooms {
		publish(t, pub, r, r)
	}
	publish(t, pub, target, "end")
	s.waitFor(t, hasData("end"))
	time.Sleep(50 * time.Millisecond)
	if got := s.snapshot(); len(got) != 2 || string(got[0].Data) != target {
		t.Errorf("subscriber got %d messages (%v), want 2: its room's and the end marker", len(got), seqs(got))
	}
	if n := a.received.Load() - before; n != 2 {
		t.Errorf("node read %d messages from Redis, want 2: those of its one room out of %d", n, len(rooms))
	}
	numsub := func() map[string]int64 {
		m, err := admin.PubSubNumSub(t.Context(), a.channel(target), a.channel(rooms[0]), a.channel(rooms[999])).Result()
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	if m := numsub(); m[a.channel(target)] != 1 || m[a.channel(rooms[0])] != 0 || m[a.channel(rooms[999])] != 0 {
		t.Errorf("PUBSUB NUMSUB = %v, want 1 for the subscribed room, 0 for the others", m)
	}
	unsub()
	deadline := time.Now().Add(wait)
	for numsub()[a.channel(target)] != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("channel still subscribed %v after the last unsubscribe", wait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSubscribeIsReady checks that a message published right after
// Subscribe returns is delivered, also when the room's channel was just
// unsubscribed. The subscribing node's commands reach Redis late, through a
// slow proxy, while the publisher's go straight.
func TestSubscribeIsReady(t *testing.T) {
	pub := newBroker(t)
	p := newProxy(t, redisAddr(), 20*time.Millisecond)
	a := New(newClientAt(t, p.addr()), WithMaxAge(testMaxAge))
	t.Cleanup(func() { a.Close() })
	for i := range 10 {
		room := roomName(t)
		if i%2 == 1 {
			unsub, err := a.Subscribe(t.Context(), room, func(wsroom.Message) {}, nil)
			if err != nil {
				t.Fatal(err)
			}
			unsub()
		}
		s := subscribe(t, a, room)
		publish(t, pub, room, "now")
		if got := s.waitN(t, 1); string(got[0].Data) != "now" {
			t.Fatalf("round %d: got %q, want %q", i, got[0].Data, "now")
		}
	}
}

func TestUnsubscribeInsideDeliver(t *testing.T) {
	b := newBroker(t)
	room := roomName(t)
	got := make(chan wsroom.Message, 10)
	var unsub func()
	ready := make(chan struct{})
	unsub, err := b.Subscribe(t.Context(), room, func(m wsroom.Message) {
		<-ready
		got <- m
		unsub()
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	close(ready)
	stay := subscribe(t, b, room)
	publish(t, b, room, "1")
	publish(t, b, room, "2")
	stay.waitN(t, 2)
	time.Sleep(50 * time.Millisecond)
	if n := len(got); n != 1 {
		t.Errorf("handler that unsubscribed itself got %d messages, want 1", n)
	}
}

func TestMalformedMessage(t *testing.T) {
	errs := &errorLog{}
	b := newBroker(t, WithErrorHandler(errs.add))
	room := roomName(t)
	s := subscribe(t, b, room)
	for _, junk := range []string{"junk", "1 e \x07bad", "x y z"} {
		if err := b.client.Publish(t.Context(), b.channel(room), junk).Err(); err != nil {
			t.Fatal(err)
		}
	}
	publish(t, b, room, "good")
	if got := s.waitN(t, 1); len(got) != 1 || string(got[0].Data) != "good" {
		t.Errorf("got %d deliveries, first %q; want only the good message", len(got), got[0].Data)
	}
	if n := len(errs.all()); n != 3 {
		t.Errorf("error handler told of %d errors (%v), want 3", n, errs.all())
	}
}

func TestClose(t *testing.T) {
	client := newClient(t)
	pub := newBroker(t)
	if err := client.Ping(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	leaks := goleak.IgnoreCurrent()
	b := New(client, WithMaxAge(testMaxAge))
	room := roomName(t)
	s := newSink()
	unsub, err := b.Subscribe(t.Context(), room, s.deliver, nil)
	if err != nil {
		t.Fatal(err)
	}
	publish(t, b, room, "1")
	s.waitN(t, 1)
	if err := b.Close(); err != nil {
		t.Errorf("Close error: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close error: %v", err)
	}
	if err := goleak.Find(leaks); err != nil {
		t.Errorf("goroutines left after Close: %v", err)
	}

	publish(t, pub, room, "2")
	time.Sleep(50 * time.Millisecond)
	if n := len(s.snapshot()); n != 1 {
		t.Errorf("got %d deliveries, want 1: none after Close", n)
	}
	unsub() // harmless after Close
	if err := b.Publish(t.Context(), room, wsroom.Message{}); !errors.Is(err, ErrClosed) {
		t.Errorf("Publish after Close error = %v, want ErrClosed", err)
	}
	if _, err := b.Subscribe(t.Context(), room, s.deliver, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Subscribe after Close error = %v, want ErrClosed", err)
	}
	if got, err := b.Last(t.Context(), room, 10); err != nil || len(got) != 2 {
		t.Errorf("Last after Close = %v, %v; want the 2 messages", seqs(got), err)
	}
}

// TestRedisDown uses a port nothing listens on.
func TestRedisDown(t *testing.T) {
	errs := &errorLog{}
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	defer c.Close()
	b := New(c, WithErrorHandler(errs.add))
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	if _, err := b.Subscribe(ctx, "r", func(wsroom.Message) {}, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Subscribe error = %v, want one wrapping context.DeadlineExceeded", err)
	}
	if err := b.Publish(t.Context(), "r", wsroom.Message{}); err == nil || !strings.HasPrefix(err.Error(), "redisbroker: ") {
		t.Errorf("Publish error = %v, want a redisbroker error", err)
	}
	if _, err := b.After(t.Context(), "r", "", 0, 0); err == nil {
		t.Error("After error = nil, want one")
	}
	start := time.Now()
	b.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v", d)
	}
	if len(errs.all()) == 0 {
		t.Error("error handler was told nothing while Redis was unreachable")
	}
}

func TestRingRejected(t *testing.T) {
	r := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1"}})
	defer r.Close()
	b := New(r)
	defer b.Close()
	if err := b.Publish(t.Context(), "r", wsroom.Message{Ephemeral: true}); !errors.Is(err, errRing) {
		t.Errorf("Publish error = %v, want errRing", err)
	}
	if _, err := b.Subscribe(t.Context(), "r", func(wsroom.Message) {}, nil); !errors.Is(err, errRing) {
		t.Errorf("Subscribe error = %v, want errRing", err)
	}
}

// TestLostAfterReconnect checks that a Broker whose pub/sub connection was
// killed, and could not come back while messages were published, calls the
// lost function of every subscription once, after Redis has confirmed the
// new subscriptions: the Broker's commands reach Redis late, through a slow
// proxy, yet a message published as soon as lost is called is delivered.
func TestLostAfterReconnect(t *testing.T) {
	requireRedis(t)
	p := newProxy(t, redisAddr(), 50*time.Millisecond)
	g := newGatedClient(t, p.addr(), "wsroom-test-lost-"+newEpoch()[:8])
	errs := &errorLog{}
	a := New(g.client, WithMaxAge(testMaxAge), WithErrorHandler(errs.add))
	t.Cleanup(func() { a.Close() })
	pub := newBroker(t)
	roomA, roomB, roomGone := roomName(t), roomName(t), roomName(t)
	type call struct {
		room string
		err  error
	}
	lost := make(chan call, 10)
	subs := map[string]*sink{}
	for _, room := range []string{roomA, roomB, roomGone} {
		s := newSink()
		unsub, err := a.Subscribe(t.Context(), room, s.deliver, func(err error) { lost <- call{room, err} })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(unsub)
		if room == roomGone {
			unsub()
		}
		subs[room] = s
	}
	quiet := subscribe(t, a, roomA) // no lost function: must be harmless
	publish(t, pub, roomA, "before")
	subs[roomA].waitN(t, 1)

	g.hold()
	g.killPubSub(t)
	publish(t, pub, roomA, "missed")
	select {
	case c := <-lost:
		t.Fatalf("lost(%v) called for room %s while the Broker could not reconnect", c.err, c.room)
	case <-time.After(300 * time.Millisecond):
	}
	g.release()

	got := map[string]int{}
	deadline := time.After(wait)
	for len(got) < 2 {
		select {
		case c := <-lost:
			got[c.room]++
			if c.err == nil || !strings.HasPrefix(c.err.Error(), "redisbroker: pub/sub connection failed") {
				t.Errorf("lost(%v) for room %s, want the connection's failure", c.err, c.room)
			}
			if c.room == roomA {
				// Subscribed again: this one must arrive.
				publish(t, pub, roomA, "after")
			}
		case <-deadline:
			t.Fatalf("lost called for %v within %v, want rooms A and B", got, wait)
		}
	}
	for _, s := range []*sink{subs[roomA], quiet} {
		if ms := s.waitFor(t, hasData("after")); len(ms) != 2 || ms[0].Seq != 1 || ms[1].Seq != 3 {
			t.Errorf("deliveries %v, want seqs [1 3]: the missed message is for the room to fetch", seqs(ms))
		}
	}
	time.Sleep(100 * time.Millisecond) // let a second call, if any, come
	close(lost)
	for c := range lost {
		got[c.room]++
	}
	if got[roomA] != 1 || got[roomB] != 1 || got[roomGone] != 0 {
		t.Errorf("lost calls per room: A %d, B %d, unsubscribed %d; want 1, 1, 0", got[roomA], got[roomB], got[roomGone])
	}
}

// returns runs f in a goroutine and reports whether it returned within
// wait; the goroutine is waited for at cleanup.
func returns(t *testing.T, f func()) (ok bool, done <-chan struct{}) {
	t.Helper()
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		f()
	}()
	t.Cleanup(func() { <-ch })
	select {
	case <-ch:
		return true, ch
	case <-time.After(wait):
		return false, ch
	}
}

// TestSubscriptionsNotHeldByRedis holds the reconnection of the Broker's
// pub/sub connection (its dial waits, for up to a minute, until the test
// lets it through), as with a Redis that takes long to answer: meanwhile
// another room's unsubscribe returns at once, and a Subscribe returns when
// its own context ends, rather than both waiting for the dial. Once the
// connection is back, the Broker's subscriptions on Redis are those of the
// rooms it has.
func TestSubscriptionsNotHeldByRedis(t *testing.T) {
	requireRedis(t)
	g := newGatedClientWith(t, redisAddr(), "wsroom-test-held-"+newEpoch()[:8], func(o *redis.Options) {
		o.DialTimeout = time.Minute
	})
	losses := make(chan string, 10)
	a := New(g.client, WithMaxAge(testMaxAge))
	t.Cleanup(func() { a.Close() })
	pub := newBroker(t)
	admin := newClient(t)
	roomGone, roomKept, roomLate, roomNew := roomName(t), roomName(t), roomName(t), roomName(t)
	unsubGone, err := a.Subscribe(t.Context(), roomGone, func(wsroom.Message) {}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kept := newSink()
	unsubKept, err := a.Subscribe(t.Context(), roomKept, kept.deliver, func(error) { losses <- roomKept })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unsubKept)

	g.hold()
	g.killPubSub(t)
	select {
	case <-g.held:
	case <-time.After(wait):
		t.Fatal("the Broker did not try to reconnect its pub/sub connection")
	}

	if ok, _ := returns(t, unsubGone); !ok {
		t.Errorf("unsubscribe did not return within %v while the pub/sub connection's dial was held", wait)
	}
	var lateErr error
	ok, lateDone := returns(t, func() {
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		var unsub func()
		unsub, lateErr = a.Subscribe(ctx, roomLate, func(wsroom.Message) {}, nil)
		if unsub != nil {
			unsub()
		}
	})
	if !ok {
		t.Errorf("Subscribe with a 200ms context did not return within %v while the pub/sub connection's dial was held", wait)
	}
	g.release()
	<-lateDone
	if !errors.Is(lateErr, context.DeadlineExceeded) {
		t.Errorf("Subscribe while the dial was held = %v, want context.DeadlineExceeded", lateErr)
	}

	fresh := subscribe(t, a, roomNew)
	select {
	case <-losses:
	case <-time.After(wait):
		t.Fatal("lost was not called after the reconnection")
	}
	publish(t, pub, roomKept, "kept")
	publish(t, pub, roomNew, "new")
	kept.waitFor(t, hasData("kept"))
	fresh.waitFor(t, hasData("new"))
	for _, tc := range []struct {
		room string
		want int64
	}{{roomGone, 0}, {roomLate, 0}, {roomKept, 1}, {roomNew, 1}} {
		ch := a.channel(tc.room)
		waitUntil(t, fmt.Sprintf("Redis to count %d subscriber of %s", tc.want, ch), func() bool {
			n, err := admin.PubSubNumSub(t.Context(), ch).Result()
			return err == nil && n[ch] == tc.want
		})
	}
}
