// Package otelwsroom reports the metrics of wsroom rooms through the
// OpenTelemetry metrics API.
//
// New returns a *Metrics, which is two things at once:
//
//   - a wsroom.Observer: given to a Room or Registry with
//     wsroom.WithObserver, it records each fan-out's duration and each
//     message's publish-to-write latency in histograms;
//   - a set of asynchronous instruments that read the Stats of the rooms it
//     is told about (ObserveRegistry, ObserveRoom) each time the metrics are
//     collected: connections, queued frames, joins, leaves, messages and
//     bytes in and out, closes by reason, and the rest of wsroom.Stats.
//
// Typical use, with a Prometheus exporter serving /metrics:
//
//	m, err := otelwsroom.New(meterProvider)
//	...
//	rooms := wsroom.NewRegistry(wsroom.WithObserver(m))
//	m.ObserveRegistry(rooms)
//
// # Room attributes
//
// A Registry may hold up to 10,000 rooms, named by its clients: labelling
// every series with its room would give a metrics backend an unbounded
// number of series. So by default no series has a room attribute: every
// room of every source adds up. WithRooms names the rooms that get their
// own "wsroom.room" attribute, and WithRoomLimit lets up to n rooms get one
// as they are first seen (and keep it for the life of the Metrics); every
// other room then adds up under wsroom.room="(other)" (OtherRooms). See the README for the
// list of metrics.
//
// # Counters of rooms that come and go
//
// wsroom.Stats are counters of one room since it was made, and a Registry
// closes idle rooms and makes them anew. The counters reported here are
// the sums of what each room counted while it was observed: when a room
// goes, what it counted stays in the total, so the reported counters never
// go down.
package otelwsroom

