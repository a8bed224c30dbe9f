#!/usr/bin/env bash
# What traces cost a submission: POST /v1/generations (wrk, the API alone,
# as scripts/bench.sh measures it) with traces off, then on (every trace
# sampled, exported to a real OTLP receiver that decodes every span:
# scripts/otlp_receiver.py --count), in alternating turns of SLICE seconds,
# ROUNDS of each; the API restarts between turns, with or without
# OTEL_EXPORTER_OTLP_ENDPOINT. Prints the medians and their ratio (on / off;
# the target is at least 0.9). Release binaries, a database and queue prefix
# of its own (scripts/isolated-env.sh). Knobs: ROUNDS, SLICE, USERS, CLIENTS.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-4}"
SLICE="${SLICE:-10}"
USERS="${USERS:-200}"
CLIENTS="${CLIENTS:-32}"
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
venv=target/otlp-venv
if ! "$venv/bin/python" -c 'import opentelemetry.proto' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "opentelemetry-proto==1.*"
fi
. scripts/isolated-env.sh
bench_env tracing 18332 18333
"$venv/bin/python" scripts/otlp_receiver.py 18334 "$log/spans-received" --count > "$log/otlp.log" 2>&1 & pids+=($!)
bench_start_api
bench_users "$USERS"

# `turn on|off`: one wrk turn against an API started for it; sets `rate` (req/s).
turn() {
  local mode=$1
  kill "${pids[-1]}" 2>/dev/null && wait "${pids[-1]}" 2>/dev/null || true
  unset 'pids[-1]'
  if [ "$mode" = on ]; then
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:18334 bench_start_api
  else
    bench_start_api
  fi
  wrk -t2 -c"$CLIENTS" -d"${SLICE}s" --latency -s "$log/submit.lua" "http://$GENQ__API__ADDR" > "$log/wrk-$mode-$round.txt"
  rate=$(awk '/^Requests\/sec:/ { printf "%d", $2 }' "$log/wrk-$mode-$round.txt")
}
median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%d", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
offs=() ons=()
for round in $(seq 1 "$ROUNDS"); do
  # Alternating which goes first: the database grows through the run.
  if (( round % 2 )); then
    turn off; offs+=("$rate"); turn on; ons+=("$rate")
  else
    turn on; ons+=("$rate"); turn off; offs+=("$rate")
  fi
  echo "round $round: off ${offs[-1]}/s, on ${ons[-1]}/s"
done
# The last API's spans reach the receiver within the batch delay (5 s).
kill "${pids[-1]}" 2>/dev/null && wait "${pids[-1]}" 2>/dev/null || true
unset 'pids[-1]'
off=$(median "${offs[@]}")
on=$(median "${ons[@]}")
received=$(cat "$log/spans-received" 2>/dev/null || echo 0)
ratio=$(printf '%.2f' "$(echo "scale=4; $on / $off" | bc)")
echo "| submit, wrk -c$CLIENTS, ${SLICE}s turns, $ROUNDS each (medians) | traces off $off/s | traces on $on/s ($received spans received) | **$ratio** (rounds off: ${offs[*]}; on: ${ons[*]}) |" | tee "$log/summary.txt"
