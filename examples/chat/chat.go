package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
)

// Limits of the chat. The page reads them from the template, so they are
// stated once.
const (
	MaxName    = 32      // characters in a display name
	MaxText    = 2000    // characters in a message
	MaxUpload  = 5 << 20 // bytes in a shared file
	HistoryLen = 50      // messages a newcomer sees
)

// Close codes, in the range reserved for applications, that tell the page
// why the server closed its connection.
const (
	// StatusNameTaken refuses a client whose name someone in the room took
	// between its handshake and its admission. The client gets no message
	// before it. The page asks for another name.
	StatusNameTaken websocket.StatusCode = 4001
	// StatusReplaced closes a client when the same browser tab joined the
	// room again (its key matches), as happens when it reconnects before the
	// server noticed the old connection was gone. The page does not
	// reconnect: a newer connection of its own is in charge.
	StatusReplaced websocket.StatusCode = 4002
)

//go:embed templates static
var assets embed.FS

// Options configure a Server. The zero value is a working chat with history
// and files in memory and no token.
type Options struct {
	// Token, if not empty, must be sent by every client (the "token" query
	// parameter) to join a room, list rooms or upload a file.
	Token string
	// Store keeps the rooms' history (default: in memory).
	Store wsroom.Store
	// Files keeps shared files (default: in memory, at most 64 MiB).
	Files FileStore
	// RateLimit and RateBurst limit the messages each client may send per
	// second, typing notices included (defaults 5 and 10). Beyond that the
	// server stops reading from the client for a while.
	RateLimit float64
	RateBurst int
	// IdleTimeout is how long a room without clients lives on (default a
	// minute); its history stays in the Store.
	IdleTimeout time.Duration
	// Logger receives the rooms' logs (default: none).
	Logger *slog.Logger
}

// Server is the chat: an http.Handler serving the pages, the WebSocket rooms
// and the file endpoints.
type Server struct {
	opts  Options
	rooms *wsroom.Registry
	files FileStore
	page  *template.Template
	mux   *http.ServeMux

	mu      sync.Mutex
	rosters map[string]*roster // room name → who is in it

	// admitGate, if set (by tests, before serving), is called at the start
	// of the admit hook, so that tests can line clients up there.
	admitGate func(*wsroom.Client)
}

// roster is the set of names in one room. A name belongs to at most one
// client at a time. The admit hook adds a client, the leave hook removes it.
type roster struct {
	members map[string]*member // folded name → member
	version uint64             // bumped on every change, so pages can order presence updates
}

type member struct {
	client *wsroom.Client
	name   string
	key    string
}

// identity is what the authorize hook attaches to each client.
type identity struct {
	Name string // display name, trimmed
	Key  string // random key of the browser tab, or ""
}

// NewServer returns a chat server configured by opts.
func NewServer(opts Options) (*Server, error) {
	if opts.Files == nil {
		opts.Files = newMemoryFiles(64 << 20)
	}
	if opts.RateLimit <= 0 {
		opts.RateLimit, opts.RateBurst = 5, 10
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = wsroom.DefaultIdleTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	page, err := template.New("chat.tmpl").
		Funcs(template.FuncMap{"mib": func(n int) int { return n >> 20 }}).
		ParseFS(assets, "templates/chat.tmpl")
	if err != nil {
		return nil, err
	}
	s := &Server{opts: opts, files: opts.Files, page: page, rosters: make(map[string]*roster)}
	roomOpts := []wsroom.Option{
		wsroom.WithCodec(wsroom.JSON()),
		wsroom.WithHistory(HistoryLen),
		wsroom.WithAuthorize(s.authorize),
		wsroom.WithAdmit(s.admit),
		wsroom.WithOnJoin(s.onJoin),
		wsroom.WithOnLeave(s.onLeave),
		wsroom.WithOnMessage(s.onMessage),
		wsroom.WithRateLimit(opts.RateLimit, opts.RateBurst, wsroom.Throttle),
		wsroom.WithIdleTimeout(opts.IdleTimeout),
		wsroom.WithLogger(opts.Logger),
	}
	if opts.Store != nil {
		roomOpts = append(roomOpts, wsroom.WithStore(opts.Store))
	}
	s.rooms = wsroom.NewRegistry(roomOpts...)

	static, err := fs.Sub(assets, "static")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.serveLobby)
	mux.HandleFunc("GET /r", s.serveGoto)
	mux.HandleFunc("GET /r/{room}", s.serveRoom)
	mux.Handle("GET /rooms/{name}", s.rooms.Handler(nil))
	mux.HandleFunc("GET /api/rooms", s.serveRooms)
	mux.HandleFunc("GET /api/check", s.serveCheck)
	mux.HandleFunc("POST /api/rooms/{room}/files", s.serveUpload)
	mux.HandleFunc("GET /files/{id}", s.serveFile)
	mux.Handle("GET /static/", http.StripPrefix("/static", http.FileServerFS(static)))
	s.mux = mux
	return s, nil
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	s.mux.ServeHTTP(w, r)
}

