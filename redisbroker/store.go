package redisbroker

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wsroom/wsroom"
)

// appendScript numbers, stores and (when ARGV[1] names a channel) publishes
// one message of a room, atomically.
//
// KEYS[1] is the room's meta hash (fields epoch and seq), KEYS[2] its stream.
// ARGV: 1 channel or "", 2 epoch to use if the room has none, 3 the encoded
// message without Seq and Epoch, 4 its time in Unix milliseconds, 5 the
// history limit, 6 the expiry cut-off in Unix milliseconds or 0, 7 the keys'
// time to live in milliseconds or 0.
//
// The published payload is "<seq> <epoch> <body>"; see decodePayload.
var appendScript = redis.NewScript(`
local meta, log = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
local seq
if not epoch then
  -- A new history: drop entries a lost meta hash may have left behind.
  epoch = ARGV[2]
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'seq', 1)
  seq = 1
else
  seq = redis.call('HINCRBY', meta, 'seq', 1)
end

local function time_of(entry)
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == 't' then return tonumber(f[i + 1]) end
  end
  return 0
end

local cut = tonumber(ARGV[6])
if cut > 0 then
  -- Trim expired entries from the front; usually one look at the oldest.
  local n = 1
  while true do
    local es = redis.call('XRANGE', log, '-', '+', 'COUNT', n)
    local keep, expired = nil, nil
    for _, e in ipairs(es) do
      if time_of(e) >= cut then keep = e[1] break end
      expired = e[1]
    end
    if keep then
      if expired then redis.call('XTRIM', log, 'MINID', keep) end
      break
    end
    if not expired then break end
    local next_id = string.sub(expired, 1, -3) .. '-1'
    redis.call('XTRIM', log, 'MINID', next_id)
    if #es < n then break end
    n = 100
  end
end

redis.call('XADD', log, 'MAXLEN', ARGV[5], string.format('%d-0', seq), 't', ARGV[4], 'm', ARGV[3])
local ttl = tonumber(ARGV[7])
if ttl > 0 then
  redis.call('PEXPIRE', meta, ttl)
  redis.call('PEXPIRE', log, ttl)
end
if ARGV[1] ~= '' then
  redis.call('PUBLISH', ARGV[1], string.format('%d ', seq) .. epoch .. ' ' .. ARGV[3])
end
return {seq, epoch}
`)

// Append implements wsroom.Store: it numbers m and stores it in room's
// history in one atomic step, without sending it to subscribers (Publish
// does both). m.Time is set to the current time if zero and is kept to the
// millisecond.
func (b *Broker) Append(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	m, err := b.append(ctx, room, m, "")
	if err != nil {
		return wsroom.Message{}, fmt.Errorf("redisbroker: append to room %q: %w", room, err)
	}
	return m, nil
}

// append runs appendScript for m, publishing on channel unless it is empty.
func (b *Broker) append(ctx context.Context, room string, m wsroom.Message, channel string) (wsroom.Message, error) {
	m.Seq, m.Epoch, m.Ephemeral, m.Except = 0, "", false, ""
	if m.Time.IsZero() {
		m.Time = time.Now()
	}
	m.Time = time.UnixMilli(m.Time.UnixMilli())
	body, err := m.MarshalBinary()
	if err != nil {
		return wsroom.Message{}, err
	}
	now := time.Now()
	var cut, ttl int64
	if b.cfg.maxAge > 0 {
		cut = max(now.Add(-b.cfg.maxAge).UnixMilli(), 1)
		ttl = max(b.cfg.maxAge.Milliseconds(), 1)
	}
	meta, log := b.keys(room)
	res, err := appendScript.Run(ctx, b.client, []string{meta, log},
		channel, newEpoch(), body, m.Time.UnixMilli(), b.cfg.limit, cut, ttl).Slice()
	if err != nil {
		return wsroom.Message{}, err
	}
	if len(res) != 2 {
		return wsroom.Message{}, fmt.Errorf("unexpected script reply %v", res)
	}
	seq, ok1 := res[0].(int64)
	epoch, ok2 := res[1].(string)
	if !ok1 || !ok2 || seq < 1 {
		return wsroom.Message{}, fmt.Errorf("unexpected script reply %v", res)
	}
	m.Seq, m.Epoch = uint64(seq), epoch
	return m, nil
}

// historyPage is the most entries one XRANGE of After asks Redis for: a
// longer read goes page by page, so that no one reply is unbounded.
const historyPage = 1000

