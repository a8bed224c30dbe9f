#!/usr/bin/env bash
# Installs moto's S3-compatible server (PyPI) into target/moto-venv, once,
# and prints the path of its `moto_server`. The S3 tests start it on a free
# port of their own (GENQ_TEST_MOTO_SERVER names the binary).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/moto-venv
if [ ! -x "$venv/bin/moto_server" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q "moto[server]==5.*" >&2
fi
echo "$PWD/$venv/bin/moto_server"
