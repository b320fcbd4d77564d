#!/usr/bin/env bash
# Sets up everything (idempotent) and starts the server on the embedded defaults: gRPC on
# 127.0.0.1:50051 and the OpenAI-compatible HTTP gateway on 127.0.0.1:8080 (see
# crates/triage-core/default.toml; the gateway answers once [[providers]] are configured).
# Extra arguments go to `triage serve`, e.g.
#   scripts/serve.sh --config my.toml --listen 0.0.0.0:50051 --http-listen 0.0.0.0:8080
#   scripts/serve.sh --demo     (no provider keys: a local stand-in answers for every provider)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/triage/target}
# The server needs no training code: leave polars out of this build.
cargo build --release --locked -p triage-cli --no-default-features
exec "$CARGO_TARGET_DIR/release/triage" serve "$@"
