package redisbroker

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Test clusters: redis-servers of the test's own, in cluster mode, on free
// ports, in a temporary directory, killed at cleanup (also when the test
// fails). Other tests of the package call startCluster and the methods of
// testCluster.

// clusterNodeTimeout is the cluster-node-timeout of test clusters: a master
// unreachable for that long is failed over to its replica.
const clusterNodeTimeout = 1000 * time.Millisecond

// clusterWait bounds how long the harness waits for a cluster to settle.
const clusterWait = 60 * time.Second

// testCluster is a Redis Cluster of the test's own.
type testCluster struct {
	t     testing.TB
	dir   string
	bin   string
	nodes []*clusterNode
}

// clusterNode is one redis-server of a testCluster.
type clusterNode struct {
	c    *testCluster
	port int
	addr string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	out    *syncBuffer
	paused bool
}

// requireCluster returns the paths of redis-server and redis-cli, skipping
// t when either is missing, or failing it when CI is set.
func requireCluster(t testing.TB) (server, cli string) {
	t.Helper()
	server, err1 := exec.LookPath("redis-server")
	cli, err2 := exec.LookPath("redis-cli")
	if err1 != nil || err2 != nil {
		msg := "redis-server or redis-cli not found: install them (apt-get install redis-server) to run the Redis Cluster tests"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return server, cli
}

// freePort returns a TCP port of 127.0.0.1 that nothing listens on, and
// whose cluster bus port (port+10000) is free too.
func freePort(t testing.TB) int {
	t.Helper()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if port+10000 > 65535 {
			continue
		}
		bus, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port+10000))
		if err != nil {
			continue
		}
		bus.Close()
		return port
	}
	t.Fatal("no free port pair for a cluster node")
	return 0
}

// startCluster starts a cluster of masters masters, each with replicas
// replicas, and waits until it serves every slot. With three masters or
// more it is made by redis-cli --cluster create; with fewer, the slots are
// assigned node by node.
func startCluster(t testing.TB, masters, replicas int) *testCluster {
	t.Helper()
	server, cli := requireCluster(t)
	c := &testCluster{t: t, dir: t.TempDir(), bin: server}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			n.kill()
		}
		if t.Failed() {
			for _, n := range c.nodes {
				t.Logf("redis-server %s output:\n%s", n.addr, n.out.String())
			}
		}
	})
	for range masters * (1 + replicas) {
		port := freePort(t)
		n := &clusterNode{c: c, port: port, addr: fmt.Sprintf("127.0.0.1:%d", port), out: &syncBuffer{}}
		c.nodes = append(c.nodes, n)
		n.start()
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	if masters >= 3 {
		args := []string{"--cluster", "create"}
		for _, n := range c.nodes {
			args = append(args, n.addr)
		}
		args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
		out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	} else {
		c.assemble(ctx, masters, replicas)
	}
	c.waitHealthy(ctx)
	return c
}

// assemble makes a cluster by hand: slots split between the first masters
// nodes, the others replicas, in turn, of each master.
func (c *testCluster) assemble(ctx context.Context, masters, replicas int) {
	t := c.t
	for i, n := range c.nodes {
		cl := n.client()
		if i > 0 {
			if err := cl.ClusterMeet(ctx, "127.0.0.1", strconv.Itoa(c.nodes[0].port)).Err(); err != nil {
				t.Fatalf("CLUSTER MEET from %s: %v", n.addr, err)
			}
		}
		if i < masters {
			from, to := 16384*i/masters, 16384*(i+1)/masters-1
			if err := cl.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", from, to).Err(); err != nil {
				t.Fatalf("CLUSTER ADDSLOTSRANGE on %s: %v", n.addr, err)
			}
		}
		cl.Close()
	}
	for i := masters; i < len(c.nodes); i++ {
		master := c.nodes[(i-masters)%masters]
		mc := master.client()
		id, err := mc.Do(ctx, "CLUSTER", "MYID").Text()
		mc.Close()
		if err != nil {
			t.Fatal(err)
		}
		rc := c.nodes[i].client()
		for {
			// The replica must know the master first.
			err = rc.Do(ctx, "CLUSTER", "REPLICATE", id).Err()
			if err == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		rc.Close()
		if err != nil {
			t.Fatalf("CLUSTER REPLICATE on %s: %v", c.nodes[i].addr, err)
		}
	}
}

