"""Triage from Python with the official `openai` package: `model="triage"` and the model that
answered in `response.model`.

    pip install openai
    TRIAGE_BASE_URL=http://127.0.0.1:8080/v1 python examples/python/quickstart.py
"""
import os

from openai import OpenAI

PROMPTS = [
    "What is the capital of France?",
    "Let a, b, c be positive reals with abc = 1. Prove that 1/(a^3(b+c)) + 1/(b^3(c+a)) + "
    "1/(c^3(a+b)) >= 3/2. Give a complete, rigorous proof, justifying every step and stating "
    "which inequalities (AM-GM, Cauchy-Schwarz, Muirhead) you use and why their conditions hold.",
    "Write a Python function that implements a retry mechanism with exponential backoff, with "
    "type hints and async support",
]

client = OpenAI(
    base_url=os.environ.get("TRIAGE_BASE_URL", "http://127.0.0.1:8080/v1"),
    api_key=os.environ.get("TRIAGE_API_KEY", "unused"),  # a Triage key when keys are on
)


def first_line(text):
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


for prompt in PROMPTS:
    r = client.chat.completions.create(
        model="triage", messages=[{"role": "user", "content": prompt}]
    )
    print(f"{r.model:<32} {first_line(r.choices[0].message.content)[:70]}")

# Routing preferences ride in the body (`extra_body`): a mode, the models allowed, a budget.
r = client.chat.completions.create(
    model="triage",
    messages=[{"role": "user", "content": PROMPTS[1]}],
    extra_body={"triage": {
        "mode": "cost",
        "allowed_models": ["gpt-4o-mini-2024-07-18", "claude-3-haiku-20240307"],
        "max_cost_usd": 0.01,
    }},
)
print(f"preferences: {r.model}")

# Streaming: every chunk names the model that answers.
stream = client.chat.completions.create(
    model="triage", messages=[{"role": "user", "content": PROMPTS[0]}], stream=True
)
text, model = "", None
for chunk in stream:
    model = chunk.model
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
print(f"streamed:    {model} {first_line(text)[:60]}")
