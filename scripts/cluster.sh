#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this one machine, beside the default
# broker (which it leaves alone): nodes genq1..3@localhost on AMQP ports
# 5681..5683 (distribution ports 25681..25683), each with its own data and
# log directory under $GENQ_CLUSTER_DIR (target/cluster), one Erlang cookie
# of their own, no plugins (so no management port clashes).
#
#   scripts/cluster.sh up          start and cluster the three nodes; prints AMQP_URL
#   scripts/cluster.sh down        stop them and delete their data
#   scripts/cluster.sh status      the cluster as node 1 sees it
#   scripts/cluster.sh kill N      SIGKILL node N (a crash)
#   scripts/cluster.sh stop N      stop node N cleanly
#   scripts/cluster.sh start N     start node N again (it rejoins the cluster)
#   scripts/cluster.sh urls        the AMQP_URL of the three nodes
#   scripts/cluster.sh ctl ARGS    rabbitmqctl ARGS against node 1
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${GENQ_CLUSTER_DIR:-$PWD/target/cluster}
bin=/usr/lib/rabbitmq/bin

node_env() {
  local n=$1
  export HOME=$dir
  export RABBITMQ_NODENAME=genq$n@localhost
  export RABBITMQ_NODE_PORT=$((5680 + n))
  export RABBITMQ_DIST_PORT=$((25680 + n))
  export RABBITMQ_MNESIA_BASE=$dir/n$n/mnesia
  export RABBITMQ_LOG_BASE=$dir/n$n/log
  export RABBITMQ_PID_FILE=$dir/n$n/pid
  export RABBITMQ_CONFIG_FILE=$dir/n$n/rabbitmq.conf
  export RABBITMQ_ENABLED_PLUGINS_FILE=$dir/plugins
}

ctl() { local n=$1; shift; (node_env "$n"; cd "$dir"; "$bin/rabbitmqctl" -q -n "genq$n@localhost" "$@"); }

urls() {
  local out=() n
  for n in 1 2 3; do out+=("amqp://guest:guest@127.0.0.1:$((5680 + n))/%2f"); done
  (IFS=,; echo "${out[*]}")
}

start_node() {
  local n=$1
  mkdir -p "$dir/n$n/log"
  [ -f "$dir/.erlang.cookie" ] || { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$dir/.erlang.cookie"; chmod 400 "$dir/.erlang.cookie"; }
  [ -f "$dir/plugins" ] || echo "[]." > "$dir/plugins"
  printf 'listeners.tcp.local = 127.0.0.1:%s\n' $((5680 + n)) > "$dir/n$n/rabbitmq.conf"
  (node_env "$n"; cd "$dir"; "$bin/rabbitmq-server" -detached >/dev/null 2>&1)
  # Bounded: a node that can't boot fails the script instead of hanging it.
  # (Right after -detached the node is not yet known to epmd: ask again.)
  for _ in $(seq 1 60); do
    ctl "$n" await_startup --timeout 10 >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "node $n did not start; see $dir/n$n/log" >&2
  return 1
}

case "${1:-}" in
  up)
    mkdir -p "$dir"
    for n in 1 2 3; do start_node "$n"; done
    for n in 2 3; do
      if ! ctl 1 cluster_status 2>/dev/null | grep -q "genq$n@localhost"; then
        { ctl "$n" stop_app && ctl "$n" reset && ctl "$n" join_cluster genq1@localhost &&
            ctl "$n" start_app; } >/dev/null 2>&1 || { echo "node $n could not join" >&2; exit 1; }
      fi
    done
    ctl 1 await_online_nodes 3 --timeout 60 >/dev/null 2>&1 || true
    urls
    ;;
  down)
    for n in 1 2 3; do ctl "$n" stop >/dev/null 2>&1 || true; done
    rm -rf "$dir"
    ;;
  status) ctl 1 cluster_status ;;
  kill)
    n=${2:?node number}
    kill -9 "$(cat "$dir/n$n/pid")"
    ;;
  stop) ctl "${2:?node number}" stop ;;
  start) start_node "${2:?node number}" ;;
  urls) urls ;;
  ctl) shift; ctl 1 "$@" ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac
