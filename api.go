package wsroom

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// The server API: JSON over HTTP for backends in any language, described
// by openapi.json. Its handler is a thin layer over the Registry's Go API:
// a publish is Room.Publish with the caller's idempotency key, members are
// Room.MembersPage, and so on.

//go:embed openapi.json
var openAPI []byte

// APIOption configures the handler of Registry.API.
type APIOption func(*apiConfig)

type apiConfig struct {
	auth []func(*http.Request) error
}

// WithAPIKey admits the requests that carry key as "Authorization: Bearer
// key". The key is compared in constant time. It panics if key is empty.
func WithAPIKey(key string) APIOption {
	if key == "" {
		panic("wsroom: WithAPIKey with an empty key")
	}
	return WithAPIAuth(func(r *http.Request) error {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(key)) != 1 {
			return errors.New("wsroom: no valid API key")
		}
		return nil
	})
}

// WithAPIAuth admits the requests for which check returns nil; its error's
// text is sent back with 401 Unauthorized (or an *HTTPError's status and
// message). check runs on the request's goroutine. With several
// WithAPIKey and WithAPIAuth options, a request passing any one is
// admitted.
func WithAPIAuth(check func(*http.Request) error) APIOption {
	return func(c *apiConfig) { c.auth = append(c.auth, check) }
}

// maxAPIRooms bounds the rooms of one publish to many rooms.
const maxAPIRooms = 100

// API returns an http.Handler serving the registry's server API, as
// openapi.json (also served at GET /openapi.json) describes it: publish to
// a room or to many rooms, with an idempotency key; a room's members and
// count; the rooms of this node and their counters; disconnect a connection
// or every connection of a user; remove a user from a room. Mount it under
// a prefix with http.StripPrefix, e.g.
//
//	mux.Handle("/api/", http.StripPrefix("/api", reg.API(wsroom.WithAPIKey(key))))
//
// Every request must pass one of the WithAPIKey or WithAPIAuth checks; with
// none given, every request is refused with 401 Unauthorized. Errors are
// JSON objects {"code","message"} with the codes of PROTOCOL.md's section
// 6.1, plus "unauthorized", "not_found", "too_large" and "gone". With
// WithEvents, GET /events pages through the lifecycle event log.
//
// Publishes and presence reach every node through the registry's Broker.
// Disconnects and removals act on the connections of this node: a backend
// of a cluster sends them to each node, or to the node the connection is
// on. A publish with the same Idempotency-Key within DedupWindow (on any
// node, when the Broker is a Deduplicator) is published once and answered
// with the first one's position.
//
// The handler is safe for concurrent use.
func (g *Registry) API(opts ...APIOption) http.Handler {
	var cfg apiConfig
	for _, o := range opts {
		o(&cfg)
	}
	a := &api{g: g, auth: cfg.auth}
	g.listen()
	mux := http.NewServeMux()
	for _, rt := range a.routes() {
		mux.HandleFunc(rt.pattern, rt.h)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		apiError(w, http.StatusNotFound, "not_found", "wsroom: no such API path: "+r.Method+" "+r.URL.Path)
	})
	return a.admit(mux)
}

type api struct {
	g    *Registry
	auth []func(*http.Request) error
}

type apiRoute struct {
	pattern string
	h       http.HandlerFunc
}

// routes are the API's operations; openapi.json lists the same (a test
// checks it).
func (a *api) routes() []apiRoute {
	return []apiRoute{
		{"GET /openapi.json", a.spec},
		{"POST /rooms/{room}/messages", a.publish},
		{"POST /messages", a.publishMany},
		{"GET /rooms", a.rooms},
		{"GET /rooms/{room}", a.room},
		{"GET /rooms/{room}/members", a.members},
		{"DELETE /rooms/{room}/users/{user}", a.removeUser},
		{"DELETE /connections/{id}", a.disconnect},
		{"DELETE /users/{user}/connections", a.disconnectUser},
		{"GET /events", a.events},
	}
}

