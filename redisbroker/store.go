package redisbroker

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
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
// KEYS[1] is the room's meta hash (fields epoch, seq, and pub: see
// publishScript), KEYS[2] its stream, and KEYS[3], if given, the key of a
// publish de-duplicated by PublishOnce. ARGV: 1 channel or "", 2 epoch to
// use if the room has none, 3 the encoded message without Seq and Epoch, 4
// its time in Unix milliseconds, 5 the history limit, 6 the expiry cut-off
// in Unix milliseconds or 0, 7 the keys' time to live in milliseconds or 0,
// 8 the publish command (PUBLISH, or SPUBLISH for sharded pub/sub), 9 the
// de-duplication window in milliseconds.
//
// It returns {seq, epoch, dup}: dup is 1 when KEYS[3] held the position of
// an earlier publish, returned instead, and nothing was stored or sent.
//
// The published payload is "<seq> <epoch> <body>"; see decodePayload.
var appendScript = redis.NewScript(`
local meta, log, once = KEYS[1], KEYS[2], KEYS[3]
if once then
  local v = redis.call('GET', once)
  if v then
    local sp = string.find(v, ' ', 1, true)
    return {tonumber(string.sub(v, 1, sp - 1)), string.sub(v, sp + 1), 1}
  end
end
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
if once then
  redis.call('SET', once, string.format('%d ', seq) .. epoch, 'PX', ARGV[9])
end
if ARGV[1] ~= '' then
  redis.call(ARGV[8], ARGV[1], string.format('%d ', seq) .. epoch .. ' ' .. ARGV[3])
end
return {seq, epoch, 0}
`)

// publishScript publishes, with WithReplicaAcks, the stored messages of a
// room up to one that its replicas acknowledged: those numbered after the
// meta hash's field pub (the last one published), up to ARGV[2], at most
// maxCatchUp of them (the latest), in order; it then sets pub. A replica
// that acknowledged a write has every earlier write of its master too, so
// every message it publishes is on the replicas.
//
// KEYS[1] is the room's meta hash, KEYS[2] its stream. ARGV: 1 channel, 2
// the sequence number acknowledged, 3 the publish command, 4 the epoch the
// number belongs to. It returns how many messages it published.
var publishScript = redis.NewScript(`
local meta, log = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if epoch ~= ARGV[4] then return 0 end
local upto = tonumber(ARGV[2])
local done = tonumber(redis.call('HGET', meta, 'pub') or '0')
if upto <= done then return 0 end
local from = math.max(done + 1, upto - ` + strconv.Itoa(maxCatchUp-1) + `)
local es = redis.call('XRANGE', log, from .. '-0', upto .. '-0')
for _, e in ipairs(es) do
  local f, body = e[2], nil
  for i = 1, #f, 2 do
    if f[i] == 'm' then body = f[i + 1] end
  end
  if body then
    redis.call(ARGV[3], ARGV[1], string.sub(e[1], 1, -3) .. ' ' .. epoch .. ' ' .. body)
  end
end
redis.call('HSET', meta, 'pub', upto)
return #es
`)

// maxCatchUp bounds the messages one publishScript run sends: those it
// skips (a room that was stored without WithReplicaAcks, say) reach the
// subscribers as a gap, which they fill from the history.
const maxCatchUp = 100

// resetScript gives a room a new epoch if it still has epoch ARGV[1]: see
// checkHistory. KEYS[1] is the room's meta hash; ARGV[2] is the new epoch.
// The sequence numbers go on from the history's last one; pub is set to it.
var resetScript = redis.NewScript(`
local meta = KEYS[1]
if redis.call('HGET', meta, 'epoch') ~= ARGV[1] then return 0 end
redis.call('HSET', meta, 'epoch', ARGV[2], 'pub', redis.call('HGET', meta, 'seq'))
return 1
`)

// Append implements wsroom.Store: it numbers m and stores it in room's
// history in one atomic step, without sending it to subscribers (Publish
// does both). m.Time is set to the current time if zero and is kept to the
// millisecond.
func (b *Broker) Append(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	m, _, err := b.append(ctx, room, m, "", "")
	if err != nil {
		return wsroom.Message{}, fmt.Errorf("redisbroker: append to room %q: %w", room, err)
	}
	return m, nil
}

