#!/usr/bin/env bash
# Prometheus, checked and used for real: the rules (promtool check rules),
# their unit tests (promtool test rules, deploy/prometheus/tests), the
# Grafana dashboard's queries (each checked as PromQL), then Debian's
# Prometheus scraping a running API and worker (debug binaries, a database
# and queue prefix of their own) while one job runs, queried through its
# HTTP API for that job's metrics. Installs the `prometheus` package when
# promtool is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/rules/*.yml
promtool test rules deploy/prometheus/tests/*.yml
mkdir -p target
python3 scripts/dashboard_rules.py deploy/grafana/genq.json > target/dashboard-rules.yml
promtool check rules target/dashboard-rules.yml

GENQ_BUILD="${GENQ_BUILD:-debug}"
. scripts/isolated-env.sh
bench_env prom 18312 18313
export GENQ__API__METRICS_ADDR=127.0.0.1:18314 GENQ__WORKER__METRICS_ADDR=127.0.0.1:18315
"$bin/genq-provider-sim" --addr 127.0.0.1:18313 --generation-ms 300 > "$log/sim.log" 2>&1 & pids+=($!)
bench_start_api
bench_users 1
"$bin/genq-worker" > "$log/worker.log" 2>&1 & pids+=($!)

# Prometheus scraping both every second, with genq's rules loaded.
mkdir -p "$log/prometheus/rules"
cp deploy/prometheus/rules/*.yml "$log/prometheus/rules/"
cat > "$log/prometheus/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - rules/*.yml
scrape_configs:
  - job_name: genq-api
    static_configs: [{targets: ["$GENQ__API__METRICS_ADDR"]}]
  - job_name: genq-worker
    static_configs: [{targets: ["$GENQ__WORKER__METRICS_ADDR"]}]
YML
prometheus --config.file="$log/prometheus/prometheus.yml" --storage.tsdb.path="$log/prometheus/data" \
  --web.listen-address=127.0.0.1:18316 > "$log/prometheus.log" 2>&1 & pids+=($!)

token=$(head -1 "$TOKENS_FILE")
job=$(curl -sf -X POST "http://$GENQ__API__ADDR/v1/generations" -H "Authorization: Bearer $token" \
  -H 'content-type: application/json' -d '{"prompt": "a lighthouse, scraped"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')

# `query PROMQL`: the first sample's value, or nothing.
query() {
  curl -sf --get "http://127.0.0.1:18316/api/v1/query" --data-urlencode "query=$1" 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")' 2>/dev/null || true
}
# `expect DESCRIPTION PROMQL`: waits (60 s at most) for a nonzero answer.
expect() {
  local v
  for _ in $(seq 1 120); do
    v=$(query "$2")
    if [ -n "$v" ] && [ "$v" != "0" ]; then echo "prometheus: $1 = $v"; return 0; fi
    sleep 0.5
  done
  echo "prometheus never answered $1 ($2); see $log/prometheus.log" >&2
  return 1
}
expect "both targets up" 'sum(up{job=~"genq-api|genq-worker"}) == 2'
expect "the job succeeded (worker)" 'sum(genq_jobs_finished_total{status="succeeded"})'
expect "its submit was timed (api)" 'sum(genq_submit_seconds_count)'
expect "its whole time was recorded" 'sum(genq_job_seconds_count{status="succeeded"})'
expect "its provider time was recorded" 'sum(genq_provider_task_seconds_count)'
expect "its archive was timed" 'sum(genq_archive_seconds_count)'
expect "a recording rule evaluated" 'count(genq:jobs_finished:rate5m)'
expect "the sweeper's gauges" 'count(genq_outbox_oldest_seconds) + count(genq_jobs_waiting)'
expect "the ledger verified, sound" 'count(max(genq_ledger_verified_timestamp_seconds) > 0 and max(genq_ledger_violations) == 0)'
expect "no alert firing" 'vector(1) unless count(ALERTS{alertstate="firing"}) > 0'
[ "$(sql "SELECT status FROM jobs WHERE id = '$job'")" = succeeded ]
echo "prometheus checks passed"
