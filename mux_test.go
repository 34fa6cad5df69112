package wsroom_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
	"github.com/google/go-cmp/cmp"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/internal/wspipe"
)

// frame is any frame of the wsroom.v3 protocol, as a client reads it.
type frame struct {
	Op      string          `json:"op"`
	ID      string          `json:"id,omitempty"`
	Room    string          `json:"room,omitempty"`
	Seq     uint64          `json:"seq,omitempty"`
	Epoch   string          `json:"epoch,omitempty"`
	From    string          `json:"from,omitempty"`
	Data    json.RawMessage `json:"data,omitempty"`
	Code    string          `json:"code,omitempty"`
	Message string          `json:"message,omitempty"`
	Reason  string          `json:"reason,omitempty"`
	Resume  string          `json:"resume,omitempty"`
	Members []wsroom.Member `json:"members,omitempty"`
	Join    []wsroom.Member `json:"join,omitempty"`
	Leave   []string        `json:"leave,omitempty"`
	Count   *int            `json:"count,omitempty"`
	Text    *string         `json:"text,omitempty"`
	Bytes   []byte          `json:"bytes,omitempty"`
	Conn    string          `json:"conn,omitempty"`
	Limits  map[string]int  `json:"limits,omitempty"`
}

// muxFixture is a Registry serving connections of many rooms over loopback.
type muxFixture struct {
	reg *wsroom.Registry
	url string
}

func newMux(t *testing.T, opts ...wsroom.Option) *muxFixture {
	t.Helper()
	reg := wsroom.NewRegistry(opts...)
	srv := newServer(t, reg.MuxHandler())
	t.Cleanup(func() { reg.Close() })
	return &muxFixture{reg: reg, url: "ws" + strings.TrimPrefix(srv.URL, "http")}
}

func (f *muxFixture) dial(t *testing.T) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.Dial(t.Context(), f.url, &websocket.DialOptions{Subprotocols: []string{wsroom.Subprotocol}})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	if c.Subprotocol() != wsroom.Subprotocol {
		t.Fatalf("subprotocol %q, want %q", c.Subprotocol(), wsroom.Subprotocol)
	}
	t.Cleanup(func() { c.CloseNow() })
	expectHello(t, c)
	return c
}

// expectHello reads the hello frame every connection of many rooms starts
// with.
func expectHello(t *testing.T, c *websocket.Conn) frame {
	t.Helper()
	h := expect(t, c, "hello")
	if h.Conn == "" || h.Limits == nil || h.Limits["inflight"] == 0 {
		t.Fatalf("hello = %+v, want a connection id and limits", h)
	}
	return h
}

func send(t *testing.T, c *websocket.Conn, req string) {
	t.Helper()
	if err := c.Write(t.Context(), websocket.MessageText, []byte(req)); err != nil {
		t.Fatalf("Write(%s): %v", req, err)
	}
}

func recv(t *testing.T, c *websocket.Conn) frame {
	t.Helper()
	var f frame
	s := read(t, c)
	if err := json.Unmarshal([]byte(s), &f); err != nil {
		t.Fatalf("frame %q: %v", s, err)
	}
	return f
}

// expect reads the next frame and checks its op.
func expect(t *testing.T, c *websocket.Conn, op string) frame {
	t.Helper()
	f := recv(t, c)
	if f.Op != op {
		t.Fatalf("got %+v, want op %q", f, op)
	}
	return f
}

// msgs reads n frames, which must be messages, as "room:seq:data" (or
// "room:seq:text:"..."" for a text payload).
func msgs(t *testing.T, c *websocket.Conn, n int) []string {
	t.Helper()
	var out []string
	for range n {
		f := expect(t, c, "msg")
		data := string(f.Data)
		if f.Text != nil {
			data = fmt.Sprintf("text:%q", *f.Text)
		}
		out = append(out, fmt.Sprintf("%s:%d:%s", f.Room, f.Seq, data))
	}
	return out
}

