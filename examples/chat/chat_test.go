package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/sqlstore"
)

// newTestServer starts a chat server on httptest.
func newTestServer(t *testing.T, opts Options) (*Server, *httptest.Server) {
	t.Helper()
	s, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	t.Cleanup(func() { s.Close() }) // runs first: WebSockets are not the httptest server's
	return s, ts
}

// envelope is a frame of the wsroom.v3 protocol (PROTOCOL.md), with the
// members of every op the tests look at.
type envelope struct {
	Op      string          `json:"op"`
	Room    string          `json:"room"`
	ID      string          `json:"id"`
	Seq     uint64          `json:"seq"`
	Epoch   string          `json:"epoch"`
	Time    int64           `json:"time"`
	From    string          `json:"from"`
	Data    json.RawMessage `json:"data"`
	Members []wsroom.Member `json:"members"`
	Join    []wsroom.Member `json:"join"`
	Leave   []string        `json:"leave"`
	Code    string          `json:"code"`
	Message string          `json:"message"`
	Resume  string          `json:"resume"`
}

// payload is the union of the chat's messages.
type payload struct {
	Type     string `json:"type"`
	Name     string `json:"name"`
	Text     string `json:"text"`
	Filename string `json:"filename"`
	URL      string `json:"url"`
	Size     int64  `json:"size"`
	MIME     string `json:"mime"`
}

// testClient is a page's connection, in one room (room) unless it joins
// more.
type testClient struct {
	t       *testing.T
	conn    *websocket.Conn
	name    string
	room    string
	n       int
	members map[string]string // the room's members: client ID → name
}

type message struct {
	env envelope
	p   payload
}

// dial connects as name and joins room, with its last HistoryLen
// messages; extra adds query parameters (key, token) and "resume", which
// goes in the join.
func dial(t *testing.T, ts *httptest.Server, room, name string, extra ...string) *testClient {
	t.Helper()
	c, resp, err := tryDial(ts, name, extra...)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial as %q: %v (HTTP %d)", name, err, status)
	}
	tc := &testClient{t: t, conn: c, name: name, room: room, members: make(map[string]string)}
	t.Cleanup(func() { c.CloseNow() })
	join := map[string]any{"op": "join", "room": room, "id": "join-" + room, "members": true}
	if i := slices.Index(extra, "resume"); i >= 0 && i%2 == 0 {
		join["resume"] = extra[i+1]
	} else {
		join["last"] = HistoryLen
	}
	tc.send(join)
	return tc
}

func tryDial(ts *httptest.Server, name string, extra ...string) (*websocket.Conn, *http.Response, error) {
	q := url.Values{"name": {name}}
	for i := 0; i+1 < len(extra); i += 2 {
		if extra[i] != "resume" {
			q.Set(extra[i], extra[i+1])
		}
	}
	u := "ws" + strings.TrimPrefix(ts.URL, "http") + "/ws?" + q.Encode()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{Subprotocols: []string{wsroom.Subprotocol}})
	if c != nil {
		c.SetReadLimit(1 << 20)
	}
	return c, resp, err
}

func (c *testClient) send(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, b); err != nil {
		c.t.Fatalf("%s: write: %v", c.name, err)
	}
}

// pub publishes data to the client's room with a new id, which it returns.
func (c *testClient) pub(data any) string {
	c.t.Helper()
	c.n++
	id := fmt.Sprintf("%s-%d", c.name, c.n)
	c.send(map[string]any{"op": "pub", "room": c.room, "id": id, "data": data})
	return id
}

func (c *testClient) say(text string) { c.pub(map[string]string{"type": "msg", "text": text}) }

// read returns the next frame, failing the test after 5 s.
func (c *testClient) read() message {
	c.t.Helper()
	m, err := c.tryRead(5 * time.Second)
	if err != nil {
		c.t.Fatalf("%s: read: %v", c.name, err)
	}
	return m
}

func (c *testClient) tryRead(d time.Duration) (message, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_, b, err := c.conn.Read(ctx)
	if err != nil {
		return message{}, err
	}
	var m message
	if err := json.Unmarshal(b, &m.env); err != nil {
		return message{}, fmt.Errorf("bad frame %s: %v", b, err)
	}
	if m.env.Op == "msg" {
		if err := json.Unmarshal(m.env.Data, &m.p); err != nil {
			return message{}, fmt.Errorf("bad payload %s: %v", b, err)
		}
	}
	if m.env.Room == c.room {
		if m.env.Op == "joined" {
			clear(c.members)
		}
		for _, mem := range append(m.env.Members, m.env.Join...) {
			c.members[mem.ID] = mem.Info
		}
		for _, id := range m.env.Leave {
			delete(c.members, id)
		}
	}
	return m, nil
}

