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
// Redis 6.2 or later is required; 7.0 or later on a Redis Cluster (see
// Redis Cluster, below).
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
// hash "P{R}:presence:info" (see Presence); [Broker.PublishOnce] adds the
// string "P{R}:once:<hash of the key>" for each publish key, for the
// de-duplication window. The braces make every key and the channel of a
// room hash to one Redis Cluster slot, whatever the prefix: Redis hashes
// the text between a key's first "{" and the first "}" after it, which is R
// (up to a "}" in it) when P holds no brace, and otherwise starts in P and
// ends at the latest at the "}" after R, the same for every key of the
// room. The one prefix that breaks this is one whose first "{" is followed
// at once by "}": [New] refuses it on a cluster. A prefix with a hash tag
// of its own ("app{x}:") keeps each room's keys together but puts every
// room in one slot, so on one master. On a cluster, a room whose name is
// empty or starts with "}" cannot be published to (CROSSSLOT) under a
// prefix without braces.
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
// A Broker holds one Redis pub/sub connection (on a cluster, one per
// master: see Redis Cluster). It subscribes to a room's
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
//
// # Redis Cluster
//
// On a [redis.ClusterClient], a Broker uses sharded pub/sub (Redis 7.0 or
// later): the publish script sends with SPUBLISH, and the Broker subscribes
// with SSUBSCRIBE. Plain PUBLISH on a cluster is broadcast to every node,
// so each node's load grows with the whole cluster's traffic; SPUBLISH
// stays on the shard that owns the room's slot (its master and replicas),
// so adding masters adds pub/sub capacity. [WithShardedPubSub] makes a
// Broker on a single Redis 7 use the same commands.
//
// The Broker reads the slot map (CLUSTER SHARDS) and holds one pub/sub
// connection per master that owns a room it subscribed to, on a go-redis
// client of that master's own, with a reading and a writing goroutine each;
// a room's SSUBSCRIBE goes to the connection of its slot's master, one
// command per slot, as Redis requires. A connection that fails reconnects
// by itself and tells only the rooms it carried: a master that restarts, or
// a connection killed, leaves the rooms of other masters undisturbed.
//
// Slot moves: when a slot migrates, Redis unsubscribes the channels of that
// slot (an sunsubscribe the Broker did not ask for), and an SSUBSCRIBE sent
// to a master that no longer owns the slot gets MOVED or ASK. Either way
// the Broker reads the slot map again, subscribes the rooms of that slot on
// the new owner's connection, and, once that is confirmed, calls their lost
// functions (only theirs): they catch up from their history, which moved
// with the slot.
//
// Failover: when a master dies or stops answering, its connection fails (at
// once, or after the health check's ping goes unanswered); the Broker reads
// the slot map until a replica has been promoted, moves the connection's
// rooms to the new master, and tells them. It also tells go-redis to read
// the slot map again, so that publishes reach the new master without
// waiting for go-redis' own refresh. A connection left without rooms ends.
//
// Replication is asynchronous: a master acknowledges a write before its
// replicas have it, so a failover can lose the last writes of the old
// master, messages a publisher was told were stored and subscribers may
// have received. [WithReplicaAcks] closes that window: the publish script
// stores the message without publishing it, WAIT follows on the same
// connection to the room's master, and a second script publishes the
// room's messages up to that one (in order, every one already on the
// replicas) once n replicas acknowledged it. A publish then costs two more
// round trips. When WAIT fails or counts too few replicas (the master died
// or stopped), the publish looks for its message on the slot's master, the
// new one after a failover: found, it waits there for the replicas and
// succeeds; not found, it fails, the message lost, and a retry stores it
// once. It waits so past its context's end, for up to ten replica
// timeouts: a stored message behind an error would be stored again by the
// retry. Without it, a room's history can go back at a failover: the
// new master's sequence number lower than what subscribers received. A
// Broker notices: before it tells a room's subscriptions that they may
// have missed messages, it checks that the history still holds the last
// message it delivered, at its number; if not, it gives the room a new
// epoch, so every client resumes with [wsroom.ErrGap] and starts again from
// the history, rather than take the new messages that reuse those numbers
// for ones it has seen. Within an epoch, a Broker never delivers a number
// at or below one it delivered; such a number coming with another message
// (a stopped master, continued after its replica took over, sends its last
// writes to the shard's nodes over the cluster bus, and its successor uses
// their numbers again) has it check the history in the same way, and tell
// the room's subscriptions if the room got a new epoch. It also drops the
// messages of a room read on a connection the room moved away from.
//
// De-duplication: [Broker.PublishOnce] ([wsroom.Deduplicator]) records the
// publish key in the publish script itself, as "P{R}:once:<hash>" in the
// room's slot, holding the message's number and epoch, for the window
// ([WithDedupWindow], [wsroom.DedupWindow] by default): a retry within the
// window, through any Broker of the cluster, stores and sends nothing and
// returns the first publish's position; one after the window is stored
// again.
package redisbroker