// One connection in two rooms gets each room's messages, in each room's
// order, and acks for its publishes; a one-room client of the same room
// sees the same messages.
func TestMuxOneConnectionManyRooms(t *testing.T) {
	f := newMux(t, wsroom.WithCodec(wsroom.JSON()))
	c := f.dial(t)
	send(t, c, `{"op":"join","room":"a","id":"j1"}`)
	if j := expect(t, c, "joined"); j.Room != "a" || j.ID != "j1" || j.Seq != 0 {
		t.Errorf("joined = %+v, want room a, id j1, seq 0", j)
	}
	send(t, c, `{"op":"join","room":"b"}`)
	expect(t, c, "joined")
	send(t, c, `{"op":"pub","room":"a","id":"p1","data":{"n":1}}`)
	got := []frame{recv(t, c), recv(t, c)}
	var ack, msg frame
	for _, g := range got {
		switch g.Op {
		case "ack":
			ack = g
		case "msg":
			msg = g
		}
	}
	if ack.ID != "p1" || ack.Seq != 1 || ack.Room != "a" || ack.Epoch == "" {
		t.Errorf("ack = %+v, want p1 for seq 1 of a", ack)
	}
	if msg.Room != "a" || msg.Seq != 1 || string(msg.Data) != `{"n":1}` || msg.From == "" {
		t.Errorf("msg = %+v, want seq 1 of a from the client", msg)
	}
	for i := range 3 {
		if err := f.reg.Publish(t.Context(), "b", fmt.Appendf(nil, `"b%d"`, i)); err != nil {
			t.Fatal(err)
		}
		if err := f.reg.Publish(t.Context(), "a", fmt.Appendf(nil, `"a%d"`, i)); err != nil {
			t.Fatal(err)
		}
	}
	var gotA, gotB []string
	for _, m := range msgs(t, c, 6) {
		if strings.HasPrefix(m, "a:") {
			gotA = append(gotA, m)
		} else {
			gotB = append(gotB, m)
		}
	}
	if diff := cmp.Diff([]string{`a:2:"a0"`, `a:3:"a1"`, `a:4:"a2"`}, gotA); diff != "" {
		t.Errorf("room a (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{`b:1:"b0"`, `b:2:"b1"`, `b:3:"b2"`}, gotB); diff != "" {
		t.Errorf("room b (-want +got):\n%s", diff)
	}
	send(t, c, `{"op":"leave","room":"b","id":"l1"}`)
	if l := expect(t, c, "left"); l.Room != "b" || l.Reason != "requested" || l.ID != "l1" {
		t.Errorf("left = %+v", l)
	}
	f.reg.Publish(t.Context(), "b", []byte(`"after"`))
	f.reg.Publish(t.Context(), "a", []byte(`"a3"`))
	if got := msgs(t, c, 1); got[0] != `a:5:"a3"` {
		t.Errorf("after leaving b, got %v, want only a's message", got)
	}
	if s := f.reg.Stats(); s.Clients != 1 || s.Joins != 1 {
		t.Errorf("Registry.Stats() Clients %d Joins %d, want 1 and 1", s.Clients, s.Joins)
	}
}

// A client that reconnects and resumes each room gets exactly what it
// missed in each, and "last" sends the room's last messages.
func TestMuxResumeEachRoom(t *testing.T) {
	f := newMux(t, wsroom.WithCodec(wsroom.JSON()))
	c := f.dial(t)
	pos := map[string]string{}
	for _, room := range []string{"a", "b", "c"} {
		send(t, c, fmt.Sprintf(`{"op":"join","room":%q}`, room))
		expect(t, c, "joined")
		f.reg.Publish(t.Context(), room, []byte(`1`))
		m := expect(t, c, "msg")
		pos[room] = fmt.Sprintf("%s:%d", m.Epoch, m.Seq)
	}
	c.CloseNow()
	for _, name := range []string{"a", "b", "c"} {
		r, _ := f.reg.Room(name)
		waitUntil(t, "the closed connection left room "+name, func() bool { return r.Len() == 0 })
	}
	for _, room := range []string{"a", "b", "c"} {
		for i := 2; i <= 3; i++ {
			f.reg.Publish(t.Context(), room, fmt.Appendf(nil, "%d", i))
		}
	}
	c2 := f.dial(t)
	for _, room := range []string{"a", "b", "c"} {
		send(t, c2, fmt.Sprintf(`{"op":"join","room":%q,"resume":%q}`, room, pos[room]))
		if j := expect(t, c2, "joined"); j.Seq != 3 {
			t.Errorf("joined %s at seq %d, want 3", room, j.Seq)
		}
		if diff := cmp.Diff([]string{room + ":2:2", room + ":3:3"}, msgs(t, c2, 2)); diff != "" {
			t.Errorf("resume of %s (-want +got):\n%s", room, diff)
		}
	}
	c3 := f.dial(t)
	send(t, c3, `{"op":"join","room":"a","last":2,"members":true}`)
	if j := expect(t, c3, "joined"); len(j.Members) != 2 {
		t.Errorf("joined members = %v, want 2 (c2 and c3)", j.Members)
	}
	if diff := cmp.Diff([]string{"a:2:2", "a:3:3"}, msgs(t, c3, 2)); diff != "" {
		t.Errorf("last 2 (-want +got):\n%s", diff)
	}
}

// A resync of one room takes the client out of that room only; the
// connection and its other rooms go on.
func TestMuxResyncOneRoom(t *testing.T) {
	store := wsroom.NewMemoryStore(2, 0)
	b := &lossyBroker{LocalBroker: wsroom.NewLocalBroker(store)}
	f := newMux(t, wsroom.WithBroker(b), wsroom.WithCodec(wsroom.JSON()))
	c := f.dial(t)
	for _, room := range []string{"a", "b"} {
		send(t, c, fmt.Sprintf(`{"op":"join","room":%q}`, room))
		expect(t, c, "joined")
	}
	f.reg.Publish(t.Context(), "a", []byte(`1`))
	expect(t, c, "msg")
	b.dropping.Store(true)
	for i := 2; i <= 5; i++ { // the store keeps only 4 and 5
		f.reg.Publish(t.Context(), "a", fmt.Appendf(nil, "%d", i))
	}
	b.dropping.Store(false)
	b.reconnected()
	if r := expect(t, c, "resync"); r.Room != "a" {
		t.Errorf("resync = %+v, want room a", r)
	}
	f.reg.Publish(t.Context(), "b", []byte(`"still here"`))
	if got := msgs(t, c, 1); got[0] != `b:1:"still here"` {
		t.Errorf("after a's resync got %v, want b's message", got)
	}
	send(t, c, `{"op":"join","room":"a","last":5}`)
	if j := expect(t, c, "joined"); j.Seq != 5 {
		t.Errorf("rejoined a at %d, want 5", j.Seq)
	}
	if diff := cmp.Diff([]string{"a:4:4", "a:5:5"}, msgs(t, c, 2)); diff != "" {
		t.Errorf("rejoin of a (-want +got):\n%s", diff)
	}
}

// A publish retried with the same id, after a reconnect, gets the first
// ack and is not published twice.
func TestMuxRetriedPublishIsPublishedOnce(t *testing.T) {
	f := newMux(t, wsroom.WithCodec(wsroom.JSON()))
	c := f.dial(t)
	send(t, c, `{"op":"join","room":"a"}`)
	expect(t, c, "joined")
	send(t, c, `{"op":"pub","room":"a","id":"x-1","data":"once"}`)
	var first frame
	for first.Op != "ack" {
		first = recv(t, c)
	}
	c.CloseNow()
	c2 := f.dial(t)
	send(t, c2, `{"op":"join","room":"a","resume":"`+first.Epoch+`:1"}`)
	expect(t, c2, "joined")
	send(t, c2, `{"op":"pub","room":"a","id":"x-1","data":"once"}`)
	again := expect(t, c2, "ack")
	if again.Seq != first.Seq || again.Epoch != first.Epoch {
		t.Errorf("retried ack = %+v, want %+v", again, first)
	}
	room, _ := f.reg.Room("a")
	send(t, c2, `{"op":"pub","room":"a","id":"x-2","data":"next"}`)
	for {
		if fr := recv(t, c2); fr.Op == "ack" {
			if fr.Seq != 2 {
				t.Errorf("next publish got seq %d, want 2: the retry was published again", fr.Seq)
			}
			break
		}
	}
	_ = room
}

// Every kind of bad input gets the error or the close code PROTOCOL.md
// gives, and disturbs nobody else.
func TestMuxBadInput(t *testing.T) {
	f := newMux(t, wsroom.WithMaxRoomsPerClient(2), wsroom.WithReadLimit(1024),
		wsroom.WithJoinCheck(func(c *wsroom.Client, room string) error {
			if room == "secret" {
				return errors.New("members only")
			}
			return nil
		}))
	bystander := f.dial(t)
	send(t, bystander, `{"op":"join","room":"a"}`)
	expect(t, bystander, "joined")

	errorTests := []struct {
		name, req, code string
	}{
		{"unknown op", `{"op":"dance","id":"1"}`, "unknown_op"},
		{"pub to a room not joined", `{"op":"pub","room":"z","id":"1","data":1}`, "not_joined"},
		{"leave of a room not joined", `{"op":"leave","room":"z","id":"1"}`, "not_joined"},
		{"bad room name", `{"op":"join","room":"../etc","id":"1"}`, "bad_room"},
		{"refused by the join check", `{"op":"join","room":"secret","id":"1"}`, "forbidden"},
		{"bad resume", `{"op":"join","room":"a","resume":"nope","id":"1"}`, "bad_request"},
		{"resume from another epoch", `{"op":"join","room":"a","resume":"old:3","id":"1"}`, "resync"},
		{"wrong type", `{"op":"join","room":7,"id":"1"}`, "bad_request"},
		{"id too long", `{"op":"join","room":"a","id":"` + strings.Repeat("x", 65) + `"}`, "bad_request"},
	}
	c := f.dial(t)
	for _, tt := range errorTests {
		send(t, c, tt.req)
		if e := expect(t, c, "error"); e.Code != tt.code || e.Message == "" {
			t.Errorf("%s: error %+v, want code %q with a message", tt.name, e, tt.code)
		}
	}
	send(t, c, `{"op":"join","room":"a"}`)
	expect(t, c, "joined")
	send(t, c, `{"op":"join","room":"b"}`)
	expect(t, c, "joined")
	send(t, c, `{"op":"join","room":"c","id":"3"}`)
	if e := expect(t, c, "error"); e.Code != "too_many_rooms" {
		t.Errorf("third room: %+v, want too_many_rooms", e)
	}

	closeTests := []struct {
		name  string
		typ   websocket.MessageType
		frame string
		code  websocket.StatusCode
	}{
		{"binary frame", websocket.MessageBinary, `{"op":"join","room":"a"}`, websocket.StatusUnsupportedData},
		{"not JSON", websocket.MessageText, `hello`, websocket.StatusInvalidFramePayloadData},
		{"JSON but not an object", websocket.MessageText, `[1,2]`, websocket.StatusInvalidFramePayloadData},
		{"invalid UTF-8", websocket.MessageText, "{\"op\":\"pub\",\"room\":\"a\",\"data\":\"\xff\"}", websocket.StatusInvalidFramePayloadData},
		{"over the read limit", websocket.MessageText, `{"op":"pub","room":"a","data":"` + strings.Repeat("x", 2000) + `"}`, websocket.StatusMessageTooBig},
	}
	for _, tt := range closeTests {
		c := f.dial(t)
		send(t, c, `{"op":"join","room":"a"}`)
		expect(t, c, "joined")
		if err := c.Write(t.Context(), tt.typ, []byte(tt.frame)); err != nil {
			t.Fatal(err)
		}
		if code, _ := closeStatus(t, c); code != tt.code {
			t.Errorf("%s: closed with %v, want %v", tt.name, code, tt.code)
		}
	}
	f.reg.Publish(t.Context(), "a", []byte(`"fine"`))
	if got := msgs(t, bystander, 1); got[0] != `a:1:"fine"` {
		t.Errorf("bystander got %v", got)
	}

	resp, err := http.Get(strings.Replace(f.url, "ws", "http", 1))
	if err == nil {
		resp.Body.Close()
	}
	_, resp, err = websocket.Dial(t.Context(), f.url, nil) // no subprotocol
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("dial without the subprotocol: %v, want 400", err)
	}
}

