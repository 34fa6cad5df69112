// Command benchtable summarises the results folder that run.sh fills: for
// each server, the mean over runs (and every run's value) of the memory per
// idle connection, the server CPU per delivery at 50k deliveries/s with
// 1,000 and with 10,000 subscribers, the sustained rate with 1,000 and
// 10,000 subscribers and the p99 at 50k deliveries/s with 10,000
// subscribers, as a markdown table.
//
// A step during which other work on the machine took more than a quarter of
// a core (the "other CPU" column) was disturbed: its figures, and a
// sustained rate whose ladder met a disturbed step before its first failure,
// are left out of the means and shown with a * in the list of runs.
//
//	benchtable results
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/wsroom/wsroom/bench/internal/load"
)

var servers = []string{"wsroom", "minimal", "gorilla", "melody", "gws"}

var memRe = regexp.MustCompile(`Server memory per idle connection: (-?[0-9.]+) B`)

func main() {
	dir := "results"
	if len(os.Args) > 1 {
		dir = os.Args[1]
	}
	fmt.Println("| design | bytes per idle connection (C=10,000) | server CPU per delivery at 50k/s, C=1,000 | server CPU per delivery at 50k/s, C=10,000 | sustained deliveries/s, C=1,000 | sustained deliveries/s, C=10,000 | p99 at 50k/s, C=10,000 |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|")
	for _, s := range servers {
		var mem []float64
		var cpu, cpu10, sus1, sus10, p99 []value
		for _, f := range glob(dir, s+"-idle-*.md") {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			if m := memRe.FindSubmatch(b); m != nil {
				v, _ := strconv.ParseFloat(string(m[1]), 64)
				mem = append(mem, v)
			}
		}
		for _, f := range glob(dir, s+"-c1000-*.csv") {
			res := readCSV(f)
			if res == nil {
				continue
			}
			if st, ok := step(res, 50e3); ok {
				cpu = append(cpu, value{st.cpuPerDelivery, st.disturbed})
			}
			v, d := sustained(res)
			sus1 = append(sus1, value{v, d})
		}
		for _, f := range glob(dir, s+"-c10000-*.csv") {
			res := readCSV(f)
			if res == nil {
				continue
			}
			if st, ok := step(res, 50e3); ok {
				p99 = append(p99, value{st.p99, st.disturbed})
				cpu10 = append(cpu10, value{st.cpuPerDelivery, st.disturbed})
			}
			v, d := sustained(res)
			sus10 = append(sus10, value{v, d})
		}
		memv := make([]value, len(mem))
		for i, v := range mem {
			memv[i] = value{v: v}
		}
		us := func(v float64) string { return fmt.Sprintf("%.2f µs", v/1000) }
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s |\n", s,
			summary(memv, func(v float64) string { return fmt.Sprintf("%.0f B", v) }),
			summary(cpu, us), summary(cpu10, us),
			summary(sus1, rate), summary(sus10, rate),
			summary(p99, func(v float64) string { return fmt.Sprintf("%.0f ms", v/1e6) }))
	}
}

func glob(dir, pattern string) []string {
	m, _ := filepath.Glob(filepath.Join(dir, pattern))
	sort.Strings(m)
	return m
}

type row struct {
	target, cpuPerDelivery, p99 float64
	ok, disturbed               bool
}

// maxOther is the share of one core other work may take during a step.
const maxOther = 0.25

func readCSV(path string) []row {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	_, res, err := load.ReadCSV(f)
	if err != nil {
		return nil
	}
	var out []row
	for _, s := range res.Steps {
		out = append(out, row{
			target: s.Target, cpuPerDelivery: float64(s.CPUPerDelivery()), p99: float64(s.Latency.P99), ok: s.OK,
			disturbed: s.Duration > 0 && float64(s.OtherCPU) > maxOther*float64(s.Duration),
		})
	}
	return out
}

func step(rows []row, target float64) (row, bool) {
	for _, r := range rows {
		if r.target == target {
			return r, true
		}
	}
	return row{}, false
}

// sustained is the highest passing step below the first failing one, and
// whether a step up to that failure was disturbed.
func sustained(rows []row) (float64, bool) {
	best, disturbed := 0.0, false
	for _, r := range rows {
		disturbed = disturbed || r.disturbed
		if !r.ok {
			break
		}
		best = r.target
	}
	return best, disturbed
}

func rate(v float64) string {
	if v == 0 {
		return "none"
	}
	if _, err := load.ParseRates(load.FormatRate(v)); err == nil && v == float64(int64(v/1000))*1000 {
		return load.FormatRate(v)
	}
	return load.HumanRate(v)
}

// value is one run's figure, and whether other work disturbed it.
type value struct {
	v         float64
	disturbed bool
}

// summary writes the mean of the undisturbed values, then every value, a *
// after the disturbed ones.
func summary(vs []value, format func(float64) string) string {
	if len(vs) == 0 {
		return "–"
	}
	var each []string
	var clean []float64
	for _, v := range vs {
		s := format(v.v)
		if v.disturbed {
			s += "*"
		} else {
			clean = append(clean, v.v)
		}
		each = append(each, s)
	}
	m := "–"
	if len(clean) > 0 {
		m = format(mean(clean))
	}
	return fmt.Sprintf("%s (%s)", m, strings.Join(each, ", "))
}

func mean(vs []float64) float64 {
	var s float64
	for _, v := range vs {
		s += v
	}
	return s / float64(len(vs))
}
