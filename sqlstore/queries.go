package sqlstore

import (
	"strconv"
	"strings"
)

// queries holds a Store's SQL, written for its dialect and table names.
type queries struct {
	schema []string

	// next creates or bumps a room's counter; args: room, new epoch;
	// returns the epoch and the message's sequence number.
	next string

	// insert stores a message; args: room, seq, time_ms, sender, data.
	insert string

	// appendOne does the work of next and insert in one statement, for
	// PostgreSQL; args: room, new epoch, room, time_ms, sender, data.
	appendOne string

	// appendNotify is appendOne that also sends a notification; args:
	// those of appendOne, then the channel and the payload.
	appendNotify string

	// trim deletes a room's messages that retention dropped; args: room,
	// room, highest seq over the count limit, expiry cut, seq to delete
	// below when every message has expired.
	trim string

	// sweepFirst and sweepNext return the first rooms of the rooms table,
	// in the order of their names, or those after a name: each room's
	// name, last sequence number and 1 if its history is empty, 0 if not.
	// Args: count limit, expiry cut, for sweepNext the name to start
	// after, and how many rooms.
	sweepFirst, sweepNext string

	// deleteRoom deletes a room's row if its last sequence number is
	// still the given one; args: room, last seq.
	deleteRoom string

	// position returns a room's epoch and last sequence number; args:
	// room.
	position string

	// deleteMessages deletes every message of a room; args: room.
	deleteMessages string

	// after and last return a row with the room's window followed by its
	// selected messages, or nothing for a room that never had a message.
	// Args of both: count limit, expiry cut, room, room; then for after:
	// seq, seq, epoch (NULL for any), row limit; for last: n.
	after string
	last  string
}

// windowCTE names, for a room, its epoch, its last sequence number and the
// first one it retains (last_seq+1 if none). Retention keeps the messages
// after last_seq-limit from the first that has not expired on. Deletions
// only ever remove the oldest rows of a room, so the rows from first_seq to
// last_seq are all there. The CTE is materialised so that first_seq is
// computed once, not once per message row.
const windowCTE = `WITH w AS MATERIALIZED (
	SELECT r.room, r.epoch, r.last_seq, COALESCE((
		SELECT x.seq FROM {m} x
		WHERE x.room = r.room AND x.seq > r.last_seq - ? AND x.time_ms >= ?
		ORDER BY x.seq LIMIT 1
	), r.last_seq + 1) AS first_seq
	FROM {r} r WHERE r.room = ?
)
SELECT w.epoch, w.last_seq, w.first_seq, m.seq, m.time_ms, m.sender, m.data
FROM w LEFT JOIN {m} m ON m.room = ?`

// sweepQuery is sweepFirst or sweepNext, with {after} replaced by the
// condition on the name. A room's history is empty when none of the last
// limit messages it handed out is there unexpired, as the reads see it.
const sweepQuery = `SELECT r.room, r.last_seq, CASE WHEN EXISTS (
		SELECT 1 FROM {m} x
		WHERE x.room = r.room AND x.seq > r.last_seq - ? AND x.time_ms >= ?
	) THEN 0 ELSE 1 END
	FROM (SELECT room, last_seq FROM {r} {after} ORDER BY room LIMIT ?) r
	ORDER BY r.room`

func newQueries(d Dialect, prefix string) queries {
	rooms, msgs := prefix+"rooms", prefix+"messages"
	q := queries{
		next: `INSERT INTO {r} (room, epoch, last_seq) VALUES (?, ?, 1)
			ON CONFLICT (room) DO UPDATE SET last_seq = {r}.last_seq + 1
			RETURNING epoch, last_seq`,
		insert: `INSERT INTO {m} (room, seq, time_ms, sender, data) VALUES (?, ?, ?, ?, ?)`,
		trim: `DELETE FROM {m} WHERE room = ? AND seq < COALESCE((
			SELECT x.seq FROM {m} x
			WHERE x.room = ? AND x.seq > ? AND x.time_ms >= ?
			ORDER BY x.seq LIMIT 1
		), ?)`,
		sweepFirst:     strings.Replace(sweepQuery, "{after}", "", 1),
		sweepNext:      strings.Replace(sweepQuery, "{after}", "WHERE room > ?", 1),
		deleteRoom:     `DELETE FROM {r} WHERE room = ? AND last_seq = ?`,
		position:       `SELECT epoch, last_seq FROM {r} WHERE room = ?`,
		deleteMessages: `DELETE FROM {m} WHERE room = ?`,
		after: windowCTE + ` AND m.seq > ? AND ? >= w.first_seq - 1 AND w.epoch = COALESCE(?, w.epoch)
			ORDER BY m.seq LIMIT ?`,
		last: windowCTE + ` AND m.seq >= w.first_seq AND m.seq > w.last_seq - ?
			ORDER BY m.seq`,
	}
	switch d {
	case SQLite:
		q.schema = []string{
			`CREATE TABLE IF NOT EXISTS {r} (
				room TEXT NOT NULL PRIMARY KEY,
				epoch TEXT NOT NULL,
				last_seq INTEGER NOT NULL
			) WITHOUT ROWID`,
			`CREATE TABLE IF NOT EXISTS {m} (
				room TEXT NOT NULL,
				seq INTEGER NOT NULL,
				time_ms INTEGER NOT NULL,
				sender TEXT NOT NULL,
				data BLOB NOT NULL,
				PRIMARY KEY (room, seq)
			)`,
		}
	case Postgres:
		q.schema = []string{
			`CREATE TABLE IF NOT EXISTS {r} (
				room TEXT PRIMARY KEY,
				epoch TEXT NOT NULL,
				last_seq BIGINT NOT NULL
			)`,
			`CREATE TABLE IF NOT EXISTS {m} (
				room TEXT NOT NULL,
				seq BIGINT NOT NULL,
				time_ms BIGINT NOT NULL,
				sender TEXT NOT NULL,
				data BYTEA NOT NULL,
				PRIMARY KEY (room, seq)
			)`,
		}
		q.appendOne = `WITH r AS (
			INSERT INTO {r} (room, epoch, last_seq) VALUES (?, ?, 1)
			ON CONFLICT (room) DO UPDATE SET last_seq = {r}.last_seq + 1
			RETURNING epoch, last_seq
		), i AS (
			INSERT INTO {m} (room, seq, time_ms, sender, data)
			SELECT ?, last_seq, ?, ?, ? FROM r
		)
		SELECT epoch, last_seq FROM r`
		q.appendNotify = strings.Replace(q.appendOne, "SELECT epoch, last_seq FROM r",
			`SELECT r.epoch, r.last_seq FROM r CROSS JOIN LATERAL (SELECT pg_notify(?, ? || r.epoch || '","s":' || r.last_seq || '}')) n`, 1)
	}
	r := strings.NewReplacer("{r}", rooms, "{m}", msgs)
	for _, p := range []*string{&q.next, &q.insert, &q.appendOne, &q.appendNotify, &q.trim, &q.sweepFirst, &q.sweepNext, &q.deleteRoom, &q.position, &q.deleteMessages, &q.after, &q.last} {
		*p = r.Replace(*p)
		if d == Postgres {
			*p = numberParams(*p)
		}
	}
	for i := range q.schema {
		q.schema[i] = r.Replace(q.schema[i])
	}
	return q
}

// numberParams rewrites the ? placeholders of query as $1, $2 and so on.
func numberParams(query string) string {
	var b strings.Builder
	n := 0
	for _, c := range query {
		if c == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(c)
	}
	return b.String()
}