// append runs appendScript for m, publishing on channel unless it is empty,
// de-duplicated by key unless it is empty. With WithReplicaAcks, the
// script stores m without publishing it, WAIT follows on the same
// connection (a round trip of its own, so that go-redis bounds its read by
// the WAIT timeout rather than the client's read timeout), and
// publishScript sends m once enough replicas have it.
func (b *Broker) append(ctx context.Context, room string, m wsroom.Message, channel, key string) (wsroom.Message, bool, error) {
	m.Seq, m.Epoch, m.Ephemeral, m.Except = 0, "", false, ""
	if m.Time.IsZero() {
		m.Time = time.Now()
	}
	m.Time = time.UnixMilli(m.Time.UnixMilli())
	body, err := m.MarshalBinary()
	if err != nil {
		return wsroom.Message{}, false, err
	}
	now := time.Now()
	var cut, ttl int64
	if b.cfg.maxAge > 0 {
		cut = max(now.Add(-b.cfg.maxAge).UnixMilli(), 1)
		ttl = max(b.cfg.maxAge.Milliseconds(), 1)
	}
	meta, log := b.keys(room)
	keys := []string{meta, log}
	if key != "" {
		keys = append(keys, b.onceKey(room, key))
	}
	pubCmd := "PUBLISH"
	if b.sharded {
		pubCmd = "SPUBLISH"
	}
	scriptChannel := channel
	if b.cfg.replicas > 0 {
		scriptChannel = ""
	}
	args := []any{scriptChannel, newEpoch(), body, m.Time.UnixMilli(), b.cfg.limit, cut, ttl, pubCmd, max(b.cfg.dedupWindow.Milliseconds(), 1)}
	var res []any
	if b.cfg.replicas > 0 {
		res, err = b.appendReplicated(ctx, meta, keys, args)
	} else {
		res, err = appendScript.Run(ctx, b.client, keys, args...).Slice()
	}
	if err != nil {
		if b.cluster != nil && !isRedisError(err) {
			// A master may have failed over: go-redis reads the slot map
			// again on a MOVED reply, or when told.
			b.cluster.ReloadState(ctx)
		}
		return wsroom.Message{}, false, err
	}
	if len(res) != 3 {
		return wsroom.Message{}, false, fmt.Errorf("unexpected script reply %v", res)
	}
	seq, ok1 := res[0].(int64)
	epoch, ok2 := res[1].(string)
	dup, ok3 := res[2].(int64)
	if !ok1 || !ok2 || !ok3 || seq < 1 {
		return wsroom.Message{}, false, fmt.Errorf("unexpected script reply %v", res)
	}
	m.Seq, m.Epoch = uint64(seq), epoch
	if b.cfg.replicas > 0 && channel != "" && dup == 0 {
		// The message is stored and on the replicas: the publish succeeds
		// even if sending it fails, or outlives ctx (the wait for the
		// replicas may have), since the room's next message sends it.
		pctx, cancel := context.WithTimeout(b.ctx, callTimeout)
		err := publishScript.Run(pctx, b.client, []string{meta, log}, channel, seq, pubCmd, epoch).Err()
		cancel()
		if err != nil && !b.closed() {
			b.report(fmt.Errorf("redisbroker: room %q: message %d stored, not sent yet (the next one sends it): %w", room, seq, err))
		}
	}
	return m, dup == 1, nil
}

// ErrNotReplicated is returned, wrapped, by a publish with WithReplicaAcks
// when fewer replicas than asked acknowledged the message within the
// timeout. The message is stored on the master, and is sent to
// subscribers once a later message of the room is acknowledged, unless a
// failover loses it first.
var ErrNotReplicated = errors.New("redisbroker: message not acknowledged by enough replicas")

// checkScript tells whether a room's history holds, in epoch ARGV[2] and
// at number ARGV[1], the message whose body is ARGV[3]; if so, it writes
// the number in the meta hash's field chk, so that a WAIT that follows on
// the same connection covers the message. KEYS[1] is the room's meta
// hash, KEYS[2] its stream. It returns 1 if the message is there, else 0.
var checkScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] then return 0 end
local es = redis.call('XRANGE', KEYS[2], ARGV[1] .. '-0', ARGV[1] .. '-0')
if #es ~= 1 then return 0 end
local f = es[1][2]
for i = 1, #f, 2 do
  if f[i] == 'm' and f[i + 1] == ARGV[3] then
    redis.call('HSET', KEYS[1], 'chk', ARGV[1])
    return 1
  end
