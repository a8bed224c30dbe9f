#!/usr/bin/env bash
# The pages (/ and the operator console /admin) in a real browser: builds the binaries, starts an isolated stack
# (own database and queue prefix, the provider simulator, the API with the
# development sign-in, a worker), runs web/tests with node:test in Debian's
# headless Chromium (playwright-core; no browser is ever downloaded), and
# stops and drops everything, even on failure. Screenshots and logs are kept
# in target/browser/.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  echo "the browser tests need Debian's Chromium at /usr/bin/chromium: apt-get install -y chromium" >&2
  exit 1
fi
scripts/web.sh deps

. scripts/isolated-env.sh
GENQ_BUILD=debug bench_env browser "${API_PORT:-18381}" "${SIM_PORT:-18382}"
# Artifacts and logs in one known place, fresh each run.
rmdir "$log" 2>/dev/null || true
log=target/browser
rm -rf "$log"
mkdir -p "$log/bin"
export GENQ__STORAGE__PATH="$PWD/$log/videos"
# Run copies: a build in the shared target directory can't swap them mid-run.
cp "$bin/genq-api" "$bin/genq-worker" "$bin/genq-provider-sim" "$log/bin/"
bin=$log/bin

export GENQ__WEB__DEV_SIGN_IN=true
# The System page's queue depths (scripts/services.sh enables the plugin).
export GENQ__AMQP__MANAGEMENT_URL=http://127.0.0.1:15672
export GENQ__LOG__FILTER=info
# Three submissions per user at once, then one a minute: the 429 test.
export GENQ__API__SUBMIT_BURST=3 GENQ__API__SUBMIT_PER_MINUTE=1
# Quick polls, so that a 2.5 s generation is seen running, then done.
export GENQ__WORKER__POLL_INITIAL_MS=250 GENQ__WORKER__POLL_MAX_MS=500
# A provider that always answers 503 kills the job soon: the console's dead letters.
export GENQ__WORKER__MAX_ATTEMPTS=2 GENQ__WORKER__RETRY_BASE_MS=100 GENQ__WORKER__RETRY_MAX_MS=200
# Traces on, to a collector that is not there (the discard port): every job
# has a trace ID for the console to link, and no page may notice the loss.
export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:9
export GENQ__OBSERVABILITY__TRACE_URL_TEMPLATE='https://traces.example.com/trace/{trace_id}'
# Stripe's webhook, for the console's payment events (the tests sign with it).
GENQ__BILLING__STRIPE__WEBHOOK_SECRET="whsec_$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
export GENQ__BILLING__STRIPE__WEBHOOK_SECRET

"$bin/genq-provider-sim" --addr "127.0.0.1:${SIM_PORT:-18382}" --generation-ms 2500 >"$log/sim.log" 2>&1 &
pids+=($!)
bench_start_api
"$bin/genq-worker" >"$log/worker.log" 2>&1 &
pids+=($!)

GENQ_ADMIN_TOKEN=$("$bin/genq-api" token --sub browser-admin --admin --ttl 3600)
GENQ_VIEWER_TOKEN=$("$bin/genq-api" token --sub browser-viewer --viewer --ttl 3600)
export GENQ_ADMIN_TOKEN GENQ_VIEWER_TOKEN GENQ_BASE_URL="http://$GENQ__API__ADDR" GENQ_ARTIFACTS="$PWD/$log"
(cd web && node --test --test-concurrency=1 tests/)
echo "browser tests passed; screenshots in $log/"
