// Command testsummary runs go test -json and prints what go test prints
// without -v (package results, and the output of failing tests only),
// records each run's counts, skips and failures in a file, and at the end
// prints one summary of every run: the skipped tests with their reasons,
// the failed tests, and a closing count.
//
//	testsummary run -record FILE -label LABEL -- go test -json ./...
//	testsummary report [-fail-on-skip] [-expected FILE] FILE
//
// run exits with the status of the command it runs. report exits 1 if any
// run failed, or if -fail-on-skip is set and a test skipped that the
// -expected file does not list. That file has one "PACKAGE TEST" a line
// (blank lines and lines starting with # are ignored): skips that are by
// design, such as a conformance test of a feature that the implementation
// under test does not have.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = run(os.Args[2:])
	case "report":
		err = report(os.Args[2:])
	default:
		usage()
	}
	var exit *exitError
	switch {
	case errors.As(err, &exit):
		os.Exit(exit.code)
	case err != nil:
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(2)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: testsummary run -record FILE -label LABEL -- go test -json ...\n       testsummary report [-fail-on-skip] [-expected FILE] FILE")
	os.Exit(2)
}

type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// event is one line of go test -json (see go doc test2json).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string // build-output, build-fail
}

// record is one line of the record file: a skipped or failed test, or the
// totals of a run (Action "run").
type record struct {
	Label   string
	Action  string // "skip", "fail" or "run"
	Package string `json:",omitempty"`
	Test    string `json:",omitempty"`
	Reason  string `json:",omitempty"`

	Passed, Failed, Skipped int    `json:",omitempty"`
	Exit                    int    `json:",omitempty"`
	Elapsed                 string `json:",omitempty"`
}

func run(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	recordFile := fs.String("record", "", "append the run's results to this file")
	label := fs.String("label", "", "name of this run in the summary")
	fs.Parse(args)
	if fs.NArg() == 0 || *recordFile == "" {
		usage()
	}
	rec, err := os.OpenFile(*recordFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer rec.Close()
	enc := json.NewEncoder(rec)

	start := time.Now()
	cmd := exec.Command(fs.Arg(0), fs.Args()[1:]...)
	cmd.Stdin = os.Stdin
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	f := newFilter(os.Stdout, *label)
	f.read(stdout)
	waitErr := cmd.Wait()
	f.flush()

	total := record{Label: *label, Action: "run", Passed: f.passed, Failed: f.failed, Skipped: f.skipped,
		Elapsed: time.Since(start).Round(100 * time.Millisecond).String()}
	var exit *exec.ExitError
	switch {
	case errors.As(waitErr, &exit):
		total.Exit = exit.ExitCode()
	case waitErr != nil:
		return waitErr
	case f.failed > 0:
		total.Exit = 1
	}
	for _, r := range f.records {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	if err := enc.Encode(total); err != nil {
		return err
	}
	fmt.Printf("-- %s: %d passed, %d failed, %d skipped in %s\n", *label, f.passed, f.failed, f.skipped, total.Elapsed)
	if total.Exit != 0 {
		return &exitError{total.Exit}
	}
	return nil
}

// filter turns go test -json into go test's plain output.
type filter struct {
	w                       io.Writer
	label                   string
	output                  map[string][]string // test output not yet printed, by package and test
	order                   []string            // keys of output, oldest first
	records                 []record
	passed, failed, skipped int
}

func newFilter(w io.Writer, label string) *filter {
	return &filter{w: w, label: label, output: make(map[string][]string)}
}

func (f *filter) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			fmt.Fprintf(f.w, "%s\n", line) // not from test2json: pass it on
			continue
		}
		f.event(e)
	}
}

func (f *filter) event(e event) {
	key := e.Package + "\x00" + e.Test
	switch {
	case e.Action == "build-output":
		io.WriteString(f.w, e.Output)
	case e.Test == "":
		// Package-level lines: "ok  pkg 1.2s", "FAIL pkg", panics, and
		// output of TestMain. The lone "PASS" of each package is noise.
		if e.Action == "output" && e.Output != "PASS\n" {
			io.WriteString(f.w, e.Output)
		}
		if e.Action == "fail" {
			// A package that failed without ending some of its tests (a
			// panic, a timeout): show what those tests printed.
			for _, k := range slices.Clone(f.order) {
				if strings.HasPrefix(k, e.Package+"\x00") {
					f.print(k)
				}
			}
		}
	case e.Action == "output":
		if _, ok := f.output[key]; !ok {
			f.order = append(f.order, key)
		}
		f.output[key] = append(f.output[key], e.Output)
	case e.Action == "pass":
		f.passed++
		f.forget(key)
	case e.Action == "skip":
		f.skipped++
		f.records = append(f.records, record{Label: f.label, Action: "skip", Package: e.Package, Test: e.Test, Reason: skipReason(f.output[key])})
		f.forget(key)
	case e.Action == "fail":
		f.failed++
		f.records = append(f.records, record{Label: f.label, Action: "fail", Package: e.Package, Test: e.Test})
		// What the enclosing tests printed so far ("=== RUN TestX") comes
		// first, as in go test's own output.
		for i := range len(e.Test) {
			if e.Test[i] == '/' {
				f.print(e.Package + "\x00" + e.Test[:i])
			}
		}
		f.print(key)
	}
}

