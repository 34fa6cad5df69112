#!/usr/bin/env bash
# Builds the tool and the servers, then measures every server the same way:
# memory per idle connection (10,000 clients), the ladder at 1,000
# subscribers and the ladder at 10,000 subscribers, RUNS times each.
# Results go to results/<server>-<test>-<run>.{md,csv}.
#
#   ./run.sh                 # every server, 3 runs
#   RUNS=1 ./run.sh wsroom   # one server, one run
#   FIRST=2 RUNS=2 ./run.sh  # runs 2 and 3, keeping run 1
set -euo pipefail
cd "$(dirname "$0")"
export GOWORK="$PWD/go.work" # the core of this tree; see go.work
go build -o bin/ ./cmd/... ./servers/...
RUNS=${RUNS:-3}
FIRST=${FIRST:-1}
SERVERS=("$@")
[ ${#SERVERS[@]} -gt 0 ] || SERVERS=(wsroom minimal gorilla melody gws)
mkdir -p results
{
	echo "commit: $(git -C .. rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C .. diff --quiet HEAD -- . ':!bench' 2>/dev/null || echo ' (with uncommitted changes)')"
	echo "core *.go sha256: $(cat ../*.go | sha256sum | cut -c1-16)"
	echo "date: $(date -u +%FT%TZ)"
	echo "nproc: $(nproc)"
	echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
	echo "kernel: $(uname -r)"
	echo "go: $(go version)"
	echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "results/machine-$FIRST.txt"
cat "results/machine-$FIRST.txt"
for run in $(seq "$FIRST" $((FIRST + RUNS - 1))); do
	for s in "${SERVERS[@]}"; do
		echo "== $s run $run (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
		./bin/wsroom-bench -server "$s" -idle 10000 > "results/$s-idle-$run.md"
		sleep 5 # let the kernel finish closing the last run's sockets
		./bin/wsroom-bench -server "$s" -c 1000 -rates 10k,50k,100k,200k,500k,1M,2M,4M -step 5s \
			-csv "results/$s-c1000-$run.csv" > "results/$s-c1000-$run.md" || true
		sleep 5
		./bin/wsroom-bench -server "$s" -c 10000 -rates 10k,50k,100k,200k,500k,1M,2M -step 5s \
			-csv "results/$s-c10000-$run.csv" > "results/$s-c10000-$run.md" || true
		sleep 5
	done
done
# The tool's own read capacity: the cheapest server, every step.
if [ "${BLAST:-1}" = 1 ]; then
	./bin/wsroom-bench -server blast -c 1000 -rates 1M,2M,3M,4M,6M -step 5s -all \
		-csv "results/blast-c1000-$FIRST.csv" > "results/blast-c1000-$FIRST.md" || true
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "results/machine-$FIRST.txt"
