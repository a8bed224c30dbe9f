#!/usr/bin/env bash
# Benchmark (issue #12): genq's speed as ratios to limits measured in the same
# run, on the same machine, so that a noisy machine moves both sides alike.
#   submit: POST /v1/generations (wrk, API alone) vs pgbench running genq's own
#           submit statement with the same number of clients;
#   drain:  a backlog of jobs through WORKERS workers and an instant provider vs
#           pgbench running every durable statement of one job in sequence, and
#           vs Celery draining as many no-op tasks from the same RabbitMQ.
# Prints one table and writes it to $log/summary.txt. Release binaries; its own
# databases and queue prefix (scripts/isolated-env.sh), all dropped at the end.
# Knobs: DURATION (s), ROUNDS and SLICE (the submit comparison's turns, s each), USERS, CLIENTS, BACKLOG (jobs/tasks drained), WORKERS,
# CELERY_QUEUE_TYPE (classic, Celery's default, or quorum, as genq's queues),
# ONLY=submit or ONLY=drain (those rows alone, for tuning one side),
# FIRST_POLL_MS (the provider's provider.first_poll_ms: 0, or none for unset).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-20}"
ROUNDS="${ROUNDS:-4}"
SLICE="${SLICE:-8}"
USERS="${USERS:-200}"
CLIENTS="${CLIENTS:-32}"
BACKLOG="${BACKLOG:-5000}"
WORKERS="${WORKERS:-2}"
CELERY_QUEUE_TYPE="${CELERY_QUEUE_TYPE:-classic}"
ONLY="${ONLY:-}" # "submit": the submit rows alone (no drain, no Celery); "drain": the drain rows alone
AMQP="amqp://guest:guest@127.0.0.1:5672//"
for tool in wrk pgbench pg_dump psql curl bc python3 node npm; do
  command -v "$tool" >/dev/null || { echo "$tool is needed (wrk: apt-get install wrk; pgbench: postgresql-contrib)" >&2; exit 1; }
done
. scripts/isolated-env.sh
export GENQ__WORKER__POLL_INITIAL_MS=100 # the shortest wait tier: the first poll finds the video done
# The simulated provider is instant, so the setting a deployment would give
# it is provider.first_poll_ms = 0: the start step polls it itself.
# FIRST_POLL_MS=none measures without it (the first poll through a wait tier).
FIRST_POLL_MS="${FIRST_POLL_MS:-0}"
[ "$FIRST_POLL_MS" = none ] || export GENQ__PROVIDER__FIRST_POLL_MS="$FIRST_POLL_MS"
bench_env bench 18296 18297
# The workers' total concurrency (worker.concurrency, 32 by default in
# core/src/config.rs): the lifecycle pgbench runs that many clients.
worker_concurrency=$(( WORKERS * ${GENQ__WORKER__CONCURRENCY:-32} ))
limit_dbs=()
celery_queue="$GENQ__QUEUE__PREFIX.celery"
celery_pid=""
venv=target/celery-venv
export CELERY_QUEUE="$celery_queue" CELERY_BROKER="$AMQP" CELERY_QUEUE_TYPE PYTHONPATH="$PWD/$log"

# Stops processes this script started and forgets them, so that the exit trap
# never signals a reused pid.
stop() {
  local p q keep=()
  kill "$@" 2>/dev/null || true
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for q in "$@"; do [ "$p" = "$q" ] && continue 2; done
    keep+=("$p")
  done
  pids=("${keep[@]}")
}

teardown() {
  [ -n "$celery_pid" ] && stop "$celery_pid"
  for db in "${limit_dbs[@]}"; do
    psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" postgres >/dev/null 2>&1 || true
  done
  # genq's queues and exchanges, and Celery's (named with the prefix too).
  bench_cleanup
}
trap teardown EXIT

# The Celery limit runs in a venv of its own, made first so that a failed
# install stops the run before it has spent minutes.
if [ ! -x "$venv/bin/celery" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'celery==5.*'
fi
# autocannon, for the latency at a fixed rate.
bench_node=target/bench-node
if [ ! -f "$bench_node/node_modules/autocannon/package.json" ]; then
  mkdir -p "$bench_node"
  npm install -q --no-audit --no-fund --prefix "$bench_node" autocannon@9.0.0 >/dev/null
fi

sql_on() { psql -qtA -h 127.0.0.1 -U postgres "$1" -c "$2"; }
now() { date +%s.%N; }
ratio() { printf '%.2f' "$(echo "scale=4; $1 / $2" | bc)"; }
# wrk prints latencies as 812.00us, 4.20ms or 1.02s: in ms.
to_ms() {
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000; printf "%.1f", n }'
}

