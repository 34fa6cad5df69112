package wsroom_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
)

const apiKey = "k3y"

// apiClient keeps no connection open between requests, for the leak checks.
var apiClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// apiFixture is a Registry serving connections of many rooms at /ws,
// connections of one room at /rooms/{name}, and its server API at /api/;
// a client's identity is its "user" query parameter.
type apiFixture struct {
	reg  *wsroom.Registry
	srv  *httptest.Server
	ws   string
	spec map[string]any
}

func newAPI(t *testing.T, opts ...wsroom.Option) *apiFixture {
	t.Helper()
	opts = append([]wsroom.Option{wsroom.WithCodec(wsroom.JSON()), wsroom.WithAuthorize(func(r *http.Request) (any, error) {
		return r.URL.Query().Get("user"), nil
	})}, opts...)
	reg := wsroom.NewRegistry(opts...)
	mux := http.NewServeMux()
	mux.Handle("/ws", reg.MuxHandler())
	mux.Handle("/rooms/{name}", reg.Handler(nil))
	mux.Handle("/api/", http.StripPrefix("/api", reg.API(wsroom.WithAPIKey(apiKey))))
	srv := newServer(t, mux)
	t.Cleanup(func() { reg.Close() })
	b, err := os.ReadFile("openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	f := &apiFixture{reg: reg, srv: srv, ws: "ws" + strings.TrimPrefix(srv.URL, "http")}
	if err := json.Unmarshal(b, &f.spec); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	return f
}

// dialMux connects a client of many rooms as user.
func (f *apiFixture) dialMux(t *testing.T, user string) (*websocket.Conn, string) {
	t.Helper()
	c, _, err := websocket.Dial(t.Context(), f.ws+"/ws?user="+user, &websocket.DialOptions{Subprotocols: []string{wsroom.Subprotocol}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c, expectHello(t, c).Conn
}

// apiCall is one request to the API and what it answered.
type apiCall struct {
	status int
	body   map[string]any
	raw    string
}

// call sends a request with the API key, and checks the answer against
// openapi.json: its status is one the operation documents, and its body
// matches that response's schema.
func (f *apiFixture) call(t *testing.T, method, path string, body any, header ...string) apiCall {
	t.Helper()
	return f.callKey(t, apiKey, method, path, body, header...)
}

func (f *apiFixture) callKey(t *testing.T, key, method, path string, body any, header ...string) apiCall {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, f.srv.URL+"/api"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := apiClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := apiCall{status: resp.StatusCode, raw: string(raw)}
	if err := json.Unmarshal(raw, &out.body); err != nil {
		t.Fatalf("%s %s: %d with a body that is not a JSON object: %q", method, path, resp.StatusCode, raw)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", method, path, ct)
	}
	if err := f.conforms(method, strings.SplitN(path, "?", 2)[0], resp.StatusCode, out.body); err != nil {
		t.Errorf("%s %s answered %d %s: %v", method, path, resp.StatusCode, raw, err)
	}
	return out
}

// operation finds the spec's operation for a concrete path.
func (f *apiFixture) operation(method, path string) (map[string]any, error) {
	for pattern, item := range f.spec["paths"].(map[string]any) {
		re := "^" + regexp.MustCompile(`\\\{[a-z]+\\\}`).ReplaceAllString(regexp.QuoteMeta(pattern), `[^/]+`) + "$"
		if regexp.MustCompile(re).MatchString(path) {
			if op, ok := item.(map[string]any)[strings.ToLower(method)].(map[string]any); ok {
				return op, nil
			}
		}
	}
	return nil, fmt.Errorf("no operation %s %s in openapi.json", method, path)
}

func (f *apiFixture) conforms(method, path string, status int, body any) error {
	op, err := f.operation(method, path)
	if err != nil {
		if status == http.StatusNotFound {
			return nil // an undocumented path is not found
		}
		return err
	}
	resp, ok := op["responses"].(map[string]any)[fmt.Sprint(status)].(map[string]any)
	if !ok {
		return fmt.Errorf("status %d is not documented for %s", status, op["operationId"])
	}
	schema := resp["content"].(map[string]any)["application/json"].(map[string]any)["schema"]
	return f.validate(schema.(map[string]any), body, "body")
}

// validate checks v against the part of JSON Schema openapi.json uses.
func (f *apiFixture) validate(s map[string]any, v any, at string) error {
	if ref, ok := s["$ref"].(string); ok {
		name := strings.TrimPrefix(ref, "#/components/schemas/")
		sub, ok := f.spec["components"].(map[string]any)["schemas"].(map[string]any)[name].(map[string]any)
		if !ok {
			return fmt.Errorf("%s: unknown $ref %s", at, ref)
		}
		return f.validate(sub, v, at)
	}
	switch s["type"] {
	case "object":
		obj, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: %v is not an object", at, v)
		}
		props, _ := s["properties"].(map[string]any)
		for _, r := range s["required"].([]any) {
			if _, ok := obj[r.(string)]; !ok {
				return fmt.Errorf("%s: no %q", at, r)
			}
		}
		for k, pv := range obj {
			ps, ok := props[k].(map[string]any)
			if !ok {
				if props != nil {
					return fmt.Errorf("%s: %q is not in the schema", at, k)
				}
				continue
			}
			if err := f.validate(ps, pv, at+"."+k); err != nil {
				return err
			}
		}
	case "array":
		arr, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%s: %v is not an array", at, v)
		}
		for i, e := range arr {
			if err := f.validate(s["items"].(map[string]any), e, fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s: %v is not a string", at, v)
		}
		if enum, ok := s["enum"].([]any); ok && !slices.Contains(enum, any(str)) {
			return fmt.Errorf("%s: %q is not one of %v", at, str, enum)
		}
	case "integer":
		n, ok := v.(float64)
		if !ok || n != float64(int64(n)) {
			return fmt.Errorf("%s: %v is not an integer", at, v)
		}
		if m, ok := s["minimum"].(float64); ok && n < m {
			return fmt.Errorf("%s: %v under its minimum %v", at, n, m)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("%s: %v is not a boolean", at, v)
		}
	}
	return nil
}

// TestAPISpecMatchesRoutes checks that openapi.json documents each route
// of the handler and no other: every documented operation answers
// something other than the handler's "no such API path".
func TestAPISpecMatchesRoutes(t *testing.T) {
	f := newAPI(t)
	var ops []string
	for pattern, item := range f.spec["paths"].(map[string]any) {
		for method := range item.(map[string]any) {
			ops = append(ops, strings.ToUpper(method)+" "+pattern)
		}
	}
	slices.Sort(ops)
	routes := wsroom.APIRoutes()
	slices.Sort(routes)
	if !slices.Equal(ops, routes) {
		t.Errorf("openapi.json documents\n%v\nthe handler routes\n%v", ops, routes)
	}
	for _, op := range ops {
		method, pattern, _ := strings.Cut(op, " ")
		path := strings.NewReplacer("{room}", "lobby", "{user}", "ana", "{id}", "nobody").Replace(pattern)
		got := f.call(t, method, path, nil)
		if got.status == http.StatusNotFound && strings.Contains(got.raw, "no such API path") {
			t.Errorf("%s is documented but the handler has no such path", op)
		}
	}
	if got := f.call(t, "GET", "/nothing", nil); got.status != http.StatusNotFound || got.body["code"] != "not_found" {
		t.Errorf("GET /nothing = %d %s, want 404 not_found", got.status, got.raw)
	}
}

// TestAPIAuth: a request without the key, or with another, is refused
// with 401; an API given no auth option refuses every request.
func TestAPIAuth(t *testing.T) {
	f := newAPI(t)
	for _, key := range []string{"", "wrong", apiKey + "x"} {
		got := f.callKey(t, key, "GET", "/rooms", nil)
		if got.status != http.StatusUnauthorized || got.body["code"] != "unauthorized" {
			t.Errorf("key %q: %d %s, want 401 unauthorized", key, got.status, got.raw)
		}
	}
	if got := f.call(t, "GET", "/rooms", nil); got.status != http.StatusOK {
		t.Errorf("with the key: %d %s", got.status, got.raw)
	}
	open := wsroom.NewRegistry()
	defer open.Close()
	rec := httptest.NewRecorder()
	open.API().ServeHTTP(rec, httptest.NewRequest("GET", "/rooms", nil))
	if rec.Code != http.StatusUnauthorized {
		t.Errorf("an API with no auth option answered %d %s, want 401", rec.Code, rec.Body)
	}
}

// TestAPIPublish publishes through the API to a room with a client of many
// rooms and a client of one room: each gets the messages in order, a
// publish retried with its Idempotency-Key is published once and answered
// with the first one's position, and bad input is refused with the
// documented errors.
func TestAPIPublish(t *testing.T) {
	defer leakCheck(t)()
	f := newAPI(t, wsroom.WithReadLimit(1000))
	mc, _ := f.dialMux(t, "ana")
	send(t, mc, `{"op":"join","room":"lobby"}`)
	expect(t, mc, "joined")
	one := dialURL(t, f.ws+"/rooms/lobby?user=ben")
	waitUntil(t, "two clients in lobby", func() bool {
		r, _ := f.reg.Room("lobby")
		return r.Len() == 2
	})

	first := f.call(t, "POST", "/rooms/lobby/messages", map[string]any{"data": map[string]any{"n": 1}}, "Idempotency-Key", "k1")
	if first.status != 200 || first.body["seq"] != 1.0 || first.body["epoch"] == "" {
		t.Fatalf("publish: %d %s, want seq 1", first.status, first.raw)
	}
	again := f.call(t, "POST", "/rooms/lobby/messages", map[string]any{"data": map[string]any{"n": 1}}, "Idempotency-Key", "k1")
	if again.raw != first.raw {
		t.Errorf("the retry with the same key answered %s, want the first answer %s", again.raw, first.raw)
	}
	if got := f.call(t, "POST", "/rooms/lobby/messages", `{"text":"\"two\""}`); got.body["seq"] != 2.0 {
		t.Errorf("second publish: %s, want seq 2", got.raw)
	}
	if got := f.call(t, "POST", "/rooms/lobby/messages", map[string]any{"data": "typing", "ephemeral": true}); got.status != 200 || got.body["seq"] != nil {
		t.Errorf("ephemeral publish: %d %s, want 200 and no seq", got.status, got.raw)
	}
	if got := msgs(t, mc, 3); !slices.Equal(got, []string{`lobby:1:{"n":1}`, `lobby:2:"two"`, `lobby:0:"typing"`}) {
		t.Errorf("client of many rooms got %v", got)
	}
	var seen []string
	for range 3 {
		e := readEnvelope(t, one)
		seen = append(seen, fmt.Sprintf("%d:%s", e.Seq, e.Data))
	}
	if want := []string{`1:{"n":1}`, `2:"two"`, `0:"typing"`}; !slices.Equal(seen, want) {
		t.Errorf("client of one room got %v, want %v", seen, want)
	}

	for _, c := range []struct {
		name, path, body string
		header           []string
		status           int
		code             string
	}{
		{"not JSON for a JSON room", "/rooms/lobby/messages", `{"text":"not json"}`, nil, 400, "bad_request"},
		{"no data", "/rooms/lobby/messages", `{}`, nil, 400, "bad_request"},
		{"two kinds of data", "/rooms/lobby/messages", `{"data":1,"text":"1"}`, nil, 400, "bad_request"},
		{"unknown member", "/rooms/lobby/messages", `{"data":1,"dta":2}`, nil, 400, "bad_request"},
		{"not an object", "/rooms/lobby/messages", `[1]`, nil, 400, "bad_request"},
		{"bad room", "/rooms/.hidden/messages", `{"data":1}`, nil, 400, "bad_room"},
		{"over the read limit", "/rooms/lobby/messages", `{"data":"` + strings.Repeat("x", 1000) + `"}`, nil, 413, "too_large"},
		{"body far over", "/rooms/lobby/messages", `{"data":"` + strings.Repeat("x", 200000) + `"}`, nil, 413, "too_large"},
		{"long key", "/rooms/lobby/messages", `{"data":1}`, []string{"Idempotency-Key", strings.Repeat("k", 65)}, 400, "bad_request"},
		{"rooms on one room", "/rooms/lobby/messages", `{"rooms":["a"],"data":1}`, nil, 400, "bad_request"},
		{"many: no rooms", "/messages", `{"data":1}`, nil, 400, "bad_request"},
		{"many: a room twice", "/messages", `{"rooms":["a","a"],"data":1}`, nil, 400, "bad_request"},
		{"many: too many rooms", "/messages", `{"rooms":[` + strings.Repeat(`"a",`, 100) + `"b"],"data":1}`, nil, 400, "bad_request"},
	} {
		got := f.call(t, "POST", c.path, c.body, c.header...)
		if got.status != c.status || got.body["code"] != c.code || got.body["message"] == "" {
			t.Errorf("%s: %d %s, want %d %s", c.name, got.status, got.raw, c.status, c.code)
		}
	}

	// Many rooms: each result on its own, a bad name among good ones.
	many := f.call(t, "POST", "/messages", map[string]any{"rooms": []string{"lobby", "news", ".bad"}, "data": 3}, "Idempotency-Key", "k2")
	res, _ := many.body["results"].([]any)
	if many.status != 200 || len(res) != 3 {
		t.Fatalf("publish to many: %d %s", many.status, many.raw)
	}
	if r := res[0].(map[string]any); r["room"] != "lobby" || r["seq"] != 3.0 {
		t.Errorf("lobby's result %v, want seq 3", r)
	}
	if r := res[1].(map[string]any); r["room"] != "news" || r["seq"] != 1.0 {
		t.Errorf("news's result %v, want seq 1", r)
	}
	if r := res[2].(map[string]any); r["error"].(map[string]any)["code"] != "bad_room" {
		t.Errorf(".bad's result %v, want a bad_room error", r)
	}
	if again := f.call(t, "POST", "/messages", map[string]any{"rooms": []string{"lobby", "news", ".bad"}, "data": 3}, "Idempotency-Key", "k2"); again.raw != many.raw {
		t.Errorf("the retry to many rooms answered %s, want %s", again.raw, many.raw)
	}
	if got := msgs(t, mc, 1); !slices.Equal(got, []string{"lobby:3:3"}) {
		t.Errorf("after the publish to many rooms, got %v", got)
	}
	if e := readEnvelope(t, one); e.Seq != 3 || string(e.Data) != "3" {
		t.Errorf("client of one room got %+v, want seq 3 and 3", e)
	}
	one.Close(websocket.StatusNormalClosure, "")
	mc.Close(websocket.StatusNormalClosure, "")
	f.reg.Close()
	f.srv.Close()
}

// TestAPIRoomsAndMembers reads rooms, a room and its members through the
// API, pages included, for rooms live on this node and one that is not.
func TestAPIRoomsAndMembers(t *testing.T) {
	f := newAPI(t, wsroom.WithPresenceByUser())
	users := []string{"cy", "ana", "ben", "ana"} // ana twice: one member
	for _, u := range users {
		c, _ := f.dialMux(t, u)
		send(t, c, `{"op":"join","room":"lobby"}`)
		expect(t, c, "joined")
	}
	rooms := f.call(t, "GET", "/rooms", nil)
	list, _ := rooms.body["rooms"].([]any)
	if len(list) != 1 || list[0].(map[string]any)["name"] != "lobby" || list[0].(map[string]any)["clients"] != 4.0 {
		t.Fatalf("GET /rooms = %s, want lobby with 4 clients", rooms.raw)
	}
	room := f.call(t, "GET", "/rooms/lobby", nil)
	if room.body["count"] != 3.0 || room.body["clients"] != 4.0 || room.body["stats"].(map[string]any)["joins"] != 4.0 {
		t.Errorf("GET /rooms/lobby = %s, want 3 members, 4 clients, 4 joins", room.raw)
	}
	if got := f.call(t, "GET", "/rooms/empty", nil); got.status != 200 || got.body["count"] != 0.0 || got.body["stats"] != nil {
		t.Errorf("GET /rooms/empty = %s, want count 0 and no stats", got.raw)
	}
	if len(f.reg.Rooms()) != 1 {
		t.Errorf("reading a room made it: %d rooms", len(f.reg.Rooms()))
	}
	var got []string
	cursor := ""
	for pages := 0; ; pages++ {
		p := f.call(t, "GET", "/rooms/lobby/members?limit=2&cursor="+cursor, nil)
		for _, m := range p.body["members"].([]any) {
			got = append(got, m.(map[string]any)["user"].(string))
		}
		next, _ := p.body["next"].(string)
		if next == "" || pages > 3 {
			break
		}
		cursor = next
	}
	if want := []string{"ana", "ben", "cy"}; !slices.Equal(got, want) {
		t.Errorf("members by pages of 2 = %v, want %v", got, want)
	}
	for _, q := range []string{"limit=0", "limit=1001", "limit=x"} {
		if p := f.call(t, "GET", "/rooms/lobby/members?"+q, nil); p.status != 400 {
			t.Errorf("members?%s: %d %s, want 400", q, p.status, p.raw)
		}
	}
	if p := f.call(t, "GET", "/rooms/.x/members", nil); p.status != 400 || p.body["code"] != "bad_room" {
		t.Errorf("members of a bad room name: %d %s", p.status, p.raw)
	}
}

// TestAPIDisconnect closes a connection, every connection of a user, and
// removes a user from a room, through the API; each client sees the
// documented close code or left frame.
func TestAPIDisconnect(t *testing.T) {
	defer leakCheck(t)()
	f := newAPI(t)
	a1, a1ID := f.dialMux(t, "ana")
	a2 := dialURL(t, f.ws+"/rooms/lobby?user=ana")
	b1, b1ID := f.dialMux(t, "ben")
	for _, c := range []*websocket.Conn{a1, b1} {
		send(t, c, `{"op":"join","room":"lobby"}`)
		expect(t, c, "joined")
		send(t, c, `{"op":"join","room":"news"}`)
		expect(t, c, "joined")
	}
	waitUntil(t, "three clients in lobby", func() bool {
		r, _ := f.reg.Room("lobby")
		return r.Len() == 3
	})

	// Remove ana from lobby: her connection of many rooms leaves it, her
	// connection of lobby alone is closed; ben stays.
	got := f.call(t, "DELETE", "/rooms/lobby/users/ana", nil)
	if closed, _ := got.body["closed"].([]any); got.status != 200 || len(closed) != 2 || !slices.Contains(closed, any(a1ID)) {
		t.Errorf("remove ana from lobby: %d %s, want her two connections", got.status, got.raw)
	}
	if l := expect(t, a1, "left"); l.Room != "lobby" || l.Reason != "removed" {
		t.Errorf("ana's connection of many rooms got %+v, want left lobby removed", l)
	}
	if code, reason := closeStatus(t, a2); code != websocket.StatusPolicyViolation || reason != "removed from the room" {
		t.Errorf("ana's connection of one room closed with %d %q", code, reason)
	}

	// Disconnect one connection, with a code and reason of the caller's.
	if got := f.call(t, "DELETE", "/connections/"+b1ID, `{"code":4100,"reason":"bye"}`); got.status != 200 {
		t.Errorf("disconnect ben: %d %s", got.status, got.raw)
	}
	if code, reason := closeStatus(t, b1); code != 4100 || reason != "bye" {
		t.Errorf("ben's connection closed with %d %q, want 4100 bye", code, reason)
	}
	waitUntil(t, "ben's connection ended", func() bool { return f.reg.Stats().Clients == 1 })
	if got := f.call(t, "DELETE", "/connections/"+b1ID, nil); got.status != 202 || got.body["forwarded"] != true || len(got.body["closed"].([]any)) != 0 {
		t.Errorf("disconnect ben again: %d %s, want 202, forwarded to the other nodes", got.status, got.raw)
	}
	for _, body := range []string{`{"code":1006}`, `{"code":2999}`, `{"reason":"` + strings.Repeat("r", 124) + `"}`, `{"cod":1000}`, `[]`} {
		if got := f.call(t, "DELETE", "/users/ana/connections", body); got.status != 400 || got.body["code"] != "bad_request" {
			t.Errorf("disconnect with %s: %d %s, want 400", body, got.status, got.raw)
		}
	}
	// Every connection of a user: ana's connection of many rooms, closed
	// with the default code and reason.
	got = f.call(t, "DELETE", "/users/ana/connections", nil)
	if closed, _ := got.body["closed"].([]any); len(closed) != 1 || closed[0] != a1ID {
		t.Errorf("disconnect ana: %s, want [%s]", got.raw, a1ID)
	}
	if code, reason := closeStatus(t, a1); code != websocket.StatusPolicyViolation || reason != "disconnected by the server" {
		t.Errorf("ana's connection closed with %d %q", code, reason)
	}
	if got := f.call(t, "DELETE", "/users/nobody/connections", nil); got.status != 202 || len(got.body["closed"].([]any)) != 0 {
		t.Errorf("disconnect a user with no connection here: %d %s, want 202 and none", got.status, got.raw)
	}
	f.reg.Close()
	f.srv.Close()
}

// TestAPIAcrossNodes runs two registries that share a Broker, as two nodes
// share an engine: through node A's API, a publish reaches node B's
// clients, and disconnects and removals reach node B's connections.
func TestAPIAcrossNodes(t *testing.T) {
	defer leakCheck(t)()
	broker := wsroom.NewLocalBroker(wsroom.NewMemoryStore(100, time.Hour))
	a := newAPI(t, wsroom.WithBroker(broker))
	b := newAPI(t, wsroom.WithBroker(broker))
	mc, mcID := b.dialMux(t, "ana")
	send(t, mc, `{"op":"join","room":"lobby"}`)
	expect(t, mc, "joined")
	send(t, mc, `{"op":"join","room":"news"}`)
	expect(t, mc, "joined")
	ben, benID := b.dialMux(t, "ben")
	one := dialURL(t, b.ws+"/rooms/lobby?user=ana")
	waitUntil(t, "two clients in lobby on node B", func() bool {
		r, _ := b.reg.Room("lobby")
		return r.Len() == 2
	})

	if got := a.call(t, "POST", "/rooms/lobby/messages", map[string]any{"data": "hi"}); got.status != 200 {
		t.Fatalf("publish on node A: %d %s", got.status, got.raw)
	}
	if got := msgs(t, mc, 1); !slices.Equal(got, []string{`lobby:1:"hi"`}) {
		t.Errorf("node B's client got %v", got)
	}
	readEnvelope(t, one)

	got := a.call(t, "DELETE", "/rooms/lobby/users/ana", nil)
	if got.status != 202 || got.body["forwarded"] != true {
		t.Errorf("remove ana from lobby on node A: %d %s, want 202, forwarded", got.status, got.raw)
	}
	if l := expect(t, mc, "left"); l.Room != "lobby" || l.Reason != "removed" {
		t.Errorf("node B's client of many rooms got %+v, want left lobby removed", l)
	}
	if code, reason := closeStatus(t, one); code != websocket.StatusPolicyViolation || reason != "removed from the room" {
		t.Errorf("node B's client of lobby closed with %d %q", code, reason)
	}
	if got := a.call(t, "DELETE", "/connections/"+benID, `{"code":4200,"reason":"moved"}`); got.status != 202 {
		t.Errorf("disconnect ben on node A: %d %s, want 202", got.status, got.raw)
	}
	if code, reason := closeStatus(t, ben); code != 4200 || reason != "moved" {
		t.Errorf("ben closed with %d %q, want 4200 moved", code, reason)
	}
	if got := a.call(t, "DELETE", "/users/ana/connections", nil); got.status != 202 {
		t.Errorf("disconnect ana on node A: %d %s, want 202", got.status, got.raw)
	}
	if code, _ := closeStatus(t, mc); code != websocket.StatusPolicyViolation {
		t.Errorf("ana's connection %s closed with %d, want 1008", mcID, code)
	}
	// Clients cannot reach the control room.
	c, _ := b.dialMux(t, "eve")
	send(t, c, `{"op":"join","room":".wsroom.api"}`)
	if e := expect(t, c, "error"); e.Code != "bad_room" {
		t.Errorf("a join of the control room: %+v, want bad_room", e)
	}
	c.Close(websocket.StatusNormalClosure, "")
	for _, f := range []*apiFixture{a, b} {
		f.reg.Close()
		f.srv.Close()
	}
}
