#!/usr/bin/env bash
# Benchmark: N tasks in flight at once at the simulated provider (Seedance's
# dialect, generations of GEN_MS, default an hour, so none ends), one
# worker, in each MODE (default "callbacks poll"): `callbacks` hands the
# provider a callback URL, so polling is the safety net
# (provider.poll_with_callbacks_ms, default 300000); `poll` polls as genq
# does without callbacks (doubling from worker.poll_initial_ms to
# worker.poll_max_ms). Once all N run, it samples SAMPLE seconds (default
# 60): the worker's RSS (and its peak), the CPU seconds per second of the
# worker, Postgres (all its processes) and RabbitMQ, and the polls the
# provider answered. In `callbacks` mode a second sample follows over one
# whole safety-net period (provider.poll_with_callbacks_ms, 300 s), in which
# every task is asked once (STEADY=0 skips it). Release binaries, a fresh
# database and queue prefix per mode; everything is stopped and dropped at
# the end of each.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-100000}"
GEN_MS="${GEN_MS:-3600000}"
SAMPLE="${SAMPLE:-60}"
MODES="${MODES:-callbacks poll}"
USERS="${USERS:-100}"
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
. scripts/isolated-env.sh

hz=$(getconf CLK_TCK)
# CPU ticks (user + system) of every process whose command is $1.
ticks_of() {
  local total=0 pid
  for pid in $(pgrep -x "$1" || true); do
    total=$(( total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0) ))
  done
  echo "$total"
}
polls() { curl -sf "http://127.0.0.1:18283/v1/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status_requests"])'; }

for mode in $MODES; do
  (
  bench_env inflight 18282 18283
  export GENQ__PROVIDER__KIND=seedance GENQ__PROVIDER__API_KEY=bench
  export GENQ__WORKER__JOB_TIMEOUT_SECS=36000 GENQ__WORKER__MAX_JOB_AGE_SECS=72000 GENQ__WORKER__STALE_AFTER_SECS=36000
  sim_flags=(--dialect seedance --generation-ms "$GEN_MS")
  if [ "$mode" = callbacks ]; then
    export GENQ__PROVIDER__CALLBACK_BASE_URL="http://$GENQ__API__ADDR"
    GENQ__PROVIDER__CALLBACK_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
    export GENQ__PROVIDER__CALLBACK_SECRET
    sim_flags+=(--callbacks)
  fi
  "$bin/genq-provider-sim" --addr 127.0.0.1:18283 "${sim_flags[@]}" > "$log/sim.log" 2>&1 & pids+=($!)
  bench_start_api
  bench_users "$USERS"
  "$bin/genq-worker" > "$log/worker.log" 2>&1 & worker=$!; pids+=($worker)

  start=$(date +%s)
  QUOTA=$(( N / 4 + 1 )) wrk -t4 -c32 -d3600s -s "$log/submit.lua" "http://$GENQ__API__ADDR" > "$log/wrk.txt" 2>&1 & wrk=$!
  for _ in $(seq 1 7200); do
    [ "$(sql "SELECT count(*) FROM jobs")" -ge "$N" ] && break
    sleep 0.5
  done
  kill "$wrk" 2>/dev/null || true
  submitted=$(date +%s)
  for _ in $(seq 1 7200); do
    [ "$(sql "SELECT count(*) FROM jobs WHERE status = 'running'")" -ge "$N" ] && break
    sleep 1
  done
  running=$(date +%s)
  in_flight=$(sql "SELECT count(*) FROM jobs WHERE status = 'running'")

  # `sample LABEL SECONDS`
  sample() {
    local w0 p0 r0 q0 w1 p1 r1 q1 rss peak secs=$2
    per_s() { echo "scale=2; ($2 - $1) / $hz / $secs" | bc; }
    w0=$(awk '{print $14 + $15}' "/proc/$worker/stat"); p0=$(ticks_of postgres); r0=$(ticks_of beam.smp); q0=$(polls)
    sleep "$secs"
    w1=$(awk '{print $14 + $15}' "/proc/$worker/stat"); p1=$(ticks_of postgres); r1=$(ticks_of beam.smp); q1=$(polls)
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$worker/status")
    peak=$(awk '/VmHWM/ {print $2}' "/proc/$worker/status")
    echo "  $1: worker RSS $(( rss / 1024 )) MiB (peak $(( peak / 1024 )) MiB); CPU s/s over $secs s: worker $(per_s "$w0" "$w1"), postgres $(per_s "$p0" "$p1"), rabbitmq $(per_s "$r0" "$r1"); polls answered $(( (q1 - q0) / secs ))/s"
  }
  {
    echo "mode=$mode N=$N in flight=$in_flight"
    echo "  submitted in $(( submitted - start )) s; all running after $(( running - start )) s"
    sample "just after" "$SAMPLE"
    if [ "$mode" = callbacks ] && [ "${STEADY:-1}" = 1 ]; then
      sample "one safety-net period" 300
    fi
  } | tee -a target/bench-inflight.txt
  )
done
