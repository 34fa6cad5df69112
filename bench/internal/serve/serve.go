// Package serve is the common main of the benchmark servers: flags, the
// open-files limit, listening on loopback, stopping on a signal.
package serve

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/wsroom/wsroom/bench/internal/load"
)

// Main serves h on the address of the -addr flag (default 127.0.0.1:8080)
// until SIGINT or SIGTERM. The address must be a loopback one. The parsed
// functions run once the flags are parsed.
func Main(name string, h http.Handler, parsed ...func()) {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address (loopback only)")
	flag.Parse()
	for _, f := range parsed {
		f()
	}
	log.SetPrefix(name + ": ")
	log.SetFlags(0)
	host, _, err := net.SplitHostPort(*addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		log.Fatalf("-addr %q: must be a loopback address", *addr)
	}
	if _, err := load.RaiseNoFile(); err != nil {
		log.Printf("raising the open-files limit: %v", err)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	fmt.Fprintf(os.Stderr, "%s: listening on %s\n", name, ln.Addr())
	if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
		log.Fatal(err)
	}
}
