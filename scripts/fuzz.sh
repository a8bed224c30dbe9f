#!/usr/bin/env bash
# Property-based fuzzing of the API from its own OpenAPI document with
# schemathesis (PyPI): no 5xx, every response as documented. Starts its own
# API on a fresh database and queue prefix (dropped at the end);
# `MAX_EXAMPLES` per operation (default 100), `SEED` (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/fuzz-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==4.*"
fi
. scripts/isolated-env.sh
GENQ_BUILD=debug bench_env fuzz 18181 18182
export GENQ__LOG__FILTER=info
bench_start_api

# An admin token exercises every endpoint, admin ones included.
token=$("$bin/genq-api" token --sub fuzz-admin --email fuzz@example.com --admin --ttl 7200)
# Enough credits that a schema-valid submission is never refused for credits.
curl -sf "http://$GENQ__API__ADDR/v1/credits" -H "Authorization: Bearer $token" >/dev/null
"$bin/genqctl" credits grant --user fuzz-admin --amount 1000000000 --reason fuzzing >/dev/null
"$venv/bin/schemathesis" --config-file scripts/schemathesis.toml run "http://$GENQ__API__ADDR/openapi.json" \
  --header "Authorization: Bearer $token" \
  --max-examples "${MAX_EXAMPLES:-100}" \
  --seed "${SEED:-1}" \
  --suppress-health-check all \
  "$@"
# Nothing in the API's log may be a panic.
! grep -q "panicked" "$log/api.log"
