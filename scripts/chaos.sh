#!/usr/bin/env bash
# The chaos run on optimized binaries: `scripts/chaos.sh long` (thousands of
# jobs; the figures in RELIABILITY.md) or `scripts/chaos.sh short`.
# Extra arguments go to genq-chaos (see `genq-chaos --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-long}"
shift || true
scripts/services.sh
cargo build --release --bins
target/release/genq-chaos --profile "$profile" "$@"
