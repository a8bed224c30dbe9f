#!/usr/bin/env bash
# Traces, checked against a real OTLP receiver: a small HTTP server
# decoding the official opentelemetry-proto messages (PyPI, installed into
# target/otlp-venv once). A running API and worker (debug binaries, a
# database and queue prefix of their own) export to it; one job, submitted
# with a client's traceparent, must come back as one trace of both services,
# parented as docs/operations.md#traces describes (scripts/check_trace.py),
# webhook deliveries included, with its trace ID in the admin API, genqctl
# and the worker's log lines.
# Then, with the receiver gone, a submission and its job are unaffected and
# the lost spans are counted.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/otlp-venv
if ! "$venv/bin/python" -c 'import opentelemetry.proto' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "opentelemetry-proto==1.*"
fi

GENQ_BUILD="${GENQ_BUILD:-debug}"
. scripts/isolated-env.sh
bench_env traces 18322 18323
"$venv/bin/python" scripts/otlp_receiver.py 18324 "$log/spans.jsonl" > "$log/otlp.log" 2>&1 &
receiver=$!
pids+=("$receiver")
for _ in $(seq 1 100); do grep -q "otlp receiver" "$log/otlp.log" 2>/dev/null && break; sleep 0.1; done

export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:18324
# Sent every 200 ms rather than every 5 s: the test waits less.
export OTEL_BSP_SCHEDULE_DELAY=200
export GENQ__WORKER__METRICS_ADDR=127.0.0.1:18325
export GENQ__OBSERVABILITY__TRACE_URL_TEMPLATE='https://traces.example.com/trace/{trace_id}'
export GENQ__WEBHOOKS__ALLOW_PRIVATE=true
"$bin/genq-provider-sim" --addr 127.0.0.1:18323 --generation-ms 300 > "$log/sim.log" 2>&1 & pids+=($!)
bench_start_api
bench_users 1
GENQ__LOG__FILTER=info "$bin/genq-worker" > "$log/worker.log" 2>&1 & pids+=($!)

token=$(head -1 "$TOKENS_FILE")
admin=$("$bin/genq-api" token --sub traces-admin --admin)
# A webhook endpoint (the receiver takes POST /hook): deliveries join the trace.
curl -sf -X POST "http://$GENQ__API__ADDR/v1/admin/webhooks" -H "Authorization: Bearer $admin" \
  -H 'content-type: application/json' -d '{"url": "http://127.0.0.1:18324/hook"}' >/dev/null
submit() {
  curl -sf -X POST "http://$GENQ__API__ADDR/v1/generations" -H "Authorization: Bearer $token" \
    -H 'content-type: application/json' "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}
# `ends JOB STATUS`: waits (60 s at most) for the job to end in STATUS.
ends() {
  for _ in $(seq 1 240); do
    [ "$(sql "SELECT status FROM jobs WHERE id = '$1'")" = "$2" ] && return 0
    sleep 0.25
  done
  echo "job $1 did not end $2; see $log" >&2
  return 1
}

# A client's trace: the submission's spans are its children.
trace_id=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
client_span=$(python3 -c 'import secrets; print(secrets.token_hex(8))')
job=$(submit -H "traceparent: 00-$trace_id-$client_span-01" -d '{"prompt": "a lighthouse, traced"}')
ends "$job" succeeded
"$venv/bin/python" scripts/check_trace.py "$log/spans.jsonl" "$trace_id" "$client_span" "$job" | tee "$log/trace.txt"

# Its trace ID where operators look.
curl -sf "http://$GENQ__API__ADDR/v1/admin/jobs/$job" -H "Authorization: Bearer $admin" |
  python3 -c '
import json, sys
job, want = json.load(sys.stdin), sys.argv[1]
assert job["trace_id"] == want, job.get("trace_id")
assert job["trace_url"] == "https://traces.example.com/trace/" + want, job.get("trace_url")
print("admin API: trace_id and trace_url")' "$trace_id"
# Read whole before matching: `grep -q` would stop reading at its match and
# the writer fail on the closed pipe.
shown=$("$bin/genqctl" jobs show "$job")
grep -q "trace  *$trace_id" <<<"$shown"
echo "genqctl jobs show: trace $trace_id"
# A job the provider refuses is logged (INFO) by the worker: with its trace ID.
refused_trace=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
refused=$(submit -H "traceparent: 00-$refused_trace-$client_span-01" -d '{"prompt": "a lighthouse [sim:reject]"}')
ends "$refused" failed
failed_lines=$(sed 's/\x1b\[[0-9;]*m//g' "$log/worker.log" | grep "job failed" || true)
if ! grep -q "trace_id=$refused_trace" <<<"$failed_lines"; then
  echo "the worker's log line of job $refused does not name trace $refused_trace" >&2
  exit 1
fi
echo "worker log lines: trace_id=$refused_trace"
# A user's own view carries no trace.
curl -sf "http://$GENQ__API__ADDR/v1/generations/$job" -H "Authorization: Bearer $token" |
  python3 -c 'import json, sys; j = json.load(sys.stdin); assert "trace_id" not in j, j; print("user view: no trace")'

# The receiver gone: a submission is answered and its job ends as before;
# the worker counts the spans it could not send.
kill "$receiver"
wait "$receiver" 2>/dev/null || true
job=$(submit -d '{"prompt": "a lighthouse, untraced"}')
ends "$job" succeeded
dropped=""
for _ in $(seq 1 120); do
  dropped=$(curl -sf "http://$GENQ__WORKER__METRICS_ADDR/metrics" |
    awk '/^genq_trace_spans_dropped_total\{reason="export_failed"\}/ { print $2 }')
  [ -n "$dropped" ] && break
  sleep 0.5
done
[ -n "$dropped" ] || { echo "the worker never counted its unsent spans" >&2; exit 1; }
echo "receiver down: the job succeeded; the worker counted $dropped unsent spans"
echo "trace checks passed"
