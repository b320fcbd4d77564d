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
        [binary, "serve", "--listen", "127.0.0.1:0", "--http-listen", "off", "--data-dir", data_dir],
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


PROVIDERS = [
    ("openai", "openai"), ("anthropic", "anthropic"), ("deepseek", "openai"),
    ("together", "openai"), ("google", "openai"), ("fireworks", "openai"),
]


def _first_lines(proc, n):
    lines = [proc.stdout.readline() for _ in range(n)]
    # Keep draining so that later output never meets a closed pipe.
    import threading
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return lines


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    """`triage serve` with its HTTP gateway, every provider pointed at the local upstream.

    Yields (gateway base URL, gRPC address, local upstream base URL)."""
    binary = os.environ.get("TRIAGE_TEST_BIN")
    upstream_bin = os.environ.get("TRIAGE_TEST_UPSTREAM_BIN")
    if not binary or not upstream_bin:
        pytest.fail("set TRIAGE_TEST_BIN and TRIAGE_TEST_UPSTREAM_BIN (scripts/test.sh does)")
    upstream = subprocess.Popen([upstream_bin], stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    procs = [upstream]
    try:
        (line,) = _first_lines(upstream, 1)
        if not line.startswith("listening on "):
            pytest.fail(f"local upstream did not start: {line!r}")
        upstream_url = f"http://{line.split()[-1]}"
        work = tmp_path_factory.mktemp("gateway")
        config = work / "triage.toml"
        config.write_text("".join(
            f'[[providers]]\nname = "{name}"\nkind = "{kind}"\nbase_url = "{upstream_url}/v1"\n\n'
            for name, kind in PROVIDERS
        ))
        server = subprocess.Popen(
            [binary, "--config", str(config), "serve", "--listen", "127.0.0.1:0",
             "--http-listen", "127.0.0.1:0", "--data-dir", str(work / "log")],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=sys.stderr, text=True,
        )
        procs.append(server)
        grpc_line, http_line = _first_lines(server, 2)
        if not http_line.startswith("gateway on "):
            pytest.fail(f"server did not start its gateway: {grpc_line!r} {http_line!r}")
        yield http_line.split()[-1].removeprefix("http://"), grpc_line.split()[-1], upstream_url
    finally:
        for p in reversed(procs):
            _stop(p)