// A stuck connection of many rooms is handled by its slow-client policy and
// delays no room.
func TestMuxStuckClientDelaysNoRoom(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := wsroom.NewRegistry(wsroom.WithSendBuffer(4), wsroom.WithPing(0, 0))
		defer reg.Close()
		h := reg.MuxHandler()
		dial := func() *websocket.Conn {
			c, _, err := wspipe.Dial(t.Context(), h, "ws://x/", &websocket.DialOptions{Subprotocols: []string{wsroom.Subprotocol}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.CloseNow() })
			expectHello(t, c)
			return c
		}
		stuck, healthy := dial(), dial()
		got := make(chan []string, 1)
		go func() {
			var out []string
			for {
				_, b, err := healthy.Read(context.Background())
				if err != nil {
					got <- out
					return
				}
				var fr frame
				json.Unmarshal(b, &fr)
				if fr.Op == "msg" {
					out = append(out, fmt.Sprintf("%s:%s", fr.Room, fr.Data))
				}
			}
		}()
		for _, c := range []*websocket.Conn{stuck, healthy} {
			for _, room := range []string{"a", "b"} {
				c.Write(t.Context(), websocket.MessageText, fmt.Appendf(nil, `{"op":"join","room":%q}`, room))
			}
		}
		go func() { // the stuck client reads its two joins, then stops
			for range 2 {
				stuck.Read(context.Background())
			}
		}()
		synctest.Wait()
		var want []string
		for i := range 10 {
			for _, room := range []string{"a", "b"} {
				if err := reg.Publish(t.Context(), room, fmt.Appendf(nil, "%d", i)); err != nil {
					t.Fatal(err)
				}
				want = append(want, fmt.Sprintf("%s:%d", room, i))
			}
			synctest.Wait()
		}
		if s := reg.Stats(); s.ClosedSlow != 1 {
			t.Errorf("Registry.Stats().ClosedSlow = %d, want 1", s.ClosedSlow)
		}
		reg.Close()
		// Each room's messages in order; the rooms interleave in any way.
		byRoom := func(ms []string) map[string][]string {
			out := map[string][]string{}
			for _, m := range ms {
				out[m[:1]] = append(out[m[:1]], m)
			}
			return out
		}
		if diff := cmp.Diff(byRoom(want), byRoom(<-got)); diff != "" {
			t.Errorf("healthy client (-want +got):\n%s", diff)
		}
	})
}

