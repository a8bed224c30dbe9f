#!/usr/bin/env bash
# Property-based fuzzing of the API from its own OpenAPI document with
# schemathesis (PyPI): no 5xx, every response as documented. Starts its own
# API on a fresh database; `MAX_EXAMPLES` per operation (default 100).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh

venv=target/fuzz-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==4.*"
fi
cargo build -q --bin genq-api

stamp=$(date +%s)
export GENQ__AUTH__JWT_SECRET="fuzz-secret-0123456789abcdef"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/genq_fuzz_$stamp"
export GENQ__QUEUE__PREFIX="genq-fuzz-$stamp"
export GENQ__API__ADDR="127.0.0.1:18181"
export GENQ__API__SUBMIT_BURST=100000 GENQ__API__SUBMIT_PER_MINUTE=1000000
target/debug/genq-api > "target/fuzz-api-$stamp.log" 2>&1 &
api=$!
cleanup() {
  kill "$api" 2>/dev/null || true
  wait "$api" 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS genq_fuzz_$stamp WITH (FORCE)" postgres >/dev/null 2>&1 || true
}
trap cleanup EXIT
for _ in $(seq 1 100); do curl -sf "http://$GENQ__API__ADDR/readyz" >/dev/null && break; sleep 0.2; done

# An admin token exercises every endpoint, admin ones included.
token=$(target/debug/genq-api token --sub fuzz-admin --email fuzz@example.com --admin --ttl 7200)
# Enough credits that a schema-valid submission is never refused for credits.
curl -sf "http://$GENQ__API__ADDR/v1/credits" -H "Authorization: Bearer $token" >/dev/null
cargo run -q --bin genqctl -- credits grant --user fuzz-admin --amount 1000000000 --reason fuzzing >/dev/null
"$venv/bin/schemathesis" --config-file scripts/schemathesis.toml run "http://$GENQ__API__ADDR/openapi.json" \
  --header "Authorization: Bearer $token" \
  --max-examples "${MAX_EXAMPLES:-100}" \
  --seed "${SEED:-1}" \
  --suppress-health-check all \
  "$@"
# Nothing in the API's log may be a panic.
! grep -q "panicked" "target/fuzz-api-$stamp.log"
