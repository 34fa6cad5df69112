#!/usr/bin/env bash
# Builds the tool and the servers, then measures every server the same way:
# memory per idle connection (10,000 clients), the ladder at 1,000
# subscribers and the ladder at 10,000 subscribers, RUNS times each.
# Results go to results/<server>-<test>-<run>.{md,csv}.
#
#   ./run.sh                 # every server, 3 runs
#   RUNS=1 ./run.sh wsroom   # one server, one run
#   FIRST=2 RUNS=2 ./run.sh  # runs 2 and 3, keeping run 1
#   PIN=0 OUT=results-unpinned ./run.sh  # server and tool share every core
#
# LADDER1 and LADDER10 set the ladders of rates for 1,000 and 10,000
# subscribers.
set -euo pipefail
cd "$(dirname "$0")"
export GOWORK="$PWD/go.work" # the core of this tree; see go.work
# The workspace's modules require the pinned releases (release-pins.txt),
# served from the repository's own module proxy until they are published.
make -C .. -s modproxy
export GOPROXY="file://$(cd .. && pwd)/.modproxy,$(go env GOPROXY)" GONOSUMDB="github.com/wsroom/wsroom"
go build -o bin/ ./cmd/... ./servers/...
PIN=${PIN:-1}
OUT=${OUT:-results}
LADDER1=${LADDER1:-10k,50k,100k,200k,500k,1M,2M,4M,6M,8M}
LADDER10=${LADDER10:-10k,50k,100k,150k,200k,300k,400k,500k,700k,1M,2M}
pin=true
[ "$PIN" = 1 ] || pin=false
RUNS=${RUNS:-3}
FIRST=${FIRST:-1}
SERVERS=("$@")
[ ${#SERVERS[@]} -gt 0 ] || SERVERS=(wsroom minimal gorilla melody gws)
mkdir -p "$OUT"
{
	echo "commit: $(git -C .. rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C .. diff --quiet HEAD -- . ':!bench' 2>/dev/null || echo ' (with uncommitted changes)')"
	echo "core *.go sha256: $(cat ../*.go | sha256sum | cut -c1-16)"
	echo "date: $(date -u +%FT%TZ)"
	echo "nproc: $(nproc)"
	echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
	echo "kernel: $(uname -r)"
	echo "go: $(go version)"
	echo "pinned: $pin"
	echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$OUT/machine-$FIRST.txt"
cat "$OUT/machine-$FIRST.txt"
for run in $(seq "$FIRST" $((FIRST + RUNS - 1))); do
	for s in "${SERVERS[@]}"; do
		echo "== $s run $run (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
		./bin/wsroom-bench -pin=$pin -server "$s" -idle 10000 > "$OUT/$s-idle-$run.md"
		sleep 5 # let the kernel finish closing the last run's sockets
		./bin/wsroom-bench -pin=$pin -server "$s" -c 1000 -rates "$LADDER1" -step 5s \
			-csv "$OUT/$s-c1000-$run.csv" > "$OUT/$s-c1000-$run.md" || true
		sleep 5
		./bin/wsroom-bench -pin=$pin -server "$s" -c 10000 -rates "$LADDER10" -step 5s \
			-csv "$OUT/$s-c10000-$run.csv" > "$OUT/$s-c10000-$run.md" || true
		sleep 5
	done
done
# The tool's own read capacity: the cheapest server, every step.
if [ "${BLAST:-1}" = 1 ]; then
	./bin/wsroom-bench -pin=$pin -server blast -c 1000 -rates 1M,2M,3M,4M,6M,8M -step 5s -all \
		-csv "$OUT/blast-c1000-$FIRST.csv" > "$OUT/blast-c1000-$FIRST.md" || true
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/machine-$FIRST.txt"
