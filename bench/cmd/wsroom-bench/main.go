// Command wsroom-bench measures WebSocket broadcast servers on loopback: it
// connects C subscribers, publishes messages at a ladder of rates from
// separate publisher connections and reports, for each step, the deliveries
// per second achieved, loss, latency percentiles, server CPU per delivery
// and dropped clients, plus the server's memory per idle connection.
//
// It starts the server itself (-server NAME runs the binary NAME from the
// -bin folder, built from ../../servers) or loads one already running
// (-url ws://127.0.0.1:PORT/ -pid PID). Server and tool each get a core of
// their own: the server runs under taskset -c 0, and the tool re-executes
// itself under taskset -c 1 (-pin=false turns both off).
//
//	wsroom-bench -server wsroom -c 1000 -rates 10k,50k,100k,200k,500k,1M,2M -step 5s
//	wsroom-bench -server gorilla -idle 50000
//	wsroom-bench -url ws://127.0.0.1:8080/ -pid 1234 -c 100 -rates 1k,10k
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"syscall"
	"time"

	"github.com/wsroom/wsroom/bench/internal/load"
)

const pinnedEnv = "WSROOM_BENCH_PINNED"

func main() {
	var (
		server    = flag.String("server", "", "start this server: wsroom, minimal, gorilla, melody, gws or blast")
		binDir    = flag.String("bin", "", "folder of the server binaries (default: this program's folder)")
		url       = flag.String("url", "", "load a running server at this ws:// URL (loopback only)")
		pid       = flag.Int("pid", 0, "process id of the server at -url, for CPU and memory figures")
		clients   = flag.Int("c", 1000, "subscribers")
		idle      = flag.Int("idle", 0, "connect this many idle subscribers, report memory per connection and stop")
		size      = flag.Int("size", 64, "message size in bytes (36 to 125)")
		rates     = flag.String("rates", "10k,50k,100k,200k,500k,1M,2M", "ladder of deliveries per second (k = 1000, M = 1000000)")
		step      = flag.Duration("step", 5*time.Second, "length of each step")
		drain     = flag.Duration("drain", 3*time.Second, "longest wait for late deliveries after each step")
		settle    = flag.Duration("settle", 2*time.Second, "wait after connecting before reading the server's memory")
		pubs      = flag.Int("pubs", 1, "publisher connections")
		all       = flag.Bool("all", false, "run every step even after one fails")
		maxP99    = flag.Duration("max-p99", 250*time.Millisecond, "a step with a p99 at or above this fails")
		rbuf      = flag.Int("rbuf", 0, "read buffer per connection in bytes (0: 16 KiB up to 2,000 clients, 4 KiB above, 1 KiB idle)")
		pin       = flag.Bool("pin", true, "run the server on CPU -server-cpu and this tool on CPU -tool-cpu (taskset)")
		serverCPU = flag.String("server-cpu", "0", "CPU list for the server (taskset -c)")
		toolCPU   = flag.String("tool-cpu", "1", "CPU list for this tool (taskset -c)")
		csvPath   = flag.String("csv", "", "also write the steps as CSV to this file")
		plotPath  = flag.String("plot", "", "also draw the steps as a PNG chart in this file")
		quiet     = flag.Bool("q", false, "no progress on stderr")
		cpuProf   = flag.String("cpuprofile", "", "write this tool's CPU profile to this file")
		merge     = flag.String("merge-plot", "", "draw the CSV files given as arguments into this PNG file, one line each, and stop")
	)
	flag.Parse()
	if *merge != "" {
		mergePlot(*merge, flag.Args())
		return
	}
	if *pin && os.Getenv(pinnedEnv) == "" {
		pinSelf(*toolCPU)
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		var l1 float64
		if _, err := fmt.Sscan(string(b), &l1); err == nil && l1 > 1 && !*quiet {
			fmt.Fprintf(os.Stderr, "warning: load average %.2f: other work is running, figures will be noisy\n", l1)
		}
	}
	if (*server == "") == (*url == "") {
		fatalf("give either -server NAME or -url ws://127.0.0.1:PORT/")
	}
	ladder, err := load.ParseRates(*rates)
	if err != nil && *idle == 0 {
		fatalf("%v", err)
	}
	if _, err := load.RaiseNoFile(); err != nil {
		fmt.Fprintf(os.Stderr, "raising the open-files limit: %v\n", err)
	}
	cfg := load.Config{
		URL: *url, PID: *pid, Clients: *clients, Size: *size, Rates: ladder,
		Step: *step, Drain: *drain, Settle: *settle, Publishers: *pubs, AllSteps: *all,
		MaxP99: *maxP99, ReadBuf: *rbuf, Progress: os.Stderr,
	}
	if *quiet {
		cfg.Progress = nil
	}
	if *idle > 0 {
		cfg.Idle, cfg.Clients = true, *idle
	}
	name := *server
	if name == "" {
		name = *url
	}

	// Every run is bounded: connecting, then each step and its drain.
	bound := 5*time.Minute + time.Duration(len(ladder))*(*step+*drain+*settle)
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	var srv *exec.Cmd
	if *server != "" {
		srv, cfg.URL, cfg.PID, err = startServer(ctx, *server, *binDir, *pin, *serverCPU)
		if err != nil {
			fatalf("%v", err)
		}
		defer stopServer(srv)
	}
	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		if err != nil {
			fatalf("%v", err)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	res, err := load.Run(ctx, cfg)
	if res != nil {
		report(name, res, *csvPath, *plotPath)
	}
	if err != nil {
		if srv != nil {
			stopServer(srv)
		}
		fatalf("%v", err)
	}
}

func report(name string, res *load.Result, csvPath, plotPath string) {
	load.WriteMarkdown(os.Stdout, name, res)
	if best, ok := res.Sustained(); ok {
		fmt.Fprintf(os.Stderr, "sustained: %s deliveries/s\n", load.FormatRate(best.Target))
	} else if len(res.Steps) > 0 {
		fmt.Fprintln(os.Stderr, "sustained: none")
	}
	if csvPath != "" {
		var b bytes.Buffer
		err := load.WriteCSV(&b, name, res)
		if err == nil {
			err = os.WriteFile(csvPath, b.Bytes(), 0o644)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "csv: %v\n", err)
		}
	}
	if plotPath != "" && len(res.Steps) > 0 {
		var b bytes.Buffer
		if err := load.WritePlot(&b, []load.Series{{Name: name, Result: res}}); err != nil {
			fmt.Fprintf(os.Stderr, "plot: %v\n", err)
		} else if err := os.WriteFile(plotPath, b.Bytes(), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "plot: %v\n", err)
		}
	}
}

// mergePlot draws the runs of several CSV files into one chart.
func mergePlot(out string, files []string) {
	var series []load.Series
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			fatalf("%v", err)
		}
		name, res, err := load.ReadCSV(fh)
		fh.Close()
		if err != nil {
			fatalf("%s: %v", f, err)
		}
		series = append(series, load.Series{Name: fmt.Sprintf("%s c=%d", name, res.Clients), Result: res})
	}
	var b bytes.Buffer
	if err := load.WritePlot(&b, series); err != nil {
		fatalf("%v", err)
	}
	if err := os.WriteFile(out, b.Bytes(), 0o644); err != nil {
		fatalf("%v", err)
	}
}

// pinSelf runs this program again under taskset, on cpus only, so that it
// never competes with the server for a core. Go then sizes GOMAXPROCS to
// that set.
func pinSelf(cpus string) {
	ts, err := exec.LookPath("taskset")
	if err != nil {
		fmt.Fprintln(os.Stderr, "taskset not found: running unpinned")
		return
	}
	self, err := os.Executable()
	if err != nil {
		fatalf("%v", err)
	}
	args := append([]string{"taskset", "-c", cpus, self}, os.Args[1:]...)
	env := append(os.Environ(), pinnedEnv+"=1")
	fatalf("exec taskset: %v", syscall.Exec(ts, args, env))
}

// startServer runs the named server binary on a free loopback port, under
// taskset when pinning, and waits until it accepts connections.
func startServer(ctx context.Context, name, dir string, pin bool, cpus string) (*exec.Cmd, string, int, error) {
	switch name {
	case "wsroom", "minimal", "gorilla", "melody", "gws", "blast":
	default:
		return nil, "", 0, fmt.Errorf("unknown server %q", name)
	}
	if dir == "" {
		self, err := os.Executable()
		if err != nil {
			return nil, "", 0, err
		}
		dir = filepath.Dir(self)
	}
	bin := filepath.Join(dir, name)
	if _, err := os.Stat(bin); err != nil {
		return nil, "", 0, fmt.Errorf("%v (build the servers: cd bench && GOWORK=off go build -o bin/ ./cmd/... ./servers/...)", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", 0, err
	}
	addr := ln.Addr().String()
	ln.Close()
	args := []string{bin, "-addr", addr}
	if pin {
		if ts, err := exec.LookPath("taskset"); err == nil {
			args = append([]string{ts, "-c", cpus}, args...)
		}
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, "", 0, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			stopServer(cmd)
			return nil, "", 0, fmt.Errorf("server %s did not listen on %s: %v", name, addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// taskset has replaced itself with the server by now: same process.
	if comm, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/comm"); err == nil {
		if got := string(bytes.TrimSpace(comm)); got != name && len(name) < 15 {
			fmt.Fprintf(os.Stderr, "warning: process %d is %q, not %q\n", cmd.Process.Pid, got, name)
		}
	}
	return cmd, "ws://" + addr + "/", cmd.Process.Pid, nil
}

func stopServer(cmd *exec.Cmd) {
	if cmd.ProcessState != nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "wsroom-bench: "+format+"\n", args...)
	os.Exit(1)
}
