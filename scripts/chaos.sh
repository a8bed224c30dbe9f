#!/usr/bin/env bash
# The chaos run on optimized binaries: `scripts/chaos.sh long` (thousands of
# jobs; the figures in RELIABILITY.md), `scripts/chaos.sh short`, or
# `scripts/chaos.sh cluster` (a three-node RabbitMQ cluster started by
# scripts/cluster.sh for the run and removed after it; two API processes).
# Extra arguments go to genq-chaos (see `genq-chaos --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-long}"
shift || true
scripts/services.sh
cargo build --release --bins
if [ "$profile" = cluster ]; then
  scripts/cluster.sh down
  urls=$(scripts/cluster.sh up)
  trap 'scripts/cluster.sh down' EXIT
  set -- --amqp-url "$urls" "$@"
fi
target/release/genq-chaos --profile "$profile" "$@"
