#!/usr/bin/env bash
# Benchmark (issue #12): idle pickup. N submissions one at a time, each only
# after the last reached the provider, to an idle API, relay and worker;
# prints the percentiles of the time from the submission's commit (its
# `queued` event) to the worker's claim (`submitting`, just before the
# provider call) and to `running` (the provider accepted it), from the jobs'
# own timelines. Release binaries; its own database and queues.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-200}"
. scripts/isolated-env.sh
bench_env pickup 18286 18287
"$bin/genq-provider-sim" --addr 127.0.0.1:18287 --generation-ms 0 > "$log/sim.log" 2>&1 & pids+=($!)
bench_start_api
"$bin/genq-worker" > "$log/worker.log" 2>&1 & pids+=($!)
bench_users 1
token=$(head -n1 "$log/tokens")
for i in $(seq 1 "$N"); do
  id=$(curl -sf -X POST "http://$GENQ__API__ADDR/v1/generations" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -d "{\"prompt\": \"pickup $i\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  # Idle between submissions: wait (bounded) until this one is running.
  for _ in $(seq 1 200); do
    [ "$(sql "SELECT count(*) FROM job_events WHERE job_id = '$id' AND to_status = 'running'")" = 1 ] && break
    sleep 0.05
  done
done
# The stages, all Postgres clocks: `queued` is the submit statement's start,
# the outbox row's `published_at` the relay's transaction start (it wakes on
# the NOTIFY), `submitting` the worker's claim after the broker delivered.
pct() { # expression percentile
  echo "round((percentile_cont($2) WITHIN GROUP (ORDER BY extract(epoch FROM $1)) * 1000)::numeric, 1)"
}
sql "
  WITH t AS (
    SELECT e.job_id,
           max(at) FILTER (WHERE to_status = 'queued') AS queued,
           max(at) FILTER (WHERE to_status = 'submitting') AS submitting,
           max(at) FILTER (WHERE to_status = 'running') AS running,
           min(o.published_at) AS relayed
      FROM job_events e JOIN outbox o ON o.job_id = e.job_id
     WHERE kind = 'status' GROUP BY e.job_id)
  SELECT format('pickup over %s idle submissions: 202 -> submitting p50 %s ms, p99 %s ms; 202 -> running p50 %s ms, p99 %s ms; of which submit -> relay p50 %s ms, relay -> claim p50 %s ms',
    count(*),
    $(pct "submitting - queued" 0.5), $(pct "submitting - queued" 0.99),
    $(pct "running - queued" 0.5), $(pct "running - queued" 0.99),
    $(pct "relayed - queued" 0.5), $(pct "submitting - relayed" 0.5))
    FROM t WHERE submitting IS NOT NULL AND running IS NOT NULL" | tee "$log/pickup.txt"
