#!/usr/bin/env bash
# Benchmark: the database's load while N jobs wait in line at a capped
# provider (genq's fair shares). For each N in SIZES (default 100 1000
# 10000), USERS users (default 200) submit N jobs in all to a provider with
# provider.max_concurrent = CAP (default 10) whose generations take GEN_MS
# (default 1000): slots free about CAP / GEN_MS*1000 times a second, so the
# dispatcher works at a steady rate while the lines stay long. Once every
# job has been seen (started or waiting), it samples Postgres' counters for
# the run's database over SAMPLE seconds (default 20): transactions and
# rows read per second, with one worker and the API idle. Release
# binaries, a fresh database and queue prefix per size; everything is
# stopped and dropped at the end of each.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES="${SIZES:-100 1000 10000}"
USERS="${USERS:-200}"
CAP="${CAP:-10}"
GEN_MS="${GEN_MS:-1000}"
SAMPLE="${SAMPLE:-20}"
. scripts/isolated-env.sh

counters() { sql "SELECT xact_commit + xact_rollback, tup_returned + tup_fetched FROM pg_stat_database WHERE datname = current_database()"; }

results=()
for n in $SIZES; do
  (
  bench_env waiting 18292 18293
  export GENQ__PROVIDER__MAX_CONCURRENT=$CAP
  export GENQ__WORKER__JOB_TIMEOUT_SECS=36000 GENQ__WORKER__MAX_JOB_AGE_SECS=72000 GENQ__WORKER__STALE_AFTER_SECS=3600
  "$bin/genq-provider-sim" --addr 127.0.0.1:18293 --generation-ms "$GEN_MS" > "$log/sim.log" 2>&1 & pids+=($!)
  bench_start_api
  users=$(( USERS < n ? USERS : n ))
  bench_users "$users"
  "$bin/genq-worker" > "$log/worker.log" 2>&1 & pids+=($!)
  # N submissions spread over the users, 16 at a time.
  seq 1 "$n" | xargs -P 16 -I{} sh -c 'token=$(sed -n "$(( ({} % '"$users"') + 1 ))p" "$TOKENS_FILE"); curl -s -o /dev/null -X POST "http://$GENQ__API__ADDR/v1/generations" -H "Authorization: Bearer $token" -H "content-type: application/json" -d "{\"prompt\": \"line {}\"}"'
  # Every start message handled: each job is at the provider, done, or in line.
  for _ in $(seq 1 600); do
    left=$(sql "SELECT count(*) FROM jobs WHERE status = 'queued' AND NOT waiting")
    [ "$left" -eq 0 ] && break
    sleep 0.5
  done
  waiting=$(sql "SELECT count(*) FROM jobs WHERE waiting AND status = 'queued'")
  read -r tx0 rows0 < <(counters | tr '|' ' ')
  started0=$(sql "SELECT count(*) FROM jobs WHERE status <> 'queued'")
  sleep "$SAMPLE"
  read -r tx1 rows1 < <(counters | tr '|' ' ')
  started1=$(sql "SELECT count(*) FROM jobs WHERE status <> 'queued'")
  waiting1=$(sql "SELECT count(*) FROM jobs WHERE waiting AND status = 'queued'")
  lines=$(sql "SELECT count(DISTINCT user_id) FROM jobs WHERE waiting AND status = 'queued'")
  echo "N=$n users=$users waiting=$waiting..$waiting1 lines=$lines: $(( (tx1 - tx0) / SAMPLE )) transactions/s, $(( (rows1 - rows0) / SAMPLE )) rows read/s, $(( (started1 - started0) ))/${SAMPLE}s started" | tee -a target/bench-waiting.txt
  )
done