// print writes the output of one test and forgets it.
func (f *filter) print(key string) {
	for _, s := range f.output[key] {
		io.WriteString(f.w, s)
	}
	f.forget(key)
}

func (f *filter) forget(key string) {
	if _, ok := f.output[key]; !ok {
		return
	}
	delete(f.output, key)
	f.order = slices.DeleteFunc(f.order, func(k string) bool { return k == key })
}

// flush prints the output of tests that never ended, after the command has
// exited (it was killed, or test2json's stream was cut).
func (f *filter) flush() {
	for _, k := range slices.Clone(f.order) {
		f.print(k)
	}
}

// skipReason is what a skipped test logged, without go test's framing.
func skipReason(lines []string) string {
	var reason []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		reason = append(reason, t)
	}
	if len(reason) == 0 {
		return "(no reason given)"
	}
	return strings.Join(reason, " / ")
}

func report(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	failOnSkip := fs.Bool("fail-on-skip", false, "exit 1 if a test skipped that is not expected to")
	expectedFile := fs.String("expected", "", `file of skips that are expected, one "PACKAGE TEST" a line`)
	fs.Parse(args)
	if fs.NArg() != 1 {
		usage()
	}
	expected := make(map[string]bool)
	if *expectedFile != "" {
		data, err := os.ReadFile(*expectedFile)
		if err != nil {
			return err
		}
		for n, line := range strings.Split(string(data), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			f := strings.Fields(line)
			if len(f) != 2 {
				return fmt.Errorf("%s:%d: want PACKAGE TEST", *expectedFile, n+1)
			}
			expected[f[0]+" "+f[1]] = true
		}
	}
	data, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	var (
		skips, fails            []*group
		failedRuns              []string
		passed, failed, skipped int
		runs                    int
	)
	add := func(gs []*group, r record) []*group {
		for _, g := range gs {
			if g.Package == r.Package && g.Test == r.Test && g.Reason == r.Reason {
				g.labels = append(g.labels, r.Label)
				return gs
			}
		}
		return append(gs, &group{record: r, labels: []string{r.Label}})
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	for {
		var r record
		if err := dec.Decode(&r); err == io.EOF {
			break
		} else if err != nil {
			return fmt.Errorf("%s: %v", fs.Arg(0), err)
		}
		switch r.Action {
		case "skip":
			skips = add(skips, r)
		case "fail":
			fails = add(fails, r)
		case "run":
			runs++
			passed += r.Passed
			failed += r.Failed
			skipped += r.Skipped
			if r.Exit != 0 {
				failedRuns = append(failedRuns, r.Label)
			}
		}
	}

	fmt.Println("== test summary")
	unexpected := 0
	if len(skips) == 0 {
		fmt.Println("No test skipped.")
	} else {
		fmt.Printf("Skipped tests (%d):\n", len(skips))
		for _, g := range skips {
			note := ""
			if expected[g.Package+" "+g.Test] {
				note = " (expected)"
			} else {
				unexpected++
			}
			fmt.Printf("  %s %s%s [%s]\n      %s\n", g.Package, g.Test, note, strings.Join(g.labels, "; "), g.Reason)
		}
	}
	if len(fails) > 0 {
		fmt.Printf("Failed tests (%d):\n", len(fails))
		for _, g := range fails {
			fmt.Printf("  %s %s [%s]\n", g.Package, g.Test, strings.Join(g.labels, "; "))
		}
	}
	if len(failedRuns) > 0 {
		fmt.Printf("Failed runs: %s\n", strings.Join(failedRuns, "; "))
	}
	bad := len(failedRuns) > 0 || failed > 0
	if *failOnSkip && unexpected > 0 {
		fmt.Printf("%d tests skipped that must not skip in CI: start what they need (see their reasons).\n", unexpected)
		bad = true
	}
	// A test runs once per run (each module, at each GOMAXPROCS), so the
	// counts are of test runs; the lists above hold each test once.
	fmt.Printf("test runs: %d passed, %d failed, %d skipped, in %d runs (distinct tests, as listed above: %d skipped, %d failed)\n",
		passed, failed, skipped, runs, len(skips), len(fails))
	if bad {
		return &exitError{1}
	}
	return nil
}

type group struct {
	record
	labels []string
}