// After implements wsroom.Store. Messages are read from the room's stream;
// the position's epoch and the room's current one are compared in the same
// transaction as the first read. After reads at most historyPage (1,000)
// entries per Redis command: a longer answer, as with limit <= 0 and a long
// history, is read page by page, up to the room's last message when After
// began. Each further page is read with the room's epoch, in one
// transaction; if the history moved to a new epoch or lost entries the
// answer needs (trimmed by the messages published meanwhile) between two
// pages, After returns ErrGap, as for a position the history no longer
// covers.
func (b *Broker) After(ctx context.Context, room, epoch string, seq uint64, limit int) ([]wsroom.Message, error) {
	if seq == math.MaxUint64 {
		return nil, wsroom.ErrGap
	}
	if err := b.acquireRead(ctx); err != nil {
		return nil, fmt.Errorf("redisbroker: read history of room %q: %w", room, err)
	}
	defer b.releaseRead()
	meta, log := b.keys(room)
	var metaCmd *redis.SliceCmd
	var rangeCmd *redis.XMessageSliceCmd
	_, err := b.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		metaCmd = p.HMGet(ctx, meta, "epoch", "seq")
		rangeCmd = p.XRangeN(ctx, log, entryID(seq+1), "+", pageSize(limit, 0))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redisbroker: read history of room %q: %w", room, err)
	}
	cur, last, err := parseMeta(metaCmd.Val())
	if err != nil {
		return nil, fmt.Errorf("redisbroker: read history of room %q: %w", room, err)
	}
	if cur == "" {
		if epoch == "" && seq == 0 {
			return nil, nil
		}
		return nil, wsroom.ErrGap
	}
	if epoch == "" && seq == 0 {
		epoch = cur
	}
	if epoch != cur || seq > last {
		return nil, wsroom.ErrGap
	}
	if seq == last {
		return nil, nil
	}
	out, err := b.decodeEntries(rangeCmd.Val(), cur)
	if err != nil {
		return nil, fmt.Errorf("redisbroker: read history of room %q: %w", room, err)
	}
	// The history must hold seq+1 onwards without a hole, and seq+1 must
	// not have expired.
	if len(out) == 0 || out[0].Seq != seq+1 || b.expired(out[0], time.Now()) {
		return nil, wsroom.ErrGap
	}
	full := len(rangeCmd.Val()) == historyPage
	for full && (limit <= 0 || len(out) < limit) && out[len(out)-1].Seq < last {
		next := out[len(out)-1].Seq + 1
		var epochCmd *redis.StringCmd
		_, err := b.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
			epochCmd = p.HGet(ctx, meta, "epoch")
			rangeCmd = p.XRangeN(ctx, log, entryID(next), entryID(last), pageSize(limit, len(out)))
			return nil
		})
		if errors.Is(err, redis.Nil) {
			return nil, wsroom.ErrGap // the room's keys expired meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("redisbroker: read history of room %q: %w", room, err)
		}
		if epochCmd.Val() != cur {
			return nil, wsroom.ErrGap
		}
		page, err := b.decodeEntries(rangeCmd.Val(), cur)
		if err != nil {
			return nil, fmt.Errorf("redisbroker: read history of room %q: %w", room, err)
		}
		if len(page) == 0 || page[0].Seq != next {
			return nil, wsroom.ErrGap
		}
		out = append(out, page...)
		full = len(page) == historyPage
	}
	for i, m := range out {
		if m.Seq != seq+1+uint64(i) {
			return nil, wsroom.ErrGap
		}
	}
	return out, nil
}

// pageSize is how many entries After asks for next when it has n of the
// limit.
func pageSize(limit, n int) int64 {
	if limit <= 0 {
		return historyPage
	}
	return int64(min(limit-n, historyPage))
}

// entryID returns the ID of the stream entry of sequence number seq.
func entryID(seq uint64) string {
	return strconv.FormatUint(seq, 10) + "-0"
}

