package wsroom_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
)

// BenchmarkBroadcast publishes 64-byte messages to a room of N clients over
// real loopback connections and reports deliveries per second and
// allocations per delivery. The clients run in the same process, so the
// figures include the cost of reading on the client side. At most 64
// messages per client are in flight on average, and each client's buffer
// holds all that may be in flight, so no client is evicted.
func BenchmarkBroadcast(b *testing.B) { benchBroadcast(b) }

// BenchmarkBroadcastObserved is BenchmarkBroadcast with an Observer that
// counts the events, for the cost of observing.
func BenchmarkBroadcastObserved(b *testing.B) {
	benchBroadcast(b, wsroom.WithObserver(&countObserver{}))
}

// countObserver counts fan-outs and written frames, as cheaply as a metrics
// library's instruments.
type countObserver struct{ fanouts, frames atomic.Int64 }

func (o *countObserver) Fanout(wsroom.FanoutEvent) { o.fanouts.Add(1) }
func (o *countObserver) Write(e wsroom.WriteEvent) { o.frames.Add(int64(e.Frames)) }

func benchBroadcast(b *testing.B, opts ...wsroom.Option) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) {
			// At most 64 messages per client are in flight on average, but
			// one client may lag the others by all of them: its buffer
			// holds them all, so that no client is evicted.
			room := wsroom.New(append([]wsroom.Option{wsroom.WithPing(0, 0), wsroom.WithSendBuffer(64*n + 64)}, opts...)...)
			srv := httptest.NewServer(room.Handler())
			defer srv.Close()
			defer room.Close()
			url := "ws" + strings.TrimPrefix(srv.URL, "http")

			var delivered atomic.Int64
			var wg sync.WaitGroup
			for range n {
				c, _, err := websocket.Dial(context.Background(), url, nil)
				if err != nil {
					b.Fatal(err)
				}
				c.SetReadLimit(-1)
				wg.Go(func() {
					for {
						if _, _, err := c.Read(context.Background()); err != nil {
							return
						}
						delivered.Add(1)
					}
				})
			}
			for room.Len() < n {
				time.Sleep(time.Millisecond)
			}
			msg := make([]byte, 64)
			for i := range msg {
				msg[i] = 'a' + byte(i%26)
			}
			ctx := context.Background()
			var published int64
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for b.Loop() {
				for published*int64(n)-delivered.Load() > 64*int64(n) {
					runtime.Gosched()
				}
				if err := room.Publish(ctx, msg); err != nil {
					b.Fatal(err)
				}
				published++
			}
			for delivered.Load() < published*int64(n) {
				if st := room.Stats(); st.ClosedSlow+st.ClosedWrite != 0 {
					b.Fatalf("clients were closed: %+v", st)
				}
				runtime.Gosched()
			}
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(published*int64(n))/elapsed.Seconds(), "deliveries/s")
			if s := room.Stats(); s.ClosedSlow != 0 || s.Dropped != 0 {
				b.Fatalf("clients were evicted or messages dropped: %+v", s)
			}
			room.Close()
			wg.Wait()
		})
	}
}

// BenchmarkIdleClientMemory reports the memory the server holds per idle
// client (heap and goroutine stacks); the clients run in a child process.
func BenchmarkIdleClientMemory(b *testing.B) {
	for _, n := range []int{1000} {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) {
			perClient := idleClientMemory(b, n) // measured once, whatever b.N
			for b.Loop() {
			}
			b.ReportMetric(perClient, "B/client")
		})
	}
}

// idleClientMemory serves n idle clients, dialled from a child process so
// that only the server's memory is counted, and returns the heap and stack
// bytes each client costs the server.
func idleClientMemory(b *testing.B, n int) float64 {
	room := wsroom.New()
	srv := httptest.NewServer(room.Handler())
	defer srv.Close()
	defer room.Close()

	before := serverMemory()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "WSROOM_BENCH_DIAL="+"ws"+strings.TrimPrefix(srv.URL, "http"), "WSROOM_BENCH_N="+strconv.Itoa(n))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		b.Fatalf("client process: %q, %v", line, err)
	}
	for room.Len() < n {
		time.Sleep(time.Millisecond)
	}
	after := serverMemory()
	return float64(after-before) / float64(n)
}

