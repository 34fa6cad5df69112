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

	"github.com/wsroom/wsroom"
	wsroomjs "github.com/wsroom/wsroom/js"
)

// Limits of the chat. The page reads them from the template, so they are
// stated once.
const (
	MaxName    = 32      // characters in a display name
	MaxText    = 2000    // characters in a message
	MaxUpload  = 5 << 20 // bytes in a shared file
	HistoryLen = 50      // messages a newcomer sees
)

//go:embed templates static
var assets embed.FS

// Options configure a Server. The zero value is a working chat with history
// and files in memory and no token.
type Options struct {
	// Token, if not empty, must be sent by every client (the "token" query
	// parameter) to connect, list rooms or upload a file.
	Token string
	// Store keeps the rooms' history (default: in memory). Not used with
	// Broker.
	Store wsroom.Store
	// Broker, if set, carries messages between the nodes of a chat that
	// runs as many processes, and keeps their history: a Broker that is
	// also a Store, as redisbroker's and natsbroker's are. Default: this
	// process only, wsroom.NewLocalBroker over Store.
	Broker wsroom.Broker
	// StoredRooms, if set, lists the rooms that have history in Store,
	// which the lobby shows besides the rooms open now and those this
	// process published in.
	StoredRooms func(ctx context.Context) ([]string, error)
	// RoomUsed, if set, is called the first time this process publishes a
	// numbered message in a room, for StoredRooms to list it: a place to
	// record room names where the history is not a table to read them
	// from (Redis, NATS).
	RoomUsed func(ctx context.Context, room string) error
	// Files keeps shared files (default: in memory, at most 64 MiB).
	Files FileStore
	// RateLimit and RateBurst limit the frames each connection may send per
	// second, joins and typing notices included (defaults 10 and 40).
	// Beyond that the server stops reading from the client for a while.
	RateLimit float64
	RateBurst int
	// IdleTimeout is how long a room without clients lives on (default a
	// minute); its history stays in the Store.
	IdleTimeout time.Duration
	// Logger receives the rooms' logs (default: none).
	Logger *slog.Logger
}

// PresenceLimit is the largest room whose joins and leaves are sent to the
// pages one by one; larger rooms get a head count.
const PresenceLimit = 200

// Server is the chat: an http.Handler serving the pages, the WebSocket
// endpoint of every room (one connection per page, in many rooms) and the
// file endpoints.
type Server struct {
	opts  Options
	rooms *wsroom.Registry
	index *roomIndex
	files FileStore
	page  *template.Template
	mux   *http.ServeMux
	// presence is the Broker's, if it keeps presence: who is in a room on
	// every node, for the lobby.
	presence wsroom.Presence

	mu      sync.Mutex
	conns   map[string]*conn   // client ID → connection on this node
	rosters map[string]*roster // room name → who is in it on this node
}

// conn is a page's connection: who it is, and the rooms it joined.
type conn struct {
	id    identity
	rooms map[string]bool
}

// roster is the set of names in one room. A name belongs to one person (one
// key) at a time, who may be in the room from several tabs.
type roster struct {
	members map[string]*member // folded name → member
}

type member struct {
	name  string
	key   string
	conns map[string]bool // client IDs
}

// identity is what the authorize hook attaches to each connection. Its
// String, the name, is the member's "info" in presence events.
type identity struct {
	Name string // display name, trimmed
	Key  string // random key of the person (the browser's), or ""
}

func (id identity) String() string { return id.Name }

