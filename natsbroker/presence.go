package natsbroker

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/wsroom/wsroom"
)

// DefaultPresenceTTL is how long a node's presence entries outlive its last
// refresh when WithPresenceTTL is not given.
const DefaultPresenceTTL = 30 * time.Second

// MinPresenceTTL is the shortest presence TTL WithPresenceTTL accepts.
const MinPresenceTTL = time.Second

// presenceWorkers bounds how many presence entries a refresh writes at once.
const presenceWorkers = 16

// closeTimeout bounds the removal of a node's presence entries by Close.
const closeTimeout = 2 * time.Second

// presence is the state of a Broker's presence entries: the key-value bucket
// shared by every node, and this node's own entries, which it refreshes.
type presence struct {
	ttl      time.Duration
	node     string // this node's identifier, the middle token of its keys
	bucket   string
	replicas int // the bucket's replicas (WithReplicas)

	kvMu sync.Mutex
	kv   *bucket // nil until first used

	refreshMu sync.Mutex // held by refresh; a leave that finds no entry waits for it

	mu    sync.Mutex
	local map[conn]localConn    // this node's connections, which it renews
	swept map[string]time.Time  // when Sweep last read each room
	drift map[string]countCheck // a count that differed from the users a sweep saw
	used  bool                  // Join was called: Close removes the entries

	kick   chan struct{} // asks the refresher to refresh now
	ctx    context.Context
	cancel context.CancelFunc // called by Close
	done   chan struct{}      // closed when the refresher has ended
}

var (
	_ wsroom.Presence     = (*Broker)(nil)
	_ wsroom.UserPresence = (*Broker)(nil)
)

func newPresence(prefix string, ttl time.Duration) *presence {
	ctx, cancel := context.WithCancel(context.Background())
	return &presence{
		ttl:    ttl,
		node:   newID(),
		bucket: presenceBucket(prefix),
		local:  make(map[conn]localConn),
		swept:  make(map[string]time.Time),
		drift:  make(map[string]countCheck),
		kick:   make(chan struct{}, 1),
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
	}
}

// presenceBucket names the presence bucket of a prefix: the stream name
// followed by "_PRESENCE", with every character a bucket name cannot hold
// replaced by '_'.
func presenceBucket(prefix string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, streamName(prefix)+"_PRESENCE")
}

// userKey is the key of a user's entry in a room: the room's token, "u",
// then the user's, so that the filter room.u.* reads a room's users.
func userKey(room, user string) string {
	return roomToken(room) + ".u." + userToken(user)
}

// countKey is the key of a room's count of users.
func countKey(room string) string { return roomToken(room) + ".n" }

func userToken(user string) string {
	return "u" + base64.RawURLEncoding.EncodeToString([]byte(user))
}

// keyUser decodes the user from the key of a user's entry.
func keyUser(key string) (string, bool) {
	i := strings.LastIndexByte(key, '.')
	if i < 0 || !strings.HasPrefix(key[i+1:], "u") {
		return "", false
	}
	u, err := base64.RawURLEncoding.DecodeString(key[i+2:])
	if err != nil {
		return "", false
	}
	return string(u), true
}

// userEntry is the value of a user's entry: the user's connections in the
// room, on every node, each with the end of its lease.
type userEntry struct {
	Conns map[string]connEntry `json:"c"`
}

type connEntry struct {
	Exp  int64 // end of the lease, Unix ms
	Info string
}

// wireConn is a connection of a user's entry as stored: IDs and infos may
// be any bytes, which JSON strings cannot hold, so they go as base64.
type wireConn struct {
	ID   []byte `json:"c"`
	Exp  int64  `json:"e"`
	Info []byte `json:"i"`
}

// MarshalJSON writes the entry as {"c":[{"c":id,"e":exp,"i":info}...]}.
func (e userEntry) MarshalJSON() ([]byte, error) {
	w := make([]wireConn, 0, len(e.Conns))
	for id, c := range e.Conns {
		w = append(w, wireConn{ID: []byte(id), Exp: c.Exp, Info: []byte(c.Info)})
	}
	return json.Marshal(struct {
		C []wireConn `json:"c"`
	}{w})
}

