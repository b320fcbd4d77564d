#!/usr/bin/env bash
# Sets up everything (idempotent) and starts the gRPC server on the embedded defaults
# (127.0.0.1:50051; see crates/triage-core/default.toml). Extra arguments go to `triage serve`,
# e.g. scripts/serve.sh --listen 0.0.0.0:50051 --config my.toml
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/triage/target}
# The server needs no training code: leave polars out of this build.
cargo build --release --locked -p triage-cli --no-default-features
exec "$CARGO_TARGET_DIR/release/triage" serve "$@"