import (
	"context"
	"sync"

	"github.com/wsroom/wsroom"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// ScopeName is the instrumentation scope of the meter Metrics use: the
// package's import path.
const ScopeName = "github.com/wsroom/wsroom/otelwsroom"

// Attribute keys.
const (
	// RoomKey names the room a series is of, for the rooms that have
	// their own series (see WithRooms and WithRoomLimit).
	RoomKey = attribute.Key("wsroom.room")
	// SourceKey says which counters a series comes from: "room" for the
	// counters of rooms (Room.Stats), "mux" for those of a Registry's
	// connections of many rooms (Registry.Stats).
	SourceKey = attribute.Key("wsroom.source")
	// CloseReasonKey is why the room closed a client, on wsroom.closes:
	// "slow", "rate_limit", "invalid", "ping", "write" or "publish_retry".
	CloseReasonKey = attribute.Key("wsroom.close.reason")
)

// OtherRooms is the value of RoomKey for the rooms that have no series of
// their own, when some do. The parentheses keep it apart from any name
// wsroom.ValidRoomName accepts.
const OtherRooms = "(other)"

// Option configures Metrics.
type Option func(*config)

type config struct {
	rooms []string
	limit int
}

// WithRooms gives each named room its own series, with the attribute
// wsroom.room set to its name; other rooms add up under OtherRooms (unless
// WithRoomLimit gives them their own). Later calls add names.
func WithRooms(names ...string) Option {
	return func(c *config) { c.rooms = append(c.rooms, names...) }
}

// WithRoomLimit lets up to n rooms, besides those of WithRooms, get their
// own series as they are first seen, in a fan-out, a write or a
// collection; a room keeps its series for the life of the Metrics, and
// later rooms add up under OtherRooms. Default 0: only the rooms of WithRooms
// have their own series.
func WithRoomLimit(n int) Option {
	return func(c *config) { c.limit = max(n, 0) }
}

// Metrics records the metrics of wsroom rooms. It is a wsroom.Observer,
// and reads the Stats of the rooms and registries it is told about when
// the metrics are collected. Its methods are safe for concurrent use.
type Metrics struct {
	labels labeler

	fanout   metric.Float64Histogram
	latency  metric.Float64Histogram
	batch    metric.Int64Histogram
	counters []metric.Int64ObservableCounter
	gauges   []metric.Int64ObservableUpDownCounter
	reg      metric.Registration

	mu         sync.Mutex
	registries map[*wsroom.Registry]struct{}
	rooms      map[*wsroom.Room]bool // given by ObserveRoom (true), or seen in a registry
	last       map[any]wsroom.Stats  // the last Stats read of each room or registry
	totals     map[series]*[len(counterDefs)]uint64
}

// series is the attributes of one source and room.
type series struct {
	source string
	room   string // the label; "" when rooms have none
}

// counterDefs are the counters read from wsroom.Stats: an instrument, the
// attributes that tell its series apart, and the field.
var counterDefs = [...]struct {
	inst  int // index in instrumentDefs
	extra attribute.KeyValue
	get   func(*wsroom.Stats) uint64
}{
	{0, attribute.KeyValue{}, func(s *wsroom.Stats) uint64 { return s.Joins }},
	{1, attribute.KeyValue{}, func(s *wsroom.Stats) uint64 { return s.Leaves }},
	{2, attribute.KeyValue{}, func(s *wsroom.Stats) uint64 { return s.MessagesIn }},
	{3, attribute.KeyValue{}, func(s *wsroom.Stats) uint64 { return s.BytesIn }},
	{4, attribute.KeyValue{}, func(s *wsroom.Stats) uint64 { return s.MessagesOut }},
	{5, attribute.KeyValue{}, func(s *wsroom.Stats) uint64 { return s.BytesOut }},
	{6, attribute.KeyValue{}, func(s *wsroom.Stats) uint64 { return s.Replayed }},
	{7, attribute.KeyValue{}, func(s *wsroom.Stats) uint64 { return s.Resyncs }},
	{8, attribute.KeyValue{}, func(s *wsroom.Stats) uint64 { return s.Dropped }},
	{9, attribute.KeyValue{}, func(s *wsroom.Stats) uint64 { return s.Throttled }},
	{10, attribute.KeyValue{}, func(s *wsroom.Stats) uint64 { return s.Overflow }},
	{11, attribute.KeyValue{}, func(s *wsroom.Stats) uint64 { return s.PublishRetries }},
	{12, attribute.KeyValue{}, func(s *wsroom.Stats) uint64 { return s.Errors }},
	{13, CloseReasonKey.String("slow"), func(s *wsroom.Stats) uint64 { return s.ClosedSlow }},
	{13, CloseReasonKey.String("rate_limit"), func(s *wsroom.Stats) uint64 { return s.ClosedRateLimit }},
	{13, CloseReasonKey.String("invalid"), func(s *wsroom.Stats) uint64 { return s.ClosedInvalid }},
	{13, CloseReasonKey.String("ping"), func(s *wsroom.Stats) uint64 { return s.ClosedPing }},
	{13, CloseReasonKey.String("write"), func(s *wsroom.Stats) uint64 { return s.ClosedWrite }},
	{13, CloseReasonKey.String("publish_retry"), func(s *wsroom.Stats) uint64 { return s.ClosedRetry }},
}

// instrumentDefs are the asynchronous counters, by index.
var instrumentDefs = [...]struct{ name, unit, desc string }{
	{"wsroom.joins", "{client}", "Clients that joined a room (source mux: connections of many rooms that opened)."},
	{"wsroom.leaves", "{client}", "Clients that left a room (source mux: connections of many rooms that ended)."},
	{"wsroom.messages.received", "{message}", "Messages read from clients."},
	{"wsroom.bytes.received", "By", "Bytes of the messages read from clients."},
	{"wsroom.messages.sent", "{message}", "Messages written to clients, one per client."},
	{"wsroom.bytes.sent", "By", "Bytes of the messages written to clients."},
	{"wsroom.messages.replayed", "{message}", "History messages written to joining or resuming clients."},
	{"wsroom.resyncs", "{client}", "Clients told to resync: a resume the history could not serve, or a room that lost messages."},
	{"wsroom.messages.dropped", "{message}", "Messages dropped by the DropOldest or DropNewest slow-client policy."},
	{"wsroom.messages.throttled", "{message}", "Messages from clients delayed by the Throttle rate policy."},
	{"wsroom.messages.overflow", "{message}", "Broker messages a room's loop was too far behind to take: read back from the Store, or dropped if ephemeral."},
	{"wsroom.publish.retries", "{retry}", "Retries of a client's message while the Broker failed."},
	{"wsroom.errors", "{error}", "Errors a room handled: passed to the error hook, or too many at once to report."},
	{"wsroom.closes", "{client}", "Clients the room closed, by wsroom.close.reason."},
}

// gaugeDefs are the asynchronous up-down counters: values now.
var gaugeDefs = [...]struct {
	name, unit, desc string
	get              func(*wsroom.Stats) int64
}{
	{"wsroom.connections", "{connection}", "Clients in rooms now; a connection of many rooms counts once per room it is in (source mux: connections of many rooms now).",
		func(s *wsroom.Stats) int64 { return int64(s.Clients) }},
	{"wsroom.queue.depth", "{frame}", "Frames waiting in clients' queues now, for their writers.",
		func(s *wsroom.Stats) int64 { return int64(s.Queued) }},
}

// Bucket boundaries, in seconds: a fan-out takes microseconds to
// milliseconds, a delivery milliseconds to seconds.
var (
	fanoutBuckets  = []float64{0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25}
	latencyBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
	batchBuckets   = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256}
)

