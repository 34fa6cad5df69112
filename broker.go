package wsroom

import (
	"context"
	"sync"
	"time"
)

// Broker carries published messages to every node's copy of a room.
//
// Publish numbers each non-ephemeral message and records it in the room's
// history (a Broker that works across nodes numbers messages in its engine, so
// that one order holds across the cluster); then every subscriber of the
// room, on every node, receives every message once, in sequence order.
// Messages published from one node, ephemeral or not, reach each subscriber
// in the order they were published.
//
// A Broker's methods may be called concurrently. Each subscription's deliver
// and lost functions are called from one goroutine at a time and must not
// block for long: a Room's only hand the news to the room's own loop.
// Implementations need not support calling unsubscribe from within deliver
// or lost.
type Broker interface {
	// Publish assigns m the room's next sequence number unless m.Ephemeral,
	// stores it, and sends it to every subscriber of room. It returns once
	// the message is numbered and on its way.
	Publish(ctx context.Context, room string, m Message) error

	// Subscribe arranges for deliver to receive every message published to
	// room from now on, until unsubscribe is called. When Subscribe returns
	// without error, messages published afterwards are delivered.
	//
	// If the broker may have missed messages of the room (its connection
	// to the engine dropped, say), it calls lost, if not nil, with the
	// cause, once it is receiving again; the subscriber then recovers the
	// missed messages from the Store.
	Subscribe(ctx context.Context, room string, deliver func(Message), lost func(error)) (unsubscribe func(), err error)
}

// Sequencer is implemented by a Broker that can tell the sequence number
// and epoch it gave a message it published. The acks of the wsroom.v3
// protocol (PROTOCOL.md) carry them when the room's Broker is a Sequencer;
// otherwise an ack says only that the message is stored. Its method may be
// called concurrently. A Broker that wraps another and changes Publish must
// change PublishSeq alike, or hide it.
type Sequencer interface {
	// PublishSeq is Publish, returning m as numbered (m itself if it is
	// ephemeral).
	PublishSeq(ctx context.Context, room string, m Message) (Message, error)
}

// Deduplicator is implemented by a Sequencer whose engine remembers the
// keys of recent publishes, so that a publish retried on any node of a
// cluster is stored and sent once. The wsroom.v3 protocol's retries
// (PROTOCOL.md, section 5) use it when the room's Broker is a
// Deduplicator; otherwise each node remembers its own publishes' ids.
// Its method may be called concurrently. A Broker that wraps another and
// changes Publish must change PublishOnce alike, or hide it.
type Deduplicator interface {
	// PublishOnce is PublishSeq of a message that key identifies: key is
	// the same for every attempt of one publish, on any node, and differs
	// between publishes. If a publish of room with the same key was
	// stored within the Deduplicator's window (at least DedupWindow),
	// PublishOnce stores and sends nothing and returns that publish's
	// message as numbered (its Seq and Epoch at least) with dup true;
	// concurrent calls with one key store the message once. A call that
	// returns an error leaves no key behind unless the message was
	// stored. m must not be ephemeral.
	PublishOnce(ctx context.Context, room, key string, m Message) (out Message, dup bool, err error)
}

// DedupWindow is the shortest time a Deduplicator remembers a publish's
// key: the acks' lifetime of the protocol (limits.ackTTLMs).
const DedupWindow = 2 * time.Minute

// Presence is implemented by a Broker that knows which clients are in a
// room on every node. A Room registers each of its clients with its Broker's
// Presence, and Room.Members asks it. Entries of a node that stops without
// calling Leave must expire by themselves after a time of the broker's
// choosing.
//
// Its methods may be called concurrently.
type Presence interface {
	// Join records that m is in room, on this node.
	Join(ctx context.Context, room string, m Member) error
	// Leave removes the entry of the client whose ID is id from room.
	Leave(ctx context.Context, room, id string) error
	// Members returns the members of room on every node, one per client,
	// in no particular order.
	Members(ctx context.Context, room string) ([]Member, error)
}

// UserPresence is implemented by a Presence that counts, in its engine,
// how many connections each user has in a room, so that a user with many
// connections on many nodes is one member, who joins when their first
// connection joins and leaves when their last one leaves. A Room uses it,
// when its Broker implements it, for every client: with WithPresenceByUser
// a client's user is its identity, otherwise its own ID.
//
// An entry is held on a lease: the Broker that joined it renews it until
// LeaveUser or its Close, and an entry of a Broker that stopped without
// either outlives its last renewal by at most the lease (the adapter's
// presence TTL). Expired entries are not members; Sweep removes them.
//
// Its methods may be called concurrently, from any number of nodes; each
// transition of a user (first join, last leave, lease ended) is reported
// to exactly one caller.
type UserPresence interface {
	Presence

	// JoinUser records that the client m.ID of user m.User is in room,
	// on this node. first reports whether the user had no connection in
	// room before, on any node. Joining a client that is already in
	// room renews its entry, with m.Info as its info, and reports first
	// false.
	JoinUser(ctx context.Context, room string, m Member) (first bool, err error)

	// LeaveUser removes the entry of client id of user from room. last
	// reports whether it was the user's last connection in room, on any
	// node; it is false if the entry was already gone (Sweep reported
	// it then).
	LeaveUser(ctx context.Context, room, id, user string) (last bool, err error)

	// Count returns the number of users in room, without reading the
	// member list.
	Count(ctx context.Context, room string) (int, error)

	// MembersPage returns up to n users of room, one Member each (ID is
	// one of the user's connections), in the order of their User, after
	// the position cursor ("" for the first page), and the cursor of the
	// next page, or "" after the last. A user present through all the
	// pages' reads is returned exactly once.
	MembersPage(ctx context.Context, room, cursor string, n int) (page []Member, next string, err error)

	// Sweep removes the entries of room whose lease ran out and returns
	// the users whose last connection that was, one Member each with the
	// ID of that connection. Each such user is returned by one call
	// only, whichever node makes it.
	Sweep(ctx context.Context, room string) ([]Member, error)
}

