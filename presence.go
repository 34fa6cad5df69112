package wsroom

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"
)

// localPresence counts, for one room on this node, the connections of each
// user, so that a Room whose Broker has no UserPresence still tells one
// join and one leave per user (per node). Its methods may be called
// concurrently.
type localPresence struct {
	mu    sync.Mutex
	conns map[string]int // user -> this node's connections in the room
}

// add counts a connection of user and reports whether it is the user's
// first on this node.
func (p *localPresence) add(user string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		p.conns = make(map[string]int)
	}
	p.conns[user]++
	return p.conns[user] == 1
}

// remove uncounts a connection of user and reports whether it was the
// user's last on this node.
func (p *localPresence) remove(user string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.conns[user] - 1
	if n > 0 {
		p.conns[user] = n
		return false
	}
	delete(p.conns, user)
	return true
}

// len returns the number of users with a connection on this node.
func (p *localPresence) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// user returns who the client is for presence: its identity, when the
// room keys members by user (WithPresenceByUser) and the identity is a
// string or a fmt.Stringer (not empty); otherwise its own ID.
func (c *Client) user(cfg *config) string {
	if cfg.presenceByUser {
		switch v := c.identity.(type) {
		case string:
			if v != "" {
				return v
			}
		case fmt.Stringer:
			if s := v.String(); s != "" {
				return s
			}
		}
	}
	return c.id
}

// presenceJoin registers client c, which has just joined the room, with the
// Broker's Presence if it has one, and announces the join if it is its
// user's first connection in the room.
func (r *Room) presenceJoin(c *Client) {
	m := c.member()
	m.User = c.user(&r.cfg)
	first := r.local.add(m.User)
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.writeTimeout)
	defer cancel()
	switch p := r.cfg.broker.(type) {
	case UserPresence:
		f, err := p.JoinUser(ctx, r.name, m)
		if err != nil {
			r.reportError(c, fmt.Errorf("wsroom: presence: %w", err))
		} else {
			first = f
		}
	case Presence:
		if err := p.Join(ctx, r.name, m); err != nil {
			r.reportError(c, fmt.Errorf("wsroom: presence: %w", err))
		}
	}
	r.cfg.events.joined(c, r.name, first && r.cfg.presenceByUser, m.User)
	if first {
		r.announce(c, presenceJoin, m)
	}
}

// presenceLeave is presenceJoin's counterpart, for a client that has left
// (why says why, for the leave event).
func (r *Room) presenceLeave(c *Client, why string) {
	m := c.member()
	m.User = c.user(&r.cfg)
	last := r.local.remove(m.User)
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.writeTimeout)
	defer cancel()
	switch p := r.cfg.broker.(type) {
	case UserPresence:
		l, err := p.LeaveUser(ctx, r.name, m.ID, m.User)
		if err != nil {
			r.reportError(c, fmt.Errorf("wsroom: presence: %w", err))
		} else {
			last = l
		}
	case Presence:
		if err := p.Leave(ctx, r.name, m.ID); err != nil {
			r.reportError(c, fmt.Errorf("wsroom: presence: %w", err))
		}
	}
	r.cfg.events.left(c, r.name, why, last && r.cfg.presenceByUser, m.User)
	if last {
		r.announce(c, presenceLeave, m)
	}
}

// sweep removes the room's presence entries whose lease ran out, when the
// Broker is a UserPresence, and announces their users' leaves (with
// presence events on): the entries of a node that stopped without removing
// them. Every node with members of the room sweeps it, once a second; each
// user's leave is announced by the one that removed its last entry.
func (r *Room) sweep() {
	p, ok := r.cfg.broker.(UserPresence)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.writeTimeout)
	gone, err := p.Sweep(ctx, r.name)
	cancel()
	if err != nil {
		r.reportError(nil, fmt.Errorf("wsroom: presence sweep: %w", err))
		return
	}
	if r.cfg.presenceByUser {
		r.cfg.events.swept(r.name, gone)
	}
	for _, m := range gone {
		r.announce(nil, presenceLeave, m)
	}
}

