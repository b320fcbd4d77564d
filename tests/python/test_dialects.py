"""Every client dialect against a real `triage serve` and the local upstream, with the SDKs
people use: `azure-ai-inference` (the seed's snippet, only the endpoint and key changed),
`openai`'s Responses API and `anthropic`'s Messages API, streaming and not, with tools.

In each, the answer names the model that answered, a rate-limited model is answered by the
next one, and the call is recorded with its cost (the `x-triage-cost-usd` header is the
gateway's record of it)."""
import json
import urllib.request

import anthropic
import pytest
from openai import OpenAI

from prompts import FRANCE

KEY = "unused"  # the test gateway admits anonymous callers; the key travels anyway


def rate_limit_next_call(gateway, model):
    _, _, upstream = gateway
    script = json.dumps({"model": model, "faults": [{"kind": "status", "status": 429}]})
    urllib.request.urlopen(urllib.request.Request(
        f"{upstream}/_script", data=script.encode(), headers={"content-type": "application/json"},
    ), timeout=10)


def test_the_seeds_azure_ai_inference_snippet_runs_unchanged(gateway):
    http, _, _ = gateway
    # The seed's code, with only `endpoint` and the key changed.
    from azure.ai.inference import ChatCompletionsClient
    from azure.ai.inference.models import SystemMessage, UserMessage
    from azure.core.credentials import AzureKeyCredential

    endpoint = f"http://{http}/models"
    model_name = "model-router"

    client = ChatCompletionsClient(
        endpoint=endpoint,
        credential=AzureKeyCredential(KEY),
    )

    response = client.complete(
        messages=[
            SystemMessage(content="You are a helpful assistant."),
            UserMessage(content="I am going to Paris, what should I see?"),
        ],
        max_tokens=2048,
        temperature=0.8,
        top_p=0.1,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        model=model_name,
    )
    answer = response.choices[0].message.content
    assert response.model != "model-router"
    assert answer.startswith(f"[{response.model}]"), answer

    # Failover and the record's cost, read from the response headers.
    rate_limit_next_call(gateway, response.model)
    seen = {}
    again = client.complete(
        messages=[UserMessage(content="I am going to Paris, what should I see?")],
        model=model_name,
        raw_response_hook=lambda r: seen.update(r.http_response.headers),
    )
    assert seen["x-triage-attempts"] == "2"
    assert again.model == seen["x-triage-model"] != response.model
    assert float(seen["x-triage-cost-usd"]) > 0


@pytest.fixture(scope="module")
def responses_client(gateway):
    http, _, _ = gateway
    return OpenAI(base_url=f"http://{http}/v1", api_key=KEY, max_retries=0, timeout=60)


def test_responses_whole_streamed_and_failing_over(responses_client, gateway):
    raw = responses_client.responses.with_raw_response.create(
        model="model-router", instructions="Answer briefly.", input=FRANCE)
    r = raw.parse()
    assert r.status == "completed"
    assert r.model == raw.headers["x-triage-model"] != "model-router"
    assert r.output_text.startswith(f"[{r.model}]")
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert float(raw.headers["x-triage-cost-usd"]) > 0

    events = list(responses_client.responses.create(model="model-router", input=FRANCE, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response
    assert streamed == done.output_text and streamed.startswith(f"[{done.model}]")
    assert done.usage.output_tokens > 0

    rate_limit_next_call(gateway, r.model)
    raw = responses_client.responses.with_raw_response.create(model="model-router", input=FRANCE)
    assert raw.headers["x-triage-attempts"] == "2"
    assert raw.parse().model == raw.headers["x-triage-model"] != r.model


def test_responses_function_tool_round_trip(responses_client):
    tools = [{"type": "function", "name": "weather", "description": "today's weather",
              "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}]
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = responses_client.responses.create(
        model="triage", tools=tools, tool_choice="required", input=question)
    calls = [o for o in first.output if o.type == "function_call"]
    assert calls and calls[0].name == "weather", first.output
    assert "weather" in json.loads(calls[0].arguments)["query"]
    # Streamed, the call's arguments arrive as deltas.
    events = list(responses_client.responses.create(
        model="triage", tools=tools, tool_choice="required", input=question, stream=True))
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(args) == json.loads(calls[0].arguments)
    # The tool's output goes back with the whole conversation (no stored state).
    second = responses_client.responses.create(model="triage", tools=tools, input=question + [
        {"type": "function_call", "call_id": calls[0].call_id, "name": "weather",
         "arguments": calls[0].arguments},
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"},
    ])
    assert second.output_text.startswith(f"[{second.model}]")


@pytest.fixture(scope="module")
def claude(gateway):
    http, _, _ = gateway
    return anthropic.Anthropic(base_url=f"http://{http}", api_key=KEY, max_retries=0, timeout=60)


def test_messages_whole_streamed_and_failing_over(claude, gateway):
    raw = claude.messages.with_raw_response.create(
        model="model-router", max_tokens=200, system="Answer briefly.",
        messages=[{"role": "user", "content": FRANCE}])
    m = raw.parse()
    assert m.model == raw.headers["x-triage-model"] != "model-router"
    assert m.content[0].text.startswith(f"[{m.model}]")
    assert m.stop_reason == "end_turn" and m.usage.output_tokens > 0
    assert float(raw.headers["x-triage-cost-usd"]) > 0

    with claude.messages.stream(model="model-router", max_tokens=200,
                                messages=[{"role": "user", "content": FRANCE}]) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == final.content[0].text and streamed.startswith(f"[{final.model}]")
    assert final.usage.output_tokens > 0

    rate_limit_next_call(gateway, m.model)
    raw = claude.messages.with_raw_response.create(
        model="model-router", max_tokens=200, messages=[{"role": "user", "content": FRANCE}])
    assert raw.headers["x-triage-attempts"] == "2"
    assert raw.parse().model == raw.headers["x-triage-model"] != m.model


def test_messages_tool_use_round_trip_and_typed_errors(claude):
    tools = [{"name": "weather", "description": "today's weather",
              "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}]
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = claude.messages.create(model="triage", max_tokens=100, tools=tools,
                                   tool_choice={"type": "any"}, messages=[question])
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "weather" and "weather" in use.input["query"]
    with claude.messages.stream(model="triage", max_tokens=100, tools=tools,
                                tool_choice={"type": "any"}, messages=[question]) as stream:
        streamed = stream.get_final_message()
    assert [b.input for b in streamed.content if b.type == "tool_use"] == [use.input]
    second = claude.messages.create(model="triage", max_tokens=100, tools=tools, messages=[
        question,
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name,
                                           "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                      "content": "sunny"}]},
    ])
    assert second.content[0].type == "text"

    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="claude-9", max_tokens=10,
                               messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError, match="container"):
        claude.messages.create(model="triage", max_tokens=10, extra_body={"container": "c"},
                               messages=[{"role": "user", "content": "x"}])