// NewServer returns a chat server configured by opts.
func NewServer(opts Options) (*Server, error) {
	if opts.Files == nil {
		opts.Files = newMemoryFiles(64 << 20)
	}
	if opts.RateLimit <= 0 {
		opts.RateLimit, opts.RateBurst = 10, 40
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Store == nil && opts.Broker == nil {
		opts.Store = wsroom.NewMemoryStore(1000, 0)
	}
	page, err := template.New("chat.tmpl").
		Funcs(template.FuncMap{"mib": func(n int) int { return n >> 20 }}).
		ParseFS(assets, "templates/chat.tmpl")
	if err != nil {
		return nil, err
	}
	s := &Server{
		opts:    opts,
		files:   opts.Files,
		page:    page,
		conns:   make(map[string]*conn),
		rosters: make(map[string]*roster),
	}
	s.index = &roomIndex{rooms: make(map[string]bool)}
	broker := opts.Broker
	if broker == nil {
		broker = wsroom.NewLocalBroker(opts.Store)
	}
	s.presence, _ = broker.(wsroom.Presence)
	// The Registry takes the history from the Broker: LocalBroker's Store,
	// or the Broker itself.
	s.rooms = wsroom.NewRegistry(
		wsroom.WithBroker(broker),
		wsroom.WithOnPublish(s.onPublish),
		wsroom.WithAuthorize(s.authorize),
		wsroom.WithOnJoin(s.onConnect),
		wsroom.WithOnLeave(s.onDisconnect),
		wsroom.WithJoinCheck(s.joinCheck),
		wsroom.WithPresenceEvents(PresenceLimit),
		wsroom.WithRateLimit(opts.RateLimit, opts.RateBurst, wsroom.Throttle),
		wsroom.WithIdleTimeout(opts.IdleTimeout),
		wsroom.WithLogger(opts.Logger),
	)

	static, err := fs.Sub(assets, "static")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.serveLobby)
	mux.HandleFunc("GET /r", s.serveGoto)
	mux.HandleFunc("GET /r/{room}", s.serveRoom)
	mux.Handle("GET /ws", s.rooms.MuxHandler())
	mux.HandleFunc("GET /api/rooms", s.serveRooms)
	mux.HandleFunc("GET /api/check", s.serveCheck)
	mux.HandleFunc("POST /api/rooms/{room}/files", s.serveUpload)
	mux.HandleFunc("GET /files/{id}", s.serveFile)
	mux.Handle("GET /static/", http.StripPrefix("/static", http.FileServerFS(static)))
	// The JavaScript client, js/src/index.js, as the core module embeds it:
	// chat.js imports it as "./wsroom.js".
	mux.Handle("GET /static/wsroom.js", wsroomjs.Handler())
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

// taken reports whether name belongs to someone else in room: a person
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

// memberByKey reports whether name is in room, connected with key.
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

// Hooks of the rooms.

// authorize runs before the WebSocket upgrade. It checks the token, the
// name and the key; the browser cannot read these answers, so the page asks
// /api/check first, which applies the same rules. Whether the name is free
// is decided per room, by joinCheck.
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
	return identity{Name: name, Key: key}, nil
}

// onConnect records a page's connection, whose joins claim its name in
// each room (joinCheck).
func (s *Server) onConnect(c *wsroom.Client) {
	s.mu.Lock()
	s.conns[c.ID()] = &conn{id: c.Identity().(identity), rooms: make(map[string]bool)}
	s.mu.Unlock()
}

// onDisconnect releases the names the connection held.
func (s *Server) onDisconnect(c *wsroom.Client, _ error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cn := s.conns[c.ID()]
	if cn == nil {
		return
	}
	delete(s.conns, c.ID())
	fold := foldName(cn.id.Name)
	for room := range cn.rooms {
		r := s.rosters[room]
		if r == nil || r.members[fold] == nil {
			continue
		}
		m := r.members[fold]
		delete(m.conns, c.ID())
		if len(m.conns) == 0 {
			delete(r.members, fold)
		}
		if len(r.members) == 0 {
			delete(s.rosters, room)
		}
	}
}

// errNameTaken is how a join is refused when someone else in the room has
// the name.
type errNameTaken struct{ room, name string }

func (e errNameTaken) Error() string {
	return fmt.Sprintf("someone in %s is already called %s", e.room, e.name)
}

// joinCheck claims the connection's name in room. A name belongs to one
// person: connections with the same key (the tabs of one browser) share
// it, anyone else is refused. The name is released when the person's last
// connection in the room ends.
func (s *Server) joinCheck(c *wsroom.Client, room string) error {
	id := c.Identity().(identity)
	fold := foldName(id.Name)
	s.mu.Lock()
	defer s.mu.Unlock()
	cn := s.conns[c.ID()]
	if cn == nil {
		return errors.New("not connected")
	}
	r := s.rosters[room]
	if r == nil {
		r = &roster{members: make(map[string]*member)}
		s.rosters[room] = r
	}
	m := r.members[fold]
	switch {
	case m == nil:
		m = &member{name: id.Name, key: id.Key, conns: make(map[string]bool)}
		r.members[fold] = m
	case id.Key == "" || m.key != id.Key:
		if !m.conns[c.ID()] {
			return errNameTaken{room, id.Name}
		}
	}
	m.conns[c.ID()] = true
	cn.rooms[room] = true
	return nil
}

// The messages of the chat. Pages publish {"type":"msg","text":...},
// {"type":"typing"} (ephemeral) and {"type":"file","id":...}; the server
// checks them and signs them with the sender's name (see onPublish), so
// that everyone, and the history, receives one of these:
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
)

var (
	errNotChat = errors.New(`not a message of the chat: want {"type":"msg","text":...}, {"type":"typing"} or {"type":"file","id":...}`)
	errNoShare = errors.New("no such file shared in this room")
)

