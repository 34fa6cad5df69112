package redisbroker

import (
	"cmp"
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wsroom/wsroom"
)

// A room's presence lives in five keys that share the room's hash tag, so
// that every script touches one hash slot (Redis Cluster included):
//
//	KEYS[1] conns  sorted set: client ID -> lease expiry, Unix ms
//	KEYS[2] data   hash: "u:"..ID -> user, "i:"..ID -> info, "n:"..user -> the user's entries
//	KEYS[3] byuser sorted set, all scores 0: user.."\0"..ID, for paging in user order
//	KEYS[4] users  sorted set: user -> latest lease expiry of the user's entries, for counting
//	KEYS[5] left   sorted set: client ID -> expiry of the note that it left, so that a
//	               refresh racing a leave does not write the entry back
//
// Each key's time to live is raised to twice the lease on every write, so
// that a room whose every node died is forgotten.
const presenceLib = `
local conns, data, byuser, users, left = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local function keep(ttl)
  for _, k in ipairs(KEYS) do
    if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
  end
end
-- add records client id of user, its lease ending at exp; it returns
-- whether it is the user's first entry.
local function add(id, user, info, exp)
  redis.call('ZADD', conns, exp, id)
  redis.call('HSET', data, 'u:' .. id, user, 'i:' .. id, info)
  redis.call('ZADD', byuser, 0, user .. '\0' .. id)
  redis.call('ZADD', users, 'GT', exp, user)
  return redis.call('HINCRBY', data, 'n:' .. user, 1) == 1
end
-- drop removes the entry of client id, if any; it returns its user and
-- info and whether it was the user's last entry.
local function drop(id)
  if redis.call('ZREM', conns, id) == 0 then return nil end
  local user = redis.call('HGET', data, 'u:' .. id) or id
  local info = redis.call('HGET', data, 'i:' .. id) or ''
  redis.call('HDEL', data, 'u:' .. id, 'i:' .. id)
  redis.call('ZREM', byuser, user .. '\0' .. id)
  local last = redis.call('HINCRBY', data, 'n:' .. user, -1) <= 0
  if last then
    redis.call('HDEL', data, 'n:' .. user)
    redis.call('ZREM', users, user)
  end
  return user, info, last
end
`

// presenceJoinScript adds or renews entries. ARGV: 1 the lease's expiry
// (Unix ms), 2 the keys' time to live (ms), 3 the time now (Unix ms), 4
// "join" or "renew", then triples of ID, user and info. A join clears the
// client's leave note, and replaces the info of an entry that is there; a renewal writes back an entry that is gone (Redis
// lost it, or a sweep removed it while this node was cut off) unless the
// client left. It returns, per triple, 1 if the entry is its user's first.
var presenceJoinScript = redis.NewScript(presenceLib + `
local exp, ttl, now, renew = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4] == 'renew'
redis.call('ZREMRANGEBYSCORE', left, '-inf', now)
local out = {}
for i = 5, #ARGV, 3 do
  local id, user, info = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local first = 0
  if not renew then redis.call('ZREM', left, id) end
  if redis.call('ZSCORE', conns, id) then
    redis.call('ZADD', conns, exp, id)
    redis.call('ZADD', users, 'GT', exp, user)
    if not renew then redis.call('HSET', data, 'i:' .. id, info) end
  elseif not renew or redis.call('ZSCORE', left, id) == false then
    if add(id, user, info, exp) then first = 1 end
  end
  out[#out + 1] = first
end
keep(ttl)
return out
`)

// presenceLeaveScript removes the entries whose IDs are ARGV[3:], leaving a
// note that they left until ARGV[1] (Unix ms); ARGV[2] is the keys' time to
// live (ms). It returns, per ID, 1 if it was its user's last entry.
var presenceLeaveScript = redis.NewScript(presenceLib + `
local out = {}
for i = 3, #ARGV do
  redis.call('ZADD', left, ARGV[1], ARGV[i])
  local _, _, last = drop(ARGV[i])
  out[#out + 1] = last and 1 or 0
end
keep(tonumber(ARGV[2]))
return out
`)

// presenceSweepScript removes up to ARGV[2] entries whose lease ended by
// ARGV[1] (Unix ms) and returns, as ID, user, info triples, those that were
// their user's last.
var presenceSweepScript = redis.NewScript(presenceLib + `
local dead = redis.call('ZRANGEBYSCORE', conns, '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(dead) do
  local user, info, last = drop(id)
  if last then
    out[#out + 1] = id
    out[#out + 1] = user
    out[#out + 1] = info
  end
end
return out
`)

