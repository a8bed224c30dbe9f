#!/usr/bin/env bash
# Benchmark: the database's load while N jobs wait in line at a capped
# provider (genq's fair shares). For each N in SIZES (default 100 1000
# 10000), USERS users (default 200) submit N jobs in all to a provider with
# provider.max_concurrent = CAP (default 10) whose generations take GEN_MS
# (default 1000): slots free about CAP / GEN_MS*1000 times a second, so the
# dispatcher works at a steady rate while the lines stay long. Once every
# job has been seen (started or waiting), it samples Postgres' counters for
# the run's database over SAMPLE seconds (default 20): statements (when
# Postgres preloads pg_stat_statements: ALTER SYSTEM SET
# shared_preload_libraries = 'pg_stat_statements' and a restart),
# transactions and rows read per second, with one worker and the API idle.
# SETTLE seconds (default 20) pass first, for autovacuum to take the
# submissions' burst. Release
# binaries, a fresh database and queue prefix per size; everything is
# stopped and dropped at the end of each.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES="${SIZES:-100 1000 10000}"
USERS="${USERS:-200}"
CAP="${CAP:-10}"
GEN_MS="${GEN_MS:-1000}"
SAMPLE="${SAMPLE:-20}"
SETTLE="${SETTLE:-20}"
. scripts/isolated-env.sh

counters() { sql "SELECT xact_commit + xact_rollback, tup_returned + tup_fetched FROM pg_stat_database WHERE datname = current_database()"; }
# Statements per second of this database, when pg_stat_statements is loaded.
statements=$(psql -qtA -h 127.0.0.1 -U postgres -c "SELECT count(*) FROM pg_settings WHERE name = 'shared_preload_libraries' AND setting LIKE '%pg_stat_statements%'" postgres)

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
  sleep "$SETTLE"
  if [ "$statements" = 1 ]; then
    sql "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
    sql "SELECT pg_stat_statements_reset()" >/dev/null
  fi
  waiting=$(sql "SELECT count(*) FROM jobs WHERE waiting AND status = 'queued'")
  read -r tx0 rows0 < <(counters | tr '|' ' ')
  started0=$(sql "SELECT count(*) FROM jobs WHERE status <> 'queued'")
  sleep "$SAMPLE"
  read -r tx1 rows1 < <(counters | tr '|' ' ')
  started1=$(sql "SELECT count(*) FROM jobs WHERE status <> 'queued'")
  waiting1=$(sql "SELECT count(*) FROM jobs WHERE waiting AND status = 'queued'")
  lines=$(sql "SELECT count(DISTINCT user_id) FROM jobs WHERE waiting AND status = 'queued'")
  per_statement=""
  if [ "$statements" = 1 ]; then
    calls=$(sql "SELECT COALESCE(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = current_database()")
    per_statement=", $(( calls / SAMPLE )) statements/s"
    sql "SELECT calls, left(regexp_replace(query, '\s+', ' ', 'g'), 110) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
          WHERE d.datname = current_database() ORDER BY calls DESC LIMIT 12" > "target/bench-waiting-$n-statements.txt"
  fi
  echo "N=$n users=$users waiting=$waiting..$waiting1 lines=$lines$per_statement: $(( (tx1 - tx0) / SAMPLE )) transactions/s, $(( (rows1 - rows0) / SAMPLE )) rows read/s, $(( (started1 - started0) ))/${SAMPLE}s started" | tee -a target/bench-waiting.txt
  )
done