// start starts the node's server with its directory's cluster config, if
// any, and waits until it answers.
func (n *clusterNode) start() {
	t := n.c.t
	t.Helper()
	dir := filepath.Join(n.c.dir, strconv.Itoa(n.port))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(n.c.bin, "--port", strconv.Itoa(n.port), "--bind", "127.0.0.1",
		"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
		"--cluster-node-timeout", strconv.Itoa(int(clusterNodeTimeout.Milliseconds())),
		"--save", "", "--appendonly", "no", "--dir", dir, "--daemonize", "no", "--loglevel", "warning")
	cmd.Stdout, cmd.Stderr = n.out, n.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	n.mu.Lock()
	n.cmd, n.exited, n.paused = cmd, exited, false
	n.mu.Unlock()
	c := redis.NewClient(&redis.Options{Addr: n.addr, DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
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
			t.Fatalf("redis-server on port %d exited: %s", n.port, n.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on port %d did not start: %v\n%s", n.port, err, n.out.String())
		}
	}
}

// client returns a plain client of the node; the caller closes it.
func (n *clusterNode) client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: n.addr, DialTimeout: 500 * time.Millisecond, ReadTimeout: time.Second, MaxRetries: -1})
}

// up reports whether the node's process is up and not paused.
func (n *clusterNode) up() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil && !n.paused
}

// kill kills the node's server, losing what it holds in memory, and waits
// for it to exit.
func (n *clusterNode) kill() {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.cmd = nil
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-exited
}

// pause stops the node's process with SIGSTOP: its connections stay open
// and silent.
func (n *clusterNode) pause() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil && !n.paused {
		n.cmd.Process.Signal(syscall.SIGSTOP)
		n.paused = true
	}
}

// resume continues a paused node with SIGCONT.
func (n *clusterNode) resume() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil && n.paused {
		n.cmd.Process.Signal(syscall.SIGCONT)
		n.paused = false
	}
}

// newClient returns a client of the cluster, closed when t ends.
func (c *testCluster) newClient(t testing.TB) *redis.ClusterClient {
	t.Helper()
	var addrs []string
	for _, n := range c.nodes {
		addrs = append(addrs, n.addr)
	}
	cl := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second})
	t.Cleanup(func() { cl.Close() })
	return cl
}

// newBroker returns a Broker on a cluster client of its own, closed when t
// ends.
func (c *testCluster) newBroker(t testing.TB, opts ...Option) *Broker {
	t.Helper()
	b := New(c.newClient(t), append([]Option{WithMaxAge(testMaxAge)}, opts...)...)
	t.Cleanup(func() { b.Close() })
	return b
}

// node returns the node at addr, or nil.
func (c *testCluster) node(addr string) *clusterNode {
	for _, n := range c.nodes {
		if n.addr == addr {
			return n
		}
	}
	return nil
}

// slots reads the slot map from a node that is up, not paused, and in a
// cluster whose state is ok, or returns nil.
func (c *testCluster) slots(ctx context.Context) []slotRange {
	for _, n := range c.nodes {
		if !n.up() {
			continue
		}
		cl := n.client()
		info, err := cl.ClusterInfo(ctx).Result()
		if err != nil || !strings.Contains(info, "cluster_state:ok") {
			cl.Close()
			continue
		}
		s, err := cl.ClusterShards(ctx).Result()
		cl.Close()
		if m := slotMap(s); err == nil && len(m) > 0 {
			return m
		}
	}
	return nil
}

