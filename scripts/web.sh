#!/usr/bin/env bash
# The generated TypeScript client (clients/typescript) and the page the API
# serves at / (web/, built into web/dist and embedded in the API binary).
#   scripts/web.sh gen     regenerate the client from api/openapi.json, type-check, rebuild web/dist
#   scripts/web.sh deps    install the pinned Node packages (npm ci), if they changed
#                          (also tests/jose: the JOSE library the identity-provider tests sign with,
#                          and tests/stripe: Stripe's library, whose test helper signs the billing tests' events)
#   scripts/web.sh check   fail when api/openapi.json differs from the API's document, or the
#                          committed client or page differs from a fresh generation and build
# Node packages are pinned (package-lock.json) and installed with `npm ci`.
set -euo pipefail
cd "$(dirname "$0")/.."

# `npm ci` when the lock file changed since the last install.
npm_ci() {
  local dir=$1
  if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.genq-installed-lock" 2>/dev/null; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$dir/package-lock.json" "$dir/node_modules/.genq-installed-lock"
  fi
}

typecheck() {
  (cd clients/typescript && npx --no-install tsc --noEmit -p .)
  (cd web && npx --no-install tsc --noEmit -p .)
}

gen() {
  npm_ci clients/typescript
  npm_ci web
  (cd clients/typescript && npx --no-install openapi-ts >/dev/null)
  typecheck
  (cd web && node build.mjs)
  echo "generated clients/typescript/src and built web/dist"
}

check() {
  local fix="run scripts/web.sh gen and commit the result"
  local served
  served=$(mktemp)
  cargo run -q -p genq-api -- openapi >"$served"
  if ! cmp -s "$served" api/openapi.json; then
    rm -f "$served"
    echo "api/openapi.json differs from the API's document: run" \
      "cargo run -q -p genq-api -- openapi > api/openapi.json, then $fix" >&2
    exit 1
  fi
  rm -f "$served"
  npm_ci clients/typescript
  npm_ci web
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  (cd clients/typescript && GENQ_CLIENT_OUT="$tmp/client" npx --no-install openapi-ts >/dev/null)
  if ! diff -r "$tmp/client" clients/typescript/src >"$tmp/client.diff"; then
    head -40 "$tmp/client.diff" >&2
    echo "clients/typescript/src differs from a fresh generation from api/openapi.json: $fix" >&2
    exit 1
  fi
  typecheck
  (cd web && node build.mjs "$tmp/dist")
  if ! diff -r "$tmp/dist" web/dist >"$tmp/dist.diff"; then
    head -c 2000 "$tmp/dist.diff" >&2
    echo >&2
    echo "web/dist differs from a fresh build of web/src: $fix" >&2
    exit 1
  fi
  echo "web check: api/openapi.json, clients/typescript and web/dist are current"
}

case "${1:-}" in
  deps) npm_ci clients/typescript && npm_ci web && npm_ci tests/jose && npm_ci tests/stripe ;;
  gen) gen ;;
  check) check ;;
  *) echo "usage: scripts/web.sh deps|gen|check" >&2; exit 2 ;;
esac