// presenceListScript returns the live entries of a room as ID, user, info
// triples; ARGV[1] is the time now (Unix ms).
var presenceListScript = redis.NewScript(presenceLib + `
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', conns, '(' .. ARGV[1], '+inf')) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', data, 'u:' .. id) or id
  out[#out + 1] = redis.call('HGET', data, 'i:' .. id) or ''
end
return out
`)

// presencePageScript returns up to ARGV[3] users with a live entry, in
// user order, after user ARGV[2] ("" for the first page), as ID, user,
// info triples, followed by 1 if more users follow, else 0; ARGV[1] is the
// time now (Unix ms). It reads the user index in batches.
var presencePageScript = redis.NewScript(presenceLib + `
local now, n = tonumber(ARGV[1]), tonumber(ARGV[3])
local from = '-'
if ARGV[2] ~= '' then from = '(' .. ARGV[2] .. '\1' end
local out, count, prev = {}, 0, nil
while true do
  local batch = redis.call('ZRANGE', byuser, from, '+', 'BYLEX', 'LIMIT', 0, 256)
  if #batch == 0 then break end
  for _, e in ipairs(batch) do
    local cut = string.find(e, '\0', 1, true)
    local user, id = string.sub(e, 1, cut - 1), string.sub(e, cut + 1)
    if user ~= prev then
      local exp = redis.call('ZSCORE', conns, id)
      if exp and tonumber(exp) > now then
        if count == n then
          out[#out + 1] = 1
          return out
        end
        count = count + 1
        prev = user
        out[#out + 1] = id
        out[#out + 1] = user
        out[#out + 1] = redis.call('HGET', data, 'i:' .. id) or ''
      end
    end
  end
  from = '(' .. batch[#batch]
end
out[#out + 1] = 0
return out
`)

// sweepBatch bounds the entries one Sweep removes.
const sweepBatch = 1000

// localMember is a member this Broker joined, which it renews.
type localMember struct{ user, info string }

// Join implements wsroom.Presence: it is JoinUser, with m's ID as its
// user when m.User is empty.
func (b *Broker) Join(ctx context.Context, room string, m wsroom.Member) error {
	_, err := b.JoinUser(ctx, room, m)
	return err
}

// JoinUser implements wsroom.UserPresence: it records m in room for every
// node to see, and counts it among its user's entries, in one script run
// and one round trip. The entry's lease ends after the presence TTL (see
// WithPresenceTTL) unless this Broker renews it, which it does every
// third of the TTL until LeaveUser or Close. If the script fails, the
// Broker keeps trying at each renewal. It returns ErrClosed after Close.
// An m.User of "" stands for m.ID.
func (b *Broker) JoinUser(ctx context.Context, room string, m wsroom.Member) (bool, error) {
	if b.err != nil {
		return false, b.err
	}
	user := cmp.Or(m.User, m.ID)
	b.presMu.Lock()
	if b.presClosed {
		b.presMu.Unlock()
		return false, ErrClosed
	}
	ms := b.present[room]
	if ms == nil {
		ms = make(map[string]localMember)
		b.present[room] = ms
	}
	ms[m.ID] = localMember{user, m.Info}
	b.presMu.Unlock()
	keys, args := b.joinArgs(room, "join", []string{m.ID, user, m.Info}, time.Now())
	res, err := presenceJoinScript.Run(ctx, b.client, keys, args...).Int64Slice()
	if err != nil {
		return false, fmt.Errorf("redisbroker: join %q to room %q: %w", m.ID, room, err)
	}
	return len(res) == 1 && res[0] == 1, nil
}

// Leave implements wsroom.Presence: it is LeaveUser.
func (b *Broker) Leave(ctx context.Context, room, id string) error {
	_, err := b.LeaveUser(ctx, room, id, "")
	return err
}

// LeaveUser implements wsroom.UserPresence: it removes the entry of the
// client id from room, in one script run and one round trip, and reports
// whether it was its user's last (the user is the one the entry was
// joined with; user is not needed). It works after Close too.
func (b *Broker) LeaveUser(ctx context.Context, room, id, user string) (bool, error) {
	if b.err != nil {
		return false, b.err
	}
	b.presMu.Lock()
	if ms := b.present[room]; ms != nil {
		delete(ms, id)
		if len(ms) == 0 {
			delete(b.present, room)
		}
	}
	b.presMu.Unlock()
	res, err := presenceLeaveScript.Run(ctx, b.client, b.presenceKeys(room), b.leaveArgs(time.Now(), id)...).Int64Slice()
	if err != nil {
		return false, fmt.Errorf("redisbroker: leave %q from room %q: %w", id, room, err)
	}
	return len(res) == 1 && res[0] == 1, nil
}