"$bin/genq-provider-sim" --addr 127.0.0.1:18297 --generation-ms 0 > "$log/sim.log" 2>&1 & pids+=($!)
sim_pid=$!
bench_start_api
api_pid=${pids[-1]}

bench_users "$USERS"

if [ "$ONLY" != submit ]; then
# ---------------------------------------------------------------- drain ----
# The backlog goes in through the API with no worker running. The outbox
# relay runs inside genq-worker (there is no relay-only process), so the
# drain below includes relaying the backlog to RabbitMQ, as the lifecycle
# limit includes the relay's statements.
echo "== drain: submitting $BACKLOG jobs with no worker running"
QUOTA=$(( (BACKLOG + 1) / 2 )) wrk -t2 -c"$CLIENTS" -d600s -s "$log/submit.lua" "http://$GENQ__API__ADDR" > "$log/wrk-backlog.txt" 2>&1 &
wrk_pid=$!
# Until the backlog is in, or no job came in for 10 s (refused requests also
# count towards wrk's quota).
deadline=$(( $(date +%s) + 600 ))
last=-1
while :; do
  n=$(sql "SELECT count(*) FROM jobs")
  [ "$n" -ge "$BACKLOG" ] && break
  [ "$n" -ne "$last" ] && { last=$n; moved=$(date +%s); }
  [ $(( $(date +%s) - moved )) -lt 10 ] || { echo "submissions stopped at $n jobs" >&2; break; }
  [ "$(date +%s)" -lt "$deadline" ] || { echo "the backlog was not submitted in time" >&2; exit 1; }
  kill -0 "$wrk_pid" 2>/dev/null || { cat "$log/wrk-backlog.txt" >&2; exit 1; }
  sleep 0.2
done
kill -INT "$wrk_pid" 2>/dev/null || true
wait "$wrk_pid" || true
sleep 1 # requests still in the API when wrk stopped
backlog=$(sql "SELECT count(*) FROM jobs WHERE status = 'queued'")
echo "backlog: $backlog queued jobs, $(sql "SELECT count(*) FROM outbox WHERE published_at IS NULL") unpublished outbox rows"

