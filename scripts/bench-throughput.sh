#!/usr/bin/env bash
# Benchmark: submissions per second through the API (wrk, 32 connections,
# DURATION seconds) and jobs per second through the whole pipeline (relay,
# WORKERS workers, a provider that finishes at once, commit). Release
# binaries, fresh database and queue prefix; everything dropped at the end.
# On this 2-core machine the load generator, the API, Postgres, RabbitMQ,
# the workers and the provider all share the same two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-20}"
WORKERS="${WORKERS:-2}"
USERS="${USERS:-200}"
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
. scripts/isolated-env.sh
bench_env tput 18284 18285
export GENQ__WORKER__POLL_INITIAL_MS=100
"$bin/genq-provider-sim" --addr 127.0.0.1:18285 --generation-ms 0 > "$log/sim.log" 2>&1 & pids+=($!)
bench_start_api
for i in $(seq 1 "$WORKERS"); do "$bin/genq-worker" > "$log/worker$i.log" 2>&1 & pids+=($!); done
bench_users "$USERS"
start=$(date +%s.%N)
wrk -t2 -c32 -d"${DURATION}s" --latency -s "$log/submit.lua" "http://$GENQ__API__ADDR" | tee "$log/wrk.txt"
for _ in $(seq 1 1200); do
  [ "$WORKERS" -eq 0 ] && break
  [ "$(sql "SELECT count(*) FROM jobs WHERE status IN ('queued','submitting','running')")" -eq 0 ] && break
  sleep 0.5
done
done_at=$(date +%s.%N)
total=$(sql "SELECT count(*) FROM jobs")
ok=$(sql "SELECT count(*) FROM jobs WHERE status = 'succeeded'")
echo "jobs accepted: $total, succeeded: $ok"
echo "pipeline: $(echo "$ok / ($done_at - $start)" | bc) jobs/s from first submission to the last commit (${WORKERS} workers, ${USERS} users)"
"$bin/genqctl" ledger verify
