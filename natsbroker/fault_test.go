package natsbroker

import (
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/brokertest"
)

// TestFaults runs brokertest.RunFaults on three nodes of a private NATS
// server with JetStream: the server killed and restarted on its store
// directory, the server stopped (SIGSTOP) for 3s, past the connections'
// ping timeout, then continued, and a wsroom node killed.
func TestFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault test takes about a minute")
	}
	srv := startNATS(t)
	prefix := "wsroomtest.f" + newID()
	signal := func(t *testing.T, sig syscall.Signal) {
		t.Helper()
		if err := srv.cmd.Process.Signal(sig); err != nil {
			t.Fatalf("signal %v to nats-server: %v", sig, err)
		}
	}
	brokertest.RunFaults(t, brokertest.Faults{
		New: func(t *testing.T) wsroom.Broker {
			// A ping every 500ms, the connection given up after two
			// unanswered: a 3s stop is past it.
			nc := connectTo(t, srv.url, nats.PingInterval(500*time.Millisecond), nats.MaxPingsOutstanding(2))
			return newNodeOn(t, nc, prefix)
		},
		Faults: []brokertest.Fault{
			{
				Name:   "kill nats-server, restart it (store kept)",
				Inject: func(*testing.T) { srv.kill() },
				Heal:   func(*testing.T) { srv.start() },
				Hold:   time.Second,
			},
			{
				Name:   "SIGSTOP nats-server 3s, SIGCONT",
				Inject: func(t *testing.T) { signal(t, syscall.SIGSTOP) },
				Heal:   func(t *testing.T) { signal(t, syscall.SIGCONT) },
				Hold:   3 * time.Second,
			},
		},
	})
}
