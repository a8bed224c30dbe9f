#!/usr/bin/env bash
# Flame graphs (issue #12): the API under submit load (wrk, 32 connections,
# the API alone), then one worker draining the backlog that made, each
# sampled with perf (DWARF call graphs of the release build) and drawn by
# inferno into docs/perf/*.svg. Needs perf (linux-perf) and inferno
# (`cargo install inferno`). Release binaries; its own database and queues.
# NAME_SUFFIX names the graphs (api-submit$NAME_SUFFIX.svg), to keep two
# builds' side by side (GENQ_BIN=dir: binaries built elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-15}"
USERS="${USERS:-200}"
FREQ="${FREQ:-199}"
NAME_SUFFIX="${NAME_SUFFIX:-}"
for tool in perf wrk inferno-collapse-perf inferno-flamegraph; do
  command -v "$tool" >/dev/null || { echo "$tool is needed (perf: apt-get install linux-perf; inferno: cargo install inferno)" >&2; exit 1; }
done
. scripts/isolated-env.sh
export GENQ__WORKER__POLL_INITIAL_MS=100
export GENQ__PROVIDER__FIRST_POLL_MS=0 # as bench.sh: the instant provider is polled in the start step
bench_env flame 18298 18299
"$bin/genq-provider-sim" --addr 127.0.0.1:18299 --generation-ms 0 > "$log/sim.log" 2>&1 & pids+=($!)
bench_start_api
api_pid=${pids[-1]}
bench_users "$USERS"
mkdir -p docs/perf

# Samples `pid` for `secs` into $log/NAME.perf.
record() {
  perf record -q -F "$FREQ" --call-graph dwarf,16384 -p "$2" -o "$log/$1.perf" -- sleep "$3" 2>/dev/null
}

# Folds $log/NAME.perf and draws docs/perf/NAME.svg.
draw() {
  perf script -i "$log/$1.perf" 2>/dev/null | inferno-collapse-perf > "$log/$1.folded"
  inferno-flamegraph --title "$2" --width 1400 < "$log/$1.folded" > "docs/perf/$1$NAME_SUFFIX.svg"
  echo "docs/perf/$1$NAME_SUFFIX.svg drawn"
}

record api-submit "$api_pid" "$DURATION" &
recorder=$!
wrk -t2 -c32 -d"${DURATION}s" --latency -s "$log/submit.lua" "http://$GENQ__API__ADDR" | tee "$log/wrk.txt"
wait "$recorder"

# The backlog the submissions made, drained by one worker.
sql "SELECT count(*) || ' jobs queued' FROM jobs WHERE status = 'queued'"
"$bin/genq-worker" > "$log/worker.log" 2>&1 & pids+=($!)
record worker-drain "${pids[-1]}" "$DURATION"
sql "SELECT count(*) || ' jobs succeeded while the worker was sampled ($DURATION s)' FROM jobs WHERE status = 'succeeded'"
draw api-submit "genq-api: POST /v1/generations, wrk 32 connections, $USERS users"
draw worker-drain "genq-worker: draining a backlog, instant provider"