// admit runs the auth checks before next.
func (a *api) admit(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var err error = errors.New("wsroom: the API admits no request: give it WithAPIKey or WithAPIAuth")
		for _, check := range a.auth {
			if err = check(r); err == nil {
				break
			}
		}
		if err != nil {
			var he *HTTPError
			if errors.As(err, &he) {
				apiError(w, he.Code, "unauthorized", he.text())
				return
			}
			apiError(w, http.StatusUnauthorized, "unauthorized", err.Error())
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (a *api) spec(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Write(openAPI)
}

// apiMessage is the body of a publish: the message's data as exactly one
// of Data (any JSON value, sent as its JSON text), Text or Bytes (base64).
type apiMessage struct {
	Rooms     []string        `json:"rooms,omitempty"` // publishMany only
	Data      json.RawMessage `json:"data,omitempty"`
	Text      *string         `json:"text,omitempty"`
	Bytes     []byte          `json:"bytes,omitempty"`
	Ephemeral bool            `json:"ephemeral,omitempty"`
}

// apiAck is what a publish answers, per room.
type apiAck struct {
	Room  string  `json:"room"`
	Epoch string  `json:"epoch,omitempty"`
	Seq   uint64  `json:"seq,omitempty"`
	Error *apiErr `json:"error,omitempty"`
}

type apiErr struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// readMessage decodes a publish's body, bounded by the read limit.
func (a *api) readMessage(w http.ResponseWriter, r *http.Request) (apiMessage, []byte, bool) {
	var m apiMessage
	limit := a.g.cfg.readLimit*4/3 + 64<<10 // base64, and the envelope
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			apiError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("wsroom: a body over %d bytes", limit))
		} else {
			apiError(w, http.StatusBadRequest, codeBadRequest, "wsroom: the body is not a message object: "+err.Error())
		}
		return m, nil, false
	}
	var data []byte
	n := 0
	if m.Data != nil {
		data, n = m.Data, n+1
	}
	if m.Text != nil {
		data, n = []byte(*m.Text), n+1
	}
	if m.Bytes != nil {
		data, n = m.Bytes, n+1
	}
	if n != 1 {
		apiError(w, http.StatusBadRequest, codeBadRequest, `wsroom: a message has exactly one of "data", "text" and "bytes"`)
		return m, nil, false
	}
	if int64(len(data)) > a.g.cfg.readLimit {
		apiError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("wsroom: a message of %d bytes, over the read limit of %d", len(data), a.g.cfg.readLimit))
		return m, nil, false
	}
	return m, data, true
}

// idempotencyKey returns the request's Idempotency-Key header, checked as
// PROTOCOL.md checks an id.
func idempotencyKey(w http.ResponseWriter, r *http.Request) (string, bool) {
	key := r.Header.Get("Idempotency-Key")
	if len(key) > 64 {
		apiError(w, http.StatusBadRequest, codeBadRequest, "wsroom: an Idempotency-Key over 64 bytes")
		return "", false
	}
	return key, true
}

func (a *api) publish(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("room")
	key, ok := idempotencyKey(w, r)
	if !ok {
		return
	}
	m, data, ok := a.readMessage(w, r)
	if !ok {
		return
	}
	if m.Rooms != nil {
		apiError(w, http.StatusBadRequest, codeBadRequest, `wsroom: "rooms" belongs to POST /messages`)
		return
	}
	ack, status := a.publishOne(r.Context(), name, data, m.Ephemeral, key)
	if ack.Error != nil {
		apiError(w, status, ack.Error.Code, ack.Error.Message)
		return
	}
	apiJSON(w, http.StatusOK, ack)
}

func (a *api) publishMany(w http.ResponseWriter, r *http.Request) {
	key, ok := idempotencyKey(w, r)
	if !ok {
		return
	}
	m, data, ok := a.readMessage(w, r)
	if !ok {
		return
	}
	if len(m.Rooms) == 0 || len(m.Rooms) > maxAPIRooms {
		apiError(w, http.StatusBadRequest, codeBadRequest, fmt.Sprintf(`wsroom: "rooms" lists 1 to %d rooms`, maxAPIRooms))
		return
	}
	seen := make(map[string]bool, len(m.Rooms))
	for _, name := range m.Rooms {
		if seen[name] {
			apiError(w, http.StatusBadRequest, codeBadRequest, fmt.Sprintf("wsroom: room %q listed twice", name))
			return
		}
		seen[name] = true
	}
	out := struct {
		Results []apiAck `json:"results"`
	}{make([]apiAck, len(m.Rooms))}
	done := make(chan struct{})
	for i, name := range m.Rooms {
		go func() {
			defer func() { done <- struct{}{} }()
			out.Results[i], _ = a.publishOne(r.Context(), name, data, m.Ephemeral, key)
		}()
	}
	for range m.Rooms {
		<-done
	}
	apiJSON(w, http.StatusOK, out)
}

