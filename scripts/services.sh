#!/usr/bin/env bash
# Starts PostgreSQL and RabbitMQ on this machine when they are not answering,
# and waits (bounded) until both accept connections.
set -euo pipefail

port_open() { timeout 1 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 120); do
    port_open "$port" && return 0
    sleep 0.5
  done
  echo "$name did not come up on port $port" >&2
  return 1
}

if ! port_open 5432; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
wait_port 5432 PostgreSQL

if ! port_open 5672; then
  echo "starting RabbitMQ"
  rabbitmq-server -detached
fi
wait_port 5672 RabbitMQ
# The port opens before the broker accepts AMQP sessions; wait for it to be ready.
for _ in $(seq 1 60); do
  rabbitmq-diagnostics -q check_running >/dev/null 2>&1 && break
  sleep 1
done
# The management API: the console's queue depths (GENQ__AMQP__MANAGEMENT_URL)
# and its test. Enabled once; the broker keeps it across restarts.
if ! rabbitmq-plugins -q is_enabled rabbitmq_management >/dev/null 2>&1; then
  rabbitmq-plugins -q enable rabbitmq_management >/dev/null
fi
wait_port 15672 "RabbitMQ management"
