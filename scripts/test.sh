#!/usr/bin/env bash
# Sets up everything (idempotent), then runs the whole test suite: formatting, clippy, the Rust
# tests (real ONNX encoder, real gRPC and HTTP servers on loopback port 0, a local LLM upstream)
# and the client tests in Python and Node (official `openai` packages, gRPC clients).
# The cargo target directory defaults to one outside the clone so that fresh clones on the same
# machine reuse compiled dependencies (polars takes long to build the first time).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/triage/target}
export CARGO_TERM_COLOR=never
# Incremental caches only pay off for repeated local edits; in CI they cost gigabytes of disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

bash scripts/setup.sh
bash scripts/setup-python.sh
bash scripts/setup-node.sh
bash scripts/setup-mono.sh

# The tests on real outcome tables (training, evaluation, simulation) skip without them, and
# cargo hides a passing test's output: say so here, where it is seen.
shared_data=${TRIAGE_SHARED_DATA:-$root/../shared/data}
if [ ! -f "$shared_data/zeroeval.parquet" ]; then
    echo "NOTE: $shared_data/zeroeval.parquet not found: the tests on real outcome data will" \
         "skip (set TRIAGE_SHARED_DATA to the shared data directory to run them)"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo clippy (otel feature)"
cargo clippy --locked -p triage-cli --features otel --all-targets -- -D warnings
echo "== cargo build"
# Built with the same feature set as the tests, so the `triage` binary the Python tests run
# is not a second build of the dependency tree.
cargo build --locked --workspace --all-targets
echo "== cargo test"
cargo test --locked --workspace --all-targets
echo "== OpenTelemetry export test (otel feature)"
cargo test --locked -p triage-cli --features otel --test otel
export TRIAGE_TEST_BIN="$CARGO_TARGET_DIR/debug/triage"
export TRIAGE_TEST_UPSTREAM_BIN="$CARGO_TARGET_DIR/debug/triage-local-upstream"
echo "== python client tests and the examples"
.cache/pyvenv/bin/python -m pytest -q tests/python
echo "== node client tests"
(cd tests/node && node --test)
