package natsbroker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/wsroom/wsroom"
)

const startHint = "start one with JetStream: nats-server -a 127.0.0.1 -p 4222 -js (or set NATS_URL)"

func natsURL() string {
	if u := os.Getenv("NATS_URL"); u != "" {
		return u
	}
	return "nats://127.0.0.1:4222"
}

// connect returns a connection to the test server, closed at cleanup. It
// skips t when no server answers, or fails it when CI is set.
func connect(t testing.TB, opts ...nats.Option) *nats.Conn {
	t.Helper()
	opts = append([]nats.Option{nats.Timeout(2 * time.Second), nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(natsURL(), opts...)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("NATS server at %s unreachable (%v): %s", natsURL(), err, startHint)
		}
		t.Skipf("NATS server at %s unreachable (%v): %s", natsURL(), err, startHint)
	}
	t.Cleanup(nc.Close)
	return nc
}

// testPrefix returns a subject prefix unique to this run and deletes its
// stream and presence bucket when t ends.
func testPrefix(t testing.TB) string {
	t.Helper()
	p := "wsroomtest.r" + newID()
	nc := connect(t)
	t.Cleanup(func() {
		js, err := jetstream.New(nc)
		if err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, name := range []string{streamName(p), "KV_" + presenceBucket(p)} {
			if err := js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Errorf("deleting stream %s: %v", name, err)
			}
		}
	})
	return p
}

// newNode returns a Broker on a connection of its own, closed at cleanup.
func newNode(t testing.TB, prefix string, opts ...Option) *Broker {
	t.Helper()
	return newNodeOn(t, connect(t), prefix, opts...)
}

func newNodeOn(t testing.TB, nc *nats.Conn, prefix string, opts ...Option) *Broker {
	t.Helper()
	b, err := New(context.Background(), nc, append([]Option{WithPrefix(prefix)}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// sink collects one subscription's deliveries.
type sink struct {
	mu   sync.Mutex
	msgs []wsroom.Message
	more chan struct{}
}

func subscribe(t testing.TB, b *Broker, room string) *sink {
	t.Helper()
	s := &sink{more: make(chan struct{}, 1)}
	unsub, err := b.Subscribe(context.Background(), room, func(m wsroom.Message) {
		s.mu.Lock()
		s.msgs = append(s.msgs, m)
		s.mu.Unlock()
		select {
		case s.more <- struct{}{}:
		default:
		}
	}, nil)
	if err != nil {
		t.Fatalf("Subscribe(%q): %v", room, err)
	}
	t.Cleanup(unsub)
	return s
}

func (s *sink) get() []wsroom.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]wsroom.Message(nil), s.msgs...)
}

// wait returns the deliveries once there are at least n, or fails t after d.
func (s *sink) wait(t testing.TB, n int, d time.Duration) []wsroom.Message {
	t.Helper()
	deadline := time.After(d)
	for {
		if got := s.get(); len(got) >= n {
			return got
		}
		select {
		case <-s.more:
		case <-deadline:
			t.Fatalf("got %d deliveries after %v, want %d", len(s.get()), d, n)
		}
	}
}

func seqs(ms []wsroom.Message) []uint64 {
	var out []uint64
	for _, m := range ms {
		out = append(out, m.Seq)
	}
	return out
}

// startServer starts a NATS server with JetStream of the test's own, on a
// free port and a temporary store, stopped at cleanup, and returns its URL.
// It skips t when no nats-server binary is found, or fails it when CI is
// set. Tests that may upset a server (one that crashes under a load, say)
// use it rather than the shared one.
func startServer(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		bin, err = exec.LookPath("/usr/sbin/nats-server")
	}
	if err != nil {
		msg := "nats-server binary not found: install it to run this test"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", t.TempDir())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("nats-server output:\n%s", out.String())
		}
	})
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		nc, err := nats.Connect(url)
		if err == nil {
			nc.Close()
			return url
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server on port %d did not start: %v\n%s", port, err, out.String())
		}
	}
}

// connectTo returns a connection to the server at url, closed at cleanup.
func connectTo(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	opts = append([]nats.Option{nats.Timeout(2 * time.Second), nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}
