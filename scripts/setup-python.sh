#!/usr/bin/env bash
# A virtual environment for the Python client tests, from PyPI, pinned: grpcio and friends
# (generated client, reflection, health), pytest, and the SDKs the gateway is tested with
# (openai, anthropic, azure-ai-inference). Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/.cache/pyvenv
req=$root/tests/python/requirements.txt
stamp=$venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
echo "$want" > "$stamp"
echo "setup: python test environment ready" >&2