// Shutdown closes every room gracefully: each client is sent what is queued
// for it, then closed with 1001 (going away). Call it after
// http.Server.Shutdown, which does not wait for WebSockets.
func (s *Server) Shutdown(ctx context.Context) error {
	return s.rooms.Shutdown(ctx)
}

// Close closes every room at once.
func (s *Server) Close() error {
	return s.rooms.Close()
}

// Names and keys.

var (
	errNameEmpty   = errors.New("enter a name")
	errNameLong    = fmt.Errorf("a name is at most %d characters", MaxName)
	errNameControl = errors.New("a name cannot contain control characters")
	errBadKey      = errors.New("bad key: want 8 to 64 letters, digits, '-' or '_'")
)

// cleanName trims a display name and checks it.
func cleanName(name string) (string, error) {
	name = strings.TrimSpace(name)
	switch {
	case name == "":
		return "", errNameEmpty
	case !utf8.ValidString(name) || strings.ContainsFunc(name, unicode.IsControl):
		return "", errNameControl
	case utf8.RuneCountInString(name) > MaxName:
		return "", errNameLong
	}
	return name, nil
}

// foldName is the form in which names are compared: "Ana" and "ana" are the
// same name.
func foldName(name string) string { return strings.ToLower(name) }

// validKey checks the key a browser tab sends to take over its own name when
// it reconnects. The key is optional.
func validKey(key string) bool {
	if key == "" {
		return true
	}
	if len(key) < 8 || len(key) > 64 {
		return false
	}
	for _, c := range []byte(key) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func (s *Server) tokenOK(token string) bool {
	return s.opts.Token == "" || subtle.ConstantTimeCompare([]byte(token), []byte(s.opts.Token)) == 1
}

// taken reports whether name belongs to someone else in room: a client
// whose key is not key.
func (s *Server) taken(room, name, key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rosters[room]
	if r == nil {
		return false
	}
	m := r.members[foldName(name)]
	return m != nil && (key == "" || m.key != key)
}

// memberByKey reports whether name is in room, connected from the browser
// tab with key.
func (s *Server) memberByKey(room, name, key string) bool {
	if key == "" {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rosters[room]
	if r == nil {
		return false
	}
	m := r.members[foldName(name)]
	return m != nil && m.key == key
}

// The messages of the chat protocol. Pages send {"type":"msg","text":...},
// {"type":"typing"} and {"type":"file","id":...}; everything they receive
// is one of these, inside the JSON codec's envelope.
type (
	chatMsg struct {
		Type string `json:"type"` // "msg"
		Name string `json:"name"`
		Text string `json:"text"`
	}
	fileMsg struct {
		Type     string `json:"type"` // "file"
		Name     string `json:"name"` // who shared it
		Filename string `json:"filename"`
		URL      string `json:"url"`
		Size     int64  `json:"size"`
		MIME     string `json:"mime"`
	}
	typingMsg struct {
		Type string `json:"type"` // "typing"
		Name string `json:"name"`
	}
	presenceMsg struct {
		Type    string   `json:"type"` // "presence"
		Names   []string `json:"names"`
		Version uint64   `json:"v"` // newer snapshots have larger versions
	}
	errorMsg struct {
		Type  string `json:"type"` // "error"
		Error string `json:"error"`
	}
)

// presence returns a snapshot of the roster, sorted by name.
func (r *roster) presence() presenceMsg {
	names := make([]string, 0, len(r.members))
	for _, m := range r.members {
		names = append(names, m.name)
	}
	slices.SortFunc(names, func(a, b string) int {
		return cmp.Or(cmp.Compare(foldName(a), foldName(b)), cmp.Compare(a, b))
	})
	return presenceMsg{Type: "presence", Names: names, Version: r.version}
}

// Hooks of the rooms.

// authorize runs before the WebSocket upgrade. It checks the token and the
// name and refuses a name that is already taken; the browser cannot read
// these answers, so the page asks /api/check first, which applies the same
// rules. This check is early, for a clear answer; the admit hook makes the
// final call on names.
func (s *Server) authorize(r *http.Request) (any, error) {
	q := r.URL.Query()
	if !s.tokenOK(q.Get("token")) {
		return nil, &wsroom.HTTPError{Code: http.StatusUnauthorized, Message: "chat: wrong or missing token"}
	}
	name, err := cleanName(q.Get("name"))
	if err != nil {
		return nil, &wsroom.HTTPError{Code: http.StatusBadRequest, Message: "chat: " + err.Error()}
	}
	key := q.Get("key")
	if !validKey(key) {
		return nil, &wsroom.HTTPError{Code: http.StatusBadRequest, Message: "chat: " + errBadKey.Error()}
	}
	if s.taken(r.PathValue("name"), name, key) {
		return nil, &wsroom.HTTPError{Code: http.StatusConflict, Message: "chat: name taken"}
	}
	return identity{Name: name, Key: key}, nil
}

// admit claims the client's name in its room, after the upgrade and before
// the client joins. If another client got the name since the handshake was
// authorized, it refuses the client with StatusNameTaken: the client gets no
// message (no history, no presence), and neither the join nor the leave hook
// runs for it. If the name is held by the same browser tab (same key), the
// new connection takes it over and the old one is closed with
// StatusReplaced.
func (s *Server) admit(c *wsroom.Client) error {
	if s.admitGate != nil {
		s.admitGate(c)
	}
	id := c.Identity().(identity)
	room := c.Room().Name()
	fold := foldName(id.Name)

	s.mu.Lock()
	r := s.rosters[room]
	var old *member
	if r != nil {
		old = r.members[fold]
	}
	if old != nil && (id.Key == "" || old.key != id.Key) {
		s.mu.Unlock()
		return websocket.CloseError{Code: StatusNameTaken, Reason: "name taken"}
	}
	if r == nil {
		r = &roster{members: make(map[string]*member)}
		s.rosters[room] = r
	}
	r.members[fold] = &member{client: c, name: id.Name, key: id.Key}
	r.version++
	s.mu.Unlock()

	if old != nil {
		old.client.Close(StatusReplaced, "joined again from the same tab")
	}
	return nil
}

// onJoin tells everyone, the newcomer included, who is in the room now.
// admit put the newcomer in the roster; the roster is published here, once
// the newcomer is in the room to receive it.
func (s *Server) onJoin(c *wsroom.Client) {
	room := c.Room()
	s.mu.Lock()
	r := s.rosters[room.Name()]
	if r == nil {
		s.mu.Unlock()
		return // replaced, and its successor is gone already
	}
	p := r.presence()
	s.mu.Unlock()
	s.publish(c.Context(), room, p, wsroom.Ephemeral())
}

// onLeave releases the client's name, which admit claimed, and tells the
// others. It runs only for admitted clients: a refused client holds nothing.
func (s *Server) onLeave(c *wsroom.Client, _ error) {
	id := c.Identity().(identity)
	room := c.Room()
	fold := foldName(id.Name)

	s.mu.Lock()
	r := s.rosters[room.Name()]
	if r == nil || r.members[fold] == nil || r.members[fold].client != c {
		s.mu.Unlock()
		return // replaced: the name is its successor's now
	}
	delete(r.members, fold)
	r.version++
	p := r.presence()
	if len(r.members) == 0 {
		delete(s.rosters, room.Name())
	}
	s.mu.Unlock()

	// c.Context() is done by now.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.publish(ctx, room, p, wsroom.Ephemeral())
}

// errProtocol closes a client that does not speak the chat protocol.
var errProtocol = errors.New(`chat: want {"type":"msg"|"typing"|"file", ...}`)

// onMessage handles every message a client sends. Mistakes a person can
// make (an empty or too long message, a file that is gone) are answered
// with an error object; anything that is not the chat protocol closes the
// client (1008, policy violation).
func (s *Server) onMessage(c *wsroom.Client, data []byte) error {
	var in struct {
		Type string `json:"type"`
		Text string `json:"text"`
		ID   string `json:"id"`
	}
	if err := json.Unmarshal(data, &in); err != nil {
		return errProtocol
	}
	id := c.Identity().(identity)
	room := c.Room()
	ctx := c.Context()
	switch in.Type {
	case "msg":
		text, err := cleanText(in.Text)
		if err != nil {
			return s.reply(c, err.Error())
		}
		return s.publish(ctx, room, chatMsg{Type: "msg", Name: id.Name, Text: text}, wsroom.From(c))
	case "typing":
		return s.publish(ctx, room, typingMsg{Type: "typing", Name: id.Name}, wsroom.Except(c))
	case "file":
		info, err := s.files.Stat(in.ID)
		if err != nil || info.Room != room.Name() {
			return s.reply(c, "that file is not in this room; upload it again")
		}
		return s.publish(ctx, room, fileMsg{
			Type:     "file",
			Name:     id.Name,
			Filename: info.Name,
			URL:      "/files/" + info.ID,
			Size:     info.Size,
			MIME:     info.MIME,
		}, wsroom.From(c))
	default:
		return errProtocol
	}
}

var (
	errTextEmpty = errors.New("the message is empty")
	errTextLong  = fmt.Errorf("a message is at most %d characters", MaxText)
)

// cleanText trims a message and checks its length.
func cleanText(text string) (string, error) {
	text = strings.TrimSpace(text)
	switch {
	case text == "":
		return "", errTextEmpty
	case utf8.RuneCountInString(text) > MaxText:
		return "", errTextLong
	}
	return text, nil
}

// reply sends an error object to c alone.
func (s *Server) reply(c *wsroom.Client, msg string) error {
	b, _ := json.Marshal(errorMsg{Type: "error", Error: msg})
	if err := c.Send(c.Context(), b); err != nil && !errors.Is(err, wsroom.ErrClosed) && c.Context().Err() == nil {
		s.opts.Logger.Warn("chat: reply", "err", err)
	}
	return nil
}

// publish publishes v as JSON. A room shutting down refuses it, which is
// fine; other failures are logged, not blamed on the client.
func (s *Server) publish(ctx context.Context, room *wsroom.Room, v any, opts ...wsroom.PublishOption) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := room.Publish(ctx, b, opts...); err != nil && !errors.Is(err, wsroom.ErrClosed) && ctx.Err() == nil {
		s.opts.Logger.Warn("chat: publish", "room", room.Name(), "err", err)
	}
	return nil
}

// HTTP endpoints.

// pageData is what the template shows.
type pageData struct {
	Room          string // "" for the lobby
	Error         string // shown above the lobby's form
	TokenRequired bool
	MaxName       int
	MaxText       int
	MaxUpload     int
}

// contentSecurityPolicy allows the page's own scripts, styles, images and
// connections (WebSockets to the same host included), and nothing else.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

func (s *Server) render(w http.ResponseWriter, status int, d pageData) {
	d.TokenRequired = s.opts.Token != ""
	d.MaxName, d.MaxText, d.MaxUpload = MaxName, MaxText, MaxUpload
	var buf bytes.Buffer
	if err := s.page.Execute(&buf, d); err != nil {
		s.opts.Logger.Error("chat: render page", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// serveLobby serves the lobby: sign in, the list of rooms, a form to join
// or create one.
func (s *Server) serveLobby(w http.ResponseWriter, r *http.Request) {
	s.render(w, http.StatusOK, pageData{})
}

// roomNameError explains a bad room name to a person.
func roomNameError(name string, err error) string {
	return fmt.Sprintf("%q is not a valid room name: %s.", name, strings.TrimPrefix(err.Error(), "wsroom: "))
}

// serveGoto sends the lobby's join form (?room=NAME) to the room's page.
func (s *Server) serveGoto(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimSpace(r.URL.Query().Get("room"))
	if err := wsroom.ValidRoomName(name); err != nil {
		s.render(w, http.StatusBadRequest, pageData{Error: roomNameError(name, err)})
		return
	}
	http.Redirect(w, r, "/r/"+name, http.StatusSeeOther)
}

// serveRoom serves the page of one room, /r/NAME, the address to share.
func (s *Server) serveRoom(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("room")
	if err := wsroom.ValidRoomName(name); err != nil {
		s.render(w, http.StatusNotFound, pageData{Error: roomNameError(name, err)})
		return
	}
	s.render(w, http.StatusOK, pageData{Room: name})
}

type roomInfo struct {
	Name    string `json:"name"`
	Clients int    `json:"clients"`
}

// serveRooms lists the open rooms with their number of clients. Rooms stay
// listed with 0 clients until the idle timeout closes them.
func (s *Server) serveRooms(w http.ResponseWriter, r *http.Request) {
	if !s.tokenOK(r.URL.Query().Get("token")) {
		writeError(w, http.StatusUnauthorized, "token", "wrong or missing token")
		return
	}
	rooms := []roomInfo{}
	for _, room := range s.rooms.Rooms() {
		rooms = append(rooms, roomInfo{Name: room.Name(), Clients: room.Len()})
	}
	writeJSON(w, http.StatusOK, map[string]any{"rooms": rooms})
}

// serveCheck applies the handshake's rules (token, name, name free in the
// room) and says what is wrong, since a browser cannot read why a WebSocket
// handshake failed. Query: token, name, room (optional), key (optional).
func (s *Server) serveCheck(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if !s.tokenOK(q.Get("token")) {
		writeError(w, http.StatusUnauthorized, "token", "wrong or missing token")
		return
	}
	name, err := cleanName(q.Get("name"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "name", err.Error())
		return
	}
	if room := q.Get("room"); room != "" {
		if err := wsroom.ValidRoomName(room); err != nil {
			writeError(w, http.StatusBadRequest, "room", roomNameError(room, err))
			return
		}
		if !validKey(q.Get("key")) {
			writeError(w, http.StatusBadRequest, "key", errBadKey.Error())
			return
		}
		if s.taken(room, name, q.Get("key")) {
			writeError(w, http.StatusConflict, "name", fmt.Sprintf("someone in %s is already called %s", room, name))
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"name": name})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// writeError answers {"error": msg, "field": field}; field names the input
// at fault, for the page.
func writeError(w http.ResponseWriter, status int, field, msg string) {
	writeJSON(w, status, map[string]string{"error": msg, "field": field})
}