func serverMemory() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc + m.StackInuse
}

// benchClients, run in a child process of the benchmark, dials the clients
// and holds them until its standard input closes.
func benchClients() {
	url, n := os.Getenv("WSROOM_BENCH_DIAL"), os.Getenv("WSROOM_BENCH_N")
	count, _ := strconv.Atoi(n)
	var conns []*websocket.Conn
	for range count {
		c, _, err := websocket.Dial(context.Background(), url, nil)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		go c.Read(context.Background()) // answer pings and closes
		conns = append(conns, c)
	}
	fmt.Println("ready")
	bufio.NewReader(os.Stdin).ReadString('\n')
	for _, c := range conns {
		c.CloseNow()
	}
	os.Exit(0)
}

// BenchmarkMemoryStoreAppend measures numbering and storing one message.
func BenchmarkMemoryStoreAppend(b *testing.B) {
	s := wsroom.NewMemoryStore(0, 0)
	m := wsroom.Message{Data: make([]byte, 64)}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Append(ctx, "room", m); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkResume measures a client resuming after 1,000 missed messages,
// from handshake to the last of them, over loopback with the MemoryStore.
func BenchmarkResume(b *testing.B) {
	const missed = 1000
	room := wsroom.New(wsroom.WithCodec(wsroom.JSON()), wsroom.WithPing(0, 0))
	srv := httptest.NewServer(room.Handler())
	defer srv.Close()
	defer room.Close()
	ctx := context.Background()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		b.Fatal(err)
	}
	for room.Len() < 1 {
		time.Sleep(time.Millisecond)
	}
	if err := room.Publish(ctx, []byte(`{"n":1}`)); err != nil {
		b.Fatal(err)
	}
	var env struct {
		Seq   uint64
		Epoch string
	}
	_, data, err := c.Read(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := json.Unmarshal(data, &env); err != nil {
		b.Fatal(err)
	}
	c.CloseNow()
	for range missed {
		if err := room.Publish(ctx, []byte(`{"payload":"sixty-four bytes of json or so, give or take a few"}`)); err != nil {
			b.Fatal(err)
		}
	}
	url := fmt.Sprintf("ws%s?resume=%s:%d", strings.TrimPrefix(srv.URL, "http"), env.Epoch, env.Seq)
	b.ReportAllocs()
	for b.Loop() {
		c, _, err := websocket.Dial(ctx, url, nil)
		if err != nil {
			b.Fatal(err)
		}
		for range missed {
			if _, _, err := c.Read(ctx); err != nil {
				b.Fatal(err)
			}
		}
		c.CloseNow()
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/resume")
}

// BenchmarkLocalBroker measures publishing through the default single-node
// broker, from Publish to delivery, for comparison with the adapters'
// cross-node figures.
func BenchmarkLocalBroker(b *testing.B) {
	br := wsroom.NewLocalBroker(wsroom.NewMemoryStore(0, 0))
	got := make(chan wsroom.Message, 1)
	unsub, err := br.Subscribe(context.Background(), "room", func(m wsroom.Message) { got <- m }, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer unsub()
	m := wsroom.Message{Data: make([]byte, 128)}
	var lat []time.Duration
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		if err := br.Publish(context.Background(), "room", m); err != nil {
			b.Fatal(err)
		}
		<-got
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}

// BenchmarkMuxRooms publishes 64-byte messages to the rooms of a Registry
// whose 100 clients each hold one connection of many rooms (wsroom.v3), and
// reports the cost per delivery when each connection is in 1 room and when
// it is in 10 (messages spread over the 10 rooms, so every message still
// reaches 100 clients). "one-room" is the same load over Registry.Handler,
// one connection per client, for comparison. The clients run in the same
// process, so the figures include their reading.
//
// Unpaced, messages go out as fast as the clients take them, and ns/delivery
// is wall time. The paced runs publish 500 messages a second (50k
// deliveries/s), a moderate load, and report the process's CPU time per
// delivery (cpu-ns/delivery); run them with a fixed count, e.g.
// -benchtime=2000x.
func BenchmarkMuxRooms(b *testing.B) {
	const clients = 100
	for _, tt := range []struct {
		name  string
		rooms int
		mux   bool
		paced bool
	}{
		{"one-room", 1, false, false}, {"mux/rooms=1", 1, true, false}, {"mux/rooms=10", 10, true, false},
		{"paced/mux/rooms=1", 1, true, true}, {"paced/mux/rooms=10", 10, true, true},
	} {
		b.Run(tt.name, func(b *testing.B) {
			if tt.paced && cpuTime() < 0 {
				b.Skip("the process's CPU time is not available here")
			}
			// At most 64 messages per client are in flight on average, but
			// one client may lag others by all of them: its buffer holds
			// them all, so that no client is evicted.
			reg := wsroom.NewRegistry(wsroom.WithPing(0, 0), wsroom.WithCodec(wsroom.JSON()), wsroom.WithSendBuffer(64*clients+64))
			mux := http.NewServeMux()
			mux.Handle("GET /rooms/{name}", reg.Handler(nil))
			mux.Handle("GET /mux", reg.MuxHandler())
			srv := httptest.NewServer(mux)
			defer srv.Close()
			defer reg.Close()
			url := "ws" + strings.TrimPrefix(srv.URL, "http")
			var delivered atomic.Int64
			var wg sync.WaitGroup
			ctx := context.Background()
			for range clients {
				var c *websocket.Conn
				var err error
				if tt.mux {
					c, _, err = websocket.Dial(ctx, url+"/mux", &websocket.DialOptions{Subprotocols: []string{wsroom.Subprotocol}})
				} else {
					c, _, err = websocket.Dial(ctx, url+"/rooms/r0", nil)
				}
				if err != nil {
					b.Fatal(err)
				}
				c.SetReadLimit(-1)
				if tt.mux {
					c.Read(ctx) // hello
				}
				for i := range tt.rooms {
					if tt.mux {
						c.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"op":"join","room":"r%d"}`, i))
						c.Read(ctx) // joined
					}
				}
				wg.Go(func() {
					for {
						if _, _, err := c.Read(ctx); err != nil {
							return
						}
						delivered.Add(1)
					}
				})
			}
			var rooms []*wsroom.Room
			for i := range tt.rooms {
				r, _ := reg.Room(fmt.Sprintf("r%d", i))
				for r.Len() < clients {
					time.Sleep(time.Millisecond)
				}
				rooms = append(rooms, r)
			}
			msg := []byte(`"` + strings.Repeat("x", 62) + `"`)
			var published int64
			const gap = 2 * time.Millisecond // paced: 500 messages a second
			b.ReportAllocs()
			b.ResetTimer()
			start, cpu0 := time.Now(), cpuTime()
			for b.Loop() {
				if tt.paced {
					time.Sleep(time.Until(start.Add(time.Duration(published) * gap)))
				}
				for published*clients-delivered.Load() > 64*clients {
					runtime.Gosched()
				}
				if err := rooms[published%int64(len(rooms))].Publish(ctx, msg); err != nil {
					b.Fatal(err)
				}
				published++
			}
			for delivered.Load() < published*clients {
				if s := reg.Stats(); s.ClosedSlow+s.ClosedWrite != 0 {
					b.Fatalf("clients were closed: %+v", s)
				}
				if tt.paced {
					time.Sleep(100 * time.Microsecond)
				} else {
					runtime.Gosched()
				}
			}
			elapsed, cpu := time.Since(start), cpuTime()-cpu0
			b.StopTimer()
			b.ReportMetric(float64(published*clients)/elapsed.Seconds(), "deliveries/s")
			if tt.paced {
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(published*clients), "cpu-ns/delivery")
			} else {
				b.ReportMetric(float64(elapsed.Nanoseconds())/float64(published*clients), "ns/delivery")
			}
			reg.Close()
			wg.Wait()
		})
	}
}
