#!/usr/bin/env bash
# Benchmark: N jobs in flight at a provider that never finishes them, one
# worker. Prints how fast they went from 202 to running, and the worker's
# memory and CPU while it polls them all. Release binaries; fresh database
# and queue prefix; everything is stopped and dropped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-10000}"
scripts/services.sh
cargo build -q --release --bins
bin=target/release
stamp=$(date +%s)
export GENQ__AUTH__JWT_SECRET="bench-secret-0123456789abcdef"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/genq_bench_$stamp"
export GENQ__QUEUE__PREFIX="genq-bench-$stamp"
export GENQ__API__ADDR="127.0.0.1:18282"
export GENQ__API__SUBMIT_BURST=1000000 GENQ__API__SUBMIT_PER_MINUTE=100000000
export GENQ__PROVIDER__BASE_URL="http://127.0.0.1:18283"
export GENQ__WORKER__METRICS_ADDR="127.0.0.1:0"
export GENQ__WORKER__JOB_TIMEOUT_SECS=3600 GENQ__WORKER__MAX_JOB_AGE_SECS=7200 GENQ__WORKER__STALE_AFTER_SECS=900
export GENQ__LOG__FILTER=warn
log=target/bench-$stamp
mkdir -p "$log"
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS genq_bench_$stamp WITH (FORCE)" postgres >/dev/null 2>&1 || true
  for q in start poll dead wait.100 wait.250 wait.1000 wait.2000 wait.5000 wait.15000 wait.30000 wait.60000; do
    rabbitmqctl -q delete_queue "$GENQ__QUEUE__PREFIX.$q" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
"$bin/genq-provider-sim" --addr 127.0.0.1:18283 --hang-rate 1.0 > "$log/sim.log" 2>&1 & pids+=($!)
"$bin/genq-api" > "$log/api.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do curl -sf "http://$GENQ__API__ADDR/readyz" >/dev/null && break; sleep 0.2; done
"$bin/genq-worker" > "$log/worker.log" 2>&1 & worker=$!; pids+=($worker)
token=$("$bin/genq-api" token --sub bench --ttl 7200)
curl -sf "http://$GENQ__API__ADDR/v1/credits" -H "Authorization: Bearer $token" >/dev/null
"$bin/genqctl" credits grant --user bench --amount $((N * 10)) --reason bench >/dev/null
sql() { psql -qtA -h 127.0.0.1 -U postgres "genq_bench_$stamp" -c "$1"; }

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