// Server code joins and removes clients of many rooms, and no goroutine
// outlives the connections.
func TestMuxServerSide(t *testing.T) {
	t.Cleanup(leakCheck(t)) // runs after the server and registry close
	joined := make(chan *wsroom.Client, 1)
	f := newMux(t, wsroom.WithOnJoin(func(c *wsroom.Client) { joined <- c }))
	conn := f.dial(t)
	c := <-joined
	if err := c.Join(t.Context(), "news"); err != nil {
		t.Fatal(err)
	}
	expect(t, conn, "joined")
	if got := c.Rooms(); !cmp.Equal(got, []string{"news"}) {
		t.Errorf("Rooms() = %v, want [news]", got)
	}
	f.reg.Publish(t.Context(), "news", []byte("hello"))
	if m := expect(t, conn, "msg"); m.Data != nil || m.Text == nil || *m.Text != "hello" {
		t.Errorf("text message reached a client of many rooms as data %s text %v, want text \"hello\"", m.Data, m.Text)
	}
	if err := c.Send(t.Context(), []byte(`"just you"`)); err != nil {
		t.Fatal(err)
	}
	if m := expect(t, conn, "msg"); string(m.Data) != `"just you"` {
		t.Errorf("Send: %s", m.Data)
	}
	if err := c.Leave("news"); err != nil {
		t.Fatal(err)
	}
	if l := expect(t, conn, "left"); l.Reason != "removed" {
		t.Errorf("left = %+v, want reason removed", l)
	}
	conn.Close(websocket.StatusNormalClosure, "")
	f.reg.Close()
}