// Members implements wsroom.Presence: it returns the entries of room, one
// per client, joined through any Broker whose lease has not ended, in one
// script run and one round trip. It works after Close too.
func (b *Broker) Members(ctx context.Context, room string) ([]wsroom.Member, error) {
	if b.err != nil {
		return nil, b.err
	}
	res, err := presenceListScript.Run(ctx, b.client, b.presenceKeys(room), time.Now().UnixMilli()).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("redisbroker: members of room %q: %w", room, err)
	}
	out, err := triples(res)
	if err != nil {
		return nil, fmt.Errorf("redisbroker: members of room %q: %w", room, err)
	}
	return out, nil
}

// Count implements wsroom.UserPresence: it counts the users of room with
// an entry whose lease has not ended, with one ZCOUNT (O(log n)). A user
// whose live connection left while a lapsed one is not yet swept is
// counted until the end of the live one's lease, a TTL at most.
func (b *Broker) Count(ctx context.Context, room string) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.client.ZCount(ctx, b.presenceKeys(room)[3], fmt.Sprintf("(%d", time.Now().UnixMilli()), "+inf").Result()
	if err != nil {
		return 0, fmt.Errorf("redisbroker: count members of room %q: %w", room, err)
	}
	return int(n), nil
}

// MembersPage implements wsroom.UserPresence: one script run reads the
// room's user index from cursor on, in batches, until it has n users with
// a live entry. The cursor is the last user of the page.
func (b *Broker) MembersPage(ctx context.Context, room, cursor string, n int) ([]wsroom.Member, string, error) {
	if b.err != nil {
		return nil, "", b.err
	}
	n = max(n, 1)
	res, err := presencePageScript.Run(ctx, b.client, b.presenceKeys(room), time.Now().UnixMilli(), cursor, n).Slice()
	if err != nil {
		return nil, "", fmt.Errorf("redisbroker: members of room %q: %w", room, err)
	}
	if len(res) == 0 {
		return nil, "", fmt.Errorf("redisbroker: members of room %q: empty script reply", room)
	}
	strs := make([]string, 0, len(res)-1)
	for _, v := range res[:len(res)-1] {
		s, _ := v.(string)
		strs = append(strs, s)
	}
	page, err := triples(strs)
	if err != nil {
		return nil, "", fmt.Errorf("redisbroker: members of room %q: %w", room, err)
	}
	if more, _ := res[len(res)-1].(int64); more == 1 && len(page) > 0 {
		return page, page[len(page)-1].User, nil
	}
	return page, "", nil
}

// Sweep implements wsroom.UserPresence: one script run removes up to 1000
// entries of room whose lease ended and returns those that were their
// user's last. Sweeps of one room from many nodes are serialised by
// Redis, so each such user is returned once.
func (b *Broker) Sweep(ctx context.Context, room string) ([]wsroom.Member, error) {
	if b.err != nil {
		return nil, b.err
	}
	res, err := presenceSweepScript.Run(ctx, b.client, b.presenceKeys(room), time.Now().UnixMilli(), sweepBatch).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("redisbroker: sweep members of room %q: %w", room, err)
	}
	out, err := triples(res)
	if err != nil {
		return nil, fmt.Errorf("redisbroker: sweep members of room %q: %w", room, err)
	}
	return out, nil
}

// triples reads a script's ID, user, info triples.
func triples(res []string) ([]wsroom.Member, error) {
	if len(res)%3 != 0 {
		return nil, fmt.Errorf("unexpected script reply %v", res)
	}
	out := make([]wsroom.Member, 0, len(res)/3)
	for i := 0; i < len(res); i += 3 {
		out = append(out, wsroom.Member{ID: res[i], User: res[i+1], Info: res[i+2]})
	}
	return out, nil
}

// joinArgs returns the keys and arguments of presenceJoinScript for the
// ID, user and info triples of room, with leases that end one TTL after now.
func (b *Broker) joinArgs(room, mode string, triples []string, now time.Time) (keys []string, args []any) {
	ttl := b.cfg.presenceTTL
	args = make([]any, 0, 4+len(triples))
	args = append(args, now.Add(ttl).UnixMilli(), max(2*ttl.Milliseconds(), 1), now.UnixMilli(), mode)
	for _, p := range triples {
		args = append(args, p)
	}
	return b.presenceKeys(room), args
}

