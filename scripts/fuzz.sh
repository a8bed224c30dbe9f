#!/usr/bin/env bash
# Property-based fuzzing of the API from its own OpenAPI document with
# schemathesis (PyPI): no 5xx, every response as documented. Starts its own
# API on a fresh database and queue prefix (dropped at the end);
# `MAX_EXAMPLES` per operation (default 100), `SEED` (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."

# One pinned version, so that a run means the same thing on every machine.
schemathesis_version=4.32.5
venv=target/fuzz-venv
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qx "schemathesis, version $schemathesis_version"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$schemathesis_version"
fi
. scripts/isolated-env.sh
GENQ_BUILD=debug bench_env fuzz 18181 18182
export GENQ__LOG__FILTER=info
# Event streams end after a second, so each fuzzed stream request completes.
export GENQ__EVENTS__MAX_STREAM_SECS=1
bench_start_api

# An admin token exercises every endpoint, admin ones included.
token=$("$bin/genq-api" token --sub fuzz-admin --email fuzz@example.com --admin --ttl 7200)
# Enough credits that a schema-valid submission is never refused for credits.
curl -sf "http://$GENQ__API__ADDR/v1/credits" -H "Authorization: Bearer $token" >/dev/null
"$bin/genqctl" credits grant --user fuzz-admin --amount 1000000000 --reason fuzzing >/dev/null
# The user of the documented example of POST /v1/admin/credits.
viewer=$("$bin/genq-api" token --sub viewer --email viewer@example.com)
curl -sf "http://$GENQ__API__ADDR/v1/credits" -H "Authorization: Bearer $viewer" >/dev/null
# Data for the stateful phase to follow links from (no worker runs): a queued
# job, a dead letter of it and a malformed one.
job=$(curl -sf "http://$GENQ__API__ADDR/v1/generations" -H "Authorization: Bearer $token" \
  -H 'content-type: application/json' -d '{"prompt": "a seeded job"}' | sed -E 's/^\{"id":"([^"]+)".*/\1/')
sql "INSERT INTO dead_letters (job_id, source_queue, reason, body) VALUES
     ('$job', '$GENQ__QUEUE__PREFIX.start', 'seeded by scripts/fuzz.sh', convert_to('{\"type\":\"start\"}', 'UTF8')),
     (NULL, '$GENQ__QUEUE__PREFIX.poll', 'seeded by scripts/fuzz.sh: malformed', '\\x00ff'::bytea)"
"$venv/bin/schemathesis" --config-file scripts/schemathesis.toml run "http://$GENQ__API__ADDR/openapi.json" \
  --header "Authorization: Bearer $token" \
  --max-examples "${MAX_EXAMPLES:-100}" \
  --seed "${SEED:-1}" \
  --suppress-health-check all \
  "$@"
# Nothing in the API's log may be a panic.
! grep -q "panicked" "$log/api.log"