// presenceData is the Data of a join or leave event: who it is about.
type presenceData struct {
	User string `json:"user"`
	Info string `json:"info,omitempty"`
}

// announce publishes a join or leave of member m (of client c, nil for a
// member whose lease ran out) to the room's members of many rooms on every
// node, if presence events are on and the room is not crowded (see
// WithPresenceEvents).
func (r *Room) announce(c *Client, kind string, m Member) {
	if r.cfg.presenceEvents <= 0 || r.crowded() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.writeTimeout)
	defer cancel()
	// Joins may go on before the room has subscribed to its broker (see
	// subscribe); an ephemeral event published then would not reach the
	// room's own members, the joiner first.
	select {
	case <-r.heard:
	case <-r.done:
		return
	case <-ctx.Done():
		r.reportError(c, fmt.Errorf("wsroom: presence event: %w", ctx.Err()))
		return
	}
	d := presenceData{User: cmp.Or(m.User, m.ID)}
	if kind == presenceJoin {
		d.Info = m.Info
	}
	data, err := json.Marshal(d)
	if err != nil {
		r.reportError(c, fmt.Errorf("wsroom: presence event: %w", err))
		return
	}
	msg := Message{Time: time.Now(), Ephemeral: true, From: m.ID, Presence: kind, Data: data}
	if err := r.publish(ctx, msg); err != nil && !errors.Is(err, ErrClosed) {
		r.reportError(c, fmt.Errorf("wsroom: presence event: %w", err))
	}
}

// eventMember returns the member a join or leave event is about. The Data
// of events published by earlier versions is the member's Info alone.
func eventMember(m Message) Member {
	var d presenceData
	if len(m.Data) > 0 && m.Data[0] == '{' && json.Unmarshal(m.Data, &d) == nil && d.User != "" {
		return Member{ID: m.From, Info: d.Info, User: d.User}
	}
	out := Member{ID: m.From, User: m.From}
	if m.Presence == presenceJoin {
		out.Info = string(m.Data)
	}
	return out
}

// crowded reports whether the room has more members than presence events
// list one by one.
func (r *Room) crowded() bool {
	return max(int64(r.local.len()), r.members.Load()) > int64(r.cfg.presenceEvents)
}

// countMembers refreshes the room's member count, from the Broker's
// Presence if it has one, and, if the room is crowded (or was when the
// count was last sent) and the count is not sent, tells this node's members
// of many rooms. It returns the count sent.
func (r *Room) countMembers(sent int64) int64 {
	if r.Len() == 0 {
		return sent
	}
	n := int64(r.local.len())
	if _, ok := r.cfg.broker.(Presence); ok {
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.writeTimeout)
		c, err := r.Count(ctx)
		cancel()
		if err == nil {
			n = int64(c)
		}
	}
	r.members.Store(n)
	// A crowded room sends its count when it changed, and once more when
	// it is no longer crowded (presence events resume then).
	wasCrowded := sent > int64(r.cfg.presenceEvents)
	if n == sent || !r.crowded() && !wasCrowded {
		return sent
	}
	if r.inbox.offer(Message{Time: time.Now(), Ephemeral: true, Presence: presenceCount, Data: strconv.AppendInt(nil, n, 10)}) {
		return n
	}
	return sent
}

// membersReply returns the members a join that asks for them gets: the
// members with a user each, or, in a room with more members than the
// presence bound, their count. It reads at most one page of the bound's
// size.
func (r *Room) membersReply(ctx context.Context) ([]Member, *int) {
	limit := r.cfg.presenceEvents
	var ms []Member
	if limit > 0 {
		page, next, err := r.MembersPage(ctx, "", limit)
		if err != nil {
			return nil, nil
		}
		if next != "" {
			n, err := r.Count(ctx)
			if err != nil {
				return nil, nil
			}
			n = max(n, limit+1)
			return nil, &n
		}
		ms = page
	} else {
		ms, _ = r.Members(ctx)
	}
	for i := range ms {
		ms[i].User = cmp.Or(ms[i].User, ms[i].ID)
	}
	return ms, nil
}

