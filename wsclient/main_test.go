package wsclient_test

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMain fails the run if goroutines are left behind once every test has
// closed its clients and servers.
func TestMain(m *testing.M) {
	before := ours()
	code := m.Run()
	if code == 0 {
		if err := checkGoroutines(before); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// ours returns the stacks of running goroutines, but for this one and those
// of the test framework and the runtime's signal handling.
func ours() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
goroutines:
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, skip := range []string{"wsclient_test.ours(", "testing.tRunner(", "testing.(*T).Run(", "testing.(*M).", "testing.runExample", "os/signal.loop("} {
			if strings.Contains(g, skip) {
				continue goroutines
			}
		}
		out = append(out, g)
	}
	return out
}

// checkGoroutines waits up to 5 seconds for no more of our goroutines to
// run than before.
func checkGoroutines(before []string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		now := ours()
		if len(now) <= len(before) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("leaked goroutines: %d running, want at most %d:\n%s", len(now), len(before), strings.Join(now, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// leakCheck returns a function that fails t if more of our goroutines run
// than when leakCheck was called.
func leakCheck(t *testing.T) func() {
	t.Helper()
	before := ours()
	return func() {
		t.Helper()
		if err := checkGoroutines(before); err != nil {
			s := err.Error()
			if len(s) > 4000 {
				s = s[:4000]
			}
			t.Error(strings.TrimSpace(s))
		}
	}
}
