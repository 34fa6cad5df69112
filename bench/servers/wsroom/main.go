// Command wsroom is the benchmark server built on wsroom: one room, default
// options except pings (off) and the per-client rate limit (lifted: the
// load tool's publishers send thousands of messages a second, and the
// other designs have no such limit), so every text message from a client
// is published to every client, the sender too.
//
// With -cpuprofile FILE it writes a CPU profile of the window between
// SIGUSR1 (start) and SIGUSR2 or the end of the process (stop), so that a
// profile can cover one step of a load run and not the handshakes.
package main

import (
	"flag"
	"log"
	"net/http"
	httppprof "net/http/pprof"
	"os"
	"os/signal"
	"runtime/pprof"
	"sync"
	"syscall"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/bench/internal/serve"
)

func main() {
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the time from SIGUSR1 to SIGUSR2 (or exit) to this file")
	pprofAddr := flag.String("pprof", "", "serve net/http/pprof on this address (loopback), e.g. 127.0.0.1:6060")
	room := wsroom.New(wsroom.WithPing(0, 0), wsroom.WithRateLimit(0, 0, wsroom.Throttle))
	defer room.Close()
	stop := profileOnSignal(cpuProfile)
	defer stop()
	mux := http.NewServeMux()
	mux.Handle("/", room.Handler())
	serve.Main("wsroom", mux, func() { // after the flags are parsed
		if *pprofAddr != "" {
			dbg := http.NewServeMux()
			dbg.HandleFunc("/debug/pprof/", httppprof.Index)
			dbg.HandleFunc("/debug/pprof/profile", httppprof.Profile)
			go func() { log.Print(http.ListenAndServe(*pprofAddr, dbg)) }()
		}
	})
}

// profileOnSignal starts a CPU profile into *path on SIGUSR1 and stops it
// on SIGUSR2 or when the returned function is called. *path is read after
// the flags are parsed, when the first signal arrives.
func profileOnSignal(path *string) (stop func()) {
	var mu sync.Mutex
	var f *os.File
	stop = func() {
		mu.Lock()
		defer mu.Unlock()
		if f != nil {
			pprof.StopCPUProfile()
			f.Close()
			log.Printf("CPU profile written to %s", *path)
			f = nil
		}
	}
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		for sig := range ch {
			if *path == "" {
				continue
			}
			if sig == syscall.SIGUSR2 {
				stop()
				continue
			}
			mu.Lock()
			if f == nil {
				var err error
				if f, err = os.Create(*path); err != nil {
					log.Printf("cpuprofile: %v", err)
				} else if err = pprof.StartCPUProfile(f); err != nil {
					log.Printf("cpuprofile: %v", err)
					f.Close()
					f = nil
				}
			}
			mu.Unlock()
		}
	}()
	return stop
}
