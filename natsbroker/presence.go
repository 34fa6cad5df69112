package natsbroker

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/wsroom/wsroom"
)

// DefaultPresenceTTL is how long a node's presence entries outlive its last
// refresh when WithPresenceTTL is not given.
const DefaultPresenceTTL = 30 * time.Second

// MinPresenceTTL is the shortest presence TTL WithPresenceTTL accepts.
const MinPresenceTTL = time.Second

// presenceWorkers bounds how many presence entries a refresh writes at once.
const presenceWorkers = 16

// closeTimeout bounds the removal of a node's presence entries by Close.
const closeTimeout = 2 * time.Second

// presence is the state of a Broker's presence entries: the key-value bucket
// shared by every node, and this node's own entries, which it refreshes.
type presence struct {
	ttl      time.Duration
	node     string // this node's identifier, the middle token of its keys
	bucket   string
	replicas int // the bucket's replicas (WithReplicas)

	kvMu   sync.Mutex
	kv     jetstream.KeyValue // nil until first used
	stream jetstream.Stream   // the bucket's stream, set with kv

	refreshMu sync.Mutex // held by refresh

	mu         sync.Mutex
	local      map[string]string // key -> info of this node's members
	refreshing bool              // a refresh is writing entries
	left       []string          // keys removed from local during a refresh
	used       bool              // Join was called: Close removes the entries

	kick   chan struct{} // asks the refresher to refresh now
	ctx    context.Context
	cancel context.CancelFunc // called by Close
	done   chan struct{}      // closed when the refresher has ended
}

var _ wsroom.Presence = (*Broker)(nil)

func newPresence(prefix string, ttl time.Duration) *presence {
	ctx, cancel := context.WithCancel(context.Background())
	return &presence{
		ttl:    ttl,
		node:   newID(),
		bucket: presenceBucket(prefix),
		local:  make(map[string]string),
		kick:   make(chan struct{}, 1),
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
	}
}

// presenceBucket names the presence bucket of a prefix: the stream name
// followed by "_PRESENCE", with every character a bucket name cannot hold
// replaced by '_'.
func presenceBucket(prefix string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, streamName(prefix)+"_PRESENCE")
}

// presenceKey is the key of a member's entry: the room, the node and the
// client, each one key token.
func presenceKey(room, node, id string) string {
	return roomToken(room) + "." + node + "." + clientToken(id)
}

func clientToken(id string) string {
	return "c" + base64.RawURLEncoding.EncodeToString([]byte(id))
}

// memberID decodes the client ID from a presence key.
func memberID(key string) (string, bool) {
	i := strings.LastIndexByte(key, '.')
	if i < 0 || !strings.HasPrefix(key[i+1:], "c") {
		return "", false
	}
	id, err := base64.RawURLEncoding.DecodeString(key[i+2:])
	if err != nil {
		return "", false
	}
	return string(id), true
}

// presenceKV returns the presence bucket and its stream, creating it, or
// updating its TTL if it differs, on first use and on the first use after
// dropKV. Nodes that start together race to create it; those that lose use
// the bucket of the one that won.
func (b *Broker) presenceKV(ctx context.Context) (jetstream.KeyValue, jetstream.Stream, error) {
	p := b.pres
	p.kvMu.Lock()
	defer p.kvMu.Unlock()
	if p.kv != nil {
		return p.kv, p.stream, nil
	}
	cfg := jetstream.KeyValueConfig{
		Bucket:      p.bucket,
		Description: "wsroom presence",
		History:     1,
		TTL:         p.ttl,
		Storage:     jetstream.FileStorage,
		Replicas:    p.replicas,
	}
	stream, err := ensureStream(ctx, b.js, "KV_"+p.bucket,
		func(c jetstream.StreamConfig) bool {
			return c.MaxAge == cfg.TTL && c.MaxMsgsPerSubject == int64(cfg.History) && c.Description == cfg.Description &&
				c.Replicas == max(cfg.Replicas, 1)
		},
		func(ctx context.Context) error {
			_, err := b.js.CreateKeyValue(ctx, cfg)
			return err
		},
		func(ctx context.Context) error {
			_, err := b.js.UpdateKeyValue(ctx, cfg)
			return err
		})
	if err != nil {
		return nil, nil, fmt.Errorf("natsbroker: creating presence bucket %s: %w", p.bucket, err)
	}
	kv, err := b.js.KeyValue(ctx, p.bucket)
	if err != nil {
		return nil, nil, fmt.Errorf("natsbroker: opening presence bucket %s: %w", p.bucket, err)
	}
	p.kv, p.stream = kv, stream
	return kv, stream, nil
}

