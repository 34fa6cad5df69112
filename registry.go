package wsroom

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Registry holds named rooms that share one set of options, one Store and
// one Broker. A room is made the first time it is asked for, and closed and
// forgotten once it has had no client for the idle timeout
// (WithIdleTimeout). Its history stays in the Store.
//
// Registry is safe for concurrent use by multiple goroutines. Call Close or
// Shutdown to release its rooms.
type Registry struct {
	cfg   config
	stats counters // of connections of many rooms
	acks  ackCache // of publishes by connections of many rooms

	mu     sync.Mutex
	rooms  map[string]*entry
	made   map[string]int // rooms held that each connection made, by its ID
	madeAs map[string]int // rooms held that each identity's connections made
	closed bool
	conns  sync.WaitGroup       // connections of many rooms
	muxes  map[*Client]struct{} // connections of many rooms
	ctl    *control             // the server API's commands from other nodes (api.go)
}

type entry struct {
	room *Room
	idle *time.Timer
	// The connection that made the room, and its identity ("" if it has
	// none to count by), while the room counts against their caps (see
	// WithMaxNewRooms); conn is "" for a room server code made.
	conn, identity string
}

// NewRegistry returns an empty registry whose rooms are configured by opts.
// Like New, it panics if opts cannot work together.
func NewRegistry(opts ...Option) *Registry {
	g := &Registry{cfg: mustConfig(opts), rooms: make(map[string]*entry), muxes: make(map[*Client]struct{}),
		made: make(map[string]int), madeAs: make(map[string]int)}
	if l := g.cfg.events; l != nil {
		l.init(&g.cfg) // its goroutines end with Close or Shutdown
	}
	return g
}

// Room returns the room called name, making it if needed. It returns the
// name validator's error for a bad name, an error when the registry holds
// as many rooms as WithMaxRooms allows, and ErrClosed once the registry is
// closed. A room nobody joins is closed after the idle timeout like any
// other, and a *Room kept from before then returns ErrClosed: get it again
// with Room, or publish with Registry.Publish.
func (g *Registry) Room(name string) (*Room, error) {
	if err := g.cfg.validName(name); err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.roomLocked(name, maker{})
}

// maker is who asks for a room: a connection, by its ID, and its identity
// as a string ("" for none); the zero maker is server code, which no cap
// of WithMaxNewRooms limits.
type maker struct{ conn, identity string }

// makerOf returns the maker a client is, calling its identity's String
// method, if any, so that it is not called under the registry's lock.
func makerOf(connID string, identity any) maker {
	m := maker{conn: connID}
	switch v := identity.(type) {
	case string:
		m.identity = v
	case fmt.Stringer:
		m.identity = v.String()
	}
	return m
}

func (g *Registry) roomLocked(name string, by maker) (*Room, error) {
	if g.closed {
		return nil, ErrClosed
	}
	if strings.HasPrefix(name, ".wsroom.") {
		return nil, errRoomName // the registry's own: the API's commands, the event log
	}
	if e := g.rooms[name]; e != nil {
		return e.room, nil
	}
	if len(g.rooms) >= g.cfg.maxRooms {
		return nil, errTooManyRooms
	}
	if by.conn != "" && g.cfg.maxNewRoomsPerConn > 0 && g.made[by.conn] >= g.cfg.maxNewRoomsPerConn {
		return nil, errTooManyNewRooms
	}
	if by.identity != "" && g.cfg.maxNewRoomsPerIdentity > 0 && g.madeAs[by.identity] >= g.cfg.maxNewRoomsPerIdentity {
		return nil, errTooManyNewRooms
	}
	r := newRoom(name, g.cfg) // starts goroutines; waits for no engine
	r.muxQueued = &g.stats.queued
	e := &entry{room: r, conn: by.conn, identity: by.identity}
	if by.conn != "" {
		g.made[by.conn]++
	}
	if by.identity != "" {
		g.madeAs[by.identity]++
	}
	e.idle = time.AfterFunc(g.cfg.idleTimeout, func() { g.expire(name, e) })
	r.onIdle = func() { e.idle.Reset(g.cfg.idleTimeout) }
	g.rooms[name] = e
	return r, nil
}

// forgetLocked forgets the room of e, called name, and what it counted
// against its maker's caps.
func (g *Registry) forgetLocked(name string, e *entry) {
	delete(g.rooms, name)
	uncount(g.made, e.conn)
	uncount(g.madeAs, e.identity)
}