// Shutdown says goodbye to connections of many rooms with 1001, and a
// closing room tells its members it closed.
func TestMuxShutdown(t *testing.T) {
	f := newMux(t, wsroom.WithIdleTimeout(time.Hour))
	c := f.dial(t)
	send(t, c, `{"op":"join","room":"a"}`)
	expect(t, c, "joined")
	room, _ := f.reg.Room("a")
	go room.Shutdown(context.Background())
	if l := expect(t, c, "left"); l.Room != "a" || l.Reason != "closed" {
		t.Errorf("left = %+v, want a closed", l)
	}
	go f.reg.Shutdown(context.Background())
	if code, _ := closeStatus(t, c); code != websocket.StatusGoingAway {
		t.Errorf("closed with %v, want 1001", code)
	}
}

// With presence events on, members of many rooms hear who joins and
// leaves; in a room past the limit they get counts instead.
func TestMuxPresenceEvents(t *testing.T) {
	f := newMux(t, wsroom.WithPresenceEvents(2), wsroom.WithAuthorize(func(r *http.Request) (any, error) {
		return r.URL.Query().Get("name"), nil
	}))
	dialAs := func(name string) *websocket.Conn {
		c, _, err := websocket.Dial(t.Context(), f.url+"?name="+name, &websocket.DialOptions{Subprotocols: []string{wsroom.Subprotocol}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.CloseNow() })
		expectHello(t, c)
		return c
	}
	ana := dialAs("ana")
	send(t, ana, `{"op":"join","room":"r"}`)
	expect(t, ana, "joined")
	if p := expect(t, ana, "presence"); len(p.Join) != 1 || p.Join[0].Info != "ana" {
		t.Errorf("ana's own join: %+v", p)
	}
	ben := dialAs("ben")
	send(t, ben, `{"op":"join","room":"r","members":true}`)
	if j := expect(t, ben, "joined"); len(j.Members) != 2 {
		t.Errorf("ben joined with members %v, want ana and ben", j.Members)
	}
	p := expect(t, ana, "presence")
	if len(p.Join) != 1 || p.Join[0].Info != "ben" {
		t.Errorf("ana heard %+v, want ben's join", p)
	}
	benID := p.Join[0].ID
	send(t, ben, `{"op":"leave","room":"r"}`)
	if p := expect(t, ana, "presence"); len(p.Leave) != 1 || p.Leave[0] != benID {
		t.Errorf("ana heard %+v, want ben's leave", p)
	}
	// Past the limit of 2: a count instead of joins, within about a second.
	for _, name := range []string{"cy", "di"} {
		c := dialAs(name)
		send(t, c, `{"op":"join","room":"r"}`)
		expect(t, c, "joined")
	}
	var count *int
	for count == nil {
		p := expect(t, ana, "presence")
		if p.Count != nil {
			count = p.Count
		} else if len(p.Join) == 1 && p.Join[0].Info == "di" {
			t.Errorf("a join past the limit was sent: %+v", p)
		}
	}
	if *count != 3 {
		t.Errorf("count = %d, want 3", *count)
	}
}

