#!/usr/bin/env bash
# Benchmark: N jobs in flight at a provider that never finishes them, one
# worker. Prints how fast they went from 202 to running, and the worker's
# memory and CPU while it polls them all. Release binaries; fresh database
# and queue prefix; everything is stopped and dropped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-10000}"
. scripts/isolated-env.sh
bench_env bench 18282 18283
export GENQ__WORKER__JOB_TIMEOUT_SECS=3600 GENQ__WORKER__MAX_JOB_AGE_SECS=7200 GENQ__WORKER__STALE_AFTER_SECS=900
"$bin/genq-provider-sim" --addr 127.0.0.1:18283 --hang-rate 1.0 > "$log/sim.log" 2>&1 & pids+=($!)
bench_start_api
"$bin/genq-worker" > "$log/worker.log" 2>&1 & worker=$!; pids+=($worker)
token=$("$bin/genq-api" token --sub bench --ttl 7200)
curl -sf "http://$GENQ__API__ADDR/v1/credits" -H "Authorization: Bearer $token" >/dev/null
"$bin/genqctl" credits grant --user bench --amount $((N * 10)) --reason bench >/dev/null

start=$(date +%s.%N)
seq 1 "$N" | xargs -P 16 -I{} curl -s -o /dev/null -X POST "http://$GENQ__API__ADDR/v1/generations" \
  -H "Authorization: Bearer $token" -H 'content-type: application/json' -d '{"prompt": "bench {}"}'
submitted=$(date +%s.%N)
for _ in $(seq 1 600); do
  [ "$(sql "SELECT count(*) FROM jobs WHERE status = 'running'")" -ge "$N" ] && break
  sleep 0.5
done
running=$(date +%s.%N)
cpu0=$(awk '{print $14 + $15}' "/proc/$worker/stat")
sleep 30
cpu1=$(awk '{print $14 + $15}' "/proc/$worker/stat")
hz=$(getconf CLK_TCK)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$worker/status")
echo "jobs in flight:            $(sql "SELECT count(*) FROM jobs WHERE status = 'running'") of $N"
echo "submit (202s, 16 clients): $(echo "$N / ($submitted - $start)" | bc) jobs/s"
echo "202 → running, all:        $(echo "$running - $start" | bc) s  ($(echo "$N / ($running - $start)" | bc) jobs/s through API, relay, worker and provider)"
echo "worker RSS while polling:  $((rss / 1024)) MiB"
echo "worker CPU while polling:  $(echo "scale=1; 100 * ($cpu1 - $cpu0) / $hz / 30" | bc)% of one core (30 s sample)"
echo "broker:"
rabbitmqctl -q list_queues name messages | grep "$GENQ__QUEUE__PREFIX" | sed 's/^/  /'
