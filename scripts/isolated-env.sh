# Sourced by the benchmark and fuzz scripts: a fresh, isolated genq (release
# binaries, or debug with GENQ_BUILD=debug, or those already built in
# GENQ_BIN, to compare two builds). `bench_env NAME API_PORT SIM_PORT`
# exports a database and queue prefix of their own, a random JWT secret, no rate
# limit and quiet logs, and sets `bin`, `log`, `pids` and `sql`;
# `bench_start_api` starts the API and waits until it is ready; `bench_users N`
# makes N users with credits that never run out, their tokens in
# $log/tokens (TOKENS_FILE), and $log/submit.lua, a wrk script submitting as a
# random one of them. On exit everything started is stopped and the database
# and queues are dropped.

bench_env() {
  local name=$1 api_port=$2 sim_port=$3
  scripts/services.sh
  if [ -n "${GENQ_BIN:-}" ]; then
    bin=$GENQ_BIN
  elif [ "${GENQ_BUILD:-release}" = debug ]; then
    cargo build -q --bins
    bin=${CARGO_TARGET_DIR:-target}/debug
  else
    cargo build -q --release --bins
    bin=${CARGO_TARGET_DIR:-target}/release
  fi
  bench_db="genq_${name}_$(date +%s)"
  # Random per run: the API refuses any secret written in the repository.
  GENQ__AUTH__JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  export GENQ__AUTH__JWT_SECRET
  export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$bench_db"
  export GENQ__QUEUE__PREFIX="${bench_db//_/-}"
  export GENQ__API__ADDR="127.0.0.1:$api_port"
  export GENQ__API__SUBMIT_BURST=100000000 GENQ__API__SUBMIT_PER_MINUTE=1000000000
  export GENQ__PROVIDER__BASE_URL="http://127.0.0.1:$sim_port"
  export GENQ__WORKER__METRICS_ADDR="127.0.0.1:0" GENQ__API__METRICS_ADDR="127.0.0.1:0"
  export GENQ__LOG__FILTER=warn
  log="target/$bench_db"
  mkdir -p "$log"
  # Videos the workers keep go with the run's logs.
  export GENQ__STORAGE__PATH="$PWD/$log/videos"
  pids=()
  trap bench_cleanup EXIT
}

sql() { psql -qtA -h 127.0.0.1 -U postgres "$bench_db" -c "$1"; }

# Credits that never run out for every user of database $1: a grant, its
# lot and the lot's opening move, as genq's own grants write them.
bench_grant() {
  psql -qtA -h 127.0.0.1 -U postgres "$1" -c "
    WITH g AS (
      INSERT INTO credit_ledger (user_id, kind, amount, actor, reason)
      SELECT user_id, 'grant', 1000000000, 'bench', 'bench' FROM credit_accounts
      RETURNING id, user_id, amount
    ), a AS (
      UPDATE credit_accounts c SET available = c.available + g.amount FROM g WHERE c.user_id = g.user_id
    ), l AS (
      INSERT INTO credit_lots (user_id, amount, remaining, ledger_id)
      SELECT user_id, amount, amount, id FROM g RETURNING id, amount, ledger_id
    )
    INSERT INTO credit_lot_moves (lot_id, ledger_id, amount) SELECT id, ledger_id, amount FROM l"
}

bench_start_api() {
  "$bin/genq-api" > "$log/api.log" 2>&1 & pids+=($!)
  for _ in $(seq 1 100); do curl -sf "http://$GENQ__API__ADDR/readyz" >/dev/null && return 0; sleep 0.2; done
  echo "the API did not become ready; see $log/api.log" >&2
  return 1
}

bench_users() {
  local n=$1 u t
  # Many users: submissions of one user serialize on their account row.
  : > "$log/tokens"
  for u in $(seq 1 "$n"); do
    t=$("$bin/genq-api" token --sub "bench-$u" --ttl 7200)
    curl -sf "http://$GENQ__API__ADDR/v1/credits" -H "Authorization: Bearer $t" >/dev/null
    echo "$t" >> "$log/tokens"
  done
  bench_grant "$bench_db" >/dev/null
  export TOKENS_FILE="$log/tokens"
  # A random user and prompt per request; with QUOTA set, each wrk thread
  # stops after that many responses (wrk still waits for its -d or a SIGINT).
  cat > "$log/submit.lua" <<'LUA'
local n = 0
local answered = 0
local quota = tonumber(os.getenv("QUOTA") or "0")
local tokens = {}
for line in io.lines(os.getenv("TOKENS_FILE")) do tokens[#tokens + 1] = line end
request = function()
  n = n + 1
  local body = string.format('{"prompt": "bench %d %d"}', n, math.random(1000000000))
  local token = tokens[math.random(#tokens)]
  return wrk.format("POST", "/v1/generations",
    {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}, body)
end
if quota > 0 then
  response = function()
    answered = answered + 1
    if answered >= quota then wrk.thread:stop() end
  end
end
LUA
}

bench_cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $bench_db WITH (FORCE)" postgres >/dev/null 2>&1 || true
  # Every queue and exchange of the run's prefix (genq's and any the
  # benchmark added), from the management API's listing.
  local kind name
  for kind in queues exchanges; do
    curl -sf -u guest:guest "http://127.0.0.1:15672/api/$kind/%2F?columns=name" 2>/dev/null |
      python3 -c 'import json, sys; [print(x["name"]) for x in json.load(sys.stdin) if x["name"].startswith(sys.argv[1] + ".")]' "$GENQ__QUEUE__PREFIX" 2>/dev/null |
      while read -r name; do
        curl -sf -u guest:guest -X DELETE "http://127.0.0.1:15672/api/$kind/%2F/$name" >/dev/null || true
      done
  done
}