// UnmarshalJSON reads what MarshalJSON wrote.
func (e *userEntry) UnmarshalJSON(b []byte) error {
	var w struct {
		C []wireConn `json:"c"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	e.Conns = make(map[string]connEntry, len(w.C))
	for _, c := range w.C {
		e.Conns[string(c.ID)] = connEntry{Exp: c.Exp, Info: string(c.Info)}
	}
	return nil
}

// countCheck is what a sweep saw of a room whose count differed from its
// users: the count's revision and the number of users.
type countCheck struct {
	rev  uint64
	live int
}

// conn is a connection of this node in a room.
type conn struct{ room, id string }

// localConn is what this node renews of one of its connections.
type localConn struct{ user, info string }

// presenceKV returns the presence bucket, creating it, or
// updating its TTL if it differs, on first use and on the first use after
// dropKV. Nodes that start together race to create it; those that lose use
// the bucket of the one that won.
func (b *Broker) presenceKV(ctx context.Context) (*bucket, error) {
	p := b.pres
	p.kvMu.Lock()
	defer p.kvMu.Unlock()
	if p.kv != nil {
		return p.kv, nil
	}
	// The bucket's stream is made as JetStream's KV makes one, but for
	// direct gets: as for the history stream, a bucket with replicas is
	// read at its leader, since a direct get may be answered by a follower
	// that has not applied the last writes (and a leave that read an entry
	// without its own connection would change nothing and report no last
	// leave).
	age := bucketAge(p.ttl)
	want := jetstream.StreamConfig{
		Name:              "KV_" + p.bucket,
		Description:       "wsroom presence",
		Subjects:          []string{"$KV." + p.bucket + ".>"},
		MaxMsgsPerSubject: 1,
		MaxBytes:          -1,
		MaxMsgSize:        -1,
		MaxMsgs:           -1,
		MaxConsumers:      -1,
		MaxAge:            age,
		Storage:           jetstream.FileStorage,
		Replicas:          max(p.replicas, 1),
		AllowRollup:       true,
		DenyDelete:        true,
		Duplicates:        min(2*time.Minute, age),
		AllowDirect:       p.replicas <= 1,
		Discard:           jetstream.DiscardNew,
	}
	stream, err := ensureStream(ctx, b.js, want.Name,
		func(c jetstream.StreamConfig) bool {
			return c.MaxAge == want.MaxAge && c.MaxMsgsPerSubject == want.MaxMsgsPerSubject && c.Description == want.Description &&
				c.Replicas == want.Replicas && c.AllowDirect == want.AllowDirect && c.Duplicates == want.Duplicates
		},
		func(ctx context.Context) error {
			_, err := b.js.CreateStream(ctx, want)
			return err
		},
		func(ctx context.Context) error {
			_, err := b.js.UpdateStream(ctx, want)
			return err
		})
	if err != nil {
		return nil, fmt.Errorf("natsbroker: creating presence bucket %s: %w", p.bucket, err)
	}
	kv, err := b.js.KeyValue(ctx, p.bucket)
	if err != nil {
		return nil, fmt.Errorf("natsbroker: opening presence bucket %s: %w", p.bucket, err)
	}
	p.kv = &bucket{KeyValue: kv, js: b.js, stream: stream, pre: "$KV." + p.bucket + "."}
	return p.kv, nil
}

// dropKV makes the next presenceKV look the bucket up again, and create it
// if it is gone: after a reconnection, or an error that may mean it is gone
// (a server back without its store has no bucket).
func (p *presence) dropKV() {
	p.kvMu.Lock()
	p.kv = nil
	p.kvMu.Unlock()
}

// checkKV drops the bucket after an error that may mean it is gone, so that
// the next use creates it again.
func (p *presence) checkKV(err error) {
	if streamMissing(err) {
		p.dropKV()
	}
}

// errConflict is what an update returns when another wrote the entry
// since it was read.
func errConflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var api *jetstream.APIError
	return errors.As(err, &api) && (api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// casUser changes the entry of key with change, which is given the entry
// as it is (empty if there is none) and reports whether it changed it; the
// entry is written back only if nobody wrote it since it was read, else
// read and changed again. An entry left with no connection is deleted.
// It returns whether the entry had connections before and after the
// change that was written.
func casUser(ctx context.Context, kv *bucket, key string, change func(*userEntry) bool) (before, after bool, err error) {
	for {
		var e userEntry
		var rev uint64
		got, err := kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return false, false, err
		default:
			rev = got.Revision()
			if json.Unmarshal(got.Value(), &e) != nil {
				e = userEntry{} // unreadable: start again
			}
		}
		before = len(e.Conns) > 0
		if e.Conns == nil {
			e.Conns = make(map[string]connEntry)
		}
		if !change(&e) {
			return before, before, nil
		}
		after = len(e.Conns) > 0
		switch {
		case !after && rev == 0:
			return before, after, nil
		case !after:
			err = kv.deleteAt(ctx, key, rev)
		default:
			v, _ := json.Marshal(e)
			if rev == 0 {
				_, err = kv.Create(ctx, key, v)
			} else {
				_, err = kv.Update(ctx, key, v, rev)
			}
		}
		if err == nil {
			return before, after, nil
		}
		if !errConflict(err) {
			return false, false, err
		}
		if err := ctx.Err(); err != nil {
			return false, false, err
		}
	}
}

// addCount adds d to the room's count of users, in a compare-and-set loop.
func addCount(ctx context.Context, kv *bucket, room string, d int) error {
	key := countKey(room)
	for {
		n, rev := 0, uint64(0)
		got, err := kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return err
		default:
			rev = got.Revision()
			n, _ = strconv.Atoi(string(got.Value()))
		}
		v := []byte(strconv.Itoa(max(n+d, 0)))
		if rev == 0 {
			_, err = kv.Create(ctx, key, v)
		} else {
			_, err = kv.Update(ctx, key, v, rev)
		}
		if err == nil || !errConflict(err) {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// Join implements wsroom.Presence: it is JoinUser, with m's ID as its user
// when m.User is empty.
func (b *Broker) Join(ctx context.Context, room string, m wsroom.Member) error {
	_, err := b.JoinUser(ctx, room, m)
	return err
}

// JoinUser implements wsroom.UserPresence: it adds the connection to its
// user's entry in the presence bucket with a compare-and-set update (so
// that joins of one user on many nodes at once each see the others), and
// counts the user in the room's count if it is its first connection. The
// Broker renews the connection's lease every third of the presence TTL
// until LeaveUser or Close. If the entry cannot be written, JoinUser
// returns the error but keeps the member, and the next renewal writes it.
// An m.User of "" stands for m.ID.
func (b *Broker) JoinUser(ctx context.Context, room string, m wsroom.Member) (bool, error) {
	if err := b.checkOpen(); err != nil {
		return false, err
	}
	p := b.pres
	user := cmp.Or(m.User, m.ID)
	p.mu.Lock()
	p.local[conn{room, m.ID}] = localConn{user, m.Info}
	p.used = true
	p.mu.Unlock()
	kv, err := b.presenceKV(ctx)
	if err != nil {
		return false, err
	}
	exp := time.Now().Add(p.ttl).UnixMilli()
	before, _, err := casUser(ctx, kv, userKey(room, user), func(e *userEntry) bool {
		e.Conns[m.ID] = connEntry{Exp: exp, Info: m.Info}
		return true
	})
	if err == nil && !before {
		err = addCount(ctx, kv, room, 1)
	}
	if err != nil {
		p.checkKV(err)
		return false, fmt.Errorf("natsbroker: joining %q to room %q: %w", m.ID, room, err)
	}
	return !before, nil
}

// Leave implements wsroom.Presence: it is LeaveUser, with the user the
// client joined with.
func (b *Broker) Leave(ctx context.Context, room, id string) error {
	b.pres.mu.Lock()
	user := cmp.Or(b.pres.local[conn{room, id}].user, id)
	b.pres.mu.Unlock()
	_, err := b.LeaveUser(ctx, room, id, user)
	return err
}

// LeaveUser implements wsroom.UserPresence: it removes the connection from
// its user's entry with a compare-and-set update, and uncounts the user if
// it was its last connection. If the entry cannot be written, LeaveUser
// returns the error and the connection's lease ends after the presence TTL.
func (b *Broker) LeaveUser(ctx context.Context, room, id, user string) (bool, error) {
	if err := b.checkOpen(); err != nil {
		return false, err
	}
	p := b.pres
	p.mu.Lock()
	if l, ok := p.local[conn{room, id}]; ok && user == "" {
		user = l.user
	}
	delete(p.local, conn{room, id})
	p.mu.Unlock()
	user = cmp.Or(user, id)
	kv, err := b.presenceKV(ctx)
	if err != nil {
		return false, err
	}
	changed := false
	remove := func(e *userEntry) bool {
		_, changed = e.Conns[id]
		delete(e.Conns, id)
		return changed
	}
	_, after, err := casUser(ctx, kv, userKey(room, user), remove)
	if err == nil && !changed {
		// No entry holds the connection, but a refresh under way may be
		// writing it back (after an outage emptied the bucket) from a
		// snapshot taken before the connection was forgotten above: a
		// create, which no compare-and-set of this leave would conflict
		// with. Once that refresh is over, no write can bring it back.
		p.refreshMu.Lock()
		_, after, err = casUser(ctx, kv, userKey(room, user), remove)
		p.refreshMu.Unlock()
	}
	last := err == nil && changed && !after
	if last {
		// The entry was there (casUser changed it) and is empty now.
		err = addCount(ctx, kv, room, -1)
	}
	if err != nil {
		p.checkKV(err)
		return false, fmt.Errorf("natsbroker: removing %q from room %q: %w", id, room, err)
	}
	return last, nil
}

// users reads the entries of room's users, by user.
func (b *Broker) users(ctx context.Context, room string) (map[string]userEntry, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, setupTimeout)
		defer cancel()
	}
	kv, err := b.presenceKV(ctx)
	if err != nil {
		return nil, err
	}
	entries, err := b.readPresence(ctx, kv.stream, roomToken(room)+".u.*")
	if err != nil {
		b.pres.checkKV(err)
		return nil, fmt.Errorf("natsbroker: reading members of room %q: %w", room, err)
	}
	out := make(map[string]userEntry, len(entries))
	for key, v := range entries {
		user, ok := keyUser(key)
		var e userEntry
		if ok && json.Unmarshal([]byte(v), &e) == nil && len(e.Conns) > 0 {
			out[user] = e
		}
	}
	return out, nil
}

// Members implements wsroom.Presence: it returns the connections of room
// on every node whose lease has not ended. It reads the room's user entries
// from the presence bucket's stream through a short-lived consumer that
// delivers the last message of each key. When ctx has no deadline, Members
// gives up after 10 seconds.
func (b *Broker) Members(ctx context.Context, room string) ([]wsroom.Member, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	users, err := b.users(ctx, room)
	if err != nil {
		return nil, err
	}
	now := time.Now().UnixMilli()
	var out []wsroom.Member
	for user, e := range users {
		for id, c := range e.Conns {
			if c.Exp > now {
				out = append(out, wsroom.Member{ID: id, User: user, Info: c.Info})
			}
		}
	}
	return out, nil
}

// Count implements wsroom.UserPresence: it reads the room's count of users,
// one key that joins and leaves keep (and sweeps correct), not the list.
func (b *Broker) Count(ctx context.Context, room string) (int, error) {
	if err := b.checkOpen(); err != nil {
		return 0, err
	}
	kv, err := b.presenceKV(ctx)
	if err != nil {
		return 0, err
	}
	got, err := kv.Get(ctx, countKey(room))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		b.pres.checkKV(err)
		return 0, fmt.Errorf("natsbroker: counting members of room %q: %w", room, err)
	}
	n, _ := strconv.Atoi(string(got.Value()))
	return n, nil
}

// MembersPage implements wsroom.UserPresence. The bucket has no ordered
// range reads: each page reads the room's user entries (as Members does)
// and returns the n users after cursor, in user order.
func (b *Broker) MembersPage(ctx context.Context, room, cursor string, n int) ([]wsroom.Member, string, error) {
	if err := b.checkOpen(); err != nil {
		return nil, "", err
	}
	users, err := b.users(ctx, room)
	if err != nil {
		return nil, "", err
	}
	now := time.Now().UnixMilli()
	names := make([]string, 0, len(users))
	for u := range users {
		if u > cursor {
			names = append(names, u)
		}
	}
	slices.Sort(names)
	var page []wsroom.Member
	for _, u := range names {
		ids := slices.Sorted(maps.Keys(users[u].Conns))
		for _, id := range ids {
			if c := users[u].Conns[id]; c.Exp > now {
				if len(page) == max(n, 1) {
					return page, page[len(page)-1].User, nil
				}
				page = append(page, wsroom.Member{ID: id, User: u, Info: c.Info})
				break
			}
		}
	}
	return page, "", nil
}

// Sweep implements wsroom.UserPresence: at most once every third of the
// presence TTL per room (it returns nothing otherwise), it reads the
// room's user entries, removes the connections whose lease ended with
// compare-and-set updates (so that of the nodes sweeping at once, one
// removes each), and corrects the room's count if it drifted (a node that
// died between an entry and the count). Its cost is that of Members.
func (b *Broker) Sweep(ctx context.Context, room string) ([]wsroom.Member, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	p := b.pres
	p.mu.Lock()
	if time.Since(p.swept[room]) < p.ttl/3 {
		p.mu.Unlock()
		return nil, nil
	}
	p.swept[room] = time.Now()
	p.mu.Unlock()
	kv, err := b.presenceKV(ctx)
	if err != nil {
		return nil, err
	}
	// The count as of before the read: a change meanwhile makes the
	// correction fail, rather than undo it.
	var countRev uint64
	counted := -1
	if got, err := kv.Get(ctx, countKey(room)); err == nil {
		countRev = got.Revision()
		counted, _ = strconv.Atoi(string(got.Value()))
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("natsbroker: sweeping room %q: %w", room, err)
	}
	users, err := b.users(ctx, room)
	if err != nil {
		return nil, err
	}
	now := time.Now().UnixMilli()
	var gone []wsroom.Member
	live := 0
	for user, e := range users {
		expired := false
		for _, c := range e.Conns {
			expired = expired || c.Exp <= now
		}
		if !expired {
			live++
			continue
		}
		var dead wsroom.Member
		changed := false
		_, after, err := casUser(ctx, kv, userKey(room, user), func(e *userEntry) bool {
			changed = false
			for id, c := range e.Conns {
				if c.Exp <= now {
					delete(e.Conns, id)
					dead = wsroom.Member{ID: id, User: user, Info: c.Info}
					changed = true
				}
			}
			return changed
		})
		switch {
		case err != nil:
			return gone, fmt.Errorf("natsbroker: sweeping room %q: %w", room, err)
		case after:
			live++
		case changed:
			gone = append(gone, dead) // this sweep removed the user's last
		}
	}
	switch {
	case len(gone) > 0:
		if err := addCount(ctx, kv, room, -len(gone)); err != nil {
			return gone, fmt.Errorf("natsbroker: sweeping room %q: %w", room, err)
		}
	case counted != live && (counted >= 0 || live > 0):
		// The count may be behind a join or leave under way on another
		// node (its entry written, its count not yet): correct it only
		// when the previous sweep, a third of the TTL ago, saw the same
		// count, unchanged since, and the same users.
		seen := countCheck{countRev, live}
		p.mu.Lock()
		again := p.drift[room] == seen
		p.drift[room] = seen
		p.mu.Unlock()
		if again {
			setCount(ctx, kv, room, live, countRev)
		}
	default:
		p.mu.Lock()
		delete(p.drift, room)
		p.mu.Unlock()
	}
	return gone, nil
}

// setCount writes the room's count of users as n, if its revision is still
// rev (0: there is none); a count changed meanwhile is left as it is.
func setCount(ctx context.Context, kv *bucket, room string, n int, rev uint64) {
	v := []byte(strconv.Itoa(n))
	if rev == 0 {
		_, _ = kv.Create(ctx, countKey(room), v)
	} else {
		_, _ = kv.Update(ctx, countKey(room), v, rev)
	}
}

// keepCount rewrites the room's count of users when it is older than
// half the bucket's age limit, so that it does not age out while users
// come and go rarely, and makes it again from the entries if it is gone.
func (b *Broker) keepCount(ctx context.Context, kv *bucket, room string) error {
	got, err := kv.Get(ctx, countKey(room))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		users, err := b.users(ctx, room)
		if err != nil {
			return err
		}
		setCount(ctx, kv, room, len(users), 0)
		return nil
	case err != nil:
		return err
	case time.Since(got.Created()) > bucketAge(b.pres.ttl)/2:
		_, err := kv.Update(ctx, countKey(room), got.Value(), got.Revision())
		if errConflict(err) {
			return nil // written meanwhile
		}
		return err
	}
	return nil
}

// bucketAge is the presence bucket's age limit for a presence TTL: leases
// end by the entries' own times, and the limit forgets the keys of rooms
// whose nodes all died, which no sweep removes.
func bucketAge(ttl time.Duration) time.Duration { return 10 * ttl }

// readPresence returns the current entries of the keys matching filter, as
// key -> value. Entries rewritten while it reads are read again (the last
// value wins), and entries removed meanwhile are dropped, so that no entry
// present throughout is missed. It reads until it has seen the stream's
// last message as of its start, or a later one, or nothing more comes: it
// does not rely on the consumer's count of pending messages, which servers
// before 2.10 can leave too high when messages expire.
func (b *Broker) readPresence(ctx context.Context, stream jetstream.Stream, filter string) (map[string]string, error) {
	p := b.pres
	pre := "$KV." + p.bucket + "."
	info, err := stream.Info(ctx)
	if err != nil {
		return nil, err
	}
	last := info.State.LastSeq
	cons, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{
		FilterSubject:     pre + filter,
		DeliverPolicy:     jetstream.DeliverLastPerSubjectPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		MemoryStorage:     true,
		InactiveThreshold: 10 * time.Second,
	})
	if err != nil {
		return nil, err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		// A consumer left behind is removed by the server after
		// InactiveThreshold.
		_ = stream.DeleteConsumer(dctx, cons.CachedInfo().Name)
	}()
	entries := make(map[string]string)
	if cons.CachedInfo().NumPending == 0 {
		return entries, nil
	}
	for {
		batch, err := cons.FetchNoWait(fetchBatch)
		if err != nil {
			return nil, err
		}
		n, done := 0, false
		for msg := range batch.Messages() {
			n++
			md, err := msg.Metadata()
			if err != nil {
				return nil, err
			}
			key := strings.TrimPrefix(msg.Subject(), pre)
			h := msg.Headers()
			if op := h.Get(kvOperation); op == "DEL" || op == "PURGE" || h.Get(markerReason) != "" {
				delete(entries, key)
			} else {
				entries[key] = string(msg.Data())
			}
			done = done || md.NumPending == 0 || md.Sequence.Stream >= last
		}
		if err := batch.Error(); err != nil {
			return nil, err
		}
		if done || n == 0 {
			return entries, nil
		}
	}
}

// Headers of the key-value messages that remove a key.
const (
	kvOperation  = "KV-Operation"       // "DEL" or "PURGE"
	markerReason = "Nats-Marker-Reason" // set by servers from 2.11 on
)

// refresher renews this node's leases every third of the TTL, and at once
// when asked to after a reconnection, until Close or stopRenewing.
func (b *Broker) refresher() {
	p := b.pres
	defer close(p.done)
	tick := time.NewTicker(p.ttl / 3)
	defer tick.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-tick.C:
		case <-p.kick:
		}
		b.refresh()
	}
}

// refresh renews the lease of every connection of this node, one
// compare-and-set update per user entry, and writes back those that are
// gone (an outage, or a sweep while the node was cut off) unless their
// client left meanwhile. Each room's count is kept alive too.
func (b *Broker) refresh() {
	p := b.pres
	p.refreshMu.Lock()
	defer p.refreshMu.Unlock()
	if !b.nc.IsConnected() {
		return // the reconnection asks for a refresh
	}
	type userOf struct{ room, user string }
	p.mu.Lock()
	for room, t := range p.swept {
		if time.Since(t) > 2*p.ttl { // not swept here of late
			delete(p.swept, room)
			delete(p.drift, room)
		}
	}
	if len(p.local) == 0 {
		p.mu.Unlock()
		return
	}
	byUser := make(map[userOf][]string)
	for c, l := range p.local {
		k := userOf{c.room, l.user}
		byUser[k] = append(byUser[k], c.id)
	}
	p.mu.Unlock()
	keys := slices.Collect(maps.Keys(byUser))
	rooms := make(map[string]bool)
	for _, k := range keys {
		rooms[k.room] = true
	}

	ctx, cancel := context.WithTimeout(p.ctx, p.ttl/3)
	defer cancel()
	kv, err := b.presenceKV(ctx)
	var (
		failMu sync.Mutex
		failed int
		first  error
	)
	fail := func(err error) {
		failMu.Lock()
		failed++
		if first == nil {
			first = err
		}
		failMu.Unlock()
	}
	if err == nil {
		exp := time.Now().Add(p.ttl).UnixMilli()
		next := make(chan userOf)
		var wg sync.WaitGroup
		for range min(presenceWorkers, len(keys)) {
			wg.Go(func() {
				for k := range next {
					before, after, err := casUser(ctx, kv, userKey(k.room, k.user), func(e *userEntry) bool {
						p.mu.Lock()
						defer p.mu.Unlock()
						changed := false
						for _, id := range byUser[k] {
							if l, ok := p.local[conn{k.room, id}]; ok {
								e.Conns[id] = connEntry{Exp: exp, Info: l.info}
								changed = true
							}
						}
						return changed
					})
					if err == nil && !before && after {
						err = addCount(ctx, kv, k.room, 1) // written back
					}
					if err != nil {
						fail(err)
					}
				}
			})
		}
		for _, k := range keys {
			next <- k
		}
		close(next)
		wg.Wait()
		for room := range rooms {
			if err := b.keepCount(ctx, kv, room); err != nil {
				fail(err)
			}
		}
	}
	switch {
	case p.ctx.Err() != nil:
		// Close cut the refresh short; it removes the entries itself.
	case err != nil:
		b.report(fmt.Errorf("natsbroker: refreshing presence: %w", err))
	case failed > 0:
		p.checkKV(first)
		b.report(fmt.Errorf("natsbroker: refreshing presence: %d of %d writes failed: %w", failed, len(keys)+len(rooms), first))
	}
}

// refreshSoon asks the refresher to renew this node's leases now.
func (p *presence) refreshSoon() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// stopRenewing stops the refresher and forgets this node's connections
// without removing their entries: what a crash of the node leaves behind.
// Tests use it.
func (b *Broker) stopRenewing() {
	p := b.pres
	p.cancel()
	<-p.done
	p.mu.Lock()
	clear(p.local)
	p.mu.Unlock()
}

// closePresence stops the refresher and removes this node's connections
// from their users' entries. No leave is announced for them: a Room's
// clients leave, and announce it, before its Broker closes.
func (b *Broker) closePresence() {
	p := b.pres
	p.cancel()
	<-p.done
	p.mu.Lock()
	used := p.used
	conns := make(map[conn]localConn, len(p.local))
	maps.Copy(conns, p.local)
	p.mu.Unlock()
	if !used || len(conns) == 0 || b.nc.IsClosed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	p.kvMu.Lock()
	kv := p.kv
	p.kvMu.Unlock()
	if kv == nil {
		return // no entry was ever written
	}
	next := make(chan conn)
	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	for range min(presenceWorkers, len(conns)) {
		wg.Go(func() {
			for c := range next {
				changed := false
				_, after, err := casUser(ctx, kv, userKey(c.room, conns[c].user), func(e *userEntry) bool {
					_, changed = e.Conns[c.id]
					delete(e.Conns, c.id)
					return changed
				})
				if err == nil && changed && !after {
					err = addCount(ctx, kv, c.room, -1)
				}
				if err != nil {
					errMu.Lock()
					first = cmp.Or(first, err)
					errMu.Unlock()
				}
			}
		})
	}
	for c := range conns {
		next <- c
	}
	close(next)
	wg.Wait()
	if first != nil {
		b.report(fmt.Errorf("natsbroker: removing presence entries on close (their leases end after %v): %w", p.ttl, first))
	}
}