// A publish retried while the first is still under way, from another
// connection, waits for it and gets its ack: the message is stored once.
func TestMuxRetryWhileFirstInFlight(t *testing.T) {
	store := wsroom.NewMemoryStore(0, 0)
	b := &gatedBroker{LocalBroker: wsroom.NewLocalBroker(store), gate: make(chan struct{})}
	f := newMux(t, wsroom.WithBroker(b), wsroom.WithCodec(wsroom.JSON()))
	first := f.dial(t)
	send(t, first, `{"op":"join","room":"a"}`)
	expect(t, first, "joined")
	send(t, first, `{"op":"pub","room":"a","id":"x-1","data":1}`)
	waitUntil(t, "the first publish is held", func() bool { return b.held.Load() == 1 })
	first.CloseNow()
	retry := f.dial(t)
	send(t, retry, `{"op":"join","room":"a","resume":":0"}`)
	expect(t, retry, "joined")
	send(t, retry, `{"op":"pub","room":"a","id":"x-1","data":1}`)
	time.Sleep(50 * time.Millisecond) // the retry waits for the first
	close(b.gate)
	var ack frame
	for ack.Op != "ack" {
		ack = recv(t, retry)
	}
	if ack.Seq != 1 {
		t.Errorf("retry's ack = %+v, want seq 1", ack)
	}
	if last, _ := store.Last(t.Context(), "a", 10); len(last) != 1 {
		t.Errorf("store holds %d messages, want the publish once", len(last))
	}
	if n := b.held.Load(); n != 1 {
		t.Errorf("the broker was asked %d times, want once", n)
	}
}

