package load

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsroom/wsroom"
)

// TestRunWsroom runs a tiny ladder against an in-process wsroom room.
func TestRunWsroom(t *testing.T) {
	room := wsroom.New(wsroom.WithPing(0, 0))
	srv := httptest.NewServer(room.Handler())
	defer srv.Close()
	defer room.Close()

	const clients = 10
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := Run(ctx, Config{
		URL:     "ws" + strings.TrimPrefix(srv.URL, "http") + "/",
		Clients: clients,
		Rates:   []float64{1000, 2000}, // deliveries/s: 100 and 200 messages/s
		Step:    200 * time.Millisecond,
		Drain:   2 * time.Second,
		Settle:  50 * time.Millisecond,
		PID:     os.Getpid(),
		MaxP99:  2 * time.Second, // the race detector is slow
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Steps) != 2 {
		t.Fatalf("%d steps, want 2: %+v", len(res.Steps), res.Steps)
	}
	for i, s := range res.Steps {
		wantPub := s.PublishRate * 0.2
		if float64(s.Published) < 0.8*wantPub || float64(s.Published) > 1.2*wantPub+2 {
			t.Errorf("step %d: published %d, want about %.0f", i, s.Published, wantPub)
		}
		if s.Loss != 0 || s.Delivered != s.Published*clients || s.Expected != s.Published*clients {
			t.Errorf("step %d: published %d, delivered %d, expected %d, loss %d", i, s.Published, s.Delivered, s.Expected, s.Loss)
		}
		if s.Dropped != 0 || s.Latency.P50 <= 0 || s.Latency.P99 < s.Latency.P50 || s.Latency.Max < s.Latency.P99 {
			t.Errorf("step %d: %+v", i, s)
		}
		if !s.OK {
			t.Errorf("step %d failed: %+v", i, s)
		}
	}
	if res.Dropped != 0 || res.RSSBefore == 0 || res.RSSAfter == 0 {
		t.Errorf("result %+v", res)
	}
	if best, ok := res.Sustained(); !ok || best.Target != 2000 {
		t.Errorf("sustained %v %v", best.Target, ok)
	}

	var md, csv, png bytes.Buffer
	WriteMarkdown(&md, "wsroom", res)
	if !strings.Contains(md.String(), "Sustained: 2k deliveries/s") {
		t.Errorf("markdown:\n%s", md.String())
	}
	if err := WriteCSV(&csv, "wsroom", res); err != nil || strings.Count(csv.String(), "\n") != 3 {
		t.Errorf("csv %v:\n%s", err, csv.String())
	}
	name, back, err := ReadCSV(strings.NewReader(csv.String()))
	if err != nil || name != "wsroom" || len(back.Steps) != 2 || back.Steps[1].Target != 2000 || back.Steps[1].Latency.P99 != res.Steps[1].Latency.P99 {
		t.Errorf("ReadCSV: %q %+v %v", name, back, err)
	}
	if err := WritePlot(&png, []Series{{"wsroom", res}}); err != nil || !bytes.HasPrefix(png.Bytes(), []byte("\x89PNG")) {
		t.Errorf("plot: %v", err)
	}
}

// TestRunIdle connects idle clients only.
func TestRunIdle(t *testing.T) {
	room := wsroom.New(wsroom.WithPing(0, 0))
	srv := httptest.NewServer(room.Handler())
	defer srv.Close()
	defer room.Close()
	res, err := Run(context.Background(), Config{
		URL: "ws" + strings.TrimPrefix(srv.URL, "http"), Clients: 20, Idle: true,
		Settle: 10 * time.Millisecond, PID: os.Getpid(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Steps) != 0 || res.Clients != 20 || res.RSSAfter == 0 || res.Dropped != 0 {
		t.Fatalf("%+v", res)
	}
}

func TestRunRefusesRemote(t *testing.T) {
	if _, err := Run(context.Background(), Config{URL: "ws://192.0.2.1:80/", Clients: 1, Rates: []float64{1}}); err == nil {
		t.Fatal("a non-loopback target was accepted")
	}
}

// mergeServer broadcasts like the gorilla chat example: the messages it
// reads together go out to every client in one frame, separated by '\n'.
type mergeServer struct {
	mu     sync.Mutex
	conns  map[net.Conn]*sync.Mutex
	merges atomic.Int64 // frames sent with more than one message
}

func (s *mergeServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + wsGUID))
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
		base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n")
	brw.Flush()
	s.mu.Lock()
	s.conns[conn] = new(sync.Mutex)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
	}()
	var merged []byte
	for {
		var hdr [6]byte
		if _, err := io.ReadFull(brw, hdr[:]); err != nil {
			return
		}
		n := int(hdr[1] & 0x7f)
		p := make([]byte, n)
		if _, err := io.ReadFull(brw, p); err != nil {
			return
		}
		for i := range p {
			p[i] ^= hdr[2+i&3]
		}
		if hdr[0]&0x0f != OpText {
			return
		}
		if len(merged) > 0 {
			merged = append(merged, '\n')
		}
		merged = append(merged, p...)
		if brw.Reader.Buffered() > 0 {
			continue // more messages already here: merge them
		}
		if bytes.IndexByte(merged, '\n') >= 0 {
			s.merges.Add(1)
		}
		frame := serverFrame(true, OpText, merged)
		merged = merged[:0]
		s.mu.Lock()
		for c, mu := range s.conns {
			mu.Lock()
			c.Write(frame)
			mu.Unlock()
		}
		s.mu.Unlock()
	}
}

// TestRunMergedFrames counts every message of frames that hold several.
func TestRunMergedFrames(t *testing.T) {
	ms := &mergeServer{conns: map[net.Conn]*sync.Mutex{}}
	srv := httptest.NewServer(ms)
	defer srv.Close()
	const clients = 5
	res, err := Run(context.Background(), Config{
		URL:     "ws" + strings.TrimPrefix(srv.URL, "http") + "/",
		Clients: clients,
		Rates:   []float64{20000}, // 4,000 messages/s: several per tick
		Step:    200 * time.Millisecond,
		Settle:  10 * time.Millisecond,
		MaxP99:  2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	s := res.Steps[0]
	if s.Published < 400 || s.Loss != 0 || s.Delivered != s.Published*clients || !s.OK {
		t.Fatalf("published %d, delivered %d, loss %d, ok %v", s.Published, s.Delivered, s.Loss, s.OK)
	}
	if ms.merges.Load() == 0 {
		t.Fatal("the server merged no messages: the test tested nothing")
	}
}
