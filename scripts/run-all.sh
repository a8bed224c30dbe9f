#!/usr/bin/env bash
# Starts the whole system on this machine: the provider simulator, the API and
# two workers (each worker also runs an outbox relay). Ctrl-c stops them all.
# Override anything with GENQ__* variables (docs/configuration.md).
set -euo pipefail
cd "$(dirname "$0")/.."

# A random development secret, made on first use and kept (so tokens minted
# with `genq-api token` keep working across restarts): export it with
#   export GENQ__AUTH__JWT_SECRET=$(cat target/dev-jwt-secret)
if [ -z "${GENQ__AUTH__JWT_SECRET:-}" ]; then
  mkdir -p target
  if [ ! -s target/dev-jwt-secret ]; then
    (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' > target/dev-jwt-secret)
  fi
  GENQ__AUTH__JWT_SECRET=$(cat target/dev-jwt-secret)
fi
export GENQ__AUTH__JWT_SECRET
export GENQ__PROVIDER__BASE_URL="${GENQ__PROVIDER__BASE_URL:-http://127.0.0.1:8090}"
# The page at / offers the development sign-in (any name) on this local system.
export GENQ__WEB__DEV_SIGN_IN="${GENQ__WEB__DEV_SIGN_IN:-true}"

scripts/services.sh
cargo build --release --bins
bin=target/release

pids=()
stop() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait; }
trap stop EXIT INT TERM

"$bin/genq-provider-sim" --addr 127.0.0.1:8090 --generation-ms "${SIM_GENERATION_MS:-3000}" & pids+=($!)
"$bin/genq-api" & pids+=($!)
# Give the API a moment to create and migrate the database before the workers.
for _ in $(seq 1 50); do curl -sf http://127.0.0.1:8080/readyz >/dev/null && break; sleep 0.2; done
GENQ__WORKER__METRICS_ADDR=127.0.0.1:9091 "$bin/genq-worker" & pids+=($!)
GENQ__WORKER__METRICS_ADDR=127.0.0.1:9092 "$bin/genq-worker" & pids+=($!)
echo "genq is up: API and the page http://127.0.0.1:8080/, API metrics :9464, worker metrics :9091 and :9092, simulator :8090"
wait
