package natsbroker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
)

// node is one server: a Room on its own Broker and connection, served over
// HTTP.
type node struct {
	room *wsroom.Room
	url  string
}

func newRoomNode(t *testing.T, prefix string) *node {
	t.Helper()
	b := newNode(t, prefix)
	room := wsroom.New(wsroom.WithBroker(b), wsroom.WithCodec(wsroom.JSON()))
	srv := httptest.NewServer(room.Handler())
	t.Cleanup(func() {
		room.Close()
		srv.Close()
	})
	return &node{room: room, url: "ws" + strings.TrimPrefix(srv.URL, "http")}
}

func (n *node) dial(t *testing.T, query string) *websocket.Conn {
	t.Helper()
	want := n.room.Len() + 1
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, n.url+query, nil)
	if err != nil {
		t.Fatalf("Dial(%s): %v", n.url+query, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	deadline := time.Now().Add(5 * time.Second)
	for n.room.Len() < want {
		if time.Now().After(deadline) {
			t.Fatalf("room has %d clients, want %d", n.room.Len(), want)
		}
		time.Sleep(time.Millisecond)
	}
	return c
}

type envelope struct {
	Seq   uint64          `json:"seq"`
	Epoch string          `json:"epoch"`
	Data  json.RawMessage `json:"data"`
}

func readEnvelopes(t *testing.T, c *websocket.Conn, n int) []envelope {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var out []envelope
	for range n {
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("Read after %d of %d envelopes: %v", len(out), n, err)
		}
		var e envelope
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatalf("envelope %q: %v", b, err)
		}
		out = append(out, e)
	}
	return out
}

// TestRoomsAcrossNodes runs one room on three nodes: every message, sent by
// any client on any node, reaches every client in one order, and a client
// that moves from one node to another resumes without loss.
func TestRoomsAcrossNodes(t *testing.T) {
	prefix := testPrefix(t)
	nodes := []*node{newRoomNode(t, prefix), newRoomNode(t, prefix), newRoomNode(t, prefix)}
	var clients []*websocket.Conn
	for _, n := range nodes {
		for range 2 {
			clients = append(clients, n.dial(t, ""))
		}
	}
	mover := nodes[0].dial(t, "")

	const each = 5
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Go(func() {
			for j := range each {
				if err := c.Write(t.Context(), websocket.MessageText, fmt.Appendf(nil, `"c%d-%d"`, i, j)); err != nil {
					t.Errorf("client %d Write: %v", i, err)
					return
				}
			}
		})
	}
	for i, n := range nodes {
		wg.Go(func() {
			if err := n.room.Publish(t.Context(), fmt.Appendf(nil, `"server%d"`, i)); err != nil {
				t.Errorf("node %d Publish: %v", i, err)
			}
		})
	}
	wg.Wait()
	total := len(clients)*each + len(nodes)

	var first []envelope
	for i, c := range clients {
		got := readEnvelopes(t, c, total)
		for k, e := range got {
			if e.Seq != uint64(k+1) || e.Epoch != got[0].Epoch || e.Epoch == "" {
				t.Fatalf("client %d envelope %d = seq %d epoch %q, want seq %d in one epoch", i, k, e.Seq, e.Epoch, k+1)
			}
		}
		if first == nil {
			first = got
			continue
		}
		if !slices.EqualFunc(got, first, func(a, b envelope) bool { return a.Seq == b.Seq && string(a.Data) == string(b.Data) }) {
			t.Errorf("client %d saw another order than client 0", i)
		}
	}
	seen := map[string]bool{}
	for _, e := range first {
		seen[string(e.Data)] = true
	}
	if len(seen) != total {
		t.Errorf("clients saw %d distinct messages, want %d", len(seen), total)
	}

	// The mover reads part of the history on node 0, leaves, and comes back
	// on node 2 while messages keep flowing.
	part := readEnvelopes(t, mover, total-4)
	last := part[len(part)-1]
	mover.Close(websocket.StatusNormalClosure, "moving")
	for i := range 3 {
		if err := nodes[1].room.Publish(t.Context(), fmt.Appendf(nil, `"while away %d"`, i)); err != nil {
			t.Fatal(err)
		}
	}
	moved := nodes[2].dial(t, fmt.Sprintf("?resume=%s:%d", last.Epoch, last.Seq))
	if err := nodes[0].room.Publish(t.Context(), []byte(`"after move"`)); err != nil {
		t.Fatal(err)
	}
	got := readEnvelopes(t, moved, 4+3+1)
	for k, e := range got {
		if want := last.Seq + uint64(k) + 1; e.Seq != want || e.Epoch != last.Epoch {
			t.Errorf("after moving, envelope %d = seq %d epoch %q, want seq %d epoch %q", k, e.Seq, e.Epoch, want, last.Epoch)
		}
	}
	if string(got[4].Data) != `"while away 0"` || string(got[7].Data) != `"after move"` {
		t.Errorf("after moving got %s ... %s, want the messages published meanwhile, then the live one", got[4].Data, got[7].Data)
	}
	if !slices.EqualFunc(got[:4], first[total-4:], func(a, b envelope) bool { return a.Seq == b.Seq && string(a.Data) == string(b.Data) }) {
		t.Errorf("resumed history differs from what the other clients saw")
	}
}