// apiSender is who the API publishes as, for idempotency keys.
type apiSender struct{}

// publishOne publishes data to the room called name, once per key within
// the dedup window, and returns its ack or its error with the HTTP status
// to answer it with.
func (a *api) publishOne(ctx context.Context, name string, data []byte, ephemeral bool, key string) (apiAck, int) {
	g := a.g
	fail := func(status int, code string, err error) (apiAck, int) {
		return apiAck{Room: name, Error: &apiErr{code, err.Error()}}, status
	}
	if err := g.cfg.validName(name); err != nil {
		return fail(http.StatusBadRequest, codeBadRoom, err)
	}
	if _, err := g.cfg.check(data); err != nil {
		return fail(http.StatusBadRequest, codeBadRequest, err)
	}
	var e *ackEntry
	if key != "" && !ephemeral {
		var first bool
		if e, first = g.acks.begin(name, apiSender{}, key); !first {
			rp, err := e.wait(ctx.Done())
			if err != nil {
				return fail(http.StatusServiceUnavailable, codeUnavailable, err)
			}
			ack := apiAck{Room: name}
			if rp.Epoch != nil {
				ack.Epoch, ack.Seq = *rp.Epoch, *rp.Seq
			}
			return ack, http.StatusOK
		}
	}
	msg := Message{Time: time.Now(), Ephemeral: ephemeral, Data: data}
	var dkey string
	if e != nil {
		dkey = dedupKey(apiSender{}, key)
	}
	err := g.inRoom(name, func(r *Room) error {
		out, err := r.publishSeq(ctx, msg, dkey)
		if err == nil {
			msg = out
		}
		return err
	})
	status, code := http.StatusOK, ""
	switch {
	case err == nil:
	case errors.Is(err, errTooManyNewRooms):
		status, code = http.StatusServiceUnavailable, codeTooManyRooms
	default:
		status, code = http.StatusServiceUnavailable, codeUnavailable
	}
	var rp *reply
	if err == nil {
		rp = &reply{Op: "ack", Room: name}
		if msg.Seq != 0 {
			rp.at(position{epoch: msg.Epoch, seq: msg.Seq})
		}
	}
	if e != nil {
		g.acks.finish(e, rp, err)
	}
	if err != nil {
		return fail(status, code, err)
	}
	ack := apiAck{Room: name}
	if msg.Seq != 0 {
		ack.Epoch, ack.Seq = msg.Epoch, msg.Seq
	}
	return ack, status
}

// apiRoom is a room as GET /rooms and GET /rooms/{room} answer it.
type apiRoom struct {
	Name    string  `json:"name"`
	Clients int     `json:"clients"`         // on this node
	Count   *int    `json:"count,omitempty"` // members on every node (see Room.Count)
	Stats   *Stats  `json:"stats,omitempty"` // this node's counters, while the room is live here
	Error   *apiErr `json:"error,omitempty"`
}

func (a *api) rooms(w http.ResponseWriter, _ *http.Request) {
	out := struct {
		Rooms []apiRoom `json:"rooms"`
	}{[]apiRoom{}}
	for _, r := range a.g.Rooms() {
		s := r.Stats()
		out.Rooms = append(out.Rooms, apiRoom{Name: r.name, Clients: r.Len(), Stats: &s})
	}
	apiJSON(w, http.StatusOK, out)
}

// live returns the room called name if it is live on this node, without
// making it.
func (g *Registry) live(name string) *Room {
	g.mu.Lock()
	defer g.mu.Unlock()
	if e := g.rooms[name]; e != nil {
		return e.room
	}
	return nil
}

