#!/usr/bin/env bash
# Sets up everything (idempotent), then runs the whole test suite: formatting, clippy, the Rust
# tests (real ONNX encoder, real gRPC and HTTP servers on loopback port 0, a local LLM upstream)
# and the client tests in Python and Node (official `openai` packages, gRPC clients), and the
# shared store's tests on throwaway PostgreSQL clusters.
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
bash scripts/setup-postgres.sh

# Tests that need PostgreSQL start throwaway clusters under this directory; whatever happens
# (a failure, an interrupt), none outlives the run.
TRIAGE_PG_SCRATCH=$(mktemp -d)
chmod 755 "$TRIAGE_PG_SCRATCH"
export TRIAGE_PG_SCRATCH
stop_clusters() {
    for pid_file in "$TRIAGE_PG_SCRATCH"/*/data/postmaster.pid; do
        [ -f "$pid_file" ] && kill -QUIT "$(head -1 "$pid_file")" 2>/dev/null || true
    done
    rm -rf "$TRIAGE_PG_SCRATCH"
}
trap stop_clusters EXIT

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