echo "== drain: $WORKERS workers"
# CPU seconds used so far by each side (processes that exit in between are
# missed: Postgres backends of the pools stay, RabbitMQ is one process).
# In clock ticks from /proc (ps rounds each process down to a second).
cpu_secs() {
  local p t=0 f
  for p in $(pgrep -x "$1"); do
    f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    f=${f##*) } # the fields after the command name
    read -r -a f <<< "$f"
    t=$(( t + f[11] + f[12] )) # utime, stime
  done
  echo "$t"
}
ticks_to_s() { awk -v t="$1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz }'; }
# (pgrep matches the kernel's 15-character process names.)
cpu0=("$(cpu_secs beam.smp)" "$(cpu_secs postgres)" "$(cpu_secs genq-provider-s)")
worker_pids=()
t0=$(now)
# Each worker's /metrics on a port of its own, read at the end of the drain.
for i in $(seq 1 "$WORKERS"); do
  GENQ__WORKER__METRICS_ADDR="127.0.0.1:$(( 18300 + i ))" "$bin/genq-worker" > "$log/worker$i.log" 2>&1 & pids+=($!); worker_pids+=($!)
done
relayed_at=""
deadline=$(( $(date +%s) + 120 + backlog / 10 ))
while :; do
  IFS='|' read -r open unpublished <<< "$(sql "SELECT (SELECT count(*) FROM jobs WHERE status IN ('queued','submitting','running')), (SELECT count(*) FROM outbox WHERE published_at IS NULL)")"
  [ -z "$relayed_at" ] && [ "$unpublished" -eq 0 ] && relayed_at=$(now)
  [ "$open" -eq 0 ] && break
  [ "$(date +%s)" -lt "$deadline" ] || { echo "the drain did not finish in time: $open jobs open" >&2; exit 1; }
  sleep 0.2
done
t1=$(now)
# The relay marks a batch after the broker's confirms, which can come after its jobs finished.
[ -n "$relayed_at" ] || relayed_at=$t1
cpu1=("$(cpu_secs beam.smp)" "$(cpu_secs postgres)" "$(cpu_secs genq-worker)" "$(cpu_secs genq-provider-s)")
drain_cpu="RabbitMQ $(ticks_to_s $(( cpu1[0] - cpu0[0] ))) s, Postgres $(ticks_to_s $(( cpu1[1] - cpu0[1] ))) s, the workers $(ticks_to_s "${cpu1[2]}") s, the simulated provider $(ticks_to_s $(( cpu1[3] - cpu0[2] ))) s"
# How the workers batched: moves per statement, deliveries per ack.
sum_metric() { # name: summed over the workers
  local i t=0 v
  for i in $(seq 1 "$WORKERS"); do
    v=$(curl -sf "http://127.0.0.1:$(( 18300 + i ))/metrics" | awk -v m="$1" '$1 == m { s += $2 } END { printf "%d", s }') || v=0
    t=$(( t + ${v:-0} ))
  done
  echo "$t"
}
moves=$(sum_metric 'genq_batch_size_sum{batch="settle"}')
statements=$(sum_metric 'genq_batch_size_count{batch="settle"}')
acked=$(sum_metric genq_deliveries_acked_total)
acks=$(( $(sum_metric 'genq_acks_sent_total{kind="multiple"}') + $(sum_metric 'genq_acks_sent_total{kind="single"}') ))
batching="none (a build without batches)"
[ "$statements" -gt 0 ] && batching="$moves moves in $statements statements ($(ratio "$moves" "$statements") a statement), $acked deliveries in $acks acks"
stop "${worker_pids[@]}"
succeeded=$(sql "SELECT count(*) FROM jobs WHERE status = 'succeeded'")
[ "$succeeded" -eq "$backlog" ] || echo "WARNING: $succeeded of $backlog jobs succeeded: $(sql "SELECT status || ' ' || count(*) FROM jobs GROUP BY status")" >&2
drain_s=$(printf '%.2f' "$(echo "$t1 - $t0" | bc)")
drain_rate=$(echo "scale=0; $succeeded / $drain_s" | bc)
relay_s=$(printf '%.2f' "$(echo "$relayed_at - $t0" | bc)")
echo "drain: $succeeded jobs in ${drain_s}s = $drain_rate jobs/s (outbox relayed after ${relay_s}s)"
"$bin/genqctl" ledger verify | tee "$log/ledger-verify.txt"

# A succeeded job's values, bound by the pgbench scripts below so that they
# write rows of genq's own sizes.
IFS='|' read -r params cost provider fingerprint task_id result_url video_key video_bytes <<< "$(sql "
  SELECT params::text, cost, provider, request_fingerprint, provider_task_id, provider_result_url, video_key, video_bytes
    FROM jobs WHERE status = 'succeeded' LIMIT 1")"
IFS='|' read -r archived_message archived_data <<< "$(sql "SELECT message, data::text FROM job_events WHERE kind = 'archived' LIMIT 1")"
fi # drain
stop "$sim_pid"

if [ "$ONLY" = submit ]; then
  # The values the pgbench scripts bind, from a job of this run.
  curl -sf -o /dev/null "http://$GENQ__API__ADDR/v1/generations" -H "Authorization: Bearer $(head -1 "$TOKENS_FILE")" \
    -H 'Content-Type: application/json' -d '{"prompt": "bench 0 0"}'
  IFS='|' read -r params cost provider fingerprint <<< "$(sql "
    SELECT params::text, cost, provider, request_fingerprint FROM jobs LIMIT 1")"
fi

# ---------------------------------------------------------------- limits ---
# A database of genq's schema (dumped from the run's own) with USERS users of
# endless credits, and bench_users to pick one at random by number.
limit_db() { # sets db
  db="${bench_db}_$1"
  limit_dbs+=("$db")
  psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" postgres
  pg_dump -s -h 127.0.0.1 -U postgres "$bench_db" | psql -q -h 127.0.0.1 -U postgres "$db" >/dev/null
  sql_on "$db" "
    INSERT INTO users (external_id) SELECT 'bench-' || g FROM generate_series(1, $USERS) g;
    INSERT INTO credit_accounts (user_id, available) SELECT id, 0 FROM users;" >/dev/null
  bench_grant "$db" >/dev/null
  sql_on "$db" "
    CREATE TABLE bench_users AS SELECT row_number() OVER () AS n, id AS user_id FROM users;
    ALTER TABLE bench_users ADD PRIMARY KEY (n);" >/dev/null
  sql_on "$db" "VACUUM ANALYZE" >/dev/null
}

# Per transaction: a random user, a job id, and the values genq computes in
# Rust (the start message; the prompt as wrk sends it). The job id is a
# UUIDv7 as Uuid::now_v7 makes (time-ordered, so the jobs index grows at its
# end): 48 bits of milliseconds over a random v4, version bits set to 7.
cat > "$log/pick.sql" <<'SQL'
\set u random(1, :users)
SELECT user_id AS user, job, json_build_object('type', 'start', 'job_id', job, 'attempt', 1) AS start_payload,
       'bench ' || (random() * 1000000000)::bigint AS prompt
  FROM bench_users,
       LATERAL (SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                  placing substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                  FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid AS job) AS g
 WHERE n = :u \gset
SQL
# genq's submit statement, as genq composes it (`genq-api print-sql`), for a
# request without Idempotency-Key or model: genq binds NULL to those,
# written NULL here (a pgbench variable cannot be NULL), and the run's
# allowance (api.submit_per_minute, api.submit_burst) as seconds.
statement() { # name [NAME=SQL...]: the statement, ended for pgbench
  local name=$1 args=() a
  shift
  for a in "$@"; do args+=(--set "$a"); done
  printf '%s;\n' "$("$bin/genq-api" print-sql "$name" "${args[@]}")"
}
statement submit idempotency_key=NULL model=NULL "priority='normal'" traceparent=NULL tracestate=NULL > "$log/submit-statement.sql"
cat "$log/pick.sql" "$log/submit-statement.sql" > "$log/pgbench-submit.sql"
# The run's allowance as genq binds it (store/src/store/rate.rs).
interval=$(echo "scale=12; 60 / $GENQ__API__SUBMIT_PER_MINUTE" | bc)
tolerance=$(echo "scale=12; $interval * ($GENQ__API__SUBMIT_BURST - 1)" | bc)
pgbench_vars=(-D rate_interval="$interval" -D rate_tolerance="$tolerance" -D users="$USERS" -D start_key=start -D cost="$cost" -D params="$params" -D provider="$provider" -D fingerprint="$fingerprint")
# Prepared statements, as sqlx runs them; -r reports each statement's mean
# latency, to see which dominate.
run_pgbench() { # db clients script out [seconds]; sets tps
  pgbench -n -r -M prepared -h 127.0.0.1 -U postgres -c "$2" -j 2 -T "${5:-$DURATION}" "${pgbench_vars[@]}" -f "$3" "$1" > "$4" 2>&1 || { cat "$4" >&2; exit 1; }
  cat "$4"
  if grep -q "aborted" "$4" || ! grep -Eq "number of failed transactions: 0 " "$4"; then
    echo "WARNING: pgbench clients aborted or transactions failed (see $4)" >&2
  fi
  tps=$(awk '/^tps = / { printf "%d", $3 }' "$4")
}

# --------------------------------------------------------------- submit ----
if [ "$ONLY" != drain ]; then
# The API (wrk) and its limit (pgbench running genq's submit statement) take
# turns, ROUNDS rounds of SLICE seconds each: this machine's speed
# drifts within a minute (other tenants' load), and turns close together
# see the same drift. The ratio reported is the median of the rounds'.
limit_db submit
submit_db=$db
slice=$SLICE
rates=() limits=() ratios=() p50s=() p99s=() non2xx=0
for round in $(seq 1 "$ROUNDS"); do
  echo "== submit, round $round of $ROUNDS: wrk -t2 -c$CLIENTS for ${slice}s, the API alone; then pgbench -c$CLIENTS"
  wrk -t2 -c"$CLIENTS" -d"${slice}s" --latency -s "$log/submit.lua" "http://$GENQ__API__ADDR" > "$log/wrk-$round.txt"
  rates+=("$(awk '/^Requests\/sec:/ { printf "%d", $2 }' "$log/wrk-$round.txt")")
  p50s+=("$(to_ms "$(awk '$1 == "50%" { print $2 }' "$log/wrk-$round.txt")")")
  p99s+=("$(to_ms "$(awk '$1 == "99%" { print $2 }' "$log/wrk-$round.txt")")")
  n=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$log/wrk-$round.txt")
  non2xx=$(( non2xx + ${n:-0} ))
  run_pgbench "$submit_db" "$CLIENTS" "$log/pgbench-submit.sql" "$log/pgbench-submit-$round.txt" "$slice" >/dev/null
  limits+=("$tps")
  ratios+=("$(ratio "${rates[-1]}" "$tps")")
  echo "   genq ${rates[-1]}/s (p50 ${p50s[-1]} ms, p99 ${p99s[-1]} ms), limit $tps tps: ${ratios[-1]}"
done
[ "$non2xx" -eq 0 ] || echo "WARNING: $non2xx responses were not 2xx" >&2
median() { # format values...
  local format=$1
  shift
  printf '%s\n' "$@" | sort -g | awk -v f="$format" '{ v[NR] = $1 } END { printf f, (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
submit_rate=$(median %d "${rates[@]}")
pgbench_submit=$(median %d "${limits[@]}")
submit_ratio=$(median %.2f "${ratios[@]}")
p50=$(median %.1f "${p50s[@]}")
p99=$(median %.1f "${p99s[@]}")

# The latency at half the limit's rate (issue #12: p99 <= 25 ms there), the
# API kept running meanwhile:
# autocannon paces the requests (scripts/bench-rate.mjs).
half_rate=$(( pgbench_submit / 2 ))
echo "== submit at half that rate: $half_rate/s for ${DURATION}s"
URL="http://$GENQ__API__ADDR" RATE="$half_rate" CONNECTIONS="$CLIENTS" DURATION="$DURATION" \
  AUTOCANNON_DIR="$PWD/$bench_node/node_modules" node scripts/bench-rate.mjs | tee "$log/half-rate.txt"
half_rate_line=$(tail -1 "$log/half-rate.txt")
half_field() { sed -E "s/.*\b$1=([0-9.]+).*/\1/" <<< "$half_rate_line"; }
[ "$(half_field non2xx)" -eq 0 ] && [ "$(half_field errors)" -eq 0 ] || echo "WARNING: at half rate: $half_rate_line" >&2
half_rate_p99="p50 $(half_field p50) ms, p99 $(half_field p99) ms at $(half_field rate)/s"
fi # submit
stop "$api_pid"
"$bin/genqctl" ledger verify >> "$log/ledger-verify.txt"

if [ "$ONLY" != submit ]; then
# The transition statement, as genq composes it, the same text for the
# claim, running and settle steps: each step's values as pgbench variables,
# the parameters genq binds to NULL in that step written NULL.
transition() { # NAME=SQL... of the step; the others NULL
  statement transition error_code=NULL error_message=NULL result_url=NULL task_id=NULL \
    deadline_secs=NULL settle=NULL data=NULL video_key=NULL video_bytes=NULL \
    note_kind=NULL note_message=NULL note_data=NULL "$@"
}
# One job's durable statements, in the worker's order (an instant provider:
# the first poll finds the video done). The relay's claim and mark run in
# one transaction as in worker/src/relay.rs, with a batch of one row (the
# marked ids are bound as one bigint array; here ARRAY[:id::bigint]). When
# every unpublished row is locked by other clients the claim finds none, as
# the relay can; then the mark (of id 0) changes nothing, and a later claim
# takes the row.
# The reads genq makes (the job loaded before each step) are left out.
{
  cat "$log/pick.sql" "$log/submit-statement.sql"
  echo '\set batch 1'
  echo '\set outbox_id 0'
  echo 'BEGIN;'
  printf '%s \\aset outbox_\n' "$("$bin/genq-api" print-sql outbox-claim)"
  statement outbox-mark 'ids=ARRAY[:outbox_id::bigint]'
  echo 'COMMIT;'
  transition from=:claim_from to=:claim_to count_attempt=:yes unless_user_limited=:yes message=:claim_message
  transition from=:running_from to=:running_to task_id=:task_id deadline_secs=:job_timeout \
    count_attempt=:no unless_user_limited=:no message=:running_message
  transition from=:settle_from to=:settle_to result_url=:result_url count_attempt=:no unless_user_limited=:no \
    settle=:settle_kind message=:settle_message video_key=:video_key video_bytes=:video_bytes \
    note_kind=:archived_kind note_message=:archived_message note_data=:archived_data
} > "$log/pgbench-lifecycle.sql"
pgbench_vars+=(
  -D yes=true -D no=false
  -D claim_from="{queued,submitting}" -D claim_to=submitting -D claim_message="Submitting to the provider (attempt 1)."
  -D running_from="{submitting}" -D running_to=running -D task_id="$task_id" -D job_timeout=900
  -D running_message="The provider accepted the task $task_id."
  -D archived_kind=archived -D archived_message="$archived_message" -D archived_data="$archived_data"
  -D settle_from="{running}" -D settle_to=succeeded -D settle_kind=commit -D result_url="$result_url"
  -D video_key="$video_key" -D video_bytes="$video_bytes" -D settle_message="The video is ready; $cost credits spent."
)
echo "== limit: pgbench -c$worker_concurrency running one job's durable statements in sequence"
limit_db lifecycle
run_pgbench "$db" "$worker_concurrency" "$log/pgbench-lifecycle.sql" "$log/pgbench-lifecycle.txt"
pgbench_cycle=$tps
open_left=$(sql_on "$db" "SELECT count(*) FROM jobs WHERE status <> 'succeeded'")
[ "$open_left" -le "$worker_concurrency" ] || echo "WARNING: $open_left lifecycle jobs did not reach succeeded" >&2

# The drain as genq's workers batch it (worker/src/settle.rs), as a limit:
# each worker runs worker.settle_in_flight batch statements at once, so
# this runs WORKERS x that many clients, each moving batches of as many
# jobs as a worker's concurrency fills per slot, from a backlog of BACKLOG
# jobs submitted first (untimed, as the drain's backlog is). Per
# transaction of the script: the relay's claim and mark of a batch of
# outbox rows, then the claim, running and settle steps of their jobs as
# one batch statement each. Its rate is the jobs it moved per second.
# (Skipped for a build without batches, GENQ_BIN of an older one.)
pgbench_batched=""
if "$bin/genq-api" print-sql transition-batch >/dev/null 2>&1; then
settle_in_flight=${GENQ__WORKER__SETTLE_IN_FLIGHT:-1}
settle_batch=${GENQ__WORKER__SETTLE_BATCH:-64}
batch_clients=$(( WORKERS * settle_in_flight ))
batch_size=$(( ${GENQ__WORKER__CONCURRENCY:-32} / settle_in_flight ))
[ "$batch_size" -le "$settle_batch" ] || batch_size=$settle_batch
[ "$batch_size" -ge 1 ] || batch_size=1
# Every array of a batch statement: the step's value for each job, or NULLs.
fill() { # SQL-value type
  echo "array_fill($1::$2, ARRAY[:outbox_n::int])"
}
batch_transition() { # NAME=SQL... of the step; the others NULL
  statement transition-batch jobs=:outbox_jobs::uuid[] \
    "error_codes=$(fill NULL text)" "error_messages=$(fill NULL text)" "result_urls=$(fill NULL text)" \
    "task_ids=$(fill NULL text)" "deadline_secs=$(fill NULL float8)" "count_attempts=$(fill false bool)" \
    "unless_user_limited=$(fill false bool)" "settles=$(fill NULL text)" "datas=$(fill NULL jsonb)" \
    "video_keys=$(fill NULL text)" "video_bytes=$(fill NULL int8)" "note_kinds=$(fill NULL text)" \
    "note_messages=$(fill NULL text)" "note_datas=$(fill NULL jsonb)" "$@"
}
{
  echo "\\set batch $batch_size"
  echo 'BEGIN;'
  printf 'SELECT coalesce(array_agg(id), %s) AS ids, coalesce(array_agg((payload ->> %s)::uuid), %s) AS jobs, count(*) AS n FROM (%s) c \\gset outbox_\n' \
    "'{}'" "'job_id'" "'{}'" "$("$bin/genq-api" print-sql outbox-claim)"
  statement outbox-mark 'ids=:outbox_ids::bigint[]'
  echo 'COMMIT;'
  batch_transition "froms=$(fill "'queued,submitting'" text)" "tos=$(fill "'submitting'" text)" \
    "count_attempts=$(fill true bool)" "unless_user_limited=$(fill true bool)" "messages=$(fill ":claim_message" text)"
  batch_transition "froms=$(fill "'submitting'" text)" "tos=$(fill "'running'" text)" \
    "task_ids=$(fill ":task_id" text)" "deadline_secs=$(fill 900 float8)" "messages=$(fill ":running_message" text)"
  batch_transition "froms=$(fill "'running'" text)" "tos=$(fill "'succeeded'" text)" \
    "result_urls=$(fill ":result_url" text)" "settles=$(fill "'commit'" text)" \
    "messages=$(fill ":settle_message" text)" "video_keys=$(fill ":video_key" text)" \
    "video_bytes=$(fill ":video_bytes" int8)" "note_kinds=$(fill "'archived'" text)" \
    "note_messages=$(fill ":archived_message" text)" "note_datas=$(fill ":archived_data" jsonb)"
} > "$log/pgbench-drain-batched.sql"
limit_db batched
echo "== limit: $BACKLOG jobs submitted by pgbench -c$CLIENTS (untimed)"
per_client=$(( (BACKLOG + CLIENTS - 1) / CLIENTS ))
pgbench -n -M prepared -h 127.0.0.1 -U postgres -c "$CLIENTS" -j 2 -t "$per_client" "${pgbench_vars[@]}" \
  -f "$log/pgbench-submit.sql" "$db" > "$log/pgbench-backlog.txt" 2>&1 || { cat "$log/pgbench-backlog.txt" >&2; exit 1; }
batched_backlog=$(sql_on "$db" "SELECT count(*) FROM jobs WHERE status = 'queued'")
echo "== limit: pgbench -c$batch_clients draining them with the batched statements, $batch_size jobs a batch"
t0=$(now)
pgbench -n -r -M prepared -h 127.0.0.1 -U postgres -c "$batch_clients" -j 2 \
  -t $(( batched_backlog / (batch_clients * batch_size) + 1 )) "${pgbench_vars[@]}" \
  -f "$log/pgbench-drain-batched.sql" "$db" > "$log/pgbench-drain-batched.txt" 2>&1 || { cat "$log/pgbench-drain-batched.txt" >&2; exit 1; }
t1=$(now)
cat "$log/pgbench-drain-batched.txt"
batched_moved=$(sql_on "$db" "SELECT count(*) FROM jobs WHERE status = 'succeeded'")
pgbench_batched=$(echo "scale=0; $batched_moved / ($t1 - $t0)" | bc)
[ "$batched_moved" -ge $(( batched_backlog - batch_clients * batch_size )) ] || echo "WARNING: the batched drain moved $batched_moved of $batched_backlog jobs" >&2
fi # batched

# --------------------------------------------------------------- celery ----
echo "== limit: Celery, $BACKLOG no-op tasks, prefork -c 2, $CELERY_QUEUE_TYPE queue on the same RabbitMQ"
# The task module, and (run as a script) the publisher and the drain timer. The timer asks the broker for the queue's ready count
# with a passive declare every 20 ms on one connection: rabbitmqctl boots an
# Erlang VM per call, and the management API's counts lag by seconds.
cat > "$log/celery_bench.py" <<'PY'
import os, sys, time
from celery import Celery

QUEUE = os.environ["CELERY_QUEUE"]
app = Celery("celery_bench", broker=os.environ["CELERY_BROKER"])
app.conf.update(
    task_default_queue=QUEUE, task_default_exchange=QUEUE, task_default_routing_key=QUEUE,
    task_default_queue_type=os.environ.get("CELERY_QUEUE_TYPE", "classic"),
    task_ignore_result=True, worker_enable_remote_control=False,
    broker_connection_retry_on_startup=True,
)

@app.task
def noop():
    pass

def publish(n):
    with app.producer_or_acquire() as producer:
        for _ in range(int(n)):
            noop.apply_async(producer=producer)

def ready(channel):
    _, messages, consumers = channel.queue_declare(queue=QUEUE, passive=True)
    return messages, consumers

def wait_drained(deadline_s):
    # Prints: seconds from the first consumer to an empty queue, and the
    # messages there were then.
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        end = time.monotonic() + deadline_s
        start = backlog = None
        while time.monotonic() < end:
            messages, consumers = ready(channel)
            if start is None and consumers > 0:
                start, backlog = time.monotonic(), messages
            if start is not None and messages == 0:
                print(f"{time.monotonic() - start:.3f} {backlog}")
                return
            time.sleep(0.02)
    sys.exit("the Celery queue was not drained in time")

if __name__ == "__main__":
    {"publish": publish, "wait": wait_drained}[sys.argv[1]](float(sys.argv[2]))
PY
"$venv/bin/python" "$log/celery_bench.py" publish "$BACKLOG"
echo "published $BACKLOG tasks to $celery_queue"
"$venv/bin/python" "$log/celery_bench.py" wait $(( 120 + BACKLOG / 10 )) > "$log/celery-drain.txt" &
timer_pid=$!
"$venv/bin/celery" -A celery_bench worker --pool prefork -c 2 -Q "$celery_queue" -l warning \
  --without-gossip --without-mingle --without-heartbeat > "$log/celery.log" 2>&1 & pids+=($!)
celery_pid=$!
wait "$timer_pid" || { cat "$log/celery.log" >&2; exit 1; }
stop "$celery_pid"
celery_pid=""
# Every published task is counted: the timer's first look at the consumer may
# come a poll after its first deliveries.
read -r celery_s celery_ready < "$log/celery-drain.txt"
celery_rate=$(echo "scale=0; $BACKLOG / $celery_s" | bc)
echo "celery: $BACKLOG tasks in ${celery_s}s = $celery_rate tasks/s ($celery_ready still ready when its consumer was first seen)"

fi # lifecycle and Celery

# -------------------------------------------------------------- summary ----
{
  echo
  echo "genq bench, $(date -u +%FT%TZ): DURATION=${DURATION}s USERS=$USERS CLIENTS=$CLIENTS BACKLOG=$BACKLOG WORKERS=$WORKERS FIRST_POLL_MS=$FIRST_POLL_MS, $(nproc) cores shared by all"
  echo
  echo "| what | genq | the limit, same run | ratio |"
  echo "|---|---|---|---|"
  [ "$ONLY" = drain ] || echo "| POST /v1/generations (wrk -c$CLIENTS) vs pgbench -c$CLIENTS running genq's submit statement, $ROUNDS turns each (medians) | $submit_rate/s, p50 $p50 ms, p99 $p99 ms, non-2xx $non2xx | $pgbench_submit tps | **$submit_ratio** (rounds: ${ratios[*]}) |"
  [ "$ONLY" = submit ] || echo "| drain of $succeeded jobs ($WORKERS workers, instant provider, relay included) vs pgbench -c$worker_concurrency running one job's durable statements | $drain_rate jobs/s | $pgbench_cycle jobs/s | **$(ratio "$drain_rate" "$pgbench_cycle")** |"
  [ "$ONLY" = submit ] || [ -z "$pgbench_batched" ] || echo "| same drain vs pgbench -c$batch_clients draining $batched_moved jobs with genq's batched statements, $batch_size jobs a batch | $drain_rate jobs/s | $pgbench_batched jobs/s | **$(ratio "$drain_rate" "$pgbench_batched")** |"
  [ "$ONLY" = submit ] || echo "| same drain vs Celery $("$venv/bin/celery" --version | cut -d' ' -f1), no-op task, prefork -c 2, $CELERY_QUEUE_TYPE queue, same RabbitMQ | $drain_rate jobs/s | $celery_rate tasks/s | $(ratio "$drain_rate" "$celery_rate") |"
  echo
  [ "$ONLY" = drain ] || echo "at half the pgbench submit rate ($half_rate/s, autocannon -c$CLIENTS): $half_rate_p99"
  [ "$ONLY" = submit ] || echo "drain: ${drain_s}s from starting the workers to no open job; the outbox was relayed after ${relay_s}s; CPU used meanwhile: $drain_cpu"
  [ "$ONLY" = submit ] || echo "drain batching: $batching"
  echo "genqctl ledger verify: passed after the drain and after the submit run ($log/ledger-verify.txt)"
} | tee "$log/summary.txt"
