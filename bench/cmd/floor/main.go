// Command floor measures the floor of one write system call per delivery on
// this machine: the CPU a server cannot avoid when it writes every message
// to every client in its own write, whatever its user-space code does.
//
// A writer process accepts N loopback TCP connections and then, for -d,
// writes one 66-byte frame (a WebSocket text frame header and 64 bytes of
// payload) to each socket in turn, with plain blocking write(2) on the raw
// file descriptor (no Go netpoller, no goroutine switch: one locked thread
// looping over the descriptors). A reader process opens the N connections
// and reads and discards everything with epoll. No WebSocket handshake.
//
//	floor -n 10000 -d 10s              # both processes, writer on CPU 0, reader on CPU 1
//	floor -n 10000 -d 10s -rate 50k    # rounds paced at 50,000 writes/s (5 rounds of 10,000 per second)
//	floor -n 10000 -d 10s -perf        # the writer under perf stat -e task-clock as a cross-check
//	floor -n 10000 -d 10s -raw         # RawSyscall: Go's runtime stays out of the way
//
// The writer reports its user and system time (getrusage, and utime/stime
// of /proc/self/stat as a cross-check) over the write loop, divided by the
// writes, and writes/s. The process figure (RUSAGE_SELF) includes the
// Go runtime's other threads, which are pinned to the same CPU: with
// syscall.Write the goroutine is in a system call nearly all the time and
// sysmon wakes often; the thread figure (RUSAGE_THREAD) is the writing
// thread alone. -raw uses RawSyscall, which the runtime does not track. The reader reports the bytes it received; all of
// them must arrive (66 × writes).
//
// -rate 0 (the default) writes as fast as one core allows; a rate paces
// rounds (one frame to each of the N sockets, like one broadcast message)
// so that the writes come in bursts at that average, as a broadcast server
// at that many deliveries per second would do them.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/wsroom/wsroom/bench/internal/load"
)

func main() {
	var (
		role      = flag.String("role", "both", "both (start writer and reader pinned), write or read")
		n         = flag.Int("n", 10000, "connections")
		dur       = flag.Duration("d", 10*time.Second, "length of the write loop")
		rate      = flag.String("rate", "0", "writes per second, paced in rounds of n (k = 1000, M = 1000000); 0: as fast as possible")
		addr      = flag.String("addr", "127.0.0.1:0", "writer's listen address (loopback only)")
		writerCPU = flag.String("writer-cpu", "0", "CPU list for the writer (taskset -c)")
		readerCPU = flag.String("reader-cpu", "1", "CPU list for the reader (taskset -c)")
		usePerf   = flag.Bool("perf", false, "run the writer under perf stat -e task-clock,context-switches")
		raw       = flag.Bool("raw", false, "write with syscall.RawSyscall: no entersyscall/exitsyscall, so Go's sysmon does not see a goroutine in a system call")
	)
	flag.Parse()
	log.SetFlags(0)
	ap, err := netip.ParseAddrPort(*addr)
	if err != nil || !ap.Addr().Is4() || !ap.Addr().IsLoopback() {
		log.Fatalf("-addr %q: must be an IPv4 loopback address and port", *addr)
	}
	r, err := parseRate(*rate)
	if err != nil {
		log.Fatalf("-rate: %v", err)
	}
	if _, err := load.RaiseNoFile(); err != nil {
		log.Printf("raising the open-files limit: %v", err)
	}
	switch *role {
	case "both":
		both(*n, *dur, *rate, ap, *writerCPU, *readerCPU, *usePerf, *raw)
	case "write":
		log.SetPrefix("writer: ")
		writer(*n, *dur, r, ap, *raw)
	case "read":
		log.SetPrefix("reader: ")
		reader(*n, ap)
	default:
		log.Fatalf("-role %q: both, write or read", *role)
	}
}

func parseRate(s string) (float64, error) {
	mul := 1.0
	switch {
	case strings.HasSuffix(s, "k"):
		mul, s = 1e3, strings.TrimSuffix(s, "k")
	case strings.HasSuffix(s, "M"):
		mul, s = 1e6, strings.TrimSuffix(s, "M")
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%q: not a rate", s)
	}
	return v * mul, nil
}

// both starts the writer pinned to one CPU, reads the port it listens on
// from its first line, then the reader pinned to another, and relays what
// both print.
func both(n int, dur time.Duration, rate string, ap netip.AddrPort, wcpu, rcpu string, usePerf, raw bool) {
	self, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	wargs := []string{"taskset", "-c", wcpu}
	if usePerf {
		wargs = append(wargs, "perf", "stat", "-e", "task-clock,context-switches,cpu-migrations")
	}
	wargs = append(wargs, self, "-role", "write", "-n", strconv.Itoa(n), "-d", dur.String(), "-rate", rate, "-addr", ap.String())
	if raw {
		wargs = append(wargs, "-raw")
	}
	w := exec.Command(wargs[0], wargs[1:]...)
	w.Stderr = os.Stderr
	out, err := w.StdoutPipe()
	if err != nil {
		log.Fatal(err)
	}
	if err := w.Start(); err != nil {
		log.Fatal(err)
	}
	br := bufio.NewReader(out)
	line, err := br.ReadString('\n')
	if err != nil {
		log.Fatalf("writer: %v", err)
	}
	port, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if !ok {
		log.Fatalf("writer said %q", line)
	}
	rd := exec.Command("taskset", "-c", rcpu, self, "-role", "read", "-n", strconv.Itoa(n), "-addr", port)
	rd.Stdout, rd.Stderr = os.Stdout, os.Stderr
	if err := rd.Start(); err != nil {
		log.Fatal(err)
	}
	io.Copy(os.Stdout, br)
	werr := w.Wait()
	rerr := rd.Wait()
	if werr != nil || rerr != nil {
		log.Fatalf("writer: %v; reader: %v", werr, rerr)
	}
}

func sockaddr(ap netip.AddrPort) *syscall.SockaddrInet4 {
	return &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
}

// writer listens, accepts n connections (blocking descriptors), writes
// frames for dur and reports its CPU per write.
func writer(n int, dur time.Duration, rate float64, ap netip.AddrPort, raw bool) {
	runtime.LockOSThread()
	ln, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		log.Fatal(err)
	}
	syscall.SetsockoptInt(ln, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	if err := syscall.Bind(ln, sockaddr(ap)); err != nil {
		log.Fatal(err)
	}
	if err := syscall.Listen(ln, 4096); err != nil {
		log.Fatal(err)
	}
	sa, err := syscall.Getsockname(ln)
	if err != nil {
		log.Fatal(err)
	}
	a := sa.(*syscall.SockaddrInet4)
	fmt.Printf("listening %d.%d.%d.%d:%d\n", a.Addr[0], a.Addr[1], a.Addr[2], a.Addr[3], a.Port)
	fds := make([]int, 0, n)
	for len(fds) < n {
		fd, _, err := syscall.Accept4(ln, syscall.SOCK_CLOEXEC) // blocking
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			log.Fatalf("accept after %d: %v", len(fds), err)
		}
		syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
		fds = append(fds, fd)
	}
	syscall.Close(ln)
	time.Sleep(500 * time.Millisecond) // let the reader settle into epoll_wait

	var frame [66]byte
	frame[0], frame[1] = 0x81, 64 // FIN + text, unmasked, 64 bytes
	for i := range 64 {
		frame[2+i] = 'a' + byte(i%26)
	}
	buf := frame[:]

	var interval time.Duration
	if rate > 0 {
		interval = time.Duration(float64(n) / rate * float64(time.Second))
	}
	var ru0, ru1, rt0, rt1 syscall.Rusage
	ps0 := procStat()
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	syscall.Getrusage(1 /* RUSAGE_THREAD */, &rt0)
	start := time.Now()
	deadline := start.Add(dur)
	var writes, short int64
	var blockedRounds int
	for round := 0; ; round++ {
		if interval > 0 {
			next := start.Add(time.Duration(round) * interval)
			if !next.Before(deadline) {
				break
			}
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			} else if d < -interval {
				blockedRounds++
			}
		} else if !time.Now().Before(deadline) {
			break
		}
		for _, fd := range fds {
			var m int
			if raw {
				r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
				if e != 0 {
					log.Fatalf("write: %v", e)
				}
				m = int(r)
			} else {
				var err error
				m, err = syscall.Write(fd, buf)
				if err != nil {
					log.Fatalf("write: %v", err)
				}
			}
			if m != len(buf) {
				short++ // a blocking write returns short only on a signal
			}
		}
		writes += int64(len(fds))
	}
	elapsed := time.Since(start)
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	syscall.Getrusage(1, &rt1)
	ps1 := procStat()
	for _, fd := range fds {
		syscall.Close(fd)
	}

	tv := func(t syscall.Timeval) time.Duration {
		return time.Duration(t.Sec)*time.Second + time.Duration(t.Usec)*time.Microsecond
	}
	user := tv(ru1.Utime) - tv(ru0.Utime)
	sys := tv(ru1.Stime) - tv(ru0.Stime)
	tuser := tv(rt1.Utime) - tv(rt0.Utime)
	tsys := tv(rt1.Stime) - tv(rt0.Stime)
	per := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(writes) }
	fmt.Printf("raw=%v ", raw)
	fmt.Printf("n=%d rate=%s elapsed=%.3fs writes=%d (%d bytes) short=%d late_rounds=%d\n",
		n, rateString(rate), elapsed.Seconds(), writes, writes*66, short, blockedRounds)
	fmt.Printf("writes/s: %.0f\n", float64(writes)/elapsed.Seconds())
	fmt.Printf("CPU busy: %.1f%% of one core\n", 100*float64(user+sys)/float64(elapsed))
	fmt.Printf("per write (getrusage SELF):   user %.0f ns  sys %.0f ns  total %.0f ns\n", per(user), per(sys), per(user+sys))
	fmt.Printf("per write (getrusage THREAD): user %.0f ns  sys %.0f ns  total %.0f ns\n", per(tuser), per(tsys), per(tuser+tsys))
	fmt.Printf("per write (/proc/self/stat, 10 ms ticks): user %.0f ns  sys %.0f ns  total %.0f ns\n",
		per(ps1[0]-ps0[0]), per(ps1[1]-ps0[1]), per(ps1[0]-ps0[0]+ps1[1]-ps0[1]))
	fmt.Printf("voluntary context switches in the loop: %d, involuntary: %d\n", ru1.Nvcsw-ru0.Nvcsw, ru1.Nivcsw-ru0.Nivcsw)
}