// Last implements wsroom.Store.
func (b *Broker) Last(ctx context.Context, room string, n int) ([]wsroom.Message, error) {
	if n <= 0 {
		return nil, ctx.Err()
	}
	if err := b.acquireRead(ctx); err != nil {
		return nil, fmt.Errorf("redisbroker: read history of room %q: %w", room, err)
	}
	defer b.releaseRead()
	meta, log := b.keys(room)
	var epochCmd *redis.StringCmd
	var rangeCmd *redis.XMessageSliceCmd
	_, err := b.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		epochCmd = p.HGet(ctx, meta, "epoch")
		rangeCmd = p.XRevRangeN(ctx, log, "+", "-", int64(n))
		return nil
	})
	if errors.Is(err, redis.Nil) {
		return nil, nil // no epoch: no history
	}
	if err != nil {
		return nil, fmt.Errorf("redisbroker: read history of room %q: %w", room, err)
	}
	entries := rangeCmd.Val()
	slices.Reverse(entries)
	out, err := b.decodeEntries(entries, epochCmd.Val())
	if err != nil {
		return nil, fmt.Errorf("redisbroker: read history of room %q: %w", room, err)
	}
	now := time.Now()
	i := 0
	for i < len(out) && b.expired(out[i], now) {
		i++
	}
	if i == len(out) {
		return nil, nil
	}
	return out[i:], nil
}

// acquireRead takes a slot of the history reads under way, waiting while
// WithReadConcurrency of them are, until ctx ends.
func (b *Broker) acquireRead(ctx context.Context) error {
	select {
	case b.reads <- struct{}{}:
		return nil
	default:
	}
	select {
	case b.reads <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// releaseRead gives back the slot acquireRead took.
func (b *Broker) releaseRead() { <-b.reads }

// expired reports whether m is older than the maximum age at now.
func (b *Broker) expired(m wsroom.Message, now time.Time) bool {
	return b.cfg.maxAge > 0 && m.Time.UnixMilli() < now.Add(-b.cfg.maxAge).UnixMilli()
}

// parseMeta reads the reply of HMGET meta epoch seq. An empty epoch means
// the room has no history.
func parseMeta(v []any) (epoch string, seq uint64, err error) {
	if len(v) != 2 || v[0] == nil {
		return "", 0, nil
	}
	epoch, ok := v[0].(string)
	s, ok2 := v[1].(string)
	if !ok || !ok2 || epoch == "" {
		return "", 0, fmt.Errorf("malformed room metadata %v", v)
	}
	seq, err = strconv.ParseUint(s, 10, 64)
	if err != nil {
		return "", 0, fmt.Errorf("malformed room metadata %v", v)
	}
	return epoch, seq, nil
}

// decodeEntries turns stream entries into messages of epoch.
func (b *Broker) decodeEntries(entries []redis.XMessage, epoch string) ([]wsroom.Message, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	out := make([]wsroom.Message, 0, len(entries))
	for _, e := range entries {
		seqStr, ok := strings.CutSuffix(e.ID, "-0")
		seq, err := strconv.ParseUint(seqStr, 10, 64)
		body, ok2 := e.Values["m"].(string)
		if !ok || err != nil || !ok2 {
			return nil, fmt.Errorf("malformed history entry %q", e.ID)
		}
		var m wsroom.Message
		if err := m.UnmarshalBinary([]byte(body)); err != nil {
			return nil, fmt.Errorf("history entry %q: %w", e.ID, err)
		}
		m.Seq, m.Epoch = seq, epoch
		out = append(out, m)
	}
	return out, nil
}

// keys returns the names of room's meta hash and stream.
func (b *Broker) keys(room string) (meta, log string) {
	base := b.cfg.prefix + "{" + room + "}:"
	return base + "meta", base + "log"
}

// channel returns the name of room's pub/sub channel.
func (b *Broker) channel(room string) string {
	return b.cfg.prefix + "{" + room + "}"
}

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// newEpoch returns a random 16-character epoch.
func newEpoch() string {
	var b [10]byte
	rand.Read(b[:])
	return idEncoding.EncodeToString(b[:])
}

// decodePayload decodes a message published on a room's channel:
// "<seq> <epoch> <body>", where body is the message's binary form without
// Seq and Epoch.
func decodePayload(payload string) (wsroom.Message, error) {
	seqStr, rest, ok := strings.Cut(payload, " ")
	epoch, body, ok2 := strings.Cut(rest, " ")
	seq, err := strconv.ParseUint(seqStr, 10, 64)
	if !ok || !ok2 || err != nil {
		return wsroom.Message{}, errors.New("malformed message header")
	}
	var m wsroom.Message
	if err := m.UnmarshalBinary([]byte(body)); err != nil {
		return wsroom.Message{}, err
	}
	m.Seq, m.Epoch = seq, epoch
	return m, nil
}