// New returns Metrics that report through meters of mp, with the scope
// ScopeName. It registers the instruments and a callback that reads the
// Stats of the observed rooms on each collection; Close unregisters it.
func New(mp metric.MeterProvider, opts ...Option) (*Metrics, error) {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	m := &Metrics{
		registries: make(map[*wsroom.Registry]struct{}),
		rooms:      make(map[*wsroom.Room]bool),
		last:       make(map[any]wsroom.Stats),
		totals:     make(map[series]*[len(counterDefs)]uint64),
	}
	m.labels.init(cfg)
	meter := mp.Meter(ScopeName)
	var err error
	if m.fanout, err = meter.Float64Histogram("wsroom.fanout.duration", metric.WithUnit("s"),
		metric.WithDescription("Time a room's loop took to queue one message to its clients."),
		metric.WithExplicitBucketBoundaries(fanoutBuckets...)); err != nil {
		return nil, err
	}
	if m.latency, err = meter.Float64Histogram("wsroom.delivery.duration", metric.WithUnit("s"),
		metric.WithDescription("Time from a message's publish to its write to a client: for each written batch, of its oldest live message."),
		metric.WithExplicitBucketBoundaries(latencyBuckets...)); err != nil {
		return nil, err
	}
	if m.batch, err = meter.Int64Histogram("wsroom.write.frames", metric.WithUnit("{frame}"),
		metric.WithDescription("Frames written to a client at once, in one system call when uncompressed."),
		metric.WithExplicitBucketBoundaries(batchBuckets...)); err != nil {
		return nil, err
	}
	var observables []metric.Observable
	for _, d := range instrumentDefs {
		c, err := meter.Int64ObservableCounter(d.name, metric.WithUnit(d.unit), metric.WithDescription(d.desc))
		if err != nil {
			return nil, err
		}
		m.counters = append(m.counters, c)
		observables = append(observables, c)
	}
	for _, d := range gaugeDefs {
		g, err := meter.Int64ObservableUpDownCounter(d.name, metric.WithUnit(d.unit), metric.WithDescription(d.desc))
		if err != nil {
			return nil, err
		}
		m.gauges = append(m.gauges, g)
		observables = append(observables, g)
	}
	if m.reg, err = meter.RegisterCallback(m.collect, observables...); err != nil {
		return nil, err
	}
	return m, nil
}

// ObserveRegistry makes the Metrics read, on each collection, the Stats of
// every room g holds then, and of g's connections of many rooms (source
// "mux"). Give g the Metrics as its Observer (wsroom.WithObserver) for the
// histograms.
func (m *Metrics) ObserveRegistry(g *wsroom.Registry) {
	m.mu.Lock()
	m.registries[g] = struct{}{}
	m.mu.Unlock()
}

// ObserveRoom makes the Metrics read the Stats of r on each collection,
// until Close; r's name is "" unless it is a Registry's. Give r the Metrics
// as its Observer (wsroom.WithObserver) for the histograms.
func (m *Metrics) ObserveRoom(r *wsroom.Room) {
	m.mu.Lock()
	m.rooms[r] = true
	m.mu.Unlock()
}

// Close unregisters the callback that reads the Stats: the asynchronous
// instruments report nothing more. The histograms go on recording what
// the rooms observe.
func (m *Metrics) Close() error {
	return m.reg.Unregister()
}

// Fanout records a fan-out's duration in wsroom.fanout.duration. It
// implements wsroom.Observer.
func (m *Metrics) Fanout(e wsroom.FanoutEvent) {
	m.fanout.Record(context.Background(), e.Duration.Seconds(), m.labels.record(e.Room)...)
}

// Write records a written batch: its frames in wsroom.write.frames and,
// when it holds a live message, the latency in wsroom.delivery.duration.
// It implements wsroom.Observer.
func (m *Metrics) Write(e wsroom.WriteEvent) {
	opts := m.labels.record(e.Room)
	ctx := context.Background()
	m.batch.Record(ctx, int64(e.Frames), opts...)
	if e.Live > 0 {
		m.latency.Record(ctx, e.Latency.Seconds(), opts...)
	}
}

var _ wsroom.Observer = (*Metrics)(nil)

