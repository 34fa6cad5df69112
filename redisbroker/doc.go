// Package redisbroker carries the messages of wsroom rooms between server
// nodes through Redis, and keeps the rooms' history there, so that a client
// can resume on any node.
//
// A [Broker], made by [New] from a go-redis client, is a [wsroom.Broker], a
// [wsroom.Store] and a [wsroom.Presence]; give the same Broker to every room
// of a node, and one Broker per node, all on the same Redis:
//
//	b := redisbroker.New(redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"}))
//	defer b.Close()
//
// Redis 6.2 or later is required.
//
// # Order
//
// Each non-ephemeral message is published by one Lua script, run with
// EVALSHA, that in a single atomic step increments the room's counter, gives
// the room an epoch if it has none, appends the message to the room's
// history (a stream whose entry IDs are the sequence numbers), trims the
// history, and PUBLISHes the numbered message on the room's channel. Redis
// runs scripts one at a time, so the order of the PUBLISHes is the order of
// the sequence numbers, and every node receives a room's messages in that
// one order. The cost is one round trip and one script run per published
// message; ephemeral messages skip the script and are sent with a plain
// PUBLISH, without a number.
//
// # Keys and channels
//
// For a room named R and the prefix P ("wsroom:" unless [WithPrefix] says
// otherwise), the Broker uses the hash "P{R}:meta" (the epoch and the last
// sequence number), the stream "P{R}:log" (the history), the channel "P{R}",
// and, while the room has members, the sorted set "P{R}:presence" and the
// hash "P{R}:presence:info" (see Presence). The braces make every key of a
// room hash to one Redis Cluster slot.
//
// # Retention
//
// A room keeps its last [WithHistoryLimit] messages that are no older than
// [WithMaxAge] (24 hours unless set otherwise). With a maximum age, a room's
// keys expire that long after its last message, so an idle room is forgotten,
// epoch included, and its next message starts a new epoch at sequence number
// 1. Sequence numbers never go back within an epoch.
//
// # Subscriptions and faults
//
// A Broker holds one Redis pub/sub connection. It subscribes to a room's
// channel when the room gets its first local subscriber and unsubscribes
// after the last one leaves, so a node receives only the traffic of the rooms
// it serves. One goroutine, started by New and ended by [Broker.Close], reads
// the connection and queues each message for its room; another sends the
// connection's SUBSCRIBE and UNSUBSCRIBE commands, batched, each bounded by
// a timeout, so that [Broker.Subscribe] waits on Redis only until its
// context ends and unsubscribing does not wait at all, whatever another
// room's call is doing; each room with local
// subscribers has a goroutine of its own that calls them, in order, so that
// a room whose subscribers block delays no other room. A room's queue holds
// at most [DefaultRoomQueue] messages: when its subscribers fall further
// behind, the Broker drops the queued messages, reports the error and calls
// the room's lost functions, and the room reads what it missed from the
// history, as after a reconnection (below).
//
// When the connection fails or Redis stops answering (a restart, a killed
// connection, a network path that went silent, found by a ping after
// three seconds without traffic), the Broker reports the error to
// [WithErrorHandler] and [WithLogger], reconnects and subscribes again to
// every channel. Messages published while it was disconnected are not
// delivered late: once Redis has confirmed the new subscriptions, the
// Broker calls the lost function of every subscription with the error, and
// each room at once reads what it missed from the history with
// [Broker.After] and reports the error to its own error hook. (A room that
// was not told would notice the missing sequence numbers at its next
// message.) The Broker has at most [WithReadConcurrency] history reads
// ([DefaultReadConcurrency], 8) under way at once, so that the catch-ups of
// many rooms after a reconnection take a few of the client's connections and
// leave the others to publishes; the other reads wait their turn.
//
// [Broker.After] reads at most 1,000 entries per Redis command: a longer
// answer (no limit, and a long history) is read page by page, each page
// checked against the room's epoch, and a history reset or trimmed past the
// answer between two pages gives [wsroom.ErrGap].
//
// # Presence
//
// The Broker is a [wsroom.UserPresence]: [Broker.JoinUser] and
// [Broker.LeaveUser] keep who is in each room across every node, counting
// each user's connections in Redis, so that a user with tabs on many nodes
// joins once (first true) and leaves once (last true), even when two of its
// connections join or leave at the same instant on two nodes. [Broker.Join]
// and [Broker.Leave] are the same for a client that is its own user. A
// room R's presence is five keys that share its hash tag, so that each
// script touches one slot (Redis Cluster included):
//
//	P{R}:members:conns   sorted set: client ID -> end of its lease (Unix ms)
//	P{R}:members:data    hash: "u:"+ID -> user, "i:"+ID -> info, "n:"+user -> the user's connections
//	P{R}:members:byuser  sorted set, scores 0: user+"\x00"+ID, for pages in user order
//	P{R}:members:users   sorted set: user -> latest end of its leases, for Count
//	P{R}:members:left    sorted set: client ID -> when the note that it left expires
//
// Each Broker remembers the connections joined through it and, every third
// of the presence TTL ([WithPresenceTTL], 30 seconds unless set
// otherwise), renews their leases one TTL ahead in one pipelined round
// trip, writing back those that are gone (Redis lost them) unless their
// client left: the "left" notes keep a renewal that races a leave from
// writing the entry back. Close removes its Broker's entries.
//
// Leases: the entries of a node that stops without Close (a crash, a lost
// network) lapse within one TTL of its last renewal, and stop counting
// then ([Broker.Members], [Broker.Count] and [Broker.MembersPage] skip
// them). [Broker.Sweep] removes them and reports the users whose last
// connection that was; each Room with presence events sweeps its room once
// a second on every node with members of it, and Redis runs one sweep at a
// time, so each such user's leave is announced once, by one node, within
// the TTL plus about a second of the node's death. A node cut off for
// longer than the TTL writes its entries back when it is reconnected,
// without a new join event.
//
// Costs: JoinUser, LeaveUser and Sweep cost one round trip and one script
// run each, in time proportional to the entries they touch (Sweep removes
// at most 1,000 at a time); Count is one ZCOUNT, O(log n), whatever the
// room's size; MembersPage one script run that reads the page's users in
// user order (O(log n) plus the page); Members one script run that reads
// the whole room. The refresh costs each node one pipelined round trip
// every TTL/3, with one script run per room that has members on that
// node, proportional to those members. A room's presence keys expire two
// TTLs after their last write, so an abandoned room leaves nothing behind.
// Expiry times come from the nodes' clocks, which should agree to well
// within the TTL.
package redisbroker
