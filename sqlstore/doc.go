// Package sqlstore keeps the history of wsroom rooms in a SQL database, so
// that it survives restarts and is shared by every server process that uses
// the same database.
//
// [New] returns a [Store], a [wsroom.Store] over a [database/sql] handle. It
// works with SQLite and PostgreSQL; the package imports no driver, so the
// program imports the one it uses and opens the database itself:
//
//	import _ "modernc.org/sqlite"           // driver "sqlite"
//	import _ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"
//
// # Schema
//
// New creates two tables if they do not exist, named after a prefix
// ("wsroom_" unless [WithTablePrefix] says otherwise):
//
//   - <prefix>rooms: one row per room with its epoch and the last sequence
//     number it handed out, so that a room's numbering continues where it
//     stopped, in the same epoch, across restarts. A row stays as long as
//     the room has history; a sweep deletes it once every message has
//     expired (see Retention).
//   - <prefix>messages: the stored messages, keyed by (room, seq), with their
//     time in milliseconds, sender and data.
//
// Numbering is done in the database: Append increments the room's counter and
// inserts the message in one transaction, so any number of goroutines,
// processes and Stores may append to the same rooms at once.
//
// # Retention
//
// A Store keeps, per room, the last [WithHistoryLimit] messages that are no
// older than [WithMaxAge]. Reads apply both bounds exactly; the rows that fall
// outside them are deleted by Append from time to time, a few at a time for
// the room appended to. Stores that share tables should be given the same
// retention options, since each deletes what its own options drop.
//
// With a maximum age, a Store also sweeps the rooms table from a goroutine
// of its own, once per half of the maximum age and at most once a minute
// unless [WithSweepInterval] says otherwise, until [Store.Close]. A pass
// reads the rooms in batches of 100, in the order of their names, through
// the tables' primary keys, and deletes the rooms whose every message has
// expired, with their messages, in short transactions of about 1,000
// messages each; no query scans a whole table. A room appended to since
// its batch was read is kept. An Append to a room after its deletion starts
// the room again, in a new epoch numbered from 1, so a client that resumes
// from the old epoch is told to resynchronise rather than given messages of
// the new one under old numbers.
//
// # Errors
//
// Append returns the errors of storing a message. A trim that fails after
// the message is stored (on PostgreSQL, where it is a statement of its own)
// and a failed sweep are retried later: they are counted in [Store.Stats]
// and passed to the function set by [WithErrorHandler].
//
// # A Broker on the database
//
// [NewBroker] returns a [Broker]: a [wsroom.Broker] whose engine is the
// Store's database, so that PostgreSQL alone can carry rooms across nodes,
// and whose [Broker.PublishTx] writes a message in the application's own
// transaction (a transactional outbox). See [Broker] for how messages
// reach each node.
//
// # SQLite
//
// SQLite allows one writer at a time. A Store serialises its own writes and
// retries a write that finds the database locked by another connection until
// its context is done. Setting a busy timeout and WAL mode in the DSN is
// recommended, for example:
//
//	file:history.db?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)
package sqlstore