// masterOf returns the node that is master of key's slot.
func (c *testCluster) masterOf(key string) *clusterNode {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	s := slot(key)
	for {
		for _, r := range c.slots(ctx) {
			if r.start <= s && s <= r.end {
				if n := c.node(r.addr); n != nil {
					return n
				}
			}
		}
		if ctx.Err() != nil {
			c.t.Fatalf("no master of slot %d", s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// masters returns the nodes that are masters of a slot range.
func (c *testCluster) masters() []*clusterNode {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	seen := map[string]bool{}
	var out []*clusterNode
	for _, r := range c.slots(ctx) {
		if a := r.addr; !seen[a] {
			seen[a] = true
			out = append(out, c.node(a))
		}
	}
	return out
}

// waitHealthy waits until every running node says cluster_state:ok, the
// running nodes agree on the slot map, every slot is served and every
// replica's link to its master is up.
func (c *testCluster) waitHealthy(ctx context.Context) {
	c.t.Helper()
	var last string
	for {
		ok, why := c.healthy(ctx)
		if ok {
			return
		}
		last = why
		select {
		case <-ctx.Done():
			c.t.Fatalf("cluster not healthy within %v: %s", clusterWait, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *testCluster) healthy(ctx context.Context) (bool, string) {
	var ref string
	for _, n := range c.nodes {
		if !n.up() {
			continue
		}
		cl := n.client()
		info, err := cl.ClusterInfo(ctx).Result()
		if err != nil || !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_slots_ok:16384") {
			cl.Close()
			return false, fmt.Sprintf("%s: %v %s", n.addr, err, info)
		}
		shards, err := cl.ClusterShards(ctx).Result()
		if err != nil {
			cl.Close()
			return false, err.Error()
		}
		var sb strings.Builder
		for _, r := range slotMap(shards) {
			fmt.Fprintf(&sb, "%d-%d:%s;", r.start, r.end, r.addr)
		}
		if ref == "" {
			ref = sb.String()
		} else if ref != sb.String() {
			cl.Close()
			return false, "nodes disagree on the slot map"
		}
		repl, err := cl.Info(ctx, "replication").Result()
		cl.Close()
		if err != nil {
			return false, err.Error()
		}
		if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
			return false, n.addr + ": replica link down"
		}
		if strings.Contains(repl, "role:slave") && strings.Contains(repl, "master_sync_in_progress:1") {
			return false, n.addr + ": replica syncing"
		}
	}
	return true, ""
}

// failover kills the master of key's slot, waits until a replica is
// promoted in its place and the cluster is healthy again (but for the dead
// node), and returns the killed node.
func (c *testCluster) failover(key string) *clusterNode {
	c.t.Helper()
	old := c.masterOf(key)
	old.kill()
	c.waitNewMaster(key, old)
	return old
}

// waitNewMaster waits until a node other than old is master of key's slot
// and the running nodes are healthy.
func (c *testCluster) waitNewMaster(key string, old *clusterNode) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	for c.masterOf(key) == old {
		if ctx.Err() != nil {
			c.t.Fatalf("no replica of %s promoted within %v", old.addr, clusterWait)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.waitHealthy(ctx)
}

// restart starts a killed node again, empty but for its cluster config, and
// waits until the cluster is healthy: a master that was failed over comes
// back as a replica of its successor.
func (c *testCluster) restart(n *clusterNode) {
	c.t.Helper()
	n.start()
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	c.waitHealthy(ctx)
}

// pauseMaster stops the master of key's slot with SIGSTOP for longer than
// the node timeout, until a replica is promoted, then resumes it, and waits
// until the cluster is healthy; the old master comes back as a replica.
func (c *testCluster) pauseMaster(key string) *clusterNode {
	c.t.Helper()
	old := c.masterOf(key)
	old.pause()
	defer old.resume()
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	for c.masterOf(key) == old {
		if ctx.Err() != nil {
			c.t.Fatalf("no replica of paused %s promoted within %v", old.addr, clusterWait)
		}
		time.Sleep(50 * time.Millisecond)
	}
	old.resume()
	c.waitHealthy(ctx)
	return old
}

// TestClusterHarness checks the harness itself: a cluster of three masters
// with a replica each serves every slot, a key's master is found, and a
// failover promotes the replica.
func TestClusterHarness(t *testing.T) {
	c := startCluster(t, 3, 1)
	if got := len(c.masters()); got != 3 {
		t.Fatalf("%d masters, want 3", got)
	}
	cl := c.newClient(t)
	if err := cl.Set(t.Context(), "{x}k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	mc := c.masterOf("{x}k").client()
	defer mc.Close()
	if n, err := mc.Wait(t.Context(), 1, 5*time.Second).Result(); err != nil || n != 1 {
		t.Fatalf("WAIT 1 = %d, %v", n, err)
	}
	old := c.failover("{x}k")
	// go-redis reads the slot map again on a MOVED, or when told.
	cl.ReloadState(t.Context())
	deadline := time.Now().Add(wait)
	for {
		v, err := cl.Get(t.Context(), "{x}k").Result()
		if err == nil && v == "v" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after failover GET = %q, %v; want v", v, err)
		}
		cl.ReloadState(t.Context())
		time.Sleep(100 * time.Millisecond)
	}
	c.restart(old)
	if c.masterOf("{x}k") == old {
		t.Error("the restarted master took its slots back")
	}
}
