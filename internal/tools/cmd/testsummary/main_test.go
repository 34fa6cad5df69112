package main

import (
	"io"
	"os"
	"strings"
	"testing"
)

const stream = `{"Action":"start","Package":"p"}
{"Action":"run","Package":"p","Test":"TestOK"}
{"Action":"output","Package":"p","Test":"TestOK","Output":"=== RUN   TestOK\n"}
{"Action":"output","Package":"p","Test":"TestOK","Output":"    a_test.go:1: quiet\n"}
{"Action":"pass","Package":"p","Test":"TestOK"}
{"Action":"run","Package":"p","Test":"TestEngine"}
{"Action":"output","Package":"p","Test":"TestEngine","Output":"=== RUN   TestEngine\n"}
{"Action":"output","Package":"p","Test":"TestEngine","Output":"    a_test.go:2: no Redis at 127.0.0.1:6379; start it\n"}
{"Action":"output","Package":"p","Test":"TestEngine","Output":"--- SKIP: TestEngine (0.00s)\n"}
{"Action":"skip","Package":"p","Test":"TestEngine"}
{"Action":"run","Package":"p","Test":"TestBad"}
{"Action":"output","Package":"p","Test":"TestBad","Output":"=== RUN   TestBad\n"}
{"Action":"run","Package":"p","Test":"TestBad/sub"}
{"Action":"output","Package":"p","Test":"TestBad/sub","Output":"=== RUN   TestBad/sub\n"}
{"Action":"output","Package":"p","Test":"TestBad/sub","Output":"    a_test.go:3: boom\n"}
{"Action":"output","Package":"p","Test":"TestBad/sub","Output":"--- FAIL: TestBad/sub (0.00s)\n"}
{"Action":"fail","Package":"p","Test":"TestBad/sub"}
{"Action":"output","Package":"p","Test":"TestBad","Output":"--- FAIL: TestBad (0.00s)\n"}
{"Action":"fail","Package":"p","Test":"TestBad"}
{"Action":"output","Package":"p","Output":"FAIL\n"}
{"Action":"output","Package":"p","Output":"FAIL\tp\t0.01s\n"}
{"Action":"fail","Package":"p"}
not json
`

func TestFilter(t *testing.T) {
	var out strings.Builder
	f := newFilter(&out, "default")
	f.read(strings.NewReader(stream))
	f.flush()

	want := `=== RUN   TestBad
=== RUN   TestBad/sub
    a_test.go:3: boom
--- FAIL: TestBad/sub (0.00s)
--- FAIL: TestBad (0.00s)
FAIL
FAIL	p	0.01s
not json
`
	if got := out.String(); got != want {
		t.Errorf("output:\n%s\nwant:\n%s", got, want)
	}
	if f.passed != 1 || f.failed != 2 || f.skipped != 1 {
		t.Errorf("passed, failed, skipped = %d, %d, %d; want 1, 2, 1", f.passed, f.failed, f.skipped)
	}
	var skips []record
	for _, r := range f.records {
		if r.Action == "skip" {
			skips = append(skips, r)
		}
	}
	if len(skips) != 1 || skips[0].Test != "TestEngine" || skips[0].Reason != "a_test.go:2: no Redis at 127.0.0.1:6379; start it" {
		t.Errorf("skips = %+v", skips)
	}
}

// The summary lists a test skipped in two runs once, and says that its
// counts are of test runs.
func TestReportCountsRuns(t *testing.T) {
	dir := t.TempDir()
	rec := dir + "/rec"
	lines := `{"Label":"a P=default","Action":"skip","Package":"p","Test":"TestEngine","Reason":"start it"}
{"Label":"a P=default","Action":"run","Passed":3,"Skipped":1}
{"Label":"a P=1","Action":"skip","Package":"p","Test":"TestEngine","Reason":"start it"}
{"Label":"a P=1","Action":"run","Passed":3,"Skipped":1}
`
	if err := os.WriteFile(rec, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout := os.Stdout
	os.Stdout = w
	err = report([]string{rec})
	os.Stdout = stdout
	w.Close()
	out, _ := io.ReadAll(r)
	if err != nil {
		t.Fatalf("report: %v\n%s", err, out)
	}
	for _, want := range []string{
		"Skipped tests (1):\n",
		"[a P=default; a P=1]",
		"test runs: 6 passed, 0 failed, 2 skipped, in 2 runs (distinct tests, as listed above: 1 skipped, 0 failed)\n",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
}