// idle is a stand-in for a room not live on this node, to ask the Broker
// of its members: it has the registry's options and no client.
func (g *Registry) idle(name string) *Room {
	return &Room{name: name, cfg: g.cfg, done: closedChan}
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (a *api) roomFor(w http.ResponseWriter, r *http.Request) (*Room, bool) {
	name := r.PathValue("room")
	if err := a.g.cfg.validName(name); err != nil {
		apiError(w, http.StatusBadRequest, codeBadRoom, err.Error())
		return nil, false
	}
	if room := a.g.live(name); room != nil {
		return room, true
	}
	return a.g.idle(name), true
}

func (a *api) room(w http.ResponseWriter, r *http.Request) {
	room, ok := a.roomFor(w, r)
	if !ok {
		return
	}
	out := apiRoom{Name: room.name, Clients: room.Len()}
	if a.g.live(room.name) == room {
		s := room.Stats()
		out.Stats = &s
	}
	n, err := room.Count(r.Context())
	if err != nil {
		apiError(w, http.StatusServiceUnavailable, codeUnavailable, err.Error())
		return
	}
	out.Count = &n
	apiJSON(w, http.StatusOK, out)
}

func (a *api) members(w http.ResponseWriter, r *http.Request) {
	room, ok := a.roomFor(w, r)
	if !ok {
		return
	}
	limit, ok := pageLimit(w, r)
	if !ok {
		return
	}
	ms, next, err := room.MembersPage(r.Context(), r.URL.Query().Get("cursor"), limit)
	if err != nil {
		apiError(w, http.StatusServiceUnavailable, codeUnavailable, err.Error())
		return
	}
	out := struct {
		Members []Member `json:"members"`
		Next    string   `json:"next,omitempty"`
	}{append([]Member{}, ms...), next}
	apiJSON(w, http.StatusOK, out)
}

// clients returns every connection of this node: those of one room and
// those of many.
func (g *Registry) clients() []*Client {
	seen := make(map[*Client]bool)
	var out []*Client
	add := func(c *Client) {
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	for _, r := range g.Rooms() {
		for _, c := range r.Clients() {
			add(c)
		}
	}
	g.mu.Lock()
	muxes := make([]*Client, 0, len(g.muxes))
	for c := range g.muxes {
		muxes = append(muxes, c)
	}
	g.mu.Unlock()
	for _, c := range muxes {
		add(c)
	}
	return out
}

// identityText is the client's identity as text: a string, or a
// fmt.Stringer's String; "" otherwise.
func identityText(c *Client) string { return makerOf(c.id, c.identity).identity }

// apiCloseBody is the optional body of a disconnect.
type apiCloseBody struct {
	Code   int    `json:"code"`
	Reason string `json:"reason"`
}

// readClose reads a disconnect's close code and reason: 1008 and
// "disconnected by the server" by default; codes 1000, 1001, 1008 and 3000
// to 4999 only, reasons of 123 bytes at most (a close frame's bound).
func readClose(w http.ResponseWriter, r *http.Request) (websocket.StatusCode, string, bool) {
	cr := apiCloseBody{Code: int(websocket.StatusPolicyViolation), Reason: "disconnected by the server"}
	if r.ContentLength != 0 {
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&cr); err != nil && !errors.Is(err, io.EOF) {
			apiError(w, http.StatusBadRequest, codeBadRequest, "wsroom: the body is not a close object: "+err.Error())
			return 0, "", false
		}
	}
	switch c := cr.Code; {
	case c == 1000, c == 1001, c == 1008, c >= 3000 && c <= 4999:
	default:
		apiError(w, http.StatusBadRequest, codeBadRequest, fmt.Sprintf("wsroom: close code %d: give 1000, 1001, 1008 or 3000 to 4999", c))
		return 0, "", false
	}
	if len(cr.Reason) > 123 {
		apiError(w, http.StatusBadRequest, codeBadRequest, "wsroom: a close reason over 123 bytes")
		return 0, "", false
	}
	return websocket.StatusCode(cr.Code), cr.Reason, true
}

func (a *api) disconnect(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	code, reason, ok := readClose(w, r)
	if !ok {
		return
	}
	if closed := a.g.disconnect(id, code, reason); len(closed) > 0 {
		apiJSON(w, http.StatusOK, apiClosed{Closed: closed})
		return
	}
	// Not a connection of this node: perhaps of another.
	a.forward(w, r, apiCommand{Op: "disconnect", ID: id, Code: int(code), Reason: reason}, nil)
}

// apiClosed lists the connections a disconnect or removal acted on on this
// node, and whether the command went on to the other nodes.
type apiClosed struct {
	Closed    []string `json:"closed"`
	Forwarded bool     `json:"forwarded"`
}

func (a *api) disconnectUser(w http.ResponseWriter, r *http.Request) {
	user := r.PathValue("user")
	code, reason, ok := readClose(w, r)
	if !ok {
		return
	}
	closed := a.g.disconnectUser(user, code, reason)
	a.forward(w, r, apiCommand{Op: "disconnectUser", User: user, Code: int(code), Reason: reason}, closed)
}

func (a *api) removeUser(w http.ResponseWriter, r *http.Request) {
	name, user := r.PathValue("room"), r.PathValue("user")
	if err := a.g.cfg.validName(name); err != nil {
		apiError(w, http.StatusBadRequest, codeBadRoom, err.Error())
		return
	}
	closed := a.g.removeUser(name, user)
	a.forward(w, r, apiCommand{Op: "removeUser", Room: name, User: user}, closed)
}

// forward hands cmd to the Broker for the other nodes, and answers with
// the connections this node closed: 200 when there were some, 202 when
// there were none and the others may have some, 503 when the Broker could
// not take the command (a retry is safe: each command is idempotent).
func (a *api) forward(w http.ResponseWriter, r *http.Request, cmd apiCommand, closed []string) {
	if err := a.g.sendCommand(r.Context(), cmd); err != nil {
		apiError(w, http.StatusServiceUnavailable, codeUnavailable,
			fmt.Sprintf("wsroom: closed %d connections on this node; the Broker could not take the command to the others: %v", len(closed), err))
		return
	}
	status := http.StatusOK
	if len(closed) == 0 {
		status = http.StatusAccepted
	}
	apiJSON(w, status, apiClosed{Closed: append([]string{}, closed...), Forwarded: true})
}

// disconnect closes this node's connection id, if it has one.
func (g *Registry) disconnect(id string, code websocket.StatusCode, reason string) []string {
	for _, c := range g.clients() {
		if c.id == id {
			c.Close(code, reason)
			return []string{id}
		}
	}
	return nil
}

// disconnectUser closes this node's connections of user.
func (g *Registry) disconnectUser(user string, code websocket.StatusCode, reason string) []string {
	var out []string
	for _, c := range g.clients() {
		if user != "" && identityText(c) == user {
			c.Close(code, reason)
			out = append(out, c.id)
		}
	}
	return out
}

// removeUser removes user's connections of this node from the room called
// name: a connection of many rooms leaves it (its client gets "left" with
// the reason "removed"), a connection of that one room is closed with 1008.
func (g *Registry) removeUser(name, user string) []string {
	var out []string
	for _, c := range g.clients() {
		if user == "" || identityText(c) != user {
			continue
		}
		if c.mux != nil {
			if c.Leave(name) == nil {
				out = append(out, c.id)
			}
		} else if c.room != nil && c.room.name == name {
			c.Close(websocket.StatusPolicyViolation, "removed from the room")
			out = append(out, c.id)
		}
	}
	return out
}

// controlRoom is the room through which the APIs of a registry's nodes
// carry disconnects and removals to each other, as ephemeral messages of
// the Broker. No client can join it: the registry refuses its name.
const controlRoom = ".wsroom.api"

// apiCommand is a disconnect or removal carried to the other nodes.
type apiCommand struct {
	Node   string `json:"node"` // the node that sent it, which ignores it
	Op     string `json:"op"`   // disconnect, disconnectUser, removeUser
	ID     string `json:"id,omitempty"`
	User   string `json:"user,omitempty"`
	Room   string `json:"room,omitempty"`
	Code   int    `json:"code,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// control is a registry's subscription to the control room: made by the
// first API, ended by Close and Shutdown, which wait for the commands
// being carried out.
type control struct {
	node   string
	cancel context.CancelFunc
	done   chan struct{} // closed when the subscriber has unsubscribed
	mu     sync.Mutex
	ended  bool
	wg     sync.WaitGroup // commands being carried out
}

// listen subscribes the registry to the control room, once: a first try
// on the caller's goroutine (so that a node is reachable once its API is
// made), then, if that failed, a goroutine that tries every second until
// it succeeds or the registry closes. Commands sent while a node is not
// subscribed (its engine is down) do not reach it.
func (g *Registry) listen() {
	g.mu.Lock()
	if g.ctl != nil || g.closed {
		g.mu.Unlock()
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	ctl := &control{node: newID(), cancel: cancel, done: make(chan struct{})}
	g.ctl = ctl
	g.mu.Unlock()
	subscribe := func() (func(), error) {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return g.cfg.broker.Subscribe(sctx, controlRoom, func(m Message) { g.command(ctl, m.Data) }, nil)
	}
	unsubscribe, err := subscribe()
	go func() {
		defer close(ctl.done)
		for err != nil {
			g.cfg.report(nil, controlRoom, fmt.Errorf("wsroom: the server API cannot hear the other nodes: %w", err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			unsubscribe, err = subscribe()
		}
		<-ctx.Done()
		unsubscribe()
	}()
}

// command carries out a command from another node, on a goroutine of its
// own: the Broker's delivery must not wait for a client.
func (g *Registry) command(ctl *control, data []byte) {
	var cmd apiCommand
	if err := json.Unmarshal(data, &cmd); err != nil {
		g.cfg.report(nil, controlRoom, fmt.Errorf("wsroom: a server API command that is not one: %w", err))
		return
	}
	if cmd.Node == ctl.node {
		return // carried out by the node that sent it
	}
	ctl.mu.Lock()
	defer ctl.mu.Unlock()
	if ctl.ended {
		return
	}
	ctl.wg.Go(func() {
		code := websocket.StatusCode(cmd.Code)
		switch cmd.Op {
		case "disconnect":
			g.disconnect(cmd.ID, code, cmd.Reason)
		case "disconnectUser":
			g.disconnectUser(cmd.User, code, cmd.Reason)
		case "removeUser":
			g.removeUser(cmd.Room, cmd.User)
		}
	})
}

// sendCommand hands cmd to the Broker for the other nodes.
func (g *Registry) sendCommand(ctx context.Context, cmd apiCommand) error {
	g.mu.Lock()
	ctl := g.ctl
	g.mu.Unlock()
	if ctl == nil {
		return ErrClosed
	}
	cmd.Node = ctl.node
	data, _ := json.Marshal(cmd)
	return g.cfg.broker.Publish(ctx, controlRoom, Message{Time: time.Now(), Ephemeral: true, Data: data})
}

// stopControl ends the registry's subscription to the control room and
// waits for the commands being carried out.
func (g *Registry) stopControl() {
	g.mu.Lock()
	ctl := g.ctl
	g.mu.Unlock()
	if ctl == nil {
		return
	}
	ctl.cancel()
	<-ctl.done
	ctl.mu.Lock()
	ctl.ended = true
	ctl.mu.Unlock()
	ctl.wg.Wait()
}

// events answers a page of the lifecycle event log (WithEvents).
func (a *api) events(w http.ResponseWriter, r *http.Request) {
	if a.g.cfg.events == nil {
		apiError(w, http.StatusNotFound, "not_found", "wsroom: this registry keeps no event log (WithEvents)")
		return
	}
	limit, ok := pageLimit(w, r)
	if !ok {
		return
	}
	after := r.URL.Query().Get("after")
	if _, _, err := parseEventID(after); err != nil {
		apiError(w, http.StatusBadRequest, codeBadRequest, err.Error())
		return
	}
	evs, err := a.g.Events(r.Context(), after, limit)
	switch {
	case errors.Is(err, ErrGap):
		apiError(w, http.StatusGone, "gone", err.Error())
		return
	case err != nil:
		apiError(w, http.StatusServiceUnavailable, codeUnavailable, err.Error())
		return
	}
	out := struct {
		Events []Event `json:"events"`
		Next   string  `json:"next,omitempty"`
	}{Events: append([]Event{}, evs...), Next: after}
	if len(evs) > 0 {
		out.Next = evs[len(evs)-1].ID
	}
	apiJSON(w, http.StatusOK, out)
}

// pageLimit reads a page's limit query parameter: 1 to 1000, 100 by
// default.
func pageLimit(w http.ResponseWriter, r *http.Request) (int, bool) {
	s := r.URL.Query().Get("limit")
	if s == "" {
		return 100, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 1000 {
		apiError(w, http.StatusBadRequest, codeBadRequest, "wsroom: limit is 1 to 1000")
		return 0, false
	}
	return n, true
}

func apiJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		apiError(w, http.StatusInternalServerError, codeInternal, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func apiError(w http.ResponseWriter, status int, code, msg string) {
	b, _ := json.Marshal(apiErr{code, msg})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
