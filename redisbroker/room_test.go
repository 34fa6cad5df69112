package redisbroker

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"
	"github.com/wsroom/wsroom"
)

// node is one server: a Registry on its own Broker, behind its own HTTP
// server.
type node struct {
	reg *wsroom.Registry
	url string // of the room under test
}

func newNode(t *testing.T, room string, b *Broker) node {
	t.Helper()
	reg := wsroom.NewRegistry(wsroom.WithBroker(b), wsroom.WithCodec(wsroom.JSON()), wsroom.WithSendBuffer(1<<14))
	mux := http.NewServeMux()
	mux.Handle("GET /rooms/{name}", reg.Handler(nil))
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		reg.Close()
		srv.Close()
	})
	return node{reg: reg, url: "ws" + strings.TrimPrefix(srv.URL, "http") + "/rooms/" + room}
}

func (n node) room(t *testing.T, name string) *wsroom.Room {
	t.Helper()
	r, err := n.reg.Room(name)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

type envelope struct {
	Seq   uint64          `json:"seq"`
	Epoch string          `json:"epoch"`
	Data  json.RawMessage `json:"data"`
}

func dialWS(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.Dial(t.Context(), url, nil)
	if err != nil {
		t.Fatalf("Dial(%s) error: %v", url, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

func readEnvelope(t *testing.T, c *websocket.Conn) envelope {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	_, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("Read error: %v", err)
	}
	var e envelope
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("envelope %q: %v", b, err)
	}
	return e
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRoomsAcrossNodes runs one room on three nodes, each a Registry with
// its own Broker: clients on every node write, every client receives every
// message in one order, and a client that moves to another node resumes
// there without loss while others keep publishing.
func TestRoomsAcrossNodes(t *testing.T) {
	name := "multi-" + newEpoch()[:10]
	nodes := []node{newNode(t, name, newBroker(t)), newNode(t, name, newBroker(t)), newNode(t, name, newBroker(t))}
	const perNode, each = 2, 15
	var conns []*websocket.Conn
	for _, n := range nodes {
		for range perNode {
			conns = append(conns, dialWS(t, n.url))
		}
	}
	for i, n := range nodes {
		r := n.room(t, name)
		waitUntil(t, fmt.Sprintf("%d clients on node %d", perNode, i), func() bool { return r.Len() == perNode })
	}

	var wg sync.WaitGroup
	errs := make(chan error, len(conns))
	for i, c := range conns {
		wg.Go(func() {
			for j := range each {
				if err := c.Write(t.Context(), websocket.MessageText, fmt.Appendf(nil, `"c%d-%d"`, i, j)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("client write error: %v", err)
	}

	total := len(conns) * each
	var first []envelope
	for i, c := range conns {
		var got []envelope
		for range total {
			got = append(got, readEnvelope(t, c))
		}
		if i == 0 {
			first = got
		}
		seen := make(map[string]bool)
		for k, e := range got {
			if e.Seq != uint64(k+1) || e.Epoch != first[0].Epoch {
				t.Fatalf("client %d message %d is %s:%d, want %s:%d", i, k, e.Epoch, e.Seq, first[0].Epoch, k+1)
			}
			if string(e.Data) != string(first[k].Data) {
				t.Fatalf("client %d message %d is %s, client 0 saw %s: not one order", i, k, e.Data, first[k].Data)
			}
			seen[string(e.Data)] = true
		}
		if len(seen) != total {
			t.Errorf("client %d saw %d distinct messages, want %d", i, len(seen), total)
		}
	}

	// Client 0 leaves node 0 after message `total`; messages keep coming
	// from node 1 while it reconnects to node 2 with its position.
	last := first[total-1]
	conns[0].Close(websocket.StatusNormalClosure, "")
	r0 := nodes[0].room(t, name)
	waitUntil(t, "client 0 left", func() bool { return r0.Len() == perNode-1 })
	r1 := nodes[1].room(t, name)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var pubs sync.WaitGroup
	pubs.Go(func() {
		for i := 0; ctx.Err() == nil && i < 500; i++ {
			if err := r1.Publish(ctx, fmt.Appendf(nil, `"live-%d"`, i)); err != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
	})
	time.Sleep(20 * time.Millisecond) // some are published while away
	moved := dialWS(t, fmt.Sprintf("%s?resume=%s:%d", nodes[2].url, last.Epoch, last.Seq))
	want := last.Seq + 1
	for range 100 {
		e := readEnvelope(t, moved)
		if e.Seq != want || e.Epoch != last.Epoch {
			cancel()
			pubs.Wait()
			t.Fatalf("moved client got %s:%d, want %s:%d (no gap, no duplicate)", e.Epoch, e.Seq, last.Epoch, want)
		}
		want++
	}
	cancel()
	pubs.Wait()
}

// TestRoomFillsGapAfterReconnect cuts one node's pub/sub connection and
// keeps it from reconnecting while another node publishes: the messages it
// missed are never re-sent on the channel, so its room must notice the gap
// and read them from the history, and its clients must see no hole.
func TestRoomFillsGapAfterReconnect(t *testing.T) {
	admin := newClient(t)
	name := "gap-" + newEpoch()[:10]
	clientName := "wsroom-test-" + name

	var mu sync.Mutex
	var gate chan struct{} // while not nil, dialling waits for it to close
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		g := gate
		mu.Unlock()
		if g != nil {
			select {
			case <-g:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	gated := redis.NewClient(&redis.Options{Addr: redisAddr(), ClientName: clientName, Dialer: dial})
	t.Cleanup(func() { gated.Close() })
	errs := &errorLog{}
	b := New(gated, WithMaxAge(testMaxAge), WithErrorHandler(errs.add))
	t.Cleanup(func() { b.Close() })

	pubNode, gapNode := newNode(t, name, newBroker(t)), newNode(t, name, b)
	c := dialWS(t, gapNode.url)
	r2 := gapNode.room(t, name)
	waitUntil(t, "client joined", func() bool { return r2.Len() == 1 })
	r1 := pubNode.room(t, name)
	if err := r1.Publish(t.Context(), []byte(`"first"`)); err != nil {
		t.Fatal(err)
	}
	if e := readEnvelope(t, c); e.Seq != 1 {
		t.Fatalf("first message has seq %d, want 1", e.Seq)
	}

	// Cut the gap node's pub/sub connection and hold its reconnection.
	mu.Lock()
	gate = make(chan struct{})
	mu.Unlock()
	list, err := admin.ClientList(t.Context()).Result()
	if err != nil {
		t.Fatal(err)
	}
	var id string
	for line := range strings.Lines(list) {
		if strings.Contains(line, " name="+clientName+" ") && strings.Contains(line, " sub=1 ") {
			for f := range strings.FieldsSeq(line) {
				if v, ok := strings.CutPrefix(f, "id="); ok {
					id = v
				}
			}
		}
	}
	if id == "" {
		t.Fatalf("no pub/sub connection named %s in CLIENT LIST:\n%s", clientName, list)
	}
	if err := admin.Do(t.Context(), "CLIENT", "KILL", "ID", id).Err(); err != nil {
		t.Fatal(err)
	}
	const missed = 10
	for i := range missed {
		if err := r1.Publish(t.Context(), fmt.Appendf(nil, `"missed-%d"`, i)); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	close(gate)
	gate = nil
	mu.Unlock()

	// Publish until the gap node is back; its client must read 2, 3, ...
	// without a hole.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var pubs sync.WaitGroup
	pubs.Go(func() {
		for i := 0; ctx.Err() == nil && i < 1000; i++ {
			if err := r1.Publish(ctx, fmt.Appendf(nil, `"after-%d"`, i)); err != nil {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	for want := uint64(2); want <= missed+5; want++ {
		e := readEnvelope(t, c)
		if e.Seq != want {
			cancel()
			pubs.Wait()
			t.Fatalf("client on the reconnected node got seq %d, want %d", e.Seq, want)
		}
	}
	cancel()
	pubs.Wait()
	if len(errs.all()) == 0 {
		t.Error("the gap node's error handler was not told of the lost connection")
	}
}
