// Package natsbroker is a wsroom.Broker and wsroom.Store on NATS JetStream,
// so that the rooms of several server nodes form one room: every message
// published on any node reaches every subscriber of the room on every node,
// and history and resume work whichever node a client connects to.
//
// New returns a *Broker for a *nats.Conn; pass it to a Room as its Broker
// (it is also the Room's Store, and its wsroom.Presence, so Room.Members
// lists the clients of every node). Close releases what the Broker started.
//
// # Subjects and stream
//
// With the default prefix "wsroom", a room's stored messages live in the
// stream "WSROOM" under the subject "wsroom.h.<room>", and every message,
// stored or ephemeral, is announced to the nodes on the core NATS subject
// "wsroom.l.<room>", which is outside the stream. <room> is "r" followed by
// the room name in unpadded base64url, so any room name is a safe subject
// token. WithPrefix changes both names. The stream keeps, per room, the last
// WithHistoryLimit messages no older than WithMaxAge.
//
// # Order
//
// JetStream numbers messages per stream, not per room, so a Broker numbers
// each room itself with optimistic concurrency. Publish reads the room
// subject's last stored message (its stream sequence, room sequence and
// epoch), then publishes the message with the next room sequence and the
// header Nats-Expected-Last-Subject-Sequence set to that stream sequence.
// JetStream stores it only if no other message reached the room meanwhile;
// otherwise Publish reads the last message again and retries. Room sequence
// numbers are thus contiguous within an epoch across the cluster. A room's
// epoch is chosen by the publish that finds the room empty (the same header
// with 0 makes that publish exclusive) and is carried in every message; when
// all of a room's messages have expired, the next publish starts a new epoch.
// A publish that times out is retried with the same Nats-Msg-Id, so that
// JetStream's duplicate detection returns the first attempt when it was
// stored after all; a Publish that failed after sending its message keeps
// its Nats-Msg-Id for a Publish of the same message again (the same From,
// Time and Data, as a Room's publish retry sends it), which then returns
// the stored message rather than storing a second copy. While the
// connection is down, a Publish waits for it (within its context) rather
// than leaving its message in the connection's reconnect buffer, where it
// would be sent on reconnection after the caller gave up. Each stored message also carries, in the header
// Wsroom-Prev-Seq, the stream sequence the publish expected: that of the
// room's previous message, or 0 for the first of an epoch.
//
// The cost: a publish to a room takes one JetStream round trip when the
// Broker already knows the room's last position (it remembers it from its
// own publishes and from the messages it receives for subscribed rooms), and
// two more for each conflict with a concurrent publish on another node. The
// publishes of one room on one node are made one at a time, so a single
// room's throughput is bounded by the JetStream round trip; different rooms
// do not wait for each other. They cannot be pipelined: the header that
// orders a message names the stream sequence of the room's previous one,
// which JetStream assigns only when it stores it, since the stream holds
// every room. BenchmarkAppendOneRoom measures it: on a loopback NATS 2.9
// server, on a shared 2-core machine, one room took 3,500 to 7,100 appends a
// second from one publisher (median latency 120 to 170µs) and 6,500 to
// 6,700 from 8 concurrent ones (median 1.3ms, spent waiting for their
// turn), while 8 publishers on 8 rooms took 12,500 to 15,200. A room that
// needs more than its round trip allows must be split into several.
//
// Once stored, a message is announced on the room's core subject. A node
// holds one core subscription per room it has subscribers for, and puts the
// announcements back into sequence order: a message that arrives ahead of
// its turn waits until the missing ones arrive, or for at most 100ms, after
// which the node reads the missing messages from the stream, from the first
// one missing on, one direct get each (or through a short-lived consumer if
// more than 64 are missing). The same read
// follows every reconnection, and one check of the room's last message a
// second after a room is subscribed covers a subscription still spreading
// through a NATS cluster. So subscribers miss nothing that the stream still
// holds, and a message is never delivered unless it was stored. A message
// whose node failed between storing and announcing it is delivered with the
// room's next message.
// Messages that the stream no longer holds are skipped; the Room sees the
// jump in sequence numbers and falls back on its Store.
//
// On a stream with replicas, JetStream's check of the expected sequence is
// not enough, and the Broker checks each message it stored: see NATS
// cluster below.
//
// # Lost messages
//
// A subscription's lost function (see wsroom.Broker) is called, from the
// room's goroutine, whenever the room may have missed something the
// Broker cannot vouch it has repaired:
//
//   - after each reconnection to NATS (ephemeral messages sent meanwhile
//     are gone for good);
//   - after a read from the stream failed, such as a catch-up while
//     JetStream was unavailable;
//   - after NATS dropped announcements of the room because the room's
//     goroutine did not take them fast enough (a slow consumer: the
//     subscription's pending limits were exceeded);
//   - when missing messages were no longer in the stream.
//
// In each case the room's goroutine first reads the stream again and
// delivers what it finds, and calls lost only once a read succeeds, that is
// once it is receiving again; one episode (a reconnection and the failed
// reads during it, say) gives one call, whose error tells the causes. A Room
// then catches up from its Store, which is this Broker, and reports the
// cause to its error hook; what the Broker recovered first is not
// delivered twice, since the Room drops messages by sequence number. The
// causes also reach WithErrorHandler and WithLogger when they happen.
//
// Ephemeral messages are not stored and take no sequence number; they travel
// on the same core subject, so each subscriber receives a node's messages,
// ephemeral or not, in the order that node published them. Like any core
// NATS message, an ephemeral message is lost if a node is disconnected when
// it is sent.
//
// # Reading history
//
// (With replicas, reads go through the stream's leader, and do not walk
// back: they find their first message as below and read forward.)
//
// After and Last read the messages they need, not the room's whole history,
// with JetStream direct gets (the stream allows them). Both start with the
// room's last message. When they need every message from some point to the
// last, no more than 64, as for a join's history or a short resume, they
// walk back from it through the Wsroom-Prev-Seq headers, one direct get per
// message, and make no consumer: Last(n) costs n round trips, After one per
// message after the position (one when the position is the room's last).
// An After whose limit is less than the messages after the position (a
// resume that wants one message, a page of history) first finds the first
// message it needs with a few direct gets of the room's next message from a
// guessed stream sequence, then reads on, one direct get per message up to
// the limit: in a stream of that room alone, the guess is right the first
// time, so After(limit 1) costs two round trips whatever the span; with
// other rooms' messages in between, a few more (the guesses go twice as far
// each time, at most about twice the logarithm of the distance). Longer
// reads, and reads that reach messages stored without the header (by an
// earlier version), find their first message in the same way, then read
// from there through a short-lived ephemeral consumer filtered on the
// room's subject. (NATS servers from 2.11 on can return several messages
// per direct get; the Broker does not rely on it, so that it works with
// older servers.)
//
// # NATS cluster
//
// On a NATS cluster, give every node the URLs of every server (nats.Connect
// takes them comma-separated), so that its connection moves to another
// server when its own fails, and WithReplicas(3): the stream and the
// presence bucket are then kept on three servers, and the rooms go on while
// one of them is down. With the default, one replica, the stream lives on
// one server of the cluster, and every room stops while that server is
// down. Every node must use the same count: New moves a stream created
// with another count to its own (JetStream copies it to the new replicas;
// the history stays), and the first use of presence does the same for the
// bucket. New fails, with an error that names WithReplicas, when the
// servers cannot hold the count: more replicas than servers, or more than
// one on a server that is not in a cluster.
//
// With replicas, the Broker reads the stream through its leader rather
// than with direct gets, since any replica may answer a direct get,
// including a follower that has not yet applied the last messages. And it
// checks each message it stores. A clustered stream checks the expected last
// subject sequence before it proposes a message to the replicas, so two
// publishes sent at the same moment after the same position may both be
// stored: a NATS 2.9.10 cluster does so for several messages in a few
// hundred when three nodes publish to one room at once (later servers
// still may across a change of the stream's leader). So, after each store,
// the publisher reads the room's message that follows the expected one:
// if it is not its own, another message took the position first, and the
// publisher stores its message again, at the next position. The message
// that lost stays in the stream, and every reader skips it, since it
// repeats a sequence number of the room, or, for two first messages of an
// empty room, carries another epoch than the room's first message. The
// check costs one more round trip to the stream's leader per message, and
// one more per room and node for each epoch. A walk back through the
// Wsroom-Prev-Seq headers could step onto a message that lost its place,
// so reads of history with replicas find their first message and read
// forward (see Reading history).
//
// When a server fails, the nodes connected to it reconnect to another one,
// and the rooms read what they missed once the stream answers. When it was
// the stream's leader, the other two elect a new one; until then, a few
// seconds, the stream neither stores nor answers reads. Publishes made
// meanwhile are retried as above, with their Nats-Msg-Id, which the new
// leader knows (every replica keeps the IDs of the duplicate window), so
// that a message the old leader stored before it failed is not stored
// twice. A NATS 2.9 cluster takes several seconds to elect the new
// leader. In a test on one machine (three servers on loopback, three nodes
// publishing 600 messages a second to four rooms, each node on its own
// server), killing the stream's leader stopped deliveries for 4.4 to 8.0
// seconds on every node, the node of the killed server included, and
// killing a follower did not stop them (the first delivery came within
// 10ms); no acked message was lost, duplicated or reordered
// (TestClusterFailover, TestClusterFaults).
//
// # Publishing once
//
// PublishOnce implements wsroom.Deduplicator: its message's Nats-Msg-Id is
// a hash of the room and the caller's key, so JetStream, which remembers
// the IDs of the messages stored within the stream's duplicate window,
// stores one message per key on the whole cluster, whichever node each
// attempt reaches. The window is wsroom.DedupWindow (2 minutes), or the
// stream's MaxAge if shorter (WithMaxAge). JetStream answers a duplicate
// before it checks the expected last subject sequence, so a retry finds
// the stored message however many messages the room took since; PublishOnce
// then reads it back and returns it with dup true, and stores and sends
// nothing.
//
// # Connection faults
//
// The Broker does not own the connection. While nats.go reconnects, core
// subscriptions are restored by nats.go, and each subscribed room then
// catches up from the stream. Lost and restored connections and failed
// catch-ups are reported through WithErrorHandler and WithLogger, and to
// the subscriptions' lost functions (see above). After a reconnection, the
// Broker also rewrites its presence entries at once. How soon a node
// delivers again after the server is back is set by the connection's
// reconnect wait (nats.ReconnectWait, 2 seconds by default): the catch-up
// follows the reconnection at once.
//
// A server that comes back without its store (restarted on an empty store
// directory) has neither the stream nor the presence bucket, and does not
// answer direct gets on the stream. After each reconnection, and when a
// direct get gets no answer within 2 seconds or a publish no stream, the
// Broker looks the stream up, creates it again if it is missing, and
// compares its creation time with the one it knows: a stream created anew,
// by this node or another, makes every room read it from its start, so
// that the rooms move to the new epochs at once, and their clients resume
// from the new epochs' first messages. The presence bucket is looked up
// again after each reconnection, and after an error that may mean it is
// gone, and created again if missing; the refresh that follows a
// reconnection writes this node's entries into it.
//
// # Presence
//
// The Broker is a wsroom.UserPresence on a JetStream key-value bucket
// shared by every node: "WSROOM_PRESENCE" with the default prefix (the
// stream name followed by "_PRESENCE", any character a bucket name cannot
// hold replaced by '_'), whose stream is "KV_WSROOM_PRESENCE". It is
// created on first use, with ten presence TTLs (WithPresenceTTL,
// DefaultPresenceTTL by default) as its MaxAge, which forgets the keys of
// rooms whose nodes all died, and one value per key. A node that finds the
// bucket, or the history stream, already configured as it wants leaves it
// alone; nodes that start at the same moment race to create them, and those
// that lose the race use what the winner created.
//
// Each user of a room is one key, "<room>.u.<user>": the room token as
// above, then "u" followed by the user in unpadded base64url. Its value
// lists the user's connections in the room, on every node, each with the
// end of its lease (Unix milliseconds) and its Info. JoinUser and
// LeaveUser change it with compare-and-set updates (a write that names the
// key's revision, read again and retried when another node wrote it
// first), so that two connections of one user joining at once on two nodes
// give one first join, and leaving, one last leave. Each such write also
// carries a message id made of the key and the revision it expects: a
// clustered bucket checks the revision before it proposes the write to its
// replicas, so two writes after one revision could both be stored, while
// de-duplication holds an id from the moment the leader takes it, and
// answers the second as a duplicate (read again, like a conflict). With
// replicas, the bucket is read at its leader. A room's count of users
// is the key "<room>.n", changed by compare-and-set on each first join and
// last leave: Count reads that one key, never the list. Join and Leave are
// JoinUser and LeaveUser of a client that is its own user.
//
// A goroutine of the Broker renews the leases of its connections every
// third of the TTL (one compare-and-set write per user entry, 16 at a
// time), writing back those that are gone unless their client left. A
// node that stops without Close (a crash, a lost network) leaves leases
// that end within one TTL of its last renewal; Members, MembersPage and
// Count's sweeps skip them from then on. Sweep, at most once every third of
// the TTL per room and node, reads the room's user entries, removes the
// connections whose lease ended with compare-and-set writes, so that of
// the nodes sweeping at once one removes each and reports its user's last
// leave, and corrects the room's count if a node died between writing an
// entry and the count. Each Room with presence events sweeps its room once
// a second, so a dead node's users are announced gone within the TTL plus
// about TTL/3 and a second. Close removes its node's connections from
// their users' entries. A node cut off for longer than the TTL writes its
// entries back when it reconnects, without a new join event.
//
// The cost: each connection takes one read and one compare-and-set write to
// join and to leave (two more when the user's count changes), and one per
// TTL/3 for each user it is renewed for. Members, MembersPage and Sweep
// read the room's user keys through a short-lived consumer that delivers
// the last value of each key matching "<room>.u.*" (four round trips or so,
// and on the server a scan of the room's keys): the bucket has no ordered
// range reads, so MembersPage reads the room for each page, and a room's
// sweeps read it every TTL/3 on each node with members of it. Every node of
// a cluster must use the same TTL: each one sets the bucket's age limit on
// first use, and the last one wins.
package natsbroker
