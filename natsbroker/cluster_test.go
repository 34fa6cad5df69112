package natsbroker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// This file starts a NATS cluster of the test's own: three nats-servers
// with JetStream, on free ports, each with a store directory of its own,
// routed to each other. The tests of the package may kill, restart, stop
// and resume its servers one by one.

// clusterSize is how many servers startCluster starts.
const clusterSize = 3

// clusterWait bounds how long the cluster helpers wait for the cluster to
// settle: a meta leader, a stream leader, replicas that are current.
const clusterWait = 30 * time.Second

// natsCluster is a NATS cluster of the test's own. Its methods are called
// from the test's goroutine.
type natsCluster struct {
	t       testing.TB
	name    string
	servers []*natsProc
}

// startCluster starts three nats-servers with JetStream in one cluster and
// waits until JetStream has a meta leader. They are killed at cleanup,
// whether the test passed or not, and their store directories removed;
// their output is logged if the test failed. It skips t when the
// nats-server binary is missing, or fails it when CI is set.
func startCluster(t testing.TB) *natsCluster {
	t.Helper()
	bin := natsServerBin(t)
	ports := freePorts(t, 2*clusterSize)
	c := &natsCluster{t: t, name: "wsroomtest-" + newID()}
	for i := range clusterSize {
		var routes []string
		for j := range clusterSize {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ports[clusterSize+j]))
			}
		}
		c.servers = append(c.servers, &natsProc{
			t: t, bin: bin, port: ports[i], url: fmt.Sprintf("nats://127.0.0.1:%d", ports[i]),
			dir: t.TempDir(), out: &syncBuffer{},
			args: []string{"-n", c.serverName(i), "--cluster_name", c.name,
				"--cluster", fmt.Sprintf("nats://127.0.0.1:%d", ports[clusterSize+i]),
				"--routes", strings.Join(routes, ",")},
		})
	}
	t.Cleanup(func() {
		for i, p := range c.servers {
			p.kill()
			if t.Failed() {
				t.Logf("nats-server %s output:\n%s", c.serverName(i), p.out.String())
			}
		}
	})
	for _, p := range c.servers {
		p.launch()
	}
	for i := range c.servers {
		c.waitJetStream(i)
	}
	c.waitPeers()
	return c
}

// waitPeers waits until the meta leader can place a stream on all three
// servers: a meta leader may answer before it has heard from every peer,
// and a replicated stream made then fails with "no suitable peers for
// placement". It makes and removes a probe stream of three replicas.
func (c *natsCluster) waitPeers() {
	c.t.Helper()
	deadline := time.Now().Add(clusterWait)
	var err error
	for time.Now().Before(deadline) {
		if err = probeStream(c.servers[0].url); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("nats cluster: no stream of %d replicas could be placed after %v: %v", clusterSize, clusterWait, err)
}

func probeStream(url string) error {
	nc, js, err := jsConnect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	name := "PROBE_" + strings.ToUpper(newID())
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{"probe." + name}, Replicas: clusterSize, Storage: jetstream.MemoryStorage}); err != nil {
		return err
	}
	return js.DeleteStream(ctx, name)
}

func (c *natsCluster) serverName(i int) string { return "n" + strconv.Itoa(i) }

// URLs returns the client URL of every server.
func (c *natsCluster) URLs() []string {
	var urls []string
	for _, p := range c.servers {
		urls = append(urls, p.url)
	}
	return urls
}

// URL returns the client URLs of every server, comma-separated, as
// nats.Connect takes them.
func (c *natsCluster) URL() string { return strings.Join(c.URLs(), ",") }

// connect returns a connection to server i, which moves to the others
// when i is down (it knows every server's URL), closed at cleanup.
func (c *natsCluster) connect(t testing.TB, i int, opts ...nats.Option) *nats.Conn {
	t.Helper()
	urls := c.URLs()
	urls = append(urls[i:], urls[:i]...)
	return connectTo(t, strings.Join(urls, ","), append([]nats.Option{nats.DontRandomize()}, opts...)...)
}

