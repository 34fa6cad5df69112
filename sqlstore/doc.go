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
//     number it handed out. Rows are kept for good, so a room's numbering
//     continues where it stopped, in the same epoch, across restarts and
//     after every message has been trimmed away.
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
// the room appended to, and for rooms whose every message has expired in a
// sweep over the whole table at most once per half of the maximum age (and at
// most once a minute). Stores that share tables should be given the same
// retention options, since each deletes what its own options drop.
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
