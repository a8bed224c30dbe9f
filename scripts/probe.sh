#!/usr/bin/env bash
# The hostile-client probe: starts an isolated API (own database and queue
# prefix; release binaries, or GENQ_BUILD=debug) and runs scripts/probe.py
# against it: made-up methods (metric series and the API's memory), request
# heads that never end, a stream token from a 30-second token, a viewer and
# the ledger verification, an 8 MiB body, /metrics on the public port.
# Exits 1 on any finding. About 40 s (the heads it holds are cut off at 10 s).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/isolated-env.sh
api_port=${API_PORT:-18391}
bench_env probe "$api_port" "${SIM_PORT:-18392}"
export GENQ__API__METRICS_ADDR="127.0.0.1:$((api_port + 2))"
bench_start_api
api_pid=${pids[-1]}
USER_TOKEN_30S=$("$bin/genq-api" token --sub probe-user --ttl 30)
VIEWER_TOKEN=$("$bin/genq-api" token --sub probe-viewer --viewer)
ADMIN_TOKEN=$("$bin/genq-api" token --sub probe-admin --admin)
export USER_TOKEN_30S VIEWER_TOKEN ADMIN_TOKEN DB=$bench_db
python3 scripts/probe.py 127.0.0.1 "$api_port" "$((api_port + 2))" "$api_pid"
