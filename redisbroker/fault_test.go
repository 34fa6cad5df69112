package redisbroker

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/brokertest"
)

// faultRedis is a redis-server of the test's own, on a port of its own,
// with an append-only file in a directory of its own, so that a restart
// keeps every write it acknowledged: its process is killed, stopped and
// continued by the fault test.
type faultRedis struct {
	t    testing.TB
	bin  string
	port int
	addr string
	dir  string

	cmd    *exec.Cmd
	exited chan struct{}
	out    *syncBuffer
}

// startFaultRedis starts a private redis-server, killed at cleanup. It
// skips t when the binary is missing, or fails it when CI is set.
func startFaultRedis(t testing.TB) *faultRedis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		msg := "redis-server binary not found: install it (apt-get install redis-server) to run this test"
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
	p := &faultRedis{t: t, bin: bin, port: port, addr: fmt.Sprintf("127.0.0.1:%d", port), dir: t.TempDir(), out: &syncBuffer{}}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("redis-server output:\n%s", p.out.String())
		}
	})
	p.start()
	return p
}

// start starts the server on its directory, reading back its append-only
// file, and waits until it answers.
func (p *faultRedis) start() {
	p.t.Helper()
	// appendfsync everysec: a killed process (not a crashed machine) loses
	// nothing, since Redis writes the file before it replies.
	p.cmd = exec.Command(p.bin, "--port", strconv.Itoa(p.port), "--bind", "127.0.0.1", "--dir", p.dir,
		"--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no", "--loglevel", "warning")
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.exited = make(chan struct{})
	cmd, exited := p.cmd, p.exited
	go func() {
		cmd.Wait()
		close(exited)
	}()
	c := redis.NewClient(&redis.Options{Addr: p.addr, DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		select {
		case <-exited:
			p.t.Fatalf("redis-server on port %d exited: %s", p.port, p.out.String())
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("redis-server on port %d did not start: %v\n%s", p.port, err, p.out.String())
		}
	}
}

// kill kills the server and waits for it to exit.
func (p *faultRedis) kill() {
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Kill()
	<-p.exited
	p.cmd = nil
}

func (p *faultRedis) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v to redis-server: %v", sig, err)
	}
}

// TestFaults runs brokertest.RunFaults on three nodes of a private Redis:
// Redis killed and restarted with its data, Redis stopped (SIGSTOP) for 3s,
// past the Brokers' ping timeout, then continued, and a wsroom node killed.
func TestFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault test takes about a minute")
	}
	r := startFaultRedis(t)
	prefix := "faults-" + newEpoch()[:8] + ":"
	// A ping every 500ms when idle, a reconnection after 1s without an
	// answer: a 3s stop is past it.
	fast := func(c *config) { c.healthInterval, c.pingTimeout = 500*time.Millisecond, time.Second }
	brokertest.RunFaults(t, brokertest.Faults{
		New: func(t *testing.T) wsroom.Broker {
			c := newClientAt(t, r.addr)
			b := New(c, WithPrefix(prefix), WithMaxAge(testMaxAge), fast)
			t.Cleanup(func() { b.Close() })
			return b
		},
		Faults: []brokertest.Fault{
			{
				Name:   "kill Redis, restart it (AOF kept)",
				Inject: func(*testing.T) { r.kill() },
				Heal:   func(*testing.T) { r.start() },
				Hold:   time.Second,
			},
			{
				Name:   "SIGSTOP Redis 3s, SIGCONT",
				Inject: func(t *testing.T) { r.signal(t, syscall.SIGSTOP) },
				Heal:   func(t *testing.T) { r.signal(t, syscall.SIGCONT) },
				Hold:   3 * time.Second,
			},
		},
	})
}
