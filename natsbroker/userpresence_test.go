package natsbroker

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/storetest"
	"github.com/wsroom/wsroom/wsclient"
)

// muxNode is a server node of many rooms (PROTOCOL.md) on b, with presence
// by user; a connection's user is its "user" query parameter.
func muxNode(t *testing.T, b *Broker) string {
	t.Helper()
	reg := wsroom.NewRegistry(wsroom.WithBroker(b), wsroom.WithPresenceEvents(50), wsroom.WithPresenceByUser(),
		wsroom.WithWriteTimeout(2*time.Second),
		wsroom.WithAuthorize(func(r *http.Request) (any, error) { return r.URL.Query().Get("user"), nil }))
	srv := httptest.NewServer(reg.MuxHandler())
	t.Cleanup(func() {
		srv.Close()
		reg.Close()
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http")
}

// presenceEvents records presence frames, as "+user" (a join) or "-user" (a leave).
type presenceEvents struct {
	mu   sync.Mutex
	got  []string
	at   []time.Time
	more chan struct{}
}

// watch joins room at url as user and records the presence events it hears
// until t ends.
func watch(t *testing.T, url, room, user string) *presenceEvents {
	t.Helper()
	c, _, err := websocket.Dial(t.Context(), url+"?user="+user, &websocket.DialOptions{Subprotocols: []string{wsroom.Subprotocol}})
	if err != nil {
		t.Fatal(err)
	}
	ev := &presenceEvents{more: make(chan struct{}, 1)}
	done := make(chan struct{})
	t.Cleanup(func() {
		c.CloseNow()
		<-done
	})
	if err := c.Write(t.Context(), websocket.MessageText, []byte(`{"op":"join","room":"`+room+`"}`)); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(done)
		for {
			_, data, err := c.Read(t.Context())
			if err != nil {
				return
			}
			var f struct {
				Op    string          `json:"op"`
				Join  []wsroom.Member `json:"join"`
				Users []string        `json:"users"`
			}
			if json.Unmarshal(data, &f) != nil || f.Op != "presence" {
				continue
			}
			ev.mu.Lock()
			for _, m := range f.Join {
				ev.got = append(ev.got, "+"+m.User)
				ev.at = append(ev.at, time.Now())
			}
			for _, u := range f.Users {
				ev.got = append(ev.got, "-"+u)
				ev.at = append(ev.at, time.Now())
			}
			ev.mu.Unlock()
			select {
			case ev.more <- struct{}{}:
			default:
			}
		}
	}()
	return ev
}

// waitFor waits until the events heard are want, in any order, and
// returns when the last came.
func (ev *presenceEvents) waitFor(t *testing.T, want ...string) time.Time {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		ev.mu.Lock()
		got := slices.Clone(ev.got)
		var last time.Time
		if len(ev.at) > 0 {
			last = ev.at[len(ev.at)-1]
		}
		ev.mu.Unlock()
		// Events of one sweep come in no particular order: compare
		// the events as sets, each one counted.
		slices.Sort(got)
		sorted := slices.Sorted(slices.Values(want))
		if slices.Equal(got, sorted) {
			return last
		}
		if len(got) >= len(want) {
			t.Fatalf("presence events %v, want %v", got, want)
		}
		select {
		case <-ev.more:
		case <-deadline:
			t.Fatalf("presence events %v, want %v", got, want)
		}
	}
}

func dialUser(t *testing.T, url, user, room string) *wsclient.Client {
	t.Helper()
	c, err := wsclient.Dial(t.Context(), url+"?user="+user)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Join(t.Context(), room); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestUserPresenceAcrossNodes: a user with tabs on two nodes joins once and
// leaves once; when a node dies without a word (its NATS connection
// closed, its clients left there), the other node announces the last
// leaves of its users once their lease ran out.
func TestUserPresenceAcrossNodes(t *testing.T) {
	prefix := testPrefix(t)
	ttl := MinPresenceTTL
	a := newNode(t, prefix, WithPresenceTTL(ttl))
	ncB := connect(t)
	dying := newNodeOn(t, ncB, prefix, WithPresenceTTL(ttl))
	urlA, urlB := muxNode(t, a), muxNode(t, dying)
	room := storetest.RoomName(t)
	obs := watch(t, urlA, room, "obs")
	obs.waitFor(t, "+obs")

	ana1 := dialUser(t, urlA, "ana", room)
	obs.waitFor(t, "+obs", "+ana")
	dialUser(t, urlB, "ana", room) // a second tab, on the other node: no join
	dialUser(t, urlB, "ben", room)
	obs.waitFor(t, "+obs", "+ana", "+ben")
	cy := dialUser(t, urlB, "cy", room)
	obs.waitFor(t, "+obs", "+ana", "+ben", "+cy")
	cy.Close()
	obs.waitFor(t, "+obs", "+ana", "+ben", "+cy", "-cy")
	ana1.Close() // ana still has her tab on the dying node
	dialUser(t, urlA, "di", room)
	obs.waitFor(t, "+obs", "+ana", "+ben", "+cy", "-cy", "+di")

	ncB.Close() // node B dies: no leave reaches NATS, its leases lapse
	died := time.Now()
	last := obs.waitFor(t, "+obs", "+ana", "+ben", "+cy", "-cy", "+di", "-ana", "-ben")
	t.Logf("the dead node's users' leaves came %v after it died (lease %v, sweeps every %v)", last.Sub(died).Round(time.Millisecond), ttl, ttl/3)
	if n, err := a.Count(t.Context(), room); err != nil || n != 2 {
		t.Errorf("Count = %d, %v; want 2 (obs and di)", n, err)
	}
}
