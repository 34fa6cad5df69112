package redisbroker

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wsroom/wsroom"
)

// presenceJoinScript adds or refreshes members of a room, atomically.
//
// KEYS[1] is the room's presence sorted set (member: client ID, score: expiry
// in Unix milliseconds), KEYS[2] its info hash (field: client ID, value:
// Member.Info). ARGV: 1 the expiry in Unix milliseconds, 2 the keys' time to
// live in milliseconds, then pairs of ID and info. A key's time to live is
// only ever raised, so that it outlives every entry it holds.
var presenceJoinScript = redis.NewScript(`
local z, h = KEYS[1], KEYS[2]
local exp, ttl = ARGV[1], tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  redis.call('ZADD', z, exp, ARGV[i])
  redis.call('HSET', h, ARGV[i], ARGV[i + 1])
end
for _, k in ipairs(KEYS) do
  if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
end
return 0
`)

// presenceLeaveScript removes the members whose IDs are ARGV from a room;
// KEYS as for presenceJoinScript.
var presenceLeaveScript = redis.NewScript(`
for _, id in ipairs(ARGV) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
return 0
`)

// presenceListScript drops the entries of a room that expired at ARGV[1]
// (Unix milliseconds) and returns the others as ID, info, ID, info...; KEYS
// as for presenceJoinScript.
var presenceListScript = redis.NewScript(`
local z, h = KEYS[1], KEYS[2]
local dead = redis.call('ZRANGEBYSCORE', z, '-inf', ARGV[1])
if #dead > 0 then
  for _, id in ipairs(dead) do redis.call('HDEL', h, id) end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', ARGV[1])
end
local out = {}
for _, id in ipairs(redis.call('ZRANGE', z, 0, -1)) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', h, id) or ''
end
return out
`)

// Join implements wsroom.Presence: it records m in room for every node to
// see, with an entry that expires after the presence TTL (see
// WithPresenceTTL) unless this Broker refreshes it, which it does every
// third of the TTL until Leave or Close. Join costs one round trip. If it
// fails, the Broker keeps trying at each refresh. It returns ErrClosed after
// Close.
func (b *Broker) Join(ctx context.Context, room string, m wsroom.Member) error {
	if b.err != nil {
		return b.err
	}
	b.presMu.Lock()
	if b.presClosed {
		b.presMu.Unlock()
		return ErrClosed
	}
	ms := b.present[room]
	if ms == nil {
		ms = make(map[string]string)
		b.present[room] = ms
	}
	ms[m.ID] = m.Info
	b.presMu.Unlock()
	keys, args := b.joinArgs(room, []string{m.ID, m.Info}, time.Now())
	if err := presenceJoinScript.Run(ctx, b.client, keys, args...).Err(); err != nil {
		return fmt.Errorf("redisbroker: join %q to room %q: %w", m.ID, room, err)
	}
	return nil
}

// Leave implements wsroom.Presence: it removes the entry of the member whose
// ID is id from room, in one round trip. It works after Close too.
func (b *Broker) Leave(ctx context.Context, room, id string) error {
	if b.err != nil {
		return b.err
	}
	b.presMu.Lock()
	if ms := b.present[room]; ms != nil {
		delete(ms, id)
		if len(ms) == 0 {
			delete(b.present, room)
		}
	}
	b.presLeft++
	b.presMu.Unlock()
	z, h := b.presenceKeys(room)
	if err := presenceLeaveScript.Run(ctx, b.client, []string{z, h}, id).Err(); err != nil {
		return fmt.Errorf("redisbroker: leave %q from room %q: %w", id, room, err)
	}
	return nil
}

// Members implements wsroom.Presence: it returns the members of room joined
// through any Broker whose entries have not expired, after removing the
// expired ones, in one round trip and one script run. It works after Close
// too.
func (b *Broker) Members(ctx context.Context, room string) ([]wsroom.Member, error) {
	if b.err != nil {
		return nil, b.err
	}
	z, h := b.presenceKeys(room)
	res, err := presenceListScript.Run(ctx, b.client, []string{z, h}, time.Now().UnixMilli()).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("redisbroker: members of room %q: %w", room, err)
	}
	if len(res)%2 != 0 {
		return nil, fmt.Errorf("redisbroker: members of room %q: unexpected script reply %v", room, res)
	}
	out := make([]wsroom.Member, 0, len(res)/2)
	for i := 0; i < len(res); i += 2 {
		out = append(out, wsroom.Member{ID: res[i], Info: res[i+1]})
	}
	return out, nil
}