// Member is one client, or with per-user presence one user, in a room's
// presence list.
type Member struct {
	ID   string `json:"id"`   // the client's ID
	Info string `json:"info"` // the client's identity, when it is a string or a fmt.Stringer
	// User is who the client is, for presence: its identity with
	// WithPresenceByUser (when that is a string or a fmt.Stringer), else
	// its ID. Brokers written for Presence alone may leave it empty.
	User string `json:"user,omitempty"`
}

// LocalBroker is the Broker of a single process: it numbers messages through
// a Store and hands them to the subscribers in the same process. It is the
// default Broker of a Room. It is safe for concurrent use.
type LocalBroker struct {
	store Store

	mu     sync.Mutex
	topics map[string]*topic
}

type topic struct {
	mu   sync.Mutex // held while numbering and delivering, so order is one
	subs map[*subscription]struct{}
	dead bool // removed from LocalBroker.topics
}

type subscription struct {
	deliver func(Message)
	// wait, if set, hands m over as deliver does but, rather than have the
	// subscriber fall behind, waits while it is full, until ctx ends.
	wait func(ctx context.Context, m Message)
}

// NewLocalBroker returns a LocalBroker that numbers and stores messages in s.
func NewLocalBroker(s Store) *LocalBroker {
	return &LocalBroker{store: s, topics: make(map[string]*topic)}
}

// Store returns the Store the broker numbers messages in.
func (b *LocalBroker) Store() Store { return b.store }

// Publish implements Broker. Messages of one room are numbered and delivered
// one at a time, so every subscriber sees them in sequence order.
func (b *LocalBroker) Publish(ctx context.Context, room string, m Message) error {
	_, err := b.PublishSeq(ctx, room, m)
	return err
}

// PublishSeq implements Sequencer.
//
// When a room's loop in this process is behind (its inbox is full), Publish
// waits, until ctx ends, for the loop to take the message, rather than let
// the loop fall further behind: publishers are slowed, and no client of the
// room loses messages to an overload. The messages of one room are
// published one at a time, so every publisher of the room waits then. A
// message whose wait ctx ends is numbered and stored all the same, and the
// loop reads it back from the Store.
func (b *LocalBroker) PublishSeq(ctx context.Context, room string, m Message) (Message, error) {
	for {
		b.mu.Lock()
		t := b.topics[room]
		b.mu.Unlock()
		if t == nil {
			// No subscriber here: number and store only.
			if !m.Ephemeral {
				return b.store.Append(ctx, room, m)
			}
			return m, nil
		}
		t.mu.Lock()
		if t.dead {
			t.mu.Unlock()
			continue
		}
		m, err := t.publish(ctx, b.store, room, m)
		t.mu.Unlock()
		return m, err
	}
}

func (t *topic) publish(ctx context.Context, s Store, room string, m Message) (Message, error) {
	if err := ctx.Err(); err != nil {
		return Message{}, err
	}
	if !m.Ephemeral {
		var err error
		if m, err = s.Append(ctx, room, m); err != nil {
			return Message{}, err
		}
	}
	for sub := range t.subs {
		if sub.wait != nil {
			sub.wait(ctx, m)
		} else {
			sub.deliver(m)
		}
	}
	return m, nil
}

// Subscribe implements Broker.
// The LocalBroker never misses a message, so it never calls lost.
func (b *LocalBroker) Subscribe(ctx context.Context, room string, deliver func(Message), lost func(error)) (func(), error) {
	return b.subscribe(ctx, room, &subscription{deliver: deliver})
}

// subscribe adds s to the room's subscribers.
func (b *LocalBroker) subscribe(ctx context.Context, room string, s *subscription) (func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	t := b.topics[room]
	if t == nil {
		t = &topic{subs: make(map[*subscription]struct{})}
		b.topics[room] = t
	}
	t.mu.Lock()
	t.subs[s] = struct{}{}
	t.mu.Unlock()
	b.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			b.mu.Lock()
			t.mu.Lock()
			delete(t.subs, s)
			if len(t.subs) == 0 {
				t.dead = true
				delete(b.topics, room)
			}
			t.mu.Unlock()
			b.mu.Unlock()
		})
	}, nil
}
