package otelwsroom_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/otelwsroom"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// server is a Registry observed by Metrics, served over loopback.
type server struct {
	reg *wsroom.Registry
	url string // ws://host/rooms/
}

func serve(t *testing.T, m *otelwsroom.Metrics, opts ...wsroom.Option) *server {
	t.Helper()
	reg := wsroom.NewRegistry(append([]wsroom.Option{wsroom.WithObserver(m), wsroom.WithPing(0, 0)}, opts...)...)
	m.ObserveRegistry(reg)
	mux := http.NewServeMux()
	mux.Handle("GET /rooms/{name}", reg.Handler(nil))
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		reg.Close()
		srv.Close()
	})
	return &server{reg: reg, url: "ws" + strings.TrimPrefix(srv.URL, "http") + "/rooms/"}
}

// dial connects a client to room and waits until the room counts it.
func (s *server) dial(t *testing.T, room string) *websocket.Conn {
	t.Helper()
	r, err := s.reg.Room(room)
	if err != nil {
		t.Fatal(err)
	}
	want := r.Len() + 1
	c, _, err := websocket.Dial(t.Context(), s.url+room, nil)
	if err != nil {
		t.Fatalf("Dial(%s): %v", room, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	waitUntil(t, fmt.Sprintf("%d clients in %s", want, room), func() bool { return r.Len() == want })
	return c
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func read(t *testing.T, c *websocket.Conn) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return string(b)
}

// statsOf returns the Stats of the room called name.
func statsOf(t *testing.T, reg *wsroom.Registry, name string) wsroom.Stats {
	t.Helper()
	r, err := reg.Room(name)
	if err != nil {
		t.Fatal(err)
	}
	return r.Stats()
}

// collected is one collection of a ManualReader.
type collected struct {
	t  *testing.T
	rm metricdata.ResourceMetrics
}

func collect(t *testing.T, r *sdkmetric.ManualReader) *collected {
	t.Helper()
	c := &collected{t: t}
	if err := r.Collect(t.Context(), &c.rm); err != nil {
		t.Fatalf("Collect: %v", err)
	}
	return c
}

func (c *collected) metric(name string) (metricdata.Metrics, bool) {
	for _, sm := range c.rm.ScopeMetrics {
		if sm.Scope.Name != otelwsroom.ScopeName {
			continue
		}
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

// matches reports whether set has every attribute of want.
func matches(set attribute.Set, want []attribute.KeyValue) bool {
	for _, kv := range want {
		if v, ok := set.Value(kv.Key); !ok || v != kv.Value {
			return false
		}
	}
	return true
}

// value returns the sum of the points of the counter or gauge name whose
// attributes include want.
func (c *collected) value(name string, want ...attribute.KeyValue) int64 {
	c.t.Helper()
	m, ok := c.metric(name)
	if !ok {
		c.t.Fatalf("no metric %s", name)
	}
	sum, ok := m.Data.(metricdata.Sum[int64])
	if !ok {
		c.t.Fatalf("%s is a %T, want an int64 sum", name, m.Data)
	}
	var n int64
	for _, p := range sum.DataPoints {
		if matches(p.Attributes, want) {
			n += p.Value
		}
	}
	return n
}

// histogram returns the count and sum of the points of the histogram name
// whose attributes include want.
func (c *collected) histogram(name string, want ...attribute.KeyValue) (count uint64, sum float64) {
	c.t.Helper()
	m, ok := c.metric(name)
	if !ok {
		c.t.Fatalf("no metric %s", name)
	}
	switch h := m.Data.(type) {
	case metricdata.Histogram[float64]:
		for _, p := range h.DataPoints {
			if matches(p.Attributes, want) {
				count, sum = count+p.Count, sum+p.Sum
			}
		}
	case metricdata.Histogram[int64]:
		for _, p := range h.DataPoints {
			if matches(p.Attributes, want) {
				count, sum = count+p.Count, sum+float64(p.Sum)
			}
		}
	default:
		c.t.Fatalf("%s is a %T, want a histogram", name, m.Data)
	}
	return count, sum
}

var (
	roomA  = otelwsroom.RoomKey.String("a")
	other  = otelwsroom.RoomKey.String(otelwsroom.OtherRooms)
	inRoom = otelwsroom.SourceKey.String("room")
)

// After real traffic in three rooms, one of which has its own series, the
// instruments report what the rooms counted; a room that expires leaves its
// counts in the totals.
func TestMetricsAfterTraffic(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { mp.Shutdown(context.Background()) })
	m, err := otelwsroom.New(mp, otelwsroom.WithRooms("a"))
	if err != nil {
		t.Fatal(err)
	}
	s := serve(t, m, wsroom.WithIdleTimeout(50*time.Millisecond))

	a1, a2 := s.dial(t, "a"), s.dial(t, "a")
	b1 := s.dial(t, "b")
	c1 := s.dial(t, "c")

	// a: a client publishes one message, which both clients get.
	if err := a1.Write(t.Context(), websocket.MessageText, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*websocket.Conn{a1, a2} {
		if got := read(t, c); got != "hello" {
			t.Fatalf("read %q, want hello", got)
		}
	}
	// b: the server publishes three messages.
	for i := range 3 {
		if err := s.reg.Publish(t.Context(), "b", fmt.Appendf(nil, "b%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		if got, want := read(t, b1), fmt.Sprintf("b%d", i); got != want {
			t.Fatalf("read %q, want %q", got, want)
		}
	}
	// c: a binary frame in a text room is invalid input: closed.
	if err := c1.Write(t.Context(), websocket.MessageBinary, []byte{1}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c1.Read(t.Context()); websocket.CloseStatus(err) != websocket.StatusUnsupportedData {
		t.Fatalf("c1 read %v, want a close with %v", err, websocket.StatusUnsupportedData)
	}
	waitUntil(t, "every write and leave counted", func() bool {
		return statsOf(t, s.reg, "a").MessagesOut == 2 && statsOf(t, s.reg, "b").MessagesOut == 3 && statsOf(t, s.reg, "c").Leaves == 1
	})

	// The loop observes a fan-out once it has queued the message, maybe
	// after the clients read it.
	var got *collected
	waitUntil(t, "every fan-out observed", func() bool {
		got = collect(t, reader)
		n, _ := got.histogram("wsroom.fanout.duration")
		return n == 4
	})
	for _, tt := range []struct {
		name  string
		attrs []attribute.KeyValue
		want  int64
	}{
		{"wsroom.connections", []attribute.KeyValue{inRoom, roomA}, 2},
		{"wsroom.connections", []attribute.KeyValue{inRoom, other}, 1},
		{"wsroom.queue.depth", []attribute.KeyValue{inRoom}, 0},
		{"wsroom.joins", []attribute.KeyValue{roomA}, 2},
		{"wsroom.joins", []attribute.KeyValue{other}, 2},
		{"wsroom.leaves", []attribute.KeyValue{other}, 1},
		{"wsroom.messages.received", []attribute.KeyValue{roomA}, 1},
		{"wsroom.bytes.received", []attribute.KeyValue{roomA}, 5},
		{"wsroom.messages.received", []attribute.KeyValue{other}, 1}, // the binary frame
		{"wsroom.messages.sent", []attribute.KeyValue{roomA}, 2},
		{"wsroom.messages.sent", []attribute.KeyValue{other}, 3},
		{"wsroom.bytes.sent", []attribute.KeyValue{roomA}, 2 * (2 + 5)}, // frame header and payload
		{"wsroom.closes", []attribute.KeyValue{other, otelwsroom.CloseReasonKey.String("invalid")}, 1},
		{"wsroom.closes", []attribute.KeyValue{other, otelwsroom.CloseReasonKey.String("slow")}, 0},
		{"wsroom.closes", []attribute.KeyValue{roomA}, 0},
		{"wsroom.messages.dropped", nil, 0},
		{"wsroom.resyncs", nil, 0},
		{"wsroom.errors", []attribute.KeyValue{other}, 1}, // the invalid input, reported
		{"wsroom.connections", []attribute.KeyValue{otelwsroom.SourceKey.String("mux")}, 0},
	} {
		if v := got.value(tt.name, tt.attrs...); v != tt.want {
			t.Errorf("%s%v = %d, want %d", tt.name, tt.attrs, v, tt.want)
		}
	}
	if n, sum := got.histogram("wsroom.fanout.duration", roomA); n != 1 || sum <= 0 {
		t.Errorf("wsroom.fanout.duration{a}: %d fan-outs taking %vs, want 1 taking more than 0", n, sum)
	}
	if n, _ := got.histogram("wsroom.fanout.duration", other); n != 3 {
		t.Errorf("wsroom.fanout.duration{other}: %d fan-outs, want 3", n)
	}
	if n, sum := got.histogram("wsroom.delivery.duration", roomA); n != 2 || sum <= 0 || sum > 10 {
		t.Errorf("wsroom.delivery.duration{a}: %d writes, %vs in all, want 2 writes in (0, 10s]", n, sum)
	}
	if _, frames := got.histogram("wsroom.write.frames", other); frames != 3 {
		t.Errorf("wsroom.write.frames{other}: %v frames in all, want 3", frames)
	}

	// b's client leaves, b and c expire: their counts stay.
	b1.Close(websocket.StatusNormalClosure, "")
	waitUntil(t, "b and c expire", func() bool { return len(s.reg.Rooms()) == 1 })
	got = collect(t, reader)
	if v := got.value("wsroom.messages.sent", other); v != 3 {
		t.Errorf("wsroom.messages.sent{other} = %d once b expired, want 3 still", v)
	}
	if v := got.value("wsroom.leaves", other); v != 2 {
		t.Errorf("wsroom.leaves{other} = %d once b expired, want 2", v)
	}
	if v := got.value("wsroom.connections", other); v != 0 {
		t.Errorf("wsroom.connections{other} = %d once b expired, want 0", v)
	}
	if v := got.value("wsroom.connections", roomA); v != 2 {
		t.Errorf("wsroom.connections{a} = %d, want 2", v)
	}
	// A new b counts on from there.
	b2 := s.dial(t, "b")
	if err := s.reg.Publish(t.Context(), "b", []byte("again")); err != nil {
		t.Fatal(err)
	}
	read(t, b2)
	waitUntil(t, "the new b's write counted", func() bool { return statsOf(t, s.reg, "b").MessagesOut == 1 })
	if v := collect(t, reader).value("wsroom.messages.sent", other); v != 4 {
		t.Errorf("wsroom.messages.sent{other} = %d after the new b's message, want 4", v)
	}
}

// Without room options no series has a room attribute; with a limit, the
// first rooms seen get their own series and the rest add up under
// OtherRooms.
func TestRoomAttributes(t *testing.T) {
	for _, tt := range []struct {
		name  string
		opts  []otelwsroom.Option
		rooms map[string]int64 // wsroom.room value → connections
	}{
		{"default", nil, map[string]int64{"": 3}},
		{"limit", []otelwsroom.Option{otelwsroom.WithRoomLimit(1)}, map[string]int64{"x": 1, otelwsroom.OtherRooms: 2}},
		{"rooms and limit", []otelwsroom.Option{otelwsroom.WithRooms("z"), otelwsroom.WithRoomLimit(1)}, map[string]int64{"x": 1, "z": 1, otelwsroom.OtherRooms: 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			reader := sdkmetric.NewManualReader()
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
			t.Cleanup(func() { mp.Shutdown(context.Background()) })
			m, err := otelwsroom.New(mp, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			s := serve(t, m)
			x := s.dial(t, "x")
			if err := s.reg.Publish(t.Context(), "x", []byte("first")); err != nil {
				t.Fatal(err)
			}
			read(t, x) // x is seen first, by the observer
			s.dial(t, "y")
			s.dial(t, "z")

			got := collect(t, reader)
			mt, _ := got.metric("wsroom.connections")
			have := map[string]int64{}
			for _, p := range mt.Data.(metricdata.Sum[int64]).DataPoints {
				if v, _ := p.Attributes.Value(otelwsroom.SourceKey); v.AsString() != "room" {
					continue
				}
				room, ok := p.Attributes.Value(otelwsroom.RoomKey)
				if ok != (tt.opts != nil) {
					t.Errorf("point %v: room attribute present %v, want %v", p.Attributes.ToSlice(), ok, tt.opts != nil)
				}
				have[room.AsString()] += p.Value
			}
			if fmt.Sprint(have) != fmt.Sprint(tt.rooms) {
				t.Errorf("connections by room = %v, want %v", have, tt.rooms)
			}
		})
	}
}

// A Room made by New, given to ObserveRoom, is read too; Close stops the
// reads.
func TestObserveRoom(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { mp.Shutdown(context.Background()) })
	m, err := otelwsroom.New(mp)
	if err != nil {
		t.Fatal(err)
	}
	room := wsroom.New(wsroom.WithObserver(m), wsroom.WithPing(0, 0))
	m.ObserveRoom(room)
	srv := httptest.NewServer(room.Handler())
	t.Cleanup(func() {
		room.Close()
		srv.Close()
	})
	c, _, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	waitUntil(t, "the client joined", func() bool { return room.Len() == 1 })
	if err := room.Publish(t.Context(), []byte("x")); err != nil {
		t.Fatal(err)
	}
	read(t, c)
	waitUntil(t, "the write counted", func() bool { return room.Stats().MessagesOut == 1 })
	got := collect(t, reader)
	if v := got.value("wsroom.messages.sent"); v != 1 {
		t.Errorf("wsroom.messages.sent = %d, want 1", v)
	}
	if v := got.value("wsroom.connections"); v != 1 {
		t.Errorf("wsroom.connections = %d, want 1", v)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := collect(t, reader).metric("wsroom.connections"); ok {
		t.Errorf("wsroom.connections still reported after Close")
	}
}
