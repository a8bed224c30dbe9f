#!/usr/bin/env bash
# The whole test suite: every Rust test against the real Postgres and
# RabbitMQ, then (never beside them) the short chaos run, which SIGKILLs
# workers and the API and restarts RabbitMQ and Postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo test --workspace
cargo build --bins
target/debug/genq-chaos --profile short