// leaveArgs returns the arguments of presenceLeaveScript for ids.
func (b *Broker) leaveArgs(now time.Time, ids ...string) []any {
	ttl := b.cfg.presenceTTL
	args := make([]any, 0, 2+len(ids))
	args = append(args, now.Add(ttl).UnixMilli(), max(2*ttl.Milliseconds(), 1))
	for _, id := range ids {
		args = append(args, id)
	}
	return args
}

// refreshLoop renews this node's presence entries every third of the TTL
// until Close, or until stopRenewing.
func (b *Broker) refreshLoop() {
	t := time.NewTicker(max(b.cfg.presenceTTL/3, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-b.done:
			return
		case <-b.presHalt:
			return
		case <-t.C:
			if err := b.refresh(); err != nil && !b.closed() {
				b.report(fmt.Errorf("redisbroker: refresh presence: %w", err))
			}
		}
	}
}

// refresh renews the leases of this node's presence entries one TTL ahead,
// writing back those that are gone unless their client left meanwhile, in
// one pipelined round trip.
func (b *Broker) refresh() error {
	b.presMu.Lock()
	snap := make(map[string][]string, len(b.present))
	for room, ms := range b.present {
		t := make([]string, 0, 3*len(ms))
		for id, m := range ms {
			t = append(t, id, m.user, m.info)
		}
		snap[room] = t
	}
	b.presMu.Unlock()
	if len(snap) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(b.ctx, max(b.cfg.presenceTTL/3, time.Second))
	defer cancel()
	now := time.Now()
	return b.pipelineScripts(ctx, presenceJoinScript, func(p redis.Pipeliner) {
		for room, t := range snap {
			keys, args := b.joinArgs(room, "renew", t, now)
			presenceJoinScript.EvalSha(ctx, p, keys, args...)
		}
	})
}

// stopRenewing stops the renewal of this node's entries and forgets them,
// without removing them from Redis: what a crash of the node leaves behind.
// Tests use it.
func (b *Broker) stopRenewing() {
	b.presMu.Lock()
	defer b.presMu.Unlock()
	select {
	case <-b.presHalt:
	default:
		close(b.presHalt)
	}
	clear(b.present)
}

// removePresence removes this node's presence entries from Redis, for
// Close; it bounds the work by the ping timeout. No leave is announced for
// them: a Room's clients leave, and announce it, before its Broker closes.
func (b *Broker) removePresence() error {
	b.presMu.Lock()
	b.presClosed = true
	gone := make(map[string][]string, len(b.present))
	for room, ms := range b.present {
		for id := range ms {
			gone[room] = append(gone[room], id)
		}
	}
	clear(b.present)
	b.presMu.Unlock()
	if len(gone) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.pingTimeout)
	defer cancel()
	now := time.Now()
	err := b.pipelineScripts(ctx, presenceLeaveScript, func(p redis.Pipeliner) {
		for room, ids := range gone {
			presenceLeaveScript.EvalSha(ctx, p, b.presenceKeys(room), b.leaveArgs(now, ids...)...)
		}
	})
	if err != nil {
		return fmt.Errorf("redisbroker: remove presence entries: %w", err)
	}
	return nil
}

// pipelineScripts sends the EVALSHA calls of script that queue adds to a
// pipeline, loading the script into Redis and trying again once if Redis
// does not have it.
func (b *Broker) pipelineScripts(ctx context.Context, script *redis.Script, queue func(redis.Pipeliner)) error {
	for try := 0; ; try++ {
		cmds, err := b.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			queue(p)
			return nil
		})
		if err == nil || try > 0 || !redis.HasErrorPrefix(firstErr(cmds), "NOSCRIPT") {
			return err
		}
		if err := script.Load(ctx, b.client).Err(); err != nil {
			return err
		}
	}
}

func firstErr(cmds []redis.Cmder) error {
	for _, c := range cmds {
		if err := c.Err(); err != nil {
			return err
		}
	}
	return nil
}

// presenceKeys returns the names of room's presence keys, in the order of
// the scripts' KEYS: conns, data, byuser, users, left. They share the
// room's hash tag.
func (b *Broker) presenceKeys(room string) []string {
	base := b.cfg.prefix + "{" + room + "}:members:"
	return []string{base + "conns", base + "data", base + "byuser", base + "users", base + "left"}
}
