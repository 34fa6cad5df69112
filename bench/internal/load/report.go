package load

import (
	"encoding/csv"
	"fmt"
	"io"
	"strconv"
	"time"
)

// WriteMarkdown writes the steps of a run as a markdown table, then the
// sustained rate.
func WriteMarkdown(w io.Writer, name string, res *Result) {
	fmt.Fprintf(w, "\n### %s, %d subscribers, %d-byte messages\n\n", name, res.Clients, res.Size)
	if res.RSSBefore > 0 {
		fmt.Fprintf(w, "Server memory per idle connection: %.0f B (RSS %.1f → %.1f MiB); connected in %v.\n\n",
			res.MemPerConn(), float64(res.RSSBefore)/(1<<20), float64(res.RSSAfter)/(1<<20), res.ConnectTime.Round(time.Millisecond))
	}
	if len(res.Steps) == 0 {
		return
	}
	fmt.Fprintln(w, "Server CPU/delivery is the server process's user + system time per delivery. CPU columns are percentages of one core over the step and its drain: the server process, the tool, and the rest of the machine's busy time (other processes, kernel work charged to neither).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target deliveries/s | achieved | published msg/s | loss | p50 | p99 | max | dropped | server CPU/delivery | server CPU | tool CPU | other CPU | ok |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|")
	for _, s := range res.Steps {
		ok := "yes"
		if !s.OK {
			ok = "no"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %d | %v | %v | %v | %d | %s | %s | %s | %s | %s |\n",
			FormatRate(s.Target), HumanRate(s.Achieved), HumanRate(s.PublishedRate()),
			s.Loss, roundDur(s.Latency.P50), roundDur(s.Latency.P99), roundDur(s.Latency.Max), s.Dropped,
			cpuPerDelivery(s), pct(s.ServerCPU, s.Duration), pct(s.ToolCPU, s.Duration), pct(s.OtherCPU, s.Duration), ok)
	}
	if best, ok := res.Sustained(); ok {
		fmt.Fprintf(w, "\nSustained: %s deliveries/s (highest step with p99 < 250 ms, no loss, no client dropped).\n", FormatRate(best.Target))
	} else {
		fmt.Fprintf(w, "\nSustained: none of the steps passed.\n")
	}
	for _, s := range res.Steps {
		if s.PublisherError != "" {
			fmt.Fprintf(w, "At %s deliveries/s a publisher stopped: %s.\n", FormatRate(s.Target), s.PublisherError)
		}
	}
	if res.Dropped > 0 {
		fmt.Fprintf(w, "Dropped subscribers: %d; close codes %v; errors %v.\n", res.Dropped, res.CloseCodes, res.Errors)
	}
}

// PublishedRate returns the messages published per second of publishing.
func (s StepResult) PublishedRate() float64 {
	if s.Publishing <= 0 {
		return 0
	}
	return float64(s.Published) / s.Publishing.Seconds()
}

func cpuPerDelivery(s StepResult) string {
	if s.ServerCPU == 0 || s.Delivered == 0 {
		return "-"
	}
	return strconv.FormatFloat(float64(s.ServerCPU)/float64(s.Delivered), 'f', 0, 64) + " ns"
}

func pct(d, of time.Duration) string {
	if d == 0 || of == 0 {
		return "-"
	}
	return strconv.FormatFloat(100*float64(d)/float64(of), 'f', 0, 64) + "%"
}

// WriteCSV writes one row per step, with a header, numbers unrounded:
// rates per second, latencies and CPU per delivery in nanoseconds.
func WriteCSV(w io.Writer, name string, res *Result) error {
	cw := csv.NewWriter(w)
	cw.Write([]string{"server", "clients", "size", "mem_per_conn_bytes", "target_deliveries_per_s", "achieved_deliveries_per_s",
		"published", "expected", "delivered", "loss", "p50_ns", "p99_ns", "max_ns", "dropped",
		"server_cpu_ns", "server_cpu_per_delivery_ns", "tool_cpu_ns", "other_cpu_ns", "duration_ns", "ok"})
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
	i := func(v int64) string { return strconv.FormatInt(v, 10) }
	for _, s := range res.Steps {
		per := 0.0
		if s.Delivered > 0 {
			per = float64(s.ServerCPU) / float64(s.Delivered)
		}
		cw.Write([]string{name, strconv.Itoa(res.Clients), strconv.Itoa(res.Size), f(res.MemPerConn()), f(s.Target), f(s.Achieved),
			i(s.Published), i(s.Expected), i(s.Delivered), i(s.Loss),
			i(int64(s.Latency.P50)), i(int64(s.Latency.P99)), i(int64(s.Latency.Max)), strconv.Itoa(s.Dropped),
			i(int64(s.ServerCPU)), f(per), i(int64(s.ToolCPU)), i(int64(s.OtherCPU)), i(int64(s.Duration)), strconv.FormatBool(s.OK)})
	}
	cw.Flush()
	return cw.Error()
}

// ReadCSV reads back the steps of a run written by WriteCSV, and its name.
func ReadCSV(r io.Reader) (string, *Result, error) {
	rows, err := csv.NewReader(r).ReadAll()
	if err != nil {
		return "", nil, err
	}
	if len(rows) < 2 {
		return "", nil, fmt.Errorf("csv: no steps")
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	for _, h := range []string{"server", "clients", "size", "target_deliveries_per_s", "achieved_deliveries_per_s", "p50_ns", "p99_ns", "max_ns", "ok"} {
		if _, ok := col[h]; !ok {
			return "", nil, fmt.Errorf("csv: no column %q", h)
		}
	}
	res := &Result{}
	var name string
	for _, row := range rows[1:] {
		if len(row) != len(rows[0]) {
			return "", nil, fmt.Errorf("csv: row of %d fields", len(row))
		}
		num := func(h string) float64 {
			if v, err := strconv.ParseFloat(row[col[h]], 64); err == nil {
				return v
			}
			return 0
		}
		name = row[col["server"]]
		res.Clients, res.Size = int(num("clients")), int(num("size"))
		res.Steps = append(res.Steps, StepResult{
			Target:    num("target_deliveries_per_s"),
			Achieved:  num("achieved_deliveries_per_s"),
			Published: int64(num("published")),
			Expected:  int64(num("expected")),
			Delivered: int64(num("delivered")),
			Loss:      int64(num("loss")),
			Dropped:   int(num("dropped")),
			ServerCPU: time.Duration(num("server_cpu_ns")),
			ToolCPU:   time.Duration(num("tool_cpu_ns")),
			OtherCPU:  time.Duration(num("other_cpu_ns")),
			Duration:  time.Duration(num("duration_ns")),
			Latency: Latency{
				P50: time.Duration(num("p50_ns")),
				P99: time.Duration(num("p99_ns")),
				Max: time.Duration(num("max_ns")),
			},
			OK: row[col["ok"]] == "true",
		})
	}
	return name, res, nil
}
