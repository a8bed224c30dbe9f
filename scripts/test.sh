#!/usr/bin/env bash
# The whole test suite: every Rust test against the real Postgres and
# RabbitMQ, the generated TypeScript client and the page checked against
# their sources, the page in a real browser, Prometheus's rules and a real
# Prometheus scraping genq, one job's trace at a real OTLP receiver, then (never beside them) the
# short chaos run, which SIGKILLs workers and the API and restarts RabbitMQ
# and Postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
# Databases left by an earlier run that was interrupted (a passing test drops its own).
psql -qAt -h 127.0.0.1 -U postgres -d postgres \
  -c "SELECT datname FROM pg_database WHERE datname LIKE 'genq\_test\_%' OR datname LIKE 'genq\_chaos\_%' OR datname LIKE 'genq\_browser\_%' OR datname LIKE 'genq\_sim\_%'" |
  while read -r db; do
    psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" </dev/null >/dev/null
  done
# ...and their queues (a passing test deletes its own topology).
{ rabbitmqctl -q list_queues name 2>/dev/null | grep -E '^genq-(test|chaos|browser)-' || true; } |
  while read -r q; do rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true; done
# moto's S3-compatible server, for the S3 storage tests.
GENQ_TEST_MOTO_SERVER=$(scripts/moto.sh)
export GENQ_TEST_MOTO_SERVER
# The JOSE library the identity-provider tests sign with (and the page's packages).
scripts/web.sh deps
cargo test --workspace
# The committed OpenAPI document, TypeScript client and page are current.
scripts/web.sh check
# The page in Debian's Chromium against a real stack.
scripts/browser-test.sh
# The alert rules and their unit tests, the dashboard's queries, and a real
# Prometheus scraping a running API and worker.
scripts/prometheus.sh
# One job's OpenTelemetry trace across the API and the worker, received by
# a real OTLP receiver; and a receiver that is down changes nothing.
scripts/traces.sh
cargo build --bins
"${CARGO_TARGET_DIR:-target}"/debug/genq-chaos --profile short