func uncount(m map[string]int, key string) {
	if key == "" {
		return
	}
	if m[key]--; m[key] <= 0 {
		delete(m, key)
	}
}

// expire closes and forgets a room that is still idle.
func (g *Registry) expire(name string, e *entry) {
	g.mu.Lock()
	if g.rooms[name] != e || !e.room.markClosedIfIdle() {
		g.mu.Unlock()
		return
	}
	g.forgetLocked(name, e)
	g.mu.Unlock()
	e.room.Close()
}

// acquireFor returns the room called name with a place reserved in it for
// c, a connection of many rooms, for a join it asked for or Client.Join.
// If the room must be made, the caps of WithMaxNewRooms on c and on its
// identity apply: over one, the error is errTooManyNewRooms, answered with
// the code "too_many_rooms" (see acquireErr).
func (g *Registry) acquireFor(c *Client, name string) (*Room, error) {
	return g.acquireAs(name, makerOf(c.id, c.identity))
}

// acquireAs returns the room called name with a place reserved in it, made
// by by if it must be made.
func (g *Registry) acquireAs(name string, by maker) (*Room, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	r, err := g.roomLocked(name, by)
	if err != nil {
		return nil, err
	}
	return r, r.reserve()
}

// acquireErr is the protocol error for a join that acquireFor refused.
func acquireErr(err error) *protoError {
	if errors.Is(err, errTooManyNewRooms) {
		return protoErr(codeTooManyRooms, "%v", err)
	}
	return protoErr(codeUnavailable, "%v", err)
}

// abandon gives back the place a handshake that failed took in r, and
// forgets r at once if nobody else is in it: a failed handshake leaves no
// room behind.
func (g *Registry) abandon(r *Room) {
	r.release()
	g.mu.Lock()
	e := g.rooms[r.name]
	if e == nil || e.room != r || !r.markClosedIfIdle() {
		g.mu.Unlock()
		return
	}
	e.idle.Stop()
	g.forgetLocked(r.name, e)
	g.mu.Unlock()
	r.Close()
}

// Publish publishes data to the room called name, making it if needed, as
// Room.Publish does. Unlike a *Room kept by the caller, which is closed
// once idle, name always reaches the live room.
func (g *Registry) Publish(ctx context.Context, name string, data []byte, opts ...PublishOption) error {
	return g.inRoom(name, func(r *Room) error { return r.Publish(ctx, data, opts...) })
}

// inRoom calls fn with the live room called name, making it if needed, and
// again with the new room if the one it got expired before fn was done
// with it (fn returned ErrClosed while the registry is open).
func (g *Registry) inRoom(name string, fn func(*Room) error) error {
	var err error
	for range 3 {
		var r *Room
		if r, err = g.Room(name); err != nil {
			return err
		}
		err = fn(r)
		if !errors.Is(err, ErrClosed) || g.isClosed() {
			return err
		}
		// The room expired between Room and fn: get the new one.
	}
	return err
}

func (g *Registry) isClosed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}

// Rooms returns the registry's rooms, sorted by name.
func (g *Registry) Rooms() []*Room {
	g.mu.Lock()
	out := make([]*Room, 0, len(g.rooms))
	for _, e := range g.rooms {
		out = append(out, e.room)
	}
	g.mu.Unlock()
	slices.SortFunc(out, func(a, b *Room) int { return cmp.Compare(a.name, b.name) })
	return out
}

// Handler returns an http.Handler that serves WebSocket clients like
// Room.Handler, in the room whose name pick returns for the request. If
// pick is nil, the name is the path value "name", as in the pattern
// "GET /rooms/{name}" of an http.ServeMux. A name the validator refuses is
// answered with 400 Bad Request and the validator's message. The join check
// (WithJoinCheck) runs last, after the authorize hook: a refusal is
// answered with 403 Forbidden and the error's text, or an *HTTPError's
// status and message. A room is made only for a handshake that passed every
// check, and a new room beyond WithMaxRooms, or beyond what the client's
// identity may make (see WithMaxNewRooms), gets 503 Service Unavailable.
func (g *Registry) Handler(pick func(*http.Request) string) http.Handler {
	if pick == nil {
		pick = func(r *http.Request) string { return r.PathValue("name") }
	}
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		name := pick(req)
		if err := g.cfg.validName(name); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var check func(*Client) error
		if g.cfg.joinCheck != nil {
			check = func(c *Client) error { return g.joinCheck(c, name) }
		}
		serveClient(&g.cfg, w, req, check, func(c maker) (*Room, error) { return g.acquireAs(name, c) }, g.abandon)
	})
}