// gatedBroker holds each PublishSeq until gate closes.
type gatedBroker struct {
	*wsroom.LocalBroker
	gate chan struct{}
	held atomic.Int64
}

func (b *gatedBroker) PublishSeq(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	b.held.Add(1)
	<-b.gate
	return b.LocalBroker.PublishSeq(context.Background(), room, m)
}

// The room hooks of connections of many rooms say which room, and the
// publish hook may change or refuse a publish.
func TestMuxRoomHooks(t *testing.T) {
	events := make(chan string, 16)
	f := newMux(t, wsroom.WithCodec(wsroom.JSON()),
		wsroom.WithOnRoomJoin(func(c *wsroom.Client, r *wsroom.Room) { events <- "join " + r.Name() }),
		wsroom.WithOnRoomLeave(func(c *wsroom.Client, r *wsroom.Room, reason string) { events <- "leave " + r.Name() + " " + reason }),
		wsroom.WithOnPublish(func(c *wsroom.Client, r *wsroom.Room, data []byte) ([]byte, error) {
			if string(data) == `"spam"` {
				return nil, errors.New("no spam")
			}
			return []byte(`{"said":` + string(data) + `}`), nil
		}))
	c := f.dial(t)
	for _, room := range []string{"a", "b"} {
		send(t, c, fmt.Sprintf(`{"op":"join","room":%q}`, room))
		expect(t, c, "joined")
	}
	send(t, c, `{"op":"pub","room":"a","id":"1","data":"spam"}`)
	if e := expect(t, c, "error"); e.Code != "forbidden" || e.Message != "no spam" {
		t.Errorf("refused publish: %+v", e)
	}
	send(t, c, `{"op":"pub","room":"a","data":"hi"}`)
	if m := expect(t, c, "msg"); string(m.Data) != `{"said":"hi"}` {
		t.Errorf("published %s, want the hook's change", m.Data)
	}
	send(t, c, `{"op":"leave","room":"a"}`)
	expect(t, c, "left")
	c.Close(websocket.StatusNormalClosure, "")
	var got []string
	for len(got) < 4 {
		select {
		case e := <-events:
			got = append(got, e)
		case <-time.After(10 * time.Second):
			t.Fatalf("hooks ran %v, then nothing", got)
		}
	}
	if diff := cmp.Diff([]string{"join a", "join b", "leave a requested", "leave b disconnected"}, got); diff != "" {
		t.Errorf("hooks (-want +got):\n%s", diff)
	}
}

// subscribeGatedBroker holds a room's first Subscribe until a presence
// event is published or a moment has passed, whichever comes first.
type subscribeGatedBroker struct {
	*wsroom.LocalBroker
	presence chan struct{} // closed at the first presence event
	once     sync.Once
}

func (b *subscribeGatedBroker) Subscribe(ctx context.Context, room string, deliver func(wsroom.Message), lost func(error)) (func(), error) {
	select {
	case <-b.presence:
	case <-time.After(100 * time.Millisecond):
	}
	return b.LocalBroker.Subscribe(ctx, room, deliver, lost)
}

func (b *subscribeGatedBroker) saw(m wsroom.Message) {
	if m.Presence != "" {
		b.once.Do(func() { close(b.presence) })
	}
}