// dropKV makes the next presenceKV look the bucket up again, and create it
// if it is gone: after a reconnection, or an error that may mean it is gone
// (a server back without its store has no bucket).
func (p *presence) dropKV() {
	p.kvMu.Lock()
	p.kv = nil
	p.kvMu.Unlock()
}

// checkKV drops the bucket after an error that may mean it is gone, so that
// the next use creates it again.
func (p *presence) checkKV(err error) {
	if streamMissing(err) {
		p.dropKV()
	}
}

// Join implements wsroom.Presence: it records m in room as a member on this
// node, and the Broker refreshes the entry until Leave or Close. If the
// entry cannot be written, Join returns the error but keeps the member, and
// the next refresh writes it.
func (b *Broker) Join(ctx context.Context, room string, m wsroom.Member) error {
	if err := b.checkOpen(); err != nil {
		return err
	}
	p := b.pres
	key := presenceKey(room, p.node, m.ID)
	p.mu.Lock()
	p.local[key] = m.Info
	p.used = true
	p.mu.Unlock()
	kv, _, err := b.presenceKV(ctx)
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, key, []byte(m.Info)); err != nil {
		p.checkKV(err)
		return fmt.Errorf("natsbroker: joining %q to room %q: %w", m.ID, room, err)
	}
	return nil
}

// Leave implements wsroom.Presence: it removes the entry of the client id
// that joined room on this node. If the entry cannot be removed, Leave
// returns the error and the entry expires after the presence TTL.
func (b *Broker) Leave(ctx context.Context, room, id string) error {
	if err := b.checkOpen(); err != nil {
		return err
	}
	p := b.pres
	key := presenceKey(room, p.node, id)
	p.mu.Lock()
	delete(p.local, key)
	if p.refreshing {
		p.left = append(p.left, key)
	}
	p.mu.Unlock()
	kv, _, err := b.presenceKV(ctx)
	if err != nil {
		return err
	}
	if err := kv.Purge(ctx, key); err != nil {
		p.checkKV(err)
		return fmt.Errorf("natsbroker: removing %q from room %q: %w", id, room, err)
	}
	return nil
}

// Members implements wsroom.Presence: it returns the members of room on
// every node whose entries have not expired. It reads the room's entries
// from the presence bucket's stream through a short-lived consumer that
// delivers the last message of each key. When ctx has no deadline, Members
// gives up after 10 seconds.
func (b *Broker) Members(ctx context.Context, room string) ([]wsroom.Member, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, setupTimeout)
		defer cancel()
	}
	_, stream, err := b.presenceKV(ctx)
	if err != nil {
		return nil, err
	}
	entries, err := b.readPresence(ctx, stream, roomToken(room)+".>")
	if err != nil {
		b.pres.checkKV(err)
		return nil, fmt.Errorf("natsbroker: reading members of room %q: %w", room, err)
	}
	out := make([]wsroom.Member, 0, len(entries))
	for key, info := range entries {
		if id, ok := memberID(key); ok {
			out = append(out, wsroom.Member{ID: id, Info: info})
		}
	}
	return out, nil
}

// readPresence returns the current entries of the keys matching filter, as
// key -> value. Entries rewritten while it reads are read again (the last
// value wins), and entries removed meanwhile are dropped, so that no entry
// present throughout is missed. It reads until it has seen the stream's
// last message as of its start, or a later one, or nothing more comes: it
// does not rely on the consumer's count of pending messages, which servers
// before 2.10 can leave too high when messages expire.
func (b *Broker) readPresence(ctx context.Context, stream jetstream.Stream, filter string) (map[string]string, error) {
	p := b.pres
	pre := "$KV." + p.bucket + "."
	info, err := stream.Info(ctx)
	if err != nil {
		return nil, err
	}
	last := info.State.LastSeq
	cons, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{
		FilterSubject:     pre + filter,
		DeliverPolicy:     jetstream.DeliverLastPerSubjectPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		MemoryStorage:     true,
		InactiveThreshold: 10 * time.Second,
	})
	if err != nil {
		return nil, err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		// A consumer left behind is removed by the server after
		// InactiveThreshold.
		_ = stream.DeleteConsumer(dctx, cons.CachedInfo().Name)
	}()
	entries := make(map[string]string)
	if cons.CachedInfo().NumPending == 0 {
		return entries, nil
	}
	for {
		batch, err := cons.FetchNoWait(fetchBatch)
		if err != nil {
			return nil, err
		}
		n, done := 0, false
		for msg := range batch.Messages() {
			n++
			md, err := msg.Metadata()
			if err != nil {
				return nil, err
			}
			key := strings.TrimPrefix(msg.Subject(), pre)
			h := msg.Headers()
			if op := h.Get(kvOperation); op == "DEL" || op == "PURGE" || h.Get(markerReason) != "" {
				delete(entries, key)
			} else {
				entries[key] = string(msg.Data())
			}
			done = done || md.NumPending == 0 || md.Sequence.Stream >= last
		}
		if err := batch.Error(); err != nil {
			return nil, err
		}
		if done || n == 0 {
			return entries, nil
		}
	}
}