// Members returns who is in the room on every node, when the room's Broker
// implements Presence, or on this node otherwise, in no particular order.
// A member's Info is the client's identity when that is a string or a
// fmt.Stringer. With WithPresenceByUser, the members are users: one Member
// per user (its ID one of the user's connections), however many
// connections the user has; otherwise one per client. Big rooms are better
// read with MembersPage, or counted with Count.
func (r *Room) Members(ctx context.Context) ([]Member, error) {
	var ms []Member
	if p, ok := r.cfg.broker.(Presence); ok {
		var err error
		if ms, err = p.Members(ctx, r.name); err != nil {
			return nil, err
		}
	} else {
		for _, c := range r.Clients() {
			m := c.member()
			m.User = c.user(&r.cfg)
			ms = append(ms, m)
		}
	}
	if !r.cfg.presenceByUser {
		return ms, nil
	}
	return byUser(ms), nil
}

// byUser keeps one Member per user of ms (a Member with no User is its
// own user), the one with the least ID.
func byUser(ms []Member) []Member {
	slices.SortFunc(ms, func(a, b Member) int {
		return cmp.Or(cmp.Compare(cmp.Or(a.User, a.ID), cmp.Or(b.User, b.ID)), cmp.Compare(a.ID, b.ID))
	})
	return slices.CompactFunc(ms, func(a, b Member) bool { return cmp.Or(a.User, a.ID) == cmp.Or(b.User, b.ID) })
}

// Count returns the number of members of the room (users with
// WithPresenceByUser, else clients) on every node when the room's Broker
// implements Presence, or on this node otherwise. With a UserPresence, the
// engine counts them without reading the member list.
func (r *Room) Count(ctx context.Context) (int, error) {
	switch p := r.cfg.broker.(type) {
	case UserPresence:
		return p.Count(ctx, r.name)
	case Presence:
		ms, err := r.Members(ctx)
		return len(ms), err
	}
	if r.cfg.presenceByUser {
		return r.local.len(), nil
	}
	return r.Len(), nil
}

// MembersPage returns up to n members of the room (see Members), ordered by
// their User, after the position cursor ("" for the first page), and the
// cursor of the next page, "" after the last page. A member present through
// all the reads is returned exactly once. With a UserPresence the engine
// reads one page at a time; otherwise the whole list is read for each page.
// n <= 0 means 100.
func (r *Room) MembersPage(ctx context.Context, cursor string, n int) ([]Member, string, error) {
	if n <= 0 {
		n = 100
	}
	if p, ok := r.cfg.broker.(UserPresence); ok {
		return p.MembersPage(ctx, r.name, cursor, n)
	}
	ms, err := r.Members(ctx)
	if err != nil {
		return nil, "", err
	}
	return pageOf(ms, cursor, n)
}

// pageOf returns the page of ms after cursor, ordered by User (a Member
// with none by its ID), and the next cursor: the last User of the page
// when more follow.
func pageOf(ms []Member, cursor string, n int) ([]Member, string, error) {
	for i := range ms {
		ms[i].User = cmp.Or(ms[i].User, ms[i].ID)
	}
	slices.SortFunc(ms, func(a, b Member) int { return cmp.Or(cmp.Compare(a.User, b.User), cmp.Compare(a.ID, b.ID)) })
	i, _ := slices.BinarySearchFunc(ms, cursor, func(m Member, c string) int {
		if m.User <= c {
			return -1
		}
		return 1
	})
	ms = ms[i:]
	if len(ms) <= n {
		return ms, "", nil
	}
	return ms[:n], ms[n-1].User, nil
}
