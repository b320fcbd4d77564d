#!/usr/bin/env bash
# Installs the npm packages of the Node client tests (official `openai`, `@grpc/grpc-js`,
# `@grpc/proto-loader`) and of the Node example (`openai`), exactly as each package-lock.json
# pins them. Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
command -v npm >/dev/null || { echo "setup: npm is missing; install Node.js 20 or later" >&2; exit 1; }
for dir in "$root/tests/node" "$root/examples/node"; do
  stamp=$dir/node_modules/.lock.sha256
  want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    continue
  fi
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
  echo "setup: node packages ready in ${dir#"$root"/}" >&2
done