// collect reads the Stats of every observed room and registry and reports
// them.
func (m *Metrics) collect(_ context.Context, o metric.Observer) error {
	type source struct {
		key   any
		stats func() wsroom.Stats
		s     series
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var sources []source
	seen := make(map[*wsroom.Room]bool, len(m.rooms))
	for g := range m.registries {
		sources = append(sources, source{g, g.Stats, series{source: "mux"}})
		for _, r := range g.Rooms() {
			seen[r] = true
			if _, ok := m.rooms[r]; !ok {
				m.rooms[r] = false // remembered, to read once more when it goes
			}
		}
	}
	for r, given := range m.rooms {
		if !given && !seen[r] {
			// Gone from its registry: count what it counted since the
			// last collection, once.
			m.add(r, r.Stats(), series{source: "room", room: m.labels.label(r.Name())})
			delete(m.rooms, r)
			delete(m.last, r)
			continue
		}
		sources = append(sources, source{r, r.Stats, series{source: "room", room: m.labels.label(r.Name())}})
	}
	gauges := make(map[series]*[len(gaugeDefs)]int64)
	for _, src := range sources {
		st := src.stats()
		m.add(src.key, st, src.s)
		g := gauges[src.s]
		if g == nil {
			g = new([len(gaugeDefs)]int64)
			gauges[src.s] = g
		}
		for i, d := range gaugeDefs {
			g[i] += d.get(&st)
		}
	}
	for s, t := range m.totals {
		attrs := m.labels.attrs(s)
		for i, d := range counterDefs {
			kv := attrs
			if d.extra.Key != "" {
				kv = append(kv[:len(kv):len(kv)], d.extra)
			}
			o.ObserveInt64(m.counters[d.inst], int64(t[i]), metric.WithAttributes(kv...))
		}
		g := gauges[s]
		if g == nil {
			g = new([len(gaugeDefs)]int64) // no room of this series now
		}
		for i := range gaugeDefs {
			o.ObserveInt64(m.gauges[i], g[i], metric.WithAttributes(attrs...))
		}
	}
	return nil
}

// add adds what key counted since its last Stats to the totals of s.
func (m *Metrics) add(key any, st wsroom.Stats, s series) {
	prev := m.last[key]
	m.last[key] = st
	t := m.totals[s]
	if t == nil {
		t = new([len(counterDefs)]uint64)
		m.totals[s] = t
	}
	for i, d := range counterDefs {
		if now, before := d.get(&st), d.get(&prev); now > before {
			t[i] += now - before
		}
	}
}

// labeler gives rooms their wsroom.room attribute, keeping their number
// bounded.
type labeler struct {
	on    bool                  // rooms get an attribute at all
	other []metric.RecordOption // the options of the rooms without series

	mu    sync.RWMutex
	limit int                              // rooms WithRoomLimit may still give series
	own   map[string]bool                  // rooms with series of their own
	opts  map[string][]metric.RecordOption // the options of each of them
}

func (l *labeler) init(cfg config) {
	l.on = len(cfg.rooms) > 0 || cfg.limit > 0
	l.limit = cfg.limit
	l.own = make(map[string]bool)
	l.opts = make(map[string][]metric.RecordOption)
	l.other = recordOptions(OtherRooms)
	for _, name := range cfg.rooms {
		l.own[name] = true
		l.opts[name] = recordOptions(name)
	}
}

func recordOptions(label string) []metric.RecordOption {
	return []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(RoomKey.String(label)))}
}

// label returns the wsroom.room attribute of room: its name, OtherRooms,
// or "" when rooms have no attribute.
func (l *labeler) label(room string) string {
	if !l.on {
		return ""
	}
	l.mu.RLock()
	own, full := l.own[room], l.limit == 0
	l.mu.RUnlock()
	switch {
	case own:
		return room
	case full:
		return OtherRooms
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.own[room]:
		return room
	case l.limit == 0:
		return OtherRooms
	}
	l.limit--
	l.own[room] = true
	l.opts[room] = recordOptions(room)
	return room
}

// record returns the options that record a measurement of room.
func (l *labeler) record(room string) []metric.RecordOption {
	if !l.on {
		return nil
	}
	l.mu.RLock()
	o, ok := l.opts[room]
	l.mu.RUnlock()
	if ok {
		return o
	}
	if l.label(room) == OtherRooms {
		return l.other
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.opts[room]
}

// attrs returns the attributes of the series s.
func (l *labeler) attrs(s series) []attribute.KeyValue {
	if !l.on || s.source == "mux" {
		return []attribute.KeyValue{SourceKey.String(s.source)}
	}
	return []attribute.KeyValue{SourceKey.String(s.source), RoomKey.String(s.room)}
}