// next reads until a message of type typ, skipping the others.
func (c *testClient) next(typ string) message {
	c.t.Helper()
	for {
		if m := c.read(); m.env.Op == "msg" && m.p.Type == typ {
			return m
		}
	}
}

// nextOp reads until a frame with op, skipping the others.
func (c *testClient) nextOp(op string) message {
	c.t.Helper()
	for {
		if m := c.read(); m.env.Op == op {
			return m
		}
	}
}

// names returns the names in the room, each once, sorted.
func (c *testClient) names() []string {
	var names []string
	for _, n := range c.members {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names
}

// waitPresence reads until the room's members are exactly names (sorted).
func (c *testClient) waitPresence(names ...string) {
	c.t.Helper()
	for !slices.Equal(c.names(), names) {
		c.read()
	}
}

// closeCode reads until the connection ends and returns its close code.
func (c *testClient) closeCode() websocket.StatusCode {
	c.t.Helper()
	for {
		if _, err := c.tryRead(5 * time.Second); err != nil {
			return websocket.CloseStatus(err)
		}
	}
}

func get(t *testing.T, u string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func TestCleanName(t *testing.T) {
	long := strings.Repeat("é", MaxName)
	tests := []struct {
		in, want string
		err      error
	}{
		{"Ana", "Ana", nil},
		{"  Ana María \t", "Ana María", nil},
		{long, long, nil},
		{long + "x", "", errNameLong},
		{"", "", errNameEmpty},
		{" \t ", "", errNameEmpty},
		{"a\nb", "", errNameControl},
		{"a\x00b", "", errNameControl},
		{"bad\xffutf8", "", errNameControl},
	}
	for _, tt := range tests {
		got, err := cleanName(tt.in)
		if got != tt.want || err != tt.err {
			t.Errorf("cleanName(%q) = %q, %v; want %q, %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestCleanText(t *testing.T) {
	max := strings.Repeat("ü", MaxText) // 2 bytes each: the limit counts characters
	tests := []struct {
		in, want string
		err      error
	}{
		{"hello", "hello", nil},
		{"  two\nlines  ", "two\nlines", nil},
		{max, max, nil},
		{max + "!", "", errTextLong},
		{"", "", errTextEmpty},
		{"\n \n", "", errTextEmpty},
	}
	for _, tt := range tests {
		got, err := cleanText(tt.in)
		if got != tt.want || err != tt.err {
			t.Errorf("cleanText(%.20q) = %.20q, %v; want %.20q, %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestCleanFilename(t *testing.T) {
	tests := []struct{ in, want string }{
		{"photo.png", "photo.png"},
		{"../../etc/passwd", "passwd"},
		{`C:\Users\ana\cv.pdf`, "cv.pdf"},
		{"a\x00b\nc.txt", "abc.txt"},
		{"", "file"},
		{"..", "file"},
		{strings.Repeat("x", 150) + ".txt", strings.Repeat("x", 96) + ".txt"},
	}
	for _, tt := range tests {
		if got := cleanFilename(tt.in); got != tt.want {
			t.Errorf("cleanFilename(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestFileType(t *testing.T) {
	tests := []struct {
		data string
		want string
	}{
		{"\x89PNG\r\n\x1a\n0000", "image/png"},
		{"GIF89a....", "image/gif"},
		{"hello, world", "text/plain; charset=utf-8"},
		{"<!DOCTYPE html><script>alert(1)</script>", "application/octet-stream"},
		{`<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>`, "application/octet-stream"},
		{"%PDF-1.7", "application/pdf"},
	}
	for _, tt := range tests {
		if got := fileType([]byte(tt.data)); got != tt.want {
			t.Errorf("fileType(%.20q) = %q, want %q", tt.data, got, tt.want)
		}
	}
}

// Two people chat through the real handler: presence, a message, a leave.
func TestChat(t *testing.T) {
	_, ts := newTestServer(t, Options{})
	ana := dial(t, ts, "lobby", "Ana")
	ana.waitPresence("Ana")
	ben := dial(t, ts, "lobby", " Ben ")
	ben.waitPresence("Ana", "Ben") // trimmed
	ana.waitPresence("Ana", "Ben")

	ana.say("  hello, Ben  ")
	for _, c := range []*testClient{ana, ben} {
		m := c.next("msg")
		if m.p.Name != "Ana" || m.p.Text != "hello, Ben" {
			t.Errorf("%s got %+v, want Ana: hello, Ben", c.name, m.p)
		}
		if m.env.Seq != 1 || m.env.Epoch == "" || m.env.From == "" || m.env.Time == 0 {
			t.Errorf("%s got envelope %+v, want seq 1 with epoch, from and time", c.name, m.env)
		}
	}

	ben.conn.Close(websocket.StatusNormalClosure, "bye")
	ana.waitPresence("Ana")
}

// Names are unique per room, ignoring case, per person: tabs with the same
// key share the name, anyone else is refused the room; the name is free
// again once its holder's last connection is gone.
func TestNameTaken(t *testing.T) {
	_, ts := newTestServer(t, Options{})
	ana := dial(t, ts, "lobby", "Ana", "key", "anaskey1")
	ana.waitPresence("Ana")

	for _, name := range []string{"Ana", "ANA", " ana "} {
		c := dial(t, ts, "lobby", name, "key", "otherkey")
		m := c.nextOp("error")
		if m.env.Code != "forbidden" || !strings.Contains(m.env.Message, "already called") {
			t.Errorf("second %q: %+v, want forbidden: already called", name, m.env)
		}
	}
	resp, body := get(t, ts.URL+"/api/check?room=lobby&name=ana&key=otherkey")
	if resp.StatusCode != http.StatusConflict || !strings.Contains(body, "already called") {
		t.Errorf("check: %d %s; want 409 already called", resp.StatusCode, body)
	}

	other := dial(t, ts, "elsewhere", "Ana") // another room: fine
	other.waitPresence("Ana")

	// Ana's second tab: the same name, counted once.
	tab2 := dial(t, ts, "lobby", "Ana", "key", "anaskey1")
	tab2.waitPresence("Ana")
	if len(tab2.members) != 2 {
		t.Errorf("members %v, want Ana's two connections", tab2.members)
	}
	ana.conn.Close(websocket.StatusNormalClosure, "bye")
	tab2.say("still here")
	if m := tab2.next("msg"); m.p.Name != "Ana" || m.p.Text != "still here" {
		t.Fatalf("got %+v", m.p)
	}
	if resp, _ := get(t, ts.URL+"/api/check?room=lobby&name=Ana&key=otherkey"); resp.StatusCode != http.StatusConflict {
		t.Errorf("name free while Ana's second tab is in: %d", resp.StatusCode)
	}

	tab2.conn.Close(websocket.StatusNormalClosure, "bye")
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, _ := get(t, ts.URL+"/api/check?room=lobby&name=Ana&key=otherkey")
		if resp.StatusCode == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the name is still taken after its owner left")
		}
		time.Sleep(20 * time.Millisecond)
	}
	again := dial(t, ts, "lobby", "ana", "key", "otherkey")
	again.waitPresence("ana")
}

func TestHandshakeRules(t *testing.T) {
	_, ts := newTestServer(t, Options{Token: "s3cret"})
	tests := []struct {
		name  string
		extra []string
		want  int
	}{
		{"Ana", nil, http.StatusUnauthorized},
		{"Ana", []string{"token", "wrong"}, http.StatusUnauthorized},
		{"  ", []string{"token", "s3cret"}, http.StatusBadRequest},
		{strings.Repeat("n", MaxName+1), []string{"token", "s3cret"}, http.StatusBadRequest},
		{"Ana", []string{"token", "s3cret", "key", "short"}, http.StatusBadRequest},
	}
	for _, tt := range tests {
		_, resp, err := tryDial(ts, tt.name, tt.extra...)
		if err == nil || resp == nil || resp.StatusCode != tt.want {
			t.Errorf("dial as %q %v: %v, %v; want %d", tt.name, tt.extra, err, resp, tt.want)
		}
	}
	for _, room := range []string{".hidden", "no spaces"} {
		c := dial(t, ts, room, "Ana", "token", "s3cret")
		if m := c.nextOp("error"); m.env.Code != "bad_room" {
			t.Errorf("join %q: %+v, want bad_room", room, m.env)
		}
	}
	c := dial(t, ts, "lobby", "Ana", "token", "s3cret", "resume", "nonsense")
	if m := c.nextOp("error"); m.env.Code != "bad_request" {
		t.Errorf("join with a bad resume: %+v, want bad_request", m.env)
	}
	c = dial(t, ts, "lobby", "Ana", "token", "s3cret")
	c.waitPresence("Ana")

	checks := []struct {
		query string
		want  int
		field string
	}{
		{"name=Ana", http.StatusUnauthorized, "token"},
		{"token=s3cret&name=", http.StatusBadRequest, "name"},
		{"token=s3cret&name=Ben&room=bad%20room", http.StatusBadRequest, "room"},
		{"token=s3cret&name=Ana&room=lobby", http.StatusConflict, "name"},
		{"token=s3cret&name=+Ben+&room=lobby", http.StatusOK, ""},
		{"token=s3cret&name=Ben", http.StatusOK, ""},
	}
	for _, tt := range checks {
		resp, body := get(t, ts.URL+"/api/check?"+tt.query)
		var r struct{ Error, Field, Name string }
		json.Unmarshal([]byte(body), &r)
		if resp.StatusCode != tt.want || r.Field != tt.field {
			t.Errorf("check %s: %d %s; want %d, field %q", tt.query, resp.StatusCode, body, tt.want, tt.field)
		}
		if tt.want == http.StatusOK && r.Name != "Ben" {
			t.Errorf("check %s: name %q, want Ben", tt.query, r.Name)
		}
	}

	if resp, _ := get(t, ts.URL+"/api/rooms"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("rooms without token: %d, want 401", resp.StatusCode)
	}
	resp, body := get(t, ts.URL+"/api/rooms?token=s3cret")
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(body) != `{"rooms":[{"name":"lobby","people":1}]}` {
		t.Errorf("rooms: %d %s", resp.StatusCode, body)
	}
}

func TestPages(t *testing.T) {
	_, ts := newTestServer(t, Options{})
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	tests := []struct {
		path     string
		status   int
		contains string
	}{
		{"/", http.StatusOK, `data-room=""`},
		{"/r/lobby", http.StatusOK, `data-room="lobby"`},
		{"/r/go.dev-2_0", http.StatusOK, `data-room="go.dev-2_0"`},
		{"/r/.hidden", http.StatusNotFound, "is not a valid room name"},
		{"/r/no%20spaces", http.StatusNotFound, "is not a valid room name"},
		{"/r/" + strings.Repeat("x", 65), http.StatusNotFound, "is not a valid room name"},
		{"/r?room=no+spaces", http.StatusBadRequest, "&#34;no spaces&#34; is not a valid room name"},
		{"/r?room=%3Cscript%3E", http.StatusBadRequest, "&#34;&lt;script&gt;&#34; is not a valid room name"},
		{"/r?room=+lobby+", http.StatusSeeOther, ""},
		{"/static/wsroom.js", http.StatusOK, "export function connect"},
		{"/static/chat.js", http.StatusOK, `from "./wsroom.js"`},
		{"/static/favicon.svg", http.StatusOK, "<svg"},
		{"/ws", http.StatusUpgradeRequired, ""},
	}
	for _, tt := range tests {
		resp, err := noRedirect.Get(ts.URL + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.status || !strings.Contains(string(b), tt.contains) {
			t.Errorf("GET %s: %d, body has %q: %v; want %d", tt.path, resp.StatusCode, tt.contains, strings.Contains(string(b), tt.contains), tt.status)
		}
		if tt.status == http.StatusSeeOther && resp.Header.Get("Location") != "/r/lobby" {
			t.Errorf("GET %s: Location %q, want /r/lobby", tt.path, resp.Header.Get("Location"))
		}
		if resp.Header.Get("Content-Type") == "text/html; charset=utf-8" && resp.StatusCode != http.StatusSeeOther {
			if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
				t.Errorf("GET %s: Content-Security-Policy %q", tt.path, csp)
			}
		}
	}
}

// The server signs what pages publish with their names, trims messages, and
// refuses what is not the chat's protocol (an empty or too long message, an
// unknown type): its sender gets the error "forbidden" with the reason, and
// nobody sees it. What is not JSON closes the connection (1007).
func TestMessageRules(t *testing.T) {
	_, ts := newTestServer(t, Options{})
	ana := dial(t, ts, "lobby", "Ana")
	ana.waitPresence("Ana")
	ben := dial(t, ts, "lobby", "Ben")
	ben.waitPresence("Ana", "Ben")

	for _, tt := range []struct {
		data any
		why  string
	}{
		{map[string]string{"type": "msg", "text": ""}, errTextEmpty.Error()},
		{map[string]string{"type": "msg", "text": " \n "}, errTextEmpty.Error()},
		{map[string]string{"type": "msg", "text": strings.Repeat("x", MaxText+1)}, errTextLong.Error()},
		{map[string]string{"type": "shout", "text": "hi"}, errNotChat.Error()},
		{map[string]any{"type": "msg", "text": 42}, errNotChat.Error()},
		{[]int{1, 2}, errNotChat.Error()},
		{"msg", errNotChat.Error()},
		{map[string]string{"type": "file", "id": "nosuchfileaaaaaaaaaaaaaaaaaaaaaa"}, errNoShare.Error()},
	} {
		id := ana.pub(tt.data)
		m := ana.read()
		for m.env.Op == "presence" {
			m = ana.read()
		}
		if m.env.Op != "error" || m.env.ID != id || m.env.Code != "forbidden" || m.env.Message != tt.why {
			t.Errorf("%.40v: %+v, want the error forbidden: %s", tt.data, m.env, tt.why)
		}
	}
	ana.pub(map[string]string{"type": "msg", "name": "Mallory", "text": "  " + strings.Repeat("é", MaxText) + " "})
	if m := ben.next("msg"); len([]rune(m.p.Text)) != MaxText || m.env.Seq != 1 || m.p.Name != "Ana" {
		t.Errorf("Ben got %d characters from %s as message %d; want the %d-character message from Ana, first of the room",
			len([]rune(m.p.Text)), m.p.Name, m.env.Seq, MaxText)
	}

	c := dial(t, ts, "lobby", "Cy")
	c.waitPresence("Ana", "Ben", "Cy")
	c.conn.Write(context.Background(), websocket.MessageText, []byte("not json"))
	if code := c.closeCode(); code != websocket.StatusInvalidFramePayloadData {
		t.Errorf("not JSON: closed with %v, want 1007", code)
	}
}

// Typing notices reach the others at once, signed, and are not kept: a
// newcomer's history has the messages only. The typist gets its own back
// (WithOnPublish cannot set Message.Except); the page ignores its name.
func TestTypingNotStored(t *testing.T) {
	store := wsroom.NewMemoryStore(0, 0)
	_, ts := newTestServer(t, Options{Store: store})
	ana := dial(t, ts, "lobby", "Ana")
	ana.waitPresence("Ana")
	ben := dial(t, ts, "lobby", "Ben")
	ben.waitPresence("Ana", "Ben")
	ana.waitPresence("Ana", "Ben")

	ana.send(map[string]any{"op": "pub", "room": "lobby", "data": map[string]string{"type": "typing"}, "ephemeral": true})
	m := ben.next("typing")
	if m.p.Name != "Ana" || m.env.Seq != 0 || m.env.Epoch != "" {
		t.Fatalf("Ben got %+v %+v; want an unnumbered typing notice from Ana", m.env, m.p)
	}
	if m := ana.next("typing"); m.p.Name != "Ana" || m.env.Seq != 0 {
		t.Fatalf("Ana got %+v %+v; want her own unnumbered notice", m.env, m.p)
	}
	ana.say("done typing")
	ana.next("msg")
	ben.next("msg")

	stored, err := store.Last(context.Background(), "lobby", 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) != 1 || !strings.Contains(string(stored[0].Data), "done typing") {
		t.Fatalf("history = %v, want only the message", stored)
	}
	cy := dial(t, ts, "lobby", "Cy")
	if m := cy.nextOp("msg"); m.p.Type != "msg" || m.p.Text != "done typing" {
		t.Fatalf("Cy's first message: %+v, want the history's message", m.p)
	}
}

func upload(t *testing.T, ts *httptest.Server, room, query string, body io.Reader) (*http.Response, string) {
	t.Helper()
	resp, err := http.Post(ts.URL+"/api/rooms/"+room+"/files?"+query, "application/octet-stream", body)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// onlyReader hides a reader's type, so the request has no Content-Length
// and the server must count the bytes itself.
type onlyReader struct{ io.Reader }

var pngHeader = []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")

func TestUpload(t *testing.T) {
	for _, files := range []struct {
		name  string
		store func(t *testing.T) FileStore
	}{
		{"memory", func(*testing.T) FileStore { return newMemoryFiles(64 << 20) }},
		{"disk", func(t *testing.T) FileStore {
			d, err := newDiskFiles(filepath.Join(t.TempDir(), "files"))
			if err != nil {
				t.Fatal(err)
			}
			return d
		}},
	} {
		t.Run(files.name, func(t *testing.T) { testUpload(t, files.store(t)) })
	}
}

func testUpload(t *testing.T, files FileStore) {
	_, ts := newTestServer(t, Options{Files: files})
	ana := dial(t, ts, "lobby", "Ana", "key", "anas-tab")
	ana.waitPresence("Ana")
	ben := dial(t, ts, "lobby", "Ben", "key", "bens-tab")
	ben.waitPresence("Ana", "Ben")
	as := "name=Ana&key=anas-tab&filename="

	if resp, body := upload(t, ts, "lobby", "name=Ana&key=wrong", strings.NewReader("x")); resp.StatusCode != http.StatusForbidden {
		t.Errorf("upload with the wrong key: %d %s, want 403", resp.StatusCode, body)
	}
	over := bytes.Repeat([]byte{'x'}, MaxUpload+1)
	for _, body := range []io.Reader{bytes.NewReader(over), onlyReader{bytes.NewReader(over)}} {
		resp, msg := upload(t, ts, "lobby", as+"big.txt", body)
		if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(msg, "the limit is 5 MiB") {
			t.Errorf("upload of 5 MiB + 1: %d %s, want 413", resp.StatusCode, msg)
		}
	}
	if resp, body := upload(t, ts, "lobby", as+"empty", strings.NewReader("")); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("empty upload: %d %s, want 400", resp.StatusCode, body)
	}

	max := append(bytes.Clone(pngHeader), bytes.Repeat([]byte{0}, MaxUpload-len(pngHeader))...)
	resp, body := upload(t, ts, "lobby", as+"../cat.png", onlyReader{bytes.NewReader(max)})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload of 5 MiB: %d %s, want 201", resp.StatusCode, body)
	}
	var img FileInfo
	json.Unmarshal([]byte(body), &img)
	if img.Name != "cat.png" || img.MIME != "image/png" || img.Size != MaxUpload || !validFileID(img.ID) {
		t.Fatalf("upload answered %+v", img)
	}
	resp, body = upload(t, ts, "lobby", as+"page.html", strings.NewReader("<html><script>alert(1)</script>"))
	var page FileInfo
	json.Unmarshal([]byte(body), &page)
	if resp.StatusCode != http.StatusCreated || page.MIME != "application/octet-stream" {
		t.Fatalf("HTML upload: %d %s", resp.StatusCode, body)
	}

	// Sharing: the room carries a link, never the bytes.
	ana.pub(map[string]string{"type": "file", "id": img.ID})
	m := ben.next("file")
	want := payload{Type: "file", Name: "Ana", Filename: "cat.png", URL: "/files/" + img.ID, Size: MaxUpload, MIME: "image/png"}
	if !reflect.DeepEqual(m.p, want) || m.env.Seq == 0 {
		t.Fatalf("Ben got %+v, want %+v", m.p, want)
	}
	if len(m.env.Data) > 512 {
		t.Errorf("file message is %d bytes: the file went through the room", len(m.env.Data))
	}
	// A file of another room is not shared.
	other := dial(t, ts, "elsewhere", "Ana", "key", "anas-tab")
	other.waitPresence("Ana")
	id := other.pub(map[string]string{"type": "file", "id": img.ID})
	if m := other.nextOp("error"); m.env.ID != id || m.env.Code != "forbidden" || m.env.Message != errNoShare.Error() {
		t.Errorf("file of another room: %+v, want the error forbidden: %s", m.env, errNoShare)
	}

	// Serving: images inline, anything else a download; never sniffed.
	for _, tt := range []struct {
		id, ctype, disposition string
		size                   int
	}{
		{img.ID, "image/png", `inline; filename=cat.png`, MaxUpload},
		{page.ID, "application/octet-stream", `attachment; filename=page.html`, 31},
	} {
		resp, body := get(t, ts.URL+"/files/"+tt.id)
		h := resp.Header
		if resp.StatusCode != http.StatusOK || h.Get("Content-Type") != tt.ctype || h.Get("Content-Disposition") != tt.disposition ||
			h.Get("X-Content-Type-Options") != "nosniff" || !strings.Contains(h.Get("Content-Security-Policy"), "sandbox") || len(body) != tt.size {
			t.Errorf("GET file %s: %d, %d bytes, headers %v", tt.id, resp.StatusCode, len(body), h)
		}
	}
	for _, id := range []string{"nosuchfileaaaaaaaaaaaaaaaaaaaaaa", "..%2Fchat.db", "x"} {
		if resp, _ := get(t, ts.URL+"/files/"+id); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET /files/%s: %d, want 404", id, resp.StatusCode)
		}
	}
}

// N people send M messages each at once: everyone gets all N×M, once each,
// in the same order.
func TestConcurrentChat(t *testing.T) {
	const n, m = 8, 25
	_, ts := newTestServer(t, Options{RateLimit: 1000, RateBurst: 1000})
	clients := make([]*testClient, n)
	for i := range clients {
		clients[i] = dial(t, ts, "busy", fmt.Sprintf("user%d", i))
	}
	// Wait until everyone is in, so that nobody misses a live message.
	var all []string
	for i := range n {
		all = append(all, fmt.Sprintf("user%d", i))
	}
	for _, c := range clients {
		c.waitPresence(all...)
	}

	type result struct {
		texts []string
		err   error
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Go(func() {
			for j := range m {
				b, _ := json.Marshal(map[string]any{"op": "pub", "room": "busy", "data": map[string]string{"type": "msg", "text": fmt.Sprintf("%d/%d", i, j)}})
				if err := c.conn.Write(context.Background(), websocket.MessageText, b); err != nil {
					results[i].err = err
					return
				}
			}
		})
		wg.Go(func() {
			var last uint64
			for len(results[i].texts) < n*m {
				msg, err := c.tryRead(10 * time.Second)
				if err != nil {
					results[i].err = err
					return
				}
				if msg.env.Op != "msg" || msg.p.Type != "msg" {
					continue
				}
				if msg.env.Seq != last+1 {
					results[i].err = fmt.Errorf("message %d after %d", msg.env.Seq, last)
					return
				}
				last = msg.env.Seq
				results[i].texts = append(results[i].texts, msg.p.Name+":"+msg.p.Text)
			}
		})
	}
	wg.Wait()
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("user%d: %v", i, r.err)
		}
		if !slices.Equal(r.texts, results[0].texts) {
			t.Fatalf("user%d saw another order than user0", i)
		}
	}
	seen := make(map[string]bool)
	for _, s := range results[0].texts {
		seen[s] = true
	}
	for i := range n {
		for j := range m {
			if s := fmt.Sprintf("user%d:%d/%d", i, i, j); !seen[s] {
				t.Fatalf("nobody got %s", s)
			}
		}
	}
}

// The rate limit holds back a client that sends too fast.
func TestRateLimit(t *testing.T) {
	_, ts := newTestServer(t, Options{RateLimit: 20, RateBurst: 2})
	ana := dial(t, ts, "lobby", "Ana")
	ana.waitPresence("Ana")
	start := time.Now()
	for i := range 12 {
		ana.say(fmt.Sprint(i))
	}
	for range 12 {
		ana.next("msg")
	}
	// 2 at once, then 10 at 20 per second.
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Fatalf("12 messages went through in %v, want about 500ms", d)
	}
}

func openTestDB(t *testing.T, path string) wsroom.Store {
	t.Helper()
	db, err := openDB(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	store, err := sqlstore.New(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	return store
}

// History in SQLite survives a restart: newcomers see it, and a client
// resumes from where it was with nothing lost and nothing twice.
func TestPersistence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "chat.db")
	s1, ts1 := newTestServer(t, Options{Store: openTestDB(t, path)})
	ana := dial(t, ts1, "lobby", "Ana")
	ana.waitPresence("Ana")
	var seen envelope
	for i := range 3 {
		ana.say(fmt.Sprint("before restart ", i))
		if m := ana.next("msg"); i == 1 {
			seen = m.env // Ana "loses" messages after this one
		}
	}
	shutdown := shutdownAsync(s1)
	if code := ana.closeCode(); code != websocket.StatusGoingAway {
		t.Fatalf("shutdown closed Ana with %v, want 1001", code)
	}
	if err := <-shutdown; err != nil {
		t.Fatal(err)
	}
	ts1.Close()

	_, ts2 := newTestServer(t, Options{Store: openTestDB(t, path)})
	ben := dial(t, ts2, "lobby", "Ben")
	for i := range 3 {
		m := ben.nextOp("msg")
		if want := fmt.Sprint("before restart ", i); m.p.Text != want || m.env.Seq != uint64(i+1) {
			t.Fatalf("Ben's history %d: %d %q, want %d %q", i, m.env.Seq, m.p.Text, i+1, want)
		}
	}
	ben.waitPresence("Ben")

	back := dial(t, ts2, "lobby", "Ana", "resume", fmt.Sprintf("%s:%d", seen.Epoch, seen.Seq))
	if m := back.nextOp("msg"); m.p.Text != "before restart 2" || m.env.Seq != 3 || m.env.Epoch != seen.Epoch {
		t.Fatalf("Ana resumed with %d %q, want message 3 only", m.env.Seq, m.p.Text)
	}
	back.say("after restart")
	if m := back.next("msg"); m.env.Seq != 4 || m.env.Epoch != seen.Epoch {
		t.Fatalf("first message after restart: %d in epoch %s, want 4 in %s", m.env.Seq, m.env.Epoch, seen.Epoch)
	}
}

// A client resuming from a position the history cannot serve (here, of a
// server that kept history in memory and restarted) is told to resync.
func TestResumeUnknownEpoch(t *testing.T) {
	_, ts := newTestServer(t, Options{})
	first := dial(t, ts, "lobby", "Ana")
	first.waitPresence("Ana")
	first.say("hello")
	first.next("msg")
	c := dial(t, ts, "lobby", "Ben", "resume", "someotherepoch:1")
	if m := c.nextOp("error"); m.env.Code != "resync" {
		t.Fatalf("got %+v, want a resync error", m.env)
	}
}

// shutdownAsync shuts s down while the test's clients read: a graceful
// close waits for each client to answer the close frame.
func shutdownAsync(s *Server) <-chan error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	return done
}

// Shutdown says goodbye with 1001 and then refuses handshakes.
func TestShutdown(t *testing.T) {
	s, ts := newTestServer(t, Options{})
	ana := dial(t, ts, "lobby", "Ana")
	ana.waitPresence("Ana")
	shutdown := shutdownAsync(s)
	if code := ana.closeCode(); code != websocket.StatusGoingAway {
		t.Fatalf("closed with %v, want 1001", code)
	}
	if err := <-shutdown; err != nil {
		t.Fatal(err)
	}
	_, resp, err := tryDial(ts, "Ben")
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("dial after shutdown: %v, %v; want 503", err, resp)
	}
}

// The page's client, /static/wsroom.js, is js/src/index.js, byte for byte,
// served as JavaScript.
func TestClientServed(t *testing.T) {
	want, err := os.ReadFile("../../js/src/index.js")
	if err != nil {
		t.Fatalf("the client's source: %v", err)
	}
	_, ts := newTestServer(t, Options{})
	resp, body := get(t, ts.URL+"/static/wsroom.js")
	if resp.StatusCode != http.StatusOK || body != string(want) {
		t.Fatalf("GET /static/wsroom.js: %d, %d bytes; want 200 and js/src/index.js (%d bytes)", resp.StatusCode, len(body), len(want))
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/javascript; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
}

// The lobby lists the rooms open now and those with history in the Store.
func TestRoomList(t *testing.T) {
	store := wsroom.NewMemoryStore(0, 0)
	_, ts := newTestServer(t, Options{Store: store, StoredRooms: func(context.Context) ([]string, error) {
		return []string{"archive"}, nil
	}})
	ana := dial(t, ts, "lobby", "Ana")
	ana.waitPresence("Ana")
	ana.say("hello")
	ana.next("msg")
	quiet := dial(t, ts, "quiet", "Ana")
	quiet.waitPresence("Ana")
	quiet.say("anyone?")
	quiet.next("msg")
	quiet.conn.Close(websocket.StatusNormalClosure, "")
	ana.conn.Close(websocket.StatusNormalClosure, "")

	var rooms []roomInfo
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, body := get(t, ts.URL+"/api/rooms")
		var r struct{ Rooms []roomInfo }
		json.Unmarshal([]byte(body), &r)
		rooms = r.Rooms
		if resp.StatusCode == http.StatusOK && len(rooms) == 3 && rooms[1].People == 0 && rooms[2].People == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rooms: %d %s", resp.StatusCode, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if names := []string{rooms[0].Name, rooms[1].Name, rooms[2].Name}; !slices.Equal(names, []string{"archive", "lobby", "quiet"}) {
		t.Fatalf("rooms %v, want archive, lobby, quiet", rooms)
	}
}