// onPublish is the WithOnPublish hook: it turns what a page publishes into
// what the room gets, the message signed with the sender's name, or
// refuses it with the reason, which the sender gets as a "forbidden"
// error. Pages check what they send, so only a client that does not follow
// the chat's protocol is refused, or one whose message is empty or too
// long. Messages from other nodes arrive signed by theirs. It runs on the
// sender's reading goroutine.
//
// The hook sees the data only: a typing notice comes back to its typist
// too (the page ignores its own name), and whether a message is stored is
// the sender's choice (the page publishes typing notices ephemeral, and
// ignores one that comes with a position).
func (s *Server) onPublish(c *wsroom.Client, r *wsroom.Room, data []byte) ([]byte, error) {
	id, ok := c.Identity().(identity)
	if !ok {
		return nil, errors.New("not signed in")
	}
	var in struct {
		Type string `json:"type"`
		Text string `json:"text"`
		ID   string `json:"id"`
	}
	if err := json.Unmarshal(data, &in); err != nil {
		return nil, errNotChat
	}
	var out any
	switch in.Type {
	case "msg":
		text, err := cleanText(in.Text)
		if err != nil {
			return nil, err
		}
		out = chatMsg{Type: "msg", Name: id.Name, Text: text}
	case "typing":
		out = typingMsg{Type: "typing", Name: id.Name}
	case "file":
		info, err := s.files.Stat(in.ID)
		if err != nil || info.Room != r.Name() {
			return nil, errNoShare
		}
		out = fileMsg{
			Type:     "file",
			Name:     id.Name,
			Filename: info.Name,
			URL:      "/files/" + info.ID,
			Size:     info.Size,
			MIME:     info.MIME,
		}
	default:
		return nil, errNotChat
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, err
	}
	if in.Type != "typing" {
		s.roomUsed(r.Name())
	}
	return b, nil
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

// pageData is what the template shows.
type pageData struct {
	Room          string // "" for the lobby
	Error         string // shown above the lobby's form
	TokenRequired bool
	MaxName       int
	MaxText       int
	MaxUpload     int
	History       int
}

// contentSecurityPolicy allows the page's own scripts, styles, images and
// connections (WebSockets to the same host included), and nothing else.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

func (s *Server) render(w http.ResponseWriter, status int, d pageData) {
	d.TokenRequired = s.opts.Token != ""
	d.MaxName, d.MaxText, d.MaxUpload, d.History = MaxName, MaxText, MaxUpload, HistoryLen
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
	Name   string `json:"name"`
	People int    `json:"people"` // names in it on every node, as its "Here now"
}

// serveRooms lists the rooms open on this node, those this node published
// in and those with history in the Store, each with the number of people
// in it on every node (see people).
func (s *Server) serveRooms(w http.ResponseWriter, r *http.Request) {
	if !s.tokenOK(r.URL.Query().Get("token")) {
		writeError(w, http.StatusUnauthorized, "token", "wrong or missing token")
		return
	}
	open := make(map[string]*wsroom.Room)
	for _, room := range s.rooms.Rooms() {
		open[room.Name()] = room
	}
	names := make(map[string]bool)
	for name := range open {
		names[name] = true
	}
	for _, name := range s.index.names() {
		names[name] = true
	}
	if s.opts.StoredRooms != nil {
		stored, err := s.opts.StoredRooms(r.Context())
		if err != nil {
			s.opts.Logger.Warn("chat: list stored rooms", "err", err)
		}
		for _, name := range stored {
			names[name] = true
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	rooms := []roomInfo{}
	for name := range names {
		rooms = append(rooms, roomInfo{Name: name, People: s.people(ctx, name, open[name])})
	}
	slices.SortFunc(rooms, func(a, b roomInfo) int { return cmp.Compare(a.Name, b.Name) })
	writeJSON(w, http.StatusOK, map[string]any{"rooms": rooms})
}

// people counts the names in a room, each once however many tabs or nodes
// it is in, as the page's "Here now" does: on every node when the Broker
// keeps presence (redisbroker, natsbroker), else on this node, where open
// is the room if it is open here. If the Broker fails to answer, it counts
// this node's.
func (s *Server) people(ctx context.Context, name string, open *wsroom.Room) int {
	var members []wsroom.Member
	var err error
	if s.presence != nil {
		members, err = s.presence.Members(ctx, name)
		if err != nil {
			s.opts.Logger.Warn("chat: presence of a room", "room", name, "err", err)
		}
	}
	if (s.presence == nil || err != nil) && open != nil {
		members, _ = open.Members(ctx) // this node's clients: no error
	}
	seen := make(map[string]bool, len(members))
	for _, m := range members {
		seen[m.Info] = true
	}
	return len(seen)
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
