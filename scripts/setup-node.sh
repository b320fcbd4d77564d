#!/usr/bin/env bash
# Installs the Node client tests' packages (official `openai`, `@grpc/grpc-js`,
# `@grpc/proto-loader`) from the npm registry, exactly as package-lock.json pins them. Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/tests/node
stamp=$dir/node_modules/.lock.sha256
want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "setup: npm is missing; install Node.js 20 or later" >&2; exit 1; }
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
echo "$want" > "$stamp"
echo "setup: node test packages ready" >&2
