package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wsroom/wsroom/redisbroker"
)

// The chat as several nodes over Redis.

func redisAddr() string {
	if a := os.Getenv("REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// redisErr reports, once per run, whether the test Redis answers.
var redisErr = sync.OnceValue(func() error {
	c := redis.NewClient(&redis.Options{Addr: redisAddr(), DialTimeout: time.Second, MaxRetries: -1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.Ping(ctx).Err()
})

// requireRedis skips t, or fails it when CI is set, if Redis cannot be
// reached.
func requireRedis(t testing.TB) {
	t.Helper()
	if err := redisErr(); err != nil {
		msg := fmt.Sprintf("Redis not reachable at %s (%v); start it with: redis-server --daemonize yes --save '' --appendonly no", redisAddr(), err)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// node is one chat server of a cluster.
type node struct {
	s      *Server
	ts     *httptest.Server
	broker *redisbroker.Broker
}

// kill stops the node at once, as if its process died: its connections
// drop and its Broker stops.
func (n *node) kill() {
	n.ts.CloseClientConnections()
	n.s.Close()
	n.broker.Close()
	n.ts.Close()
}

// newRedisNodes starts n chat servers sharing rooms through Redis, under a
// key prefix of their own.
func newRedisNodes(t *testing.T, n int) []*node {
	t.Helper()
	requireRedis(t)
	prefix := fmt.Sprintf("chattest-%d:", time.Now().UnixNano())
	var nodes []*node
	for range n {
		client := redis.NewClient(&redis.Options{Addr: redisAddr()})
		t.Cleanup(func() { client.Close() })
		b := redisbroker.New(client, redisbroker.WithPrefix(prefix))
		t.Cleanup(func() { b.Close() })
		list, add := redisRooms(client, prefix+"chat-rooms")
		s, err := NewServer(Options{Broker: b, StoredRooms: list, RoomUsed: add})
		if err != nil {
			t.Fatal(err)
		}
		ts := httptest.NewServer(s)
		t.Cleanup(ts.Close)
		t.Cleanup(func() { s.Close() })
		nodes = append(nodes, &node{s: s, ts: ts, broker: b})
	}
	t.Cleanup(func() {
		client := redis.NewClient(&redis.Options{Addr: redisAddr()})
		defer client.Close()
		ctx := context.Background()
		keys, _ := client.Keys(ctx, prefix+"*").Result()
		if len(keys) > 0 {
			client.Del(ctx, keys...)
		}
	})
	return nodes
}

// People on two nodes see each other and each other's messages, signed
// with their names by their own node.
func TestRedisNodes(t *testing.T) {
	nodes := newRedisNodes(t, 2)
	ana := dial(t, nodes[0].ts, "lobby", "Ana")
	ana.waitPresence("Ana")
	ben := dial(t, nodes[1].ts, "lobby", "Ben")
	ben.waitPresence("Ana", "Ben")
	ana.waitPresence("Ana", "Ben")

	ana.say("hello from A")
	if m := ben.next("msg"); m.p.Name != "Ana" || m.p.Text != "hello from A" || m.env.Seq != 1 {
		t.Fatalf("Ben got %+v seq %d", m.p, m.env.Seq)
	}
	if m := ana.next("msg"); m.p.Text != "hello from A" {
		t.Fatalf("Ana got %+v, want her own message first", m.p)
	}
	ben.say("hello from B")
	if m := ana.next("msg"); m.p.Name != "Ben" || m.p.Text != "hello from B" || m.env.Seq != 2 {
		t.Fatalf("Ana got %+v seq %d", m.p, m.env.Seq)
	}
	// A room with history on node A only is in the lobby of node B too.
	quiet := dial(t, nodes[0].ts, "quiet", "Ana")
	quiet.waitPresence("Ana")
	quiet.say("anyone?")
	quiet.next("msg")
	resp, body := get(t, nodes[1].ts.URL+"/api/rooms")
	if want := `{"rooms":[{"name":"lobby","people":2},{"name":"quiet","people":1}]}`; resp.StatusCode != http.StatusOK || strings.TrimSpace(body) != want {
		t.Errorf("node B's rooms: %d %s, want %s", resp.StatusCode, body, want)
	}
}

// lobbyCounts returns the lobby's rooms of a node, with how many are in
// each.
func lobbyCounts(t *testing.T, base string) map[string]int {
	t.Helper()
	resp, body := get(t, base+"/api/rooms")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/rooms: %d %s", resp.StatusCode, body)
	}
	var r struct{ Rooms []roomInfo }
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("GET /api/rooms: %v: %s", err, body)
	}
	counts := make(map[string]int)
	for _, room := range r.Rooms {
		counts[room.Name] = room.People
	}
	return counts
}

// The lobby of every node counts the people of the whole cluster, as the
// room's "Here now" does: one person on each node is 2 on both, and a room
// with history that is open on node A only is not empty in node B's lobby. A person in a room
// from two tabs is one.
func TestRedisLobbyCounts(t *testing.T) {
	nodes := newRedisNodes(t, 2)
	ana := dial(t, nodes[0].ts, "lobby", "Ana")
	ana.waitPresence("Ana")
	ben := dial(t, nodes[1].ts, "lobby", "Ben", "key", "bens-browser")
	ben.waitPresence("Ana", "Ben")
	ben2 := dial(t, nodes[1].ts, "lobby", "Ben", "key", "bens-browser")
	ben2.waitPresence("Ana", "Ben")
	quiet := dial(t, nodes[0].ts, "quiet", "Ana")
	quiet.waitPresence("Ana")
	quiet.say("anyone?") // which lists the room in every node's lobby
	quiet.next("msg")
	ana.waitPresence("Ana", "Ben")

	want := map[string]int{"lobby": 2, "quiet": 1}
	for i, n := range nodes {
		if got := lobbyCounts(t, n.ts.URL); !maps.Equal(got, want) {
			t.Errorf("node %c's lobby: %v, want %v", 'A'+i, got, want)
		}
	}
}
