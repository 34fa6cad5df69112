// Package redisbroker carries the messages of wsroom rooms between server
// nodes through Redis, and keeps the rooms' history there, so that a client
// can resume on any node.
//
// A [Broker], made by [New] from a go-redis client, is both a [wsroom.Broker]
// and a [wsroom.Store]; give the same Broker to every room of a node, and one
// Broker per node, all on the same Redis:
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
// sequence number), the stream "P{R}:log" (the history) and the channel
// "P{R}". The braces make both keys of a room hash to one Redis Cluster slot.
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
// the connection and calls the subscribers, in order.
//
// When the connection fails or Redis stops answering, the Broker reports the
// error to [WithErrorHandler] and [WithLogger], reconnects and subscribes
// again. Messages published while it was disconnected are not delivered
// late: a room notices the missing sequence numbers on the next message and
// reads them from the history with [Broker.After].
package redisbroker
