"""The official `openai` Python package against Triage's HTTP gateway, as applications use it:
`model="triage"`, streaming, preferences through `extra_body`, errors as typed exceptions, and a
rate-limited model answered by the next one."""
import json
import urllib.request

import openai
import pytest
from openai import OpenAI

from prompts import FRANCE, PROOF


@pytest.fixture(scope="module")
def client(gateway):
    http, _, _ = gateway
    return OpenAI(base_url=f"http://{http}/v1", api_key="unused", max_retries=0, timeout=60)


def ask(client, prompt, **kw):
    return client.chat.completions.create(
        model="triage", messages=[{"role": "user", "content": prompt}], **kw
    )


def test_easy_and_hard_prompts_are_answered_by_different_models(client):
    easy, hard = ask(client, FRANCE), ask(client, PROOF)
    assert easy.model != hard.model, (easy.model, hard.model)
    for r in (easy, hard):
        assert r.choices[0].message.content.startswith(f"[{r.model}]")
        assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert {m.id for m in client.models.list()} >= {"triage", "triage-quality", "triage-cost", easy.model}


def test_streaming_names_the_model_in_every_chunk(client):
    chunks = list(ask(client, FRANCE, stream=True, stream_options={"include_usage": True}))
    models = {c.model for c in chunks}
    assert len(models) == 1, models
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith(f"[{models.pop()}]")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_preferences_ride_in_extra_body(client):
    allowed = ["gpt-4o-mini-2024-07-18", "claude-3-haiku-20240307"]
    r = ask(client, PROOF, extra_body={"triage": {"allowed_models": allowed, "mode": "quality"}})
    assert r.model in allowed
    with pytest.raises(openai.BadRequestError) as bad:
        ask(client, FRANCE, extra_body={"triage": {"max_cost_usd": -1}})
    assert "max_cost_usd" in str(bad.value)


def test_errors_arrive_as_typed_exceptions(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="triage", messages=[{"role": "robot", "content": "x"}])
    assert "messages[0].role" in str(bad.value)


# Before the rate-limit test below: its 429 keeps a model (possibly a draft) out for seconds, and
# a plan whose draft cannot serve is routed directly.
def test_triage_verify_drafts_first_and_says_how_it_ended(client):
    raw = client.chat.completions.with_raw_response.create(
        model="triage-verify", messages=[{"role": "user", "content": "What is 17 * 3?"}]
    )
    drafts = raw.headers["x-triage-drafts"].split(",")
    verdict = raw.headers["x-triage-verdict"]
    answer = raw.parse()
    assert len(drafts) in (1, 2) and verdict in ("accepted", "escalated"), (drafts, verdict)
    # An accepted answer is a draft's; an escalation calls the routed model, unless it was
    # itself a draft (its draft is then the answer).
    assert verdict == "escalated" or answer.model in drafts, (answer.model, drafts, verdict)
    assert answer.choices[0].message.content.startswith(f"[{answer.model}]")
    assert int(raw.headers["x-triage-attempts"]) == len(drafts) + (answer.model not in drafts)
    streamed = list(client.chat.completions.create(
        model="triage", stream=True, messages=[{"role": "user", "content": "What is 17 * 3?"}],
        extra_body={"triage": {"strategy": "verify"}},
    ))
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text.startswith(f"[{streamed[0].model}]")


def test_a_rate_limited_model_is_answered_by_the_next(client, gateway):
    _, _, upstream = gateway
    chosen = ask(client, FRANCE).model
    script = json.dumps({"model": chosen, "faults": [{"kind": "status", "status": 429, "retry_after": 3}]})
    urllib.request.urlopen(urllib.request.Request(
        f"{upstream}/_script", data=script.encode(), headers={"content-type": "application/json"},
    ), timeout=10)
    raw = client.chat.completions.with_raw_response.create(
        model="triage", messages=[{"role": "user", "content": FRANCE}]
    )
    answer = raw.parse()
    assert raw.headers["x-triage-attempts"] == "2"
    assert answer.model == raw.headers["x-triage-model"] != chosen

    # A quality score for that answer joins its decision.
    score = json.dumps({"request_id": raw.headers["x-triage-request-id"], "model": answer.model,
                        "quality": 1.0, "feedback_id": "py-score"}).encode()
    http, _, _ = gateway
    reply = urllib.request.urlopen(urllib.request.Request(
        f"http://{http}/v1/feedback", data=score, headers={"content-type": "application/json"},
    ), timeout=10)
    assert json.load(reply) == {"duplicate": False}