// Headers of the key-value messages that remove a key.
const (
	kvOperation  = "KV-Operation"       // "DEL" or "PURGE"
	markerReason = "Nats-Marker-Reason" // set by servers from 2.11 on
)

// refresher rewrites this node's entries every third of the TTL, and at
// once when asked to after a reconnection, until Close.
func (b *Broker) refresher() {
	p := b.pres
	defer close(p.done)
	tick := time.NewTicker(p.ttl / 3)
	defer tick.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-tick.C:
		case <-p.kick:
		}
		b.refresh()
	}
}

// refresh rewrites every entry of this node, so that none expires. An entry
// whose member leaves meanwhile is removed again afterwards, in case the
// rewrite landed after Leave's removal.
func (b *Broker) refresh() {
	p := b.pres
	p.refreshMu.Lock()
	defer p.refreshMu.Unlock()
	if !b.nc.IsConnected() {
		return // the reconnection asks for a refresh
	}
	p.mu.Lock()
	if len(p.local) == 0 {
		p.mu.Unlock()
		return
	}
	keys := make([]string, 0, len(p.local))
	infos := make([]string, 0, len(p.local))
	for k, v := range p.local {
		keys = append(keys, k)
		infos = append(infos, v)
	}
	p.refreshing, p.left = true, nil
	p.mu.Unlock()

	ctx, cancel := context.WithTimeout(p.ctx, p.ttl/3)
	defer cancel()
	kv, _, err := b.presenceKV(ctx)
	var (
		failMu sync.Mutex
		failed int
		first  error
	)
	if err == nil {
		next := make(chan int)
		var wg sync.WaitGroup
		for range min(presenceWorkers, len(keys)) {
			wg.Go(func() {
				for i := range next {
					if _, err := kv.Put(ctx, keys[i], []byte(infos[i])); err != nil {
						failMu.Lock()
						failed++
						if first == nil {
							first = err
						}
						failMu.Unlock()
					}
				}
			})
		}
		for i := range keys {
			next <- i
		}
		close(next)
		wg.Wait()
	}

	p.mu.Lock()
	left := p.left
	p.refreshing, p.left = false, nil
	p.mu.Unlock()
	for _, k := range left {
		if kv == nil {
			break
		}
		if err := kv.Purge(ctx, k); err != nil {
			failed++
			if first == nil {
				first = err
			}
		}
	}
	switch {
	case p.ctx.Err() != nil:
		// Close cut the refresh short; it removes the entries itself.
	case err != nil:
		b.report(fmt.Errorf("natsbroker: refreshing presence: %w", err))
	case failed > 0:
		p.checkKV(first)
		b.report(fmt.Errorf("natsbroker: refreshing presence: %d of %d writes failed: %w", failed, len(keys)+len(left), first))
	}
}

// refreshSoon asks the refresher to rewrite this node's entries now.
func (p *presence) refreshSoon() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// closePresence stops the refresher and removes this node's entries, if it
// ever had any, with one purge of the bucket's stream.
func (b *Broker) closePresence() {
	p := b.pres
	p.cancel()
	<-p.done
	p.mu.Lock()
	used := p.used
	p.mu.Unlock()
	if !used || b.nc.IsClosed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	p.kvMu.Lock()
	stream := p.stream
	p.kvMu.Unlock()
	if stream == nil {
		return // no entry was ever written
	}
	if err := stream.Purge(ctx, jetstream.WithPurgeSubject("$KV."+p.bucket+".*."+p.node+".*")); err != nil {
		b.report(fmt.Errorf("natsbroker: removing presence entries on close (they expire after %v): %w", p.ttl, err))
	}
}