// Kill kills server i and waits for it to exit.
func (c *natsCluster) Kill(i int) { c.servers[i].kill() }

// Restart starts server i again, on its store, after Kill, and waits until
// its JetStream answers.
func (c *natsCluster) Restart(i int) {
	c.t.Helper()
	c.servers[i].launch()
	c.waitJetStream(i)
}

// Stop suspends server i (SIGSTOP): it holds its connections open and
// answers nothing, like a server that hangs, until Resume.
func (c *natsCluster) Stop(i int) { c.signal(i, syscall.SIGSTOP) }

// Resume lets server i run again after Stop (SIGCONT).
func (c *natsCluster) Resume(i int) { c.signal(i, syscall.SIGCONT) }

func (c *natsCluster) signal(i int, sig syscall.Signal) {
	c.t.Helper()
	p := c.servers[i]
	if p.cmd == nil {
		c.t.Fatalf("server %s is not running", c.serverName(i))
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		c.t.Fatalf("signalling server %s: %v", c.serverName(i), err)
	}
}

// waitJetStream waits until server i answers JetStream requests for the
// account, which takes a meta leader.
func (c *natsCluster) waitJetStream(i int) {
	c.t.Helper()
	p := c.servers[i]
	deadline := time.Now().Add(clusterWait)
	var err error
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			c.t.Fatalf("nats-server %s exited:\n%s", c.serverName(i), p.out.String())
		default:
		}
		if err = accountInfo(p.url); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("nats-server %s: JetStream not ready after %v: %v", c.serverName(i), clusterWait, err)
}

// jsConnect connects to url once, without reconnecting, for JetStream.
func jsConnect(url string) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(url, nats.Timeout(time.Second), nats.NoReconnect())
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

func accountInfo(url string) error {
	nc, js, err := jsConnect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = js.AccountInfo(ctx)
	return err
}

// WaitStream waits until stream has a leader and as many replicas as it is
// configured with (followers included), every one current, and returns the
// index of its leader. It asks through the servers that are up in turn.
func (c *natsCluster) WaitStream(stream string) int {
	c.t.Helper()
	deadline := time.Now().Add(clusterWait)
	var why error
	for time.Now().Before(deadline) {
		for i, p := range c.servers {
			if p.cmd == nil {
				continue
			}
			leader, err := streamSettled(p.url, stream)
			if err == nil {
				return leader
			}
			why = fmt.Errorf("through %s: %w", c.serverName(i), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("stream %s did not settle within %v: %v", stream, clusterWait, why)
	return -1
}

// Follower returns the index of a server that holds a replica of stream
// and is not its leader, once it has settled.
func (c *natsCluster) Follower(stream string) int {
	c.t.Helper()
	leader := c.WaitStream(stream)
	for i, p := range c.servers {
		if i != leader && p.cmd != nil {
			return i
		}
	}
	c.t.Fatalf("stream %s has no follower", stream)
	return -1
}

// streamSettled asks the server at url about stream and returns the
// index (from the server name "n<i>") of its leader if every replica is
// current.
func streamSettled(url, stream string) (int, error) {
	nc, err := nats.Connect(url, nats.Timeout(time.Second), nats.NoReconnect())
	if err != nil {
		return -1, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return -1, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return -1, err
	}
	info := s.CachedInfo()
	ci := info.Cluster
	if ci == nil || ci.Leader == "" {
		return -1, errors.New("no leader")
	}
	if len(ci.Replicas) != info.Config.Replicas-1 {
		return -1, fmt.Errorf("%d followers, want %d", len(ci.Replicas), info.Config.Replicas-1)
	}
	if i := slices.IndexFunc(ci.Replicas, func(p *jetstream.PeerInfo) bool { return !p.Current || p.Offline }); i >= 0 {
		return -1, fmt.Errorf("replica %s not current", ci.Replicas[i].Name)
	}
	leader, err := strconv.Atoi(strings.TrimPrefix(ci.Leader, "n"))
	if err != nil {
		return -1, fmt.Errorf("leader %q is not a server of the cluster", ci.Leader)
	}
	return leader, nil
}
