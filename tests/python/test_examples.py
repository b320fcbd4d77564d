"""Every example under examples/ run as a newcomer would, against a real `triage serve` with its
gateway and the local upstream; each checks its output: an easy and a hard prompt answered by
different models, preferences and streaming, and the agent's per-step routing and stickiness."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {"gpt-4o-mini-2024-07-18", "claude-3-haiku-20240307"}


def run(cmd, gateway, **kw):
    http, _, _ = gateway
    env = {**os.environ, "TRIAGE_BASE_URL": f"http://{http}/v1", "TRIAGE_ENDPOINT": f"http://{http}"}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, **kw)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def check_quickstart(lines):
    """Three answers (model, first line), then preferences and streaming."""
    assert len(lines) == 5, lines
    models = [line.split()[0] for line in lines[:3]]
    # A geography question is unlike anything the bundled policy was trained on (it routes as
    # the zero router would); an olympiad inequality is like its MATH prompts.
    assert models[0] != models[1], f"easy and hard prompts got one model: {lines}"
    for model, line in zip(models, lines[:3]):
        assert f"[{model}]" in line, line  # the local upstream names who answered
    assert lines[3].split()[-1] in ALLOWED, lines[3]
    assert lines[4].startswith("streamed:") and "[" in lines[4], lines[4]


def test_python_example(gateway):
    check_quickstart(run([sys.executable, "examples/python/quickstart.py"], gateway))


def test_node_example(gateway):
    check_quickstart(run(["node", "examples/node/quickstart.mjs"], gateway))


def test_csharp_example(gateway, tmp_path):
    if not (shutil.which("mcs") and shutil.which("mono")):
        pytest.fail("Mono is missing: run scripts/setup-mono.sh (scripts/test.sh does)")
    exe = tmp_path / "quickstart.exe"
    build = subprocess.run(
        ["mcs", "-r:System.Net.Http.dll", "-r:System.Runtime.Serialization.dll",
         "examples/csharp/Quickstart.cs", f"-out:{exe}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    http, _, _ = gateway
    check_quickstart(run(["mono", str(exe), f"http://{http}/v1"], gateway))


def check_model_router(lines):
    """The seed's walkthrough: one answer, by a catalog model that `model-router` routed to."""
    assert len(lines) == 1, lines
    head, _, answer = lines[0].partition(": ")
    model = head.removeprefix("model-router answered with ")
    assert model != head and model != "model-router", lines
    assert answer.startswith(f"[{model}]"), lines


def test_the_seeds_walkthrough_in_three_languages(gateway, tmp_path):
    check_model_router(run([sys.executable, "examples/python/model_router.py"], gateway))
    check_model_router(run(["node", "examples/node/model_router.mjs"], gateway))
    exe = tmp_path / "model_router.exe"
    build = subprocess.run(
        ["mcs", "-r:System.Net.Http.dll", "-r:System.Runtime.Serialization.dll",
         "examples/csharp/ModelRouter.cs", f"-out:{exe}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    http, _, _ = gateway
    check_model_router(run(["mono", str(exe), f"http://{http}"], gateway))


def test_agent_routes_each_step_and_keeps_its_session(gateway):
    lines = run([sys.executable, "examples/agent/agent.py"], gateway)
    steps = [line.split() for line in lines if line.strip().startswith(("analyse", "tests", "explain"))]
    assert len(steps) == 6, lines
    kept, free = steps[:3], steps[3:]
    # With affinity the tests step stays on the analysis's model; the summary's budget moves it.
    assert [s[2] for s in kept] == ["sticky=false", "sticky=true", "sticky=false"], lines
    assert kept[1][1] == kept[0][1] != kept[2][1], lines
    assert all(s[2] == "sticky=false" for s in free), lines
    assert all(float(s[3].removeprefix("cost=$")) > 0 for s in steps), lines
    assert float(kept[2][3].removeprefix("cost=$")) <= 0.0002, lines
    assert any("'duplicate': False" in line for line in lines), lines


def test_the_readme_quick_start_calls_every_dialect(gateway, tmp_path):
    """The README's quick-start block, run as written (only the address changed)."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("One call per dialect", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    http, _, _ = gateway
    script = tmp_path / "quick_start.py"
    script.write_text(block.replace("http://127.0.0.1:8080", f"http://{http}"))
    lines = run([sys.executable, str(script)], gateway)
    assert len(lines) == 4, lines
    for line in lines:
        model, answer = line.split(" ", 1)
        assert answer.startswith(f"[{model}]"), line