// joinCheck runs the join check for a handshake of Registry.Handler, on the
// request's goroutine, before the upgrade: c is the client to be, with its
// ID and identity only. A panic is reported, and refuses the handshake.
func (g *Registry) joinCheck(c *Client, name string) error {
	return runHook(c, "join check", func() error { return g.cfg.joinCheck(c, name) }, func(c *Client, err error) {
		g.cfg.report(c, name, err)
	})
}

// Shutdown shuts every room down as Room.Shutdown does, concurrently, and
// makes Room and the handler refuse new work. It returns when all are done,
// or with ctx.Err(); then Close ends what is left, the event log's
// goroutines included.
func (g *Registry) Shutdown(ctx context.Context) error {
	rooms, muxes := g.closeAll()
	g.stopControl()
	errs := make([]error, len(rooms)+1)
	var wg sync.WaitGroup
	for i, r := range rooms {
		wg.Go(func() { errs[i] = r.Shutdown(ctx) })
	}
	for _, c := range muxes {
		c.fail(&closeRequest{code: websocket.StatusGoingAway, reason: "wsroom: shutting down", mode: closeDrain, err: ErrClosed})
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		g.conns.Wait()
		close(done)
	}()
	select {
	case <-done:
		if l := g.cfg.events; l != nil {
			l.close() // after the connections' last events
		}
	case <-ctx.Done():
		errs[len(rooms)] = ctx.Err()
	}
	return errors.Join(errs...)
}

// Close closes every room and every connection of many rooms at once, as
// Room.Close does.
func (g *Registry) Close() error {
	rooms, muxes := g.closeAll()
	g.stopControl()
	for _, c := range muxes {
		c.closeNow()
	}
	for _, r := range rooms {
		r.Close()
	}
	g.conns.Wait()
	if l := g.cfg.events; l != nil {
		l.close() // after the connections' last events
	}
	return nil
}

// closeNow closes the client's connection at once. It closes the socket
// first: coder/websocket's CloseNow waits for a close handshake under way
// (with compression on, Client.Close and Shutdown close its way), for up
// to 5s, and a closed socket ends that handshake at once.
func (c *Client) closeNow() {
	if c.fc != nil {
		c.fc.Close()
	}
	c.conn.CloseNow()
}

// addConn counts a connection of many rooms about to start, unless the
// registry is closed.
func (g *Registry) addConn() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.conns.Add(1)
	return true
}

// removeConn forgets a connection of many rooms that has ended.
func (g *Registry) removeConn(c *Client) {
	g.mu.Lock()
	delete(g.muxes, c)
	g.mu.Unlock()
	g.conns.Done()
}

// track records a connection of many rooms, so that Close and Shutdown
// close it; it reports false if the registry is closed.
func (g *Registry) track(c *Client) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.muxes[c] = struct{}{}
	return true
}

func (g *Registry) hook(c *Client, name string, fn func() error) error {
	return runHook(c, name, fn, func(c *Client, err error) {
		g.stats.errors.Add(1)
		g.cfg.report(c, "", err)
	})
}

// Stats returns the counters of the registry's connections of many rooms
// (see MuxHandler): connections, not rooms, in Joins, Leaves and Clients;
// their messages in and out, the frames in their queues (Queued), and how
// they were closed. Each Room's Stats count its own messages and members.
func (g *Registry) Stats() Stats {
	s := g.stats.snapshot()
	g.mu.Lock()
	s.Clients = len(g.muxes)
	g.mu.Unlock()
	return s
}

func (g *Registry) closeAll() ([]*Room, []*Client) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	muxes := slices.Collect(maps.Keys(g.muxes))
	var out []*Room
	for name, e := range g.rooms {
		e.idle.Stop()
		out = append(out, e.room)
		g.forgetLocked(name, e)
	}
	return out, muxes
}

var errRoomName = errors.New("wsroom: a room name is 1 to 64 letters, digits, '-', '_' or '.', and does not start with '.'")

// ValidRoomName is the default room name check of a Registry: 1 to 64 ASCII
// letters, digits, '-', '_' and '.', not starting with '.'.
func ValidRoomName(name string) error {
	if len(name) == 0 || len(name) > 64 || name[0] == '.' {
		return errRoomName
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return errRoomName
		}
	}
	return nil
}