func rateString(r float64) string {
	if r == 0 {
		return "max"
	}
	return strconv.FormatFloat(r, 'f', -1, 64)
}

// procStat returns the utime and stime of this process from /proc/self/stat.
func procStat() [2]time.Duration {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return [2]time.Duration{}
	}
	i := bytes.LastIndexByte(b, ')')
	f := bytes.Fields(b[i+1:])
	ut, _ := strconv.ParseInt(string(f[11]), 10, 64)
	st, _ := strconv.ParseInt(string(f[12]), 10, 64)
	return [2]time.Duration{time.Duration(ut) * 10 * time.Millisecond, time.Duration(st) * 10 * time.Millisecond}
}

// reader opens n connections to ap and reads and discards everything until
// the writer closes them all, then reports the bytes received.
func reader(n int, ap netip.AddrPort) {
	runtime.LockOSThread()
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		log.Fatal(err)
	}
	for i := range n {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			log.Fatalf("socket %d: %v", i, err)
		}
		for {
			err = syscall.Connect(fd, sockaddr(ap))
			if err != syscall.EINTR {
				break
			}
		}
		if err != nil {
			log.Fatalf("connect %d: %v", i, err)
		}
		if err := syscall.SetNonblock(fd, true); err != nil {
			log.Fatal(err)
		}
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(fd)}
		if err := syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
			log.Fatal(err)
		}
	}
	var total int64
	open := n
	buf := make([]byte, 64<<10)
	events := make([]syscall.EpollEvent, 256)
	for open > 0 {
		k, err := syscall.EpollWait(ep, events, -1)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			log.Fatal(err)
		}
		for _, ev := range events[:k] {
			fd := int(ev.Fd)
			for {
				m, err := syscall.Read(fd, buf)
				if m > 0 {
					total += int64(m)
					if m == len(buf) {
						continue
					}
				}
				if m == 0 || (err != nil && err != syscall.EAGAIN && err != syscall.EINTR) {
					syscall.Close(fd)
					open--
				}
				break
			}
		}
	}
	fmt.Printf("reader: received %d bytes (%d frames)\n", total, total/66)
}