// joinArgs returns the keys and arguments of presenceJoinScript for the ID
// and info pairs of room, with entries that expire one TTL after now.
func (b *Broker) joinArgs(room string, pairs []string, now time.Time) (keys []string, args []any) {
	z, h := b.presenceKeys(room)
	ttl := b.cfg.presenceTTL
	args = make([]any, 0, 2+len(pairs))
	args = append(args, now.Add(ttl).UnixMilli(), max(ttl.Milliseconds(), 1))
	for _, p := range pairs {
		args = append(args, p)
	}
	return []string{z, h}, args
}

// refreshLoop refreshes this node's presence entries every third of the TTL
// until Close.
func (b *Broker) refreshLoop() {
	t := time.NewTicker(max(b.cfg.presenceTTL/3, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-b.done:
			return
		case <-t.C:
			if err := b.refresh(); err != nil && !b.closed() {
				b.report(fmt.Errorf("redisbroker: refresh presence: %w", err))
			}
		}
	}
}

// refresh pushes the expiry of this node's presence entries one TTL ahead,
// adding them again if they are gone, in one pipelined round trip.
func (b *Broker) refresh() error {
	b.presMu.Lock()
	snap := make(map[string][]string, len(b.present))
	for room, ms := range b.present {
		pairs := make([]string, 0, 2*len(ms))
		for id, info := range ms {
			pairs = append(pairs, id, info)
		}
		snap[room] = pairs
	}
	left := b.presLeft
	b.presMu.Unlock()
	if len(snap) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(b.ctx, max(b.cfg.presenceTTL/3, time.Second))
	defer cancel()
	now := time.Now()
	err := b.pipelineScripts(ctx, presenceJoinScript, func(p redis.Pipeliner) {
		for room, pairs := range snap {
			keys, args := b.joinArgs(room, pairs, now)
			presenceJoinScript.EvalSha(ctx, p, keys, args...)
		}
	})
	if err != nil {
		return err
	}
	// A member that left while the refresh was under way may have been
	// written back: remove it again.
	b.presMu.Lock()
	var gone map[string][]string
	if b.presLeft != left {
		gone = make(map[string][]string)
		for room, pairs := range snap {
			for i := 0; i < len(pairs); i += 2 {
				if _, ok := b.present[room][pairs[i]]; !ok {
					gone[room] = append(gone[room], pairs[i])
				}
			}
		}
	}
	b.presMu.Unlock()
	return b.removeMembers(ctx, gone)
}

// removePresence removes this node's presence entries from Redis, for
// Close; it bounds the work by the ping timeout.
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
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.pingTimeout)
	defer cancel()
	if err := b.removeMembers(ctx, gone); err != nil {
		return fmt.Errorf("redisbroker: remove presence entries: %w", err)
	}
	return nil
}

// removeMembers removes the members of each room of gone, by ID, in one
// pipelined round trip.
func (b *Broker) removeMembers(ctx context.Context, gone map[string][]string) error {
	if len(gone) == 0 {
		return nil
	}
	return b.pipelineScripts(ctx, presenceLeaveScript, func(p redis.Pipeliner) {
		for room, ids := range gone {
			z, h := b.presenceKeys(room)
			args := make([]any, len(ids))
			for i, id := range ids {
				args[i] = id
			}
			presenceLeaveScript.EvalSha(ctx, p, []string{z, h}, args...)
		}
	})
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

// presenceKeys returns the names of room's presence sorted set and info
// hash.
func (b *Broker) presenceKeys(room string) (set, info string) {
	base := b.cfg.prefix + "{" + room + "}:presence"
	return base, base + ":info"
}