func (b *subscribeGatedBroker) Publish(ctx context.Context, room string, m wsroom.Message) error {
	b.saw(m)
	return b.LocalBroker.Publish(ctx, room, m)
}

func (b *subscribeGatedBroker) PublishSeq(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	b.saw(m)
	return b.LocalBroker.PublishSeq(ctx, room, m)
}

// A room takes joins before it has subscribed to its broker; the first
// joiner's presence event is published only once it has, so that the
// joiner hears its own join.
func TestMuxPresenceOfFirstJoinBeforeSubscribe(t *testing.T) {
	b := &subscribeGatedBroker{LocalBroker: wsroom.NewLocalBroker(wsroom.NewMemoryStore(0, 0)), presence: make(chan struct{})}
	f := newMux(t, wsroom.WithBroker(b), wsroom.WithPresenceEvents(2), wsroom.WithAuthorize(func(r *http.Request) (any, error) {
		return "ana", nil
	}))
	ana := f.dial(t)
	send(t, ana, `{"op":"join","room":"r"}`)
	expect(t, ana, "joined")
	if p := expect(t, ana, "presence"); len(p.Join) != 1 || p.Join[0].Info != "ana" {
		t.Errorf("ana's own join: %+v", p)
	}
}

// ctxBroker's PublishSeq, while stuck is set, waits for its context to
// end and fails with its error, as an engine that does not answer.
type ctxBroker struct {
	*wsroom.LocalBroker
	held  atomic.Int64
	stuck atomic.Bool
}

func (b *ctxBroker) PublishSeq(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	b.held.Add(1)
	if b.stuck.Load() {
		<-ctx.Done()
		return wsroom.Message{}, ctx.Err()
	}
	return b.LocalBroker.PublishSeq(ctx, room, m)
}

// A retry of an id whose first publish ends with its connection is told
// unavailable, saying so (not that the room is closing, which it is not),
// and a retry after that publishes the message once.
func TestMuxRetryAfterFirstConnectionClosed(t *testing.T) {
	store := wsroom.NewMemoryStore(0, 0)
	b := &ctxBroker{LocalBroker: wsroom.NewLocalBroker(store)}
	b.stuck.Store(true)
	f := newMux(t, wsroom.WithBroker(b), wsroom.WithCodec(wsroom.JSON()), wsroom.WithPublishRetry(time.Second))
	first := f.dial(t)
	send(t, first, `{"op":"join","room":"a"}`)
	expect(t, first, "joined")
	send(t, first, `{"op":"pub","room":"a","id":"x-1","data":1}`)
	waitUntil(t, "the first publish is held", func() bool { return b.held.Load() == 1 })
	retry := f.dial(t)
	send(t, retry, `{"op":"join","room":"a","resume":":0"}`)
	expect(t, retry, "joined")
	send(t, retry, `{"op":"pub","room":"a","id":"x-1","data":1}`)
	time.Sleep(50 * time.Millisecond) // the retry waits for the first
	first.CloseNow()
	// Writes to the closed connection fail, and the server gives it up
	// while its publish is still being retried.
	for range 5 {
		if err := f.reg.Publish(t.Context(), "a", []byte(`"eph"`), wsroom.Ephemeral()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var e frame
	for e.Op != "error" {
		e = recv(t, retry)
	}
	if e.Code != "unavailable" || e.ID != "x-1" || strings.Contains(e.Message, "closing") {
		t.Errorf("retry while the first ends with its connection: %+v, want unavailable, saying the connection closed", e)
	}
	t.Logf("the retry was told %s %q", e.Code, e.Message)
	b.stuck.Store(false)
	send(t, retry, `{"op":"pub","room":"a","id":"x-1","data":1}`)
	var ack frame
	for ack.Op != "ack" {
		ack = recv(t, retry)
	}
	if ack.Seq != 1 || ack.ID != "x-1" {
		t.Errorf("second retry's ack = %+v, want seq 1", ack)
	}
	if last, _ := store.Last(t.Context(), "a", 10); len(last) != 1 {
		t.Errorf("store holds %d messages, want the publish once", len(last))
	}
}
