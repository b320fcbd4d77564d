"""A small tool-free agent whose steps Triage routes: it debugs a buggy function in three chat
calls (analyse it, write tests for it, explain the fix), printing the model and cost of each step,
then sends a quality score for the final answer.

Run twice: with a session id, later steps stay on the first step's model (session affinity keeps
provider prompt caches warm; `sticky` says so); with `no_session_affinity`, each step is routed
on its own.

    pip install openai
    TRIAGE_BASE_URL=http://127.0.0.1:8080/v1 python examples/agent/agent.py
"""
import json
import os
import urllib.request
import uuid

from openai import OpenAI

BASE_URL = os.environ.get("TRIAGE_BASE_URL", "http://127.0.0.1:8080/v1")
API_KEY = os.environ.get("TRIAGE_API_KEY", "unused")

BUGGY = '''def moving_average(values, window):
    """Averages of each run of `window` consecutive values."""
    out = []
    for i in range(len(values) - window):
        out.append(sum(values[i:i + window]) / window)
    return out
'''

# Each step says what it needs: the analysis the best model, the tests the default trade-off,
# the plain-words summary a small budget (which no session affinity overrides).
STEPS = [
    ("analyse", {"mode": "quality"}, "Here is a Python function:\n\n" + BUGGY + "\nAnalyse it "
     "step by step: what is the bug, which inputs expose it, and what is the corrected code?"),
    ("tests", {"mode": "balanced"}, "Write pytest tests for the corrected function, covering the "
     "edge cases you found."),
    ("explain", {"mode": "cost", "max_cost_usd": 0.0002}, "Explain the fix in plain words for a "
     "teammate who does not read Python."),
]


def run(client, affinity):
    session = f"debug-{uuid.uuid4()}"
    history = [{"role": "system", "content": "You are a careful senior engineer."}]
    print(f"session {session[:14]}… affinity={'on' if affinity else 'off'}")
    for name, needs, ask in STEPS:
        history.append({"role": "user", "content": ask})
        raw = client.chat.completions.with_raw_response.create(
            model="triage",
            messages=history,
            extra_body={"triage": {"session_id": session, "no_session_affinity": not affinity,
                                   **needs}},
        )
        answer = raw.parse()
        cost = float(raw.headers["x-triage-cost-usd"])
        print(f"  {name:<8} {answer.model:<28} sticky={raw.headers['x-triage-sticky']:<5} "
              f"cost=${cost:.6f} {json.dumps(needs)}")
        history.append({"role": "assistant", "content": answer.choices[0].message.content})
    return raw.headers["x-triage-request-id"], answer.model


def score(request_id, model, quality):
    """The final answer was good: tell Triage, so that it learns which model to trust."""
    body = json.dumps({"request_id": request_id, "model": model, "quality": quality}).encode()
    request = urllib.request.Request(
        BASE_URL.rstrip("/") + "/feedback", data=body,
        headers={"content-type": "application/json", "authorization": f"Bearer {API_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.load(reply)


if __name__ == "__main__":
    client = OpenAI(base_url=BASE_URL, api_key=API_KEY)
    request_id, model = run(client, affinity=True)
    print(f"  score for the final answer: {score(request_id, model, 0.9)}")
    run(client, affinity=False)
