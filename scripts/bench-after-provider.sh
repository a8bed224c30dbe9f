#!/usr/bin/env bash
# Benchmark: what the user waits for after the provider is done. For each
# video size in SIZES (bytes; default 1 MB, 50 MB, 200 MB), N jobs (default
# 50) one at a time on Seedance's simulated dialect with callbacks on and
# the first poll a minute away: from the provider finishing a task (its
# 1-second generation) to the user's event stream saying `succeeded`, split
# into the wake (callback, poll), the copy (download, store, sync) and the
# event's way to the stream (scripts/after_provider.py). Release binaries,
# filesystem storage with its syncs, a fresh database and queue prefix per
# size; everything is stopped and dropped (videos too) at the end of each.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES="${SIZES:-1048576 52428800 209715200}"
N="${N:-50}"
GEN_MS=1000
. scripts/isolated-env.sh

for size in $SIZES; do
  (
  bench_env after 18302 18303
  export GENQ__PROVIDER__KIND=seedance GENQ__PROVIDER__API_KEY=bench
  export GENQ__WORKER__POLL_INITIAL_MS=60000 GENQ__WORKER__POLL_MAX_MS=60000
  export GENQ__PROVIDER__CALLBACK_BASE_URL="http://$GENQ__API__ADDR"
  GENQ__PROVIDER__CALLBACK_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  export GENQ__PROVIDER__CALLBACK_SECRET
  "$bin/genq-provider-sim" --addr 127.0.0.1:18303 --dialect seedance --callbacks \
    --generation-ms "$GEN_MS" --video-bytes "$size" > "$log/sim.log" 2>&1 & pids+=($!)
  bench_start_api
  bench_users 1
  "$bin/genq-worker" > "$log/worker.log" 2>&1 & pids+=($!)
  API="$GENQ__API__ADDR" TOKEN=$(head -1 "$TOKENS_FILE") N="$N" GEN_MS="$GEN_MS" \
    LABEL="$(( size >> 20 )) MiB" python3 scripts/after_provider.py | tee -a target/bench-after-provider.txt
  rm -rf "$log/videos"
  )
done
