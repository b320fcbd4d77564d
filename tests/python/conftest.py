"""Starts the real `triage serve` on a free loopback port for the Python client tests."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def server_addr(tmp_path_factory):
    binary = os.environ.get("TRIAGE_TEST_BIN")
    if not binary:
        pytest.fail("set TRIAGE_TEST_BIN to the triage binary (scripts/test.sh does)")
    # pytest's temporary directories are kept for the last three runs only.
    data_dir = tmp_path_factory.mktemp("log")
    proc = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=sys.stderr, text=True,
    )
    try:
        line = proc.stdout.readline()  # "listening on 127.0.0.1:PORT", or "" if it died
        if not line.startswith("listening on "):
            proc.kill()
            pytest.fail(f"server did not start (exit {proc.wait()}): {line!r}")
        yield line.split()[-1]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