end
return 0
`)

// errLostAtFailover is returned, wrapped, by a publish with WithReplicaAcks
// whose message the room's master stored but lost at a failover before
// its replicas had it: it is in no history, and a retry stores it once.
var errLostAtFailover = errors.New("message lost at a failover before its replicas had it")

// appendReplicated runs appendScript and then WAIT on one connection to
// the master of the room's slot, and returns the script's reply once the
// replicas acknowledged it.
//
// When WAIT fails or counts too few replicas (a master that died or
// stopped, a slow or missing replica), the message may still be on a
// replica, which a failover promotes: then a client that retried would
// store it twice. So appendReplicated looks for it on the slot's master,
// the new one after a failover, until ctx ends: if the master's history
// holds it, a write and a WAIT on that master tell when its replicas have
// it, and the publish succeeds; if not, it was lost, and the publish fails
// with an error that says so, which a retry can follow safely. Once the
// script has stored the message, it waits so past ctx's end, for up to
// ten replica timeouts, or until Close.
func (b *Broker) appendReplicated(ctx context.Context, meta string, keys []string, args []any) ([]any, error) {
	conn, err := b.masterConn(ctx, meta, "")
	if err != nil {
		return nil, err
	}
	// WAIT counts the replicas that have every write of its own
	// connection: the script and WAIT need one.
	res, err := appendScript.EvalSha(ctx, conn, keys, args...).Slice()
	if redis.HasErrorPrefix(err, "NOSCRIPT") {
		res, err = appendScript.Eval(ctx, conn, keys, args...).Slice()
	}
	if err != nil {
		conn.Close()
		if b.cluster != nil && (!isRedisError(err) || redis.HasErrorPrefix(err, "MOVED")) {
			// A failover or a moved slot, maybe: read the slot map again
			// for the next publish.
			lctx, cancel := context.WithTimeout(b.ctx, callTimeout)
			if b.loadSlots(lctx) != nil {
				b.slotsMu.Lock()
				b.slots = nil // read at the next publish
				b.slotsMu.Unlock()
			}
			cancel()
		}
		return nil, err
	}
	// The message is stored: from here on, the publish waits for its fate
	// (on the replicas, or lost at a failover) past ctx's end, up to ten
	// timeouts, or until Close. Giving up earlier would leave a stored
	// message behind an error, which a retry would store a second time.
	ctx, cancel := context.WithTimeout(b.ctx, 10*b.cfg.replicaTimeout)
	defer cancel()
	n, err := conn.Wait(ctx, b.cfg.replicas, b.cfg.replicaTimeout).Result()
	conn.Close()
	if err == nil && n >= int64(b.cfg.replicas) {
		return res, nil
	}
	if len(res) != 3 || res[2] != int64(0) {
		return res, nil // a duplicate: nothing written
	}
	first := err
	if first == nil {
		first = fmt.Errorf("%w: %d of %d within %v", ErrNotReplicated, n, b.cfg.replicas, b.cfg.replicaTimeout)
	}
	seq, epoch, body := res[0], res[1], args[2]
	for backoff := minBackoff; ; backoff = min(2*backoff, maxBackoff) {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("stored as %v, replication unknown: %w", seq, first)
		}
		found, n, err := b.checkReplicated(ctx, keys, seq, epoch, body)
		switch {
		case err == nil && !found:
			return nil, fmt.Errorf("%w (stored as %v)", errLostAtFailover, seq)
		case err == nil && n >= int64(b.cfg.replicas):
			return res, nil
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
		}
	}
}

// checkReplicated looks for a stored message on the current master of its
// room's slot (checkScript), and if it is there, WAITs for the replicas
// on the same connection.
func (b *Broker) checkReplicated(ctx context.Context, keys []string, seq, epoch, body any) (found bool, n int64, err error) {
	var addr string
	if b.cluster != nil {
		lctx, cancel := context.WithTimeout(ctx, callTimeout)
		err := b.loadSlots(lctx)
		cancel()
		if err != nil {
			return false, 0, err
		}
		addr = b.ownerKnown(keys[0])
	}
	conn, err := b.masterConn(ctx, keys[0], addr)
	if err != nil {
		return false, 0, err
	}
	defer conn.Close()
	ok, err := checkScript.Run(ctx, conn, keys[:2], seq, epoch, body).Int()
	if err != nil || ok == 0 {
		return false, 0, err
	}
	n, err = conn.Wait(ctx, b.cfg.replicas, b.cfg.replicaTimeout).Result()
	return true, n, err
}

// masterConn returns a connection to the master of key's slot (the one at
// addr, if not empty), or off a cluster to Redis, for commands that must
// share one; the caller closes it.
func (b *Broker) masterConn(ctx context.Context, key, addr string) (*redis.Conn, error) {
	if b.cluster == nil {
		if _, ok := b.client.(*redis.Client); !ok {
			return nil, fmt.Errorf("WithReplicaAcks needs a *redis.Client or a *redis.ClusterClient, not %T", b.client)
		}
	} else if addr == "" {
		var err error
		if addr, err = b.owner(ctx, key); err != nil {
			return nil, err
		}
	}
	return b.nodeClient(addr).Conn(), nil
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

// onceKey returns the name of the key that remembers, for PublishOnce, the
// publish of room that key identifies.
func (b *Broker) onceKey(room, key string) string {
	h := sha256.Sum256([]byte(key))
	return b.cfg.prefix + "{" + room + "}:once:" + hex.EncodeToString(h[:16])
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
// Seq and Epoch. It returns body too.
func decodePayload(payload string) (wsroom.Message, string, error) {
	seqStr, rest, ok := strings.Cut(payload, " ")
	epoch, body, ok2 := strings.Cut(rest, " ")
	seq, err := strconv.ParseUint(seqStr, 10, 64)
	if !ok || !ok2 || err != nil {
		return wsroom.Message{}, "", errors.New("malformed message header")
	}
	var m wsroom.Message
	if err := m.UnmarshalBinary([]byte(body)); err != nil {
		return wsroom.Message{}, "", err
	}
	m.Seq, m.Epoch = seq, epoch
	return m, body, nil
}

// checkHistory is called by a room's goroutine before it tells the room's
// subscriptions that they may have missed messages: it checks that the
// room's history still holds, at its number, the last message the
// goroutine delivered. After a failover it may not: the promoted replica
// had not received the last writes of the old master, and the room's next
// messages would use their numbers again, for other messages. The
// subscribers would take those for messages they have seen, and differ
// from every client that had not. So when the history went back like
// that, checkHistory gives the room a new epoch (resetScript): every
// client resumes with wsroom.ErrGap, and starts again from the history as
// it is. A history trimmed past the message, or already in another epoch,
// needs nothing.
//
// It reports whether it gave the room a new epoch.
func (b *Broker) checkHistory(t *topic) bool {
	if t.last.Seq == 0 || b.closed() {
		return false
	}
	ctx, cancel := context.WithTimeout(b.ctx, callTimeout)
	defer cancel()
	meta, log := b.keys(t.room)
	var metaCmd *redis.SliceCmd
	var atCmd, firstCmd *redis.XMessageSliceCmd
	_, err := b.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		metaCmd = p.HMGet(ctx, meta, "epoch", "seq")
		atCmd = p.XRange(ctx, log, entryID(t.last.Seq), entryID(t.last.Seq))
		firstCmd = p.XRangeN(ctx, log, "-", "+", 1)
		return nil
	})
	if err != nil {
		if !b.closed() {
			b.report(fmt.Errorf("redisbroker: check the history of room %q: %w", t.room, err))
		}
		return false
	}
	cur, last, err := parseMeta(metaCmd.Val())
	if err != nil || cur != t.last.Epoch {
		return false // a new epoch already (or none): the subscribers resume from scratch
	}
	if at := atCmd.Val(); len(at) == 1 && at[0].Values["m"] == t.lastBody {
		return false // still there
	}
	if first := firstCmd.Val(); len(atCmd.Val()) == 0 && last >= t.last.Seq && len(first) == 1 && idSeq(first[0].ID) > t.last.Seq {
		return false // trimmed
	}
	epoch := newEpoch()
	if err := resetScript.Run(ctx, b.client, []string{meta}, cur, epoch).Err(); err != nil {
		b.report(fmt.Errorf("redisbroker: history of room %q went back to %d from %d delivered; new epoch: %w", t.room, last, t.last.Seq, err))
		return false
	}
	b.report(fmt.Errorf("redisbroker: history of room %q went back to %d from %d delivered (a failover?): new epoch %s", t.room, last, t.last.Seq, epoch))
	return true
}

// idSeq returns the sequence number of a stream entry ID, or 0.
func idSeq(id string) uint64 {
	s, _ := strings.CutSuffix(id, "-0")
	n, _ := strconv.ParseUint(s, 10, 64)
	return n
}
