// Package wsroom serves WebSocket clients in rooms: every message published
// to a room reaches every client in it, in one order, without any client
// being able to slow the others down.
//
// A Room made by New serves clients through Handler, which plugs into any
// net/http mux. A Registry holds many named rooms that share options and
// serves them through one handler, picking the room from the request:
//
//	rooms := wsroom.NewRegistry(wsroom.WithCodec(wsroom.JSON()), wsroom.WithHistory(50))
//	mux.Handle("GET /rooms/{name}", rooms.Handler(nil))
//
// A Registry also serves connections that are in many rooms at once, through
// MuxHandler (see "Many rooms on one connection" below). Server code
// publishes with Room.Publish or Registry.Publish (to everyone, to all but
// one, to a filtered set) and Client.Send (to one client). Hooks (WithOnJoin,
// WithOnLeave, WithOnMessage, WithOnError) and WithAuthorize let the
// application see and steer what happens. The examples show each entry
// point, and examples/chat is a complete application.
//
// # History and resume
//
// Every numbered message is kept in the room's Store (a MemoryStore by
// default, bounded by count and age; durable and cluster-wide stores live in
// their own modules). WithHistory sends newcomers the last messages. A client
// that lost its connection resumes by adding the position of the last
// message it saw to the handshake URL:
//
//	ws://host/rooms/lobby?resume=EPOCH:SEQ
//
// The room then sends exactly the messages after that position, then live
// ones, with no gap and no duplicate, even while others keep publishing.
// History is read and written a page at a time, so a joining client holds at
// most about 1 MiB of it at once (at least 8 messages; 256 at most), and
// clients that replay the same messages share one copy of each frame.
//
// If the history no longer covers that position (it was trimmed, or the
// epoch changed because the history was lost), or the room itself lost
// messages it cannot read back, the client is closed with StatusResync
// (4000). When the room's history moved to a new epoch, the close reason
// ends in "resume=EPOCH:0", the start of the new epoch: a client that
// reconnects with that resume parameter gets every message stored in the
// new epoch. Otherwise it reconnects without resume. A malformed resume
// parameter is answered with 400. The JSON codec puts "seq" and "epoch" in
// each envelope; with the raw Text and Binary codecs clients see only
// payloads and cannot resume.
//
// # Many rooms on one connection
//
// Registry.MuxHandler serves connections that join and leave the
// Registry's rooms by message, in the wsroom.v3 protocol of PROTOCOL.md
// (subprotocol Subprotocol): each joins with its own resume position or the
// last N messages, publishes with an id to get an ack once the message is
// stored (a retried id is published once, on any node when the Broker is a
// Deduplicator), gets an error reply with a
// stable code for a bad request, and is resynchronised room by room. Server
// code joins such a client to a room with Client.Join and removes it with
// Client.Leave; WithJoinCheck decides who may join which room, and
// WithPresenceEvents tells members who comes and goes, by connection or,
// with WithPresenceByUser, by user: a user with many tabs on many nodes is
// one member (see UserPresence, which redisbroker and natsbroker
// implement). Room.Members, Room.Count and Room.MembersPage read a room's
// presence. Both kinds of client can share a room.
//
// Clients of the protocol: package wsclient (Go) and the npm package
// @wsroom/client in js/ (browsers and Node). Package protocoltest checks
// any server of the protocol against PROTOCOL.md, and gives clients a
// server that misbehaves on purpose.
//
// # The backend's side
//
// Registry.API is an http.Handler for backends in any language (JSON over
// HTTP, described by openapi.json): publish with an idempotency key, read
// members, counts and rooms, disconnect connections and remove users, on
// any node. With WithEvents, a Registry writes its connections' lifecycle
// (connect, disconnect, join, leave, users' first joins and last leaves)
// to an event log in its Store, which Registry.FeedEvents hands to a Go
// function or a Webhook at least once and in order; the survivors write
// the events of a node that died. sqlstore's Broker lets PostgreSQL alone
// carry rooms across nodes, and publishes inside the application's own
// transaction.
//
// # Authentication
//
// Same-origin handshakes only, by default; WithOriginPatterns and
// WithOriginCheck allow others. The authorize hook then reads the
// request's credential: a session cookie, a header, or, since browsers
// cannot set headers on a WebSocket handshake, a token offered as a
// subprotocol (WithSubprotocols, OfferedSubprotocols). What it returns is
// the client's Identity; WithJoinCheck decides which rooms a client of a
// Registry may join, by either handler. A credential that expires while the client is
// connected is the application's to enforce, by closing the client with
// StatusExpired (4001). Package wsroomtest connects clients to a handler in
// memory, to test all this.
//
// # Concurrency
//
// Room, Registry, Client, MemoryStore and LocalBroker are safe for concurrent
// use. Each client has one goroutine that reads for as long as it is
// connected (the handler returns once the connection is upgraded), a writer
// only while it has messages queued, and the ping timer's goroutine for the
// length of each ping. Each room has its loop and its keeper. Hooks run on
// the goroutine of the client they concern, and the error hook for errors of
// the room on its keeper, never on the room's loop, so a slow hook slows
// only its own client or room. No lock is held while a hook runs. A hook that panics is
// recovered, as net/http recovers handlers: the panic goes to the error hook,
// and a message hook's panic closes its client with 1011.
//
// # Shutdown
//
// Room.Close and Registry.Close close every connection at once.
// Room.Shutdown and Registry.Shutdown refuse new handshakes (503) and
// publishes (ErrClosed), write what is already queued to each client, close
// it with 1001 (going away) and wait for every goroutine to end, or for the
// context. http.Server.Shutdown does not wait for WebSocket connections,
// which it no longer tracks once upgraded, so call both:
//
//	srv.Shutdown(ctx)  // stop accepting, finish plain HTTP requests
//	room.Shutdown(ctx) // then say goodbye to WebSocket clients
//
// # Inside: the path of a message
//
//  1. A client's reading goroutine reads a frame, checks
//     its size (WithReadLimit) and rate (WithRateLimit), and lets the Codec
//     decode it; in a room of text frames the payload must be valid UTF-8
//     whatever the codec. With a message hook the hook decides what to
//     publish; without one the payload is published as it is. If the
//     Broker fails, the message is retried and the client's next messages
//     wait (WithPublishRetry); past the retry time the client is closed
//     with 1013 to send it again. Nothing a client sent is dropped silently.
//  2. Room.Publish hands the message to the Broker. The default LocalBroker
//     numbers it through the Store (sequence numbers 1, 2, 3 ... per room,
//     within an epoch), stores it, and delivers it to the room's loop.
//     Other Brokers do the same across server nodes. If the loop's inbox
//     is full, the LocalBroker waits for the loop, so that an overload
//     slows the publishers (a client's reads stop, and TCP pushes back);
//     a Broker across nodes never waits for it: the loop reads the message
//     back from the Store, and resynchronises its clients only if the
//     Store no longer holds it.
//  3. The room's loop, the only owner of the set of clients, encodes the
//     message once into a whole WebSocket frame (server frames are not
//     masked, so the bytes are the same for every client) and appends it to
//     every client's queue, without ever waiting for a client.
//  4. A client's writer, started when its queue gets a frame, hands all its
//     queued frames to the kernel in one system call (writev), each frame
//     still one message, bounded by WithWriteTimeout; it exits when the
//     queue is empty. When no other message waits, the loop itself writes
//     a frame to a client with an empty queue if the socket takes it
//     without waiting, which saves a goroutine start and switch per
//     delivery; with more than one P and 512 clients or more, helper
//     goroutines of the loop take parts of the room's clients (one part
//     per P, 256 clients at least), so that the writes of one message
//     spread over the cores, and the loop waits for them before the next
//     message, so each client's order holds. Under load the loop only
//     queues, and the writers batch. If the socket takes only part of a
//     frame, the connection keeps the rest and writes it before any other
//     frame, pings and close frames included. With compression on,
//     coder/websocket frames and compresses each message per connection
//     instead.
//
// The room's loop never calls the application, the Store or the Broker.
// Each room has a second goroutine, its keeper, which subscribes to the
// Broker, reads the Store when the loop must catch up (a page of 256
// messages at a time, each read retried with backoff for up to 30s before
// the room's clients are resynchronised), and runs the error hook and the
// logger for errors the loop meets.
//
// A client whose queue is full (WithSendBuffer) gets the SlowPolicy: closed
// with 1008 by default, so it reconnects and resumes; DropOldest and
// DropNewest are there for streams where only the latest state matters.
//
// # Limits and defaults
//
// The defaults are chosen so that one abusive client cannot hurt the others:
// send buffer 256 messages per client (WithSendBuffer), read limit 32 KiB
// (WithReadLimit), each client throttled to 20 messages a second in
// bursts of 40 (WithRateLimit), pings from a client answered 10 a second
// in bursts of 20 (beyond that it is closed with 1008), write timeout 10s,
// ping every 30s with a 10s pong timeout, publish retry 10s, no compression,
// same-origin handshakes only, no client cap, at most 10,000 rooms per
// Registry (WithMaxRooms), each closed after one minute without clients
// (WithIdleTimeout), at most 100 rooms per connection of many rooms
// (WithMaxRoomsPerClient), memory history of 1,000 messages per room for
// 24 hours, no history on join.
//
// Handshake answers, checked in this order: 426 for non-WebSocket requests,
// 400 for a malformed handshake (method, version, key, or none of the
// subprotocols the handler speaks: WithSubprotocols, Subprotocol), 403 for
// a foreign origin (WithOriginPatterns, WithOriginCheck), 400 for a bad
// resume parameter or room name, 401/403 from the authorize hook, 403 (or
// an HTTPError's status) from a Registry's join check (WithJoinCheck), 503
// when the room is full or closed or the Registry holds
// its maximum of rooms. A Registry makes a room only for a handshake that
// passed every check. Close codes: 1003 for the wrong frame type, 1007 for
// invalid UTF-8 or a codec error, 1008 for a full send buffer, the rate
// limit, a ping flood or a message hook error, 1009 for a message over the
// read limit, 1011 for a message hook's panic, 1013 when the Broker could
// not take a client's message within the publish retry time (or a new
// room's Store could not be read), 1001 on shutdown, 4000 (StatusResync)
// for a resume the history cannot serve or a room that lost messages, and
// 4001 (StatusExpired), never sent by wsroom itself, for the application to
// close a client whose credential expired (see StatusExpired). A
// client whose writes fail or time out is dropped without a close frame
// (counted in Stats.ClosedWrite), during a close too.
package wsroom
