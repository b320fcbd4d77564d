//! The Messages (`/v1/messages`) and Responses (`/v1/responses`) doors against a real gateway
//! and the local upstream: routed like chat, named after the model that answered, failing over,
//! recorded with their cost, streamed in each dialect's events, tools both ways, and refused
//! in each dialect's error shape.

mod common;

use common::{FRANCE, Router, header, start_with};
use serde_json::{Value, json};
use triage_guard::{KeySpec, hash_key};
use triage_testkit::Behaviour;

/// A router whose one key is `key`.
async fn keyed() -> Router {
    start_with(Behaviour::default(), |s| {
        s.auth.allow_anonymous = Some(false);
        s.auth.keys = vec![KeySpec {
            name: "app".into(),
            sha256: hash_key("key"),
            allowed_models: Vec::new(),
            daily_usd: None,
            monthly_usd: None,
            admin: false,
        }];
    })
    .await
}

async fn post(router: &Router, path: &str, body: Value) -> reqwest::Response {
    router
        .http
        .post(router.url(path))
        .header("x-api-key", "key")
        .json(&body)
        .send()
        .await
        .expect("answers")
}

/// `(event name, data)` of each server-sent event.
fn events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter_map(|frame| {
            let name = frame.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = frame.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name.to_owned(), serde_json::from_str(data).ok()?))
        })
        .collect()
}

fn messages(text: &str) -> Value {
    json!({"model": "model-router", "max_tokens": 200, "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn messages_are_routed_recorded_streamed_and_fail_over() {
    let router = keyed().await;
    let r = post(&router, "/v1/messages", messages(FRANCE)).await;
    assert_eq!(r.status(), 200);
    let model = header(&r, "x-triage-model").to_owned();
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["type"], "message");
    assert_eq!(
        body["model"],
        model.as_str(),
        "names the model that answered"
    );
    assert_eq!(body["stop_reason"], "end_turn");
    let text = body["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.starts_with(&format!("[{model}]")), "{text}");
    assert!(body["usage"]["input_tokens"].as_u64() > Some(0));
    assert!(router.spent() > 0.0, "the call is recorded with its cost");

    // Streamed: Anthropic's event sequence, the same text, usage at the end.
    let mut streamed = messages(FRANCE);
    streamed["stream"] = true.into();
    let r = post(&router, "/v1/messages", streamed.clone()).await;
    assert_eq!(r.status(), 200);
    let got = events(&r.text().await.expect("body"));
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(names.contains(&"content_block_delta") && names.contains(&"message_delta"));
    let joined: String = got
        .iter()
        .filter_map(|(_, d)| d.pointer("/delta/text").and_then(Value::as_str))
        .collect();
    assert_eq!(joined, text);
    let delta = got
        .iter()
        .find(|(n, _)| n == "message_delta")
        .map(|(_, d)| d);
    assert!(delta.and_then(|d| d.pointer("/usage/output_tokens")?.as_u64()) > Some(0));

    // The routed model is rate-limited: the next one answers, and says so.
    router
        .script(&model, json!([{"kind": "status", "status": 429}]))
        .await;
    let r = post(&router, "/v1/messages", streamed).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-triage-attempts"), "2");
    let fallback = header(&r, "x-triage-model").to_owned();
    assert_ne!(fallback, model);
    let got = events(&r.text().await.expect("body"));
    assert_eq!(got[0].1["message"]["model"], fallback.as_str());
}

#[tokio::test]
async fn messages_tool_use_round_trips() {
    let router = keyed().await;
    let tools = json!([{"name": "weather", "description": "today's weather",
                        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}]);
    let ask = json!({"role": "user", "content": "What is the weather in Paris?"});
    for stream in [false, true] {
        let r = post(
            &router,
            "/v1/messages",
            json!({"model": "triage", "max_tokens": 100,
            "tools": tools, "tool_choice": {"type": "any"}, "stream": stream, "messages": [ask]}),
        )
        .await;
        assert_eq!(r.status(), 200);
        let (id, input) = if stream {
            let got = events(&r.text().await.expect("body"));
            let start = got
                .iter()
                .find(|(n, d)| {
                    n == "content_block_start" && d["content_block"]["type"] == "tool_use"
                })
                .map(|(_, d)| d["content_block"].clone())
                .unwrap_or_default();
            let partial: String = got
                .iter()
                .filter_map(|(_, d)| d.pointer("/delta/partial_json").and_then(Value::as_str))
                .collect();
            let stop = got
                .iter()
                .find(|(n, _)| n == "message_delta")
                .map(|(_, d)| d);
            assert_eq!(
                stop.and_then(|d| d.pointer("/delta/stop_reason")),
                Some(&json!("tool_use"))
            );
            (
                start["id"].clone(),
                serde_json::from_str(&partial).unwrap_or(Value::Null),
            )
        } else {
            let body: Value = r.json().await.expect("json");
            assert_eq!(body["stop_reason"], "tool_use");
            let block = &body["content"][0];
            assert_eq!(block["type"], "tool_use");
            assert_eq!(block["name"], "weather");
            (block["id"].clone(), block["input"].clone())
        };
        assert!(id.as_str().is_some_and(|s| !s.is_empty()), "{stream}");
        assert!(
            input["query"]
                .as_str()
                .is_some_and(|q| q.contains("weather")),
            "{input}"
        );
        // The tool's result goes back; the model answers in text.
        let r = post(&router, "/v1/messages", json!({"model": "triage", "max_tokens": 100,
            "tools": tools, "messages": [ask,
                {"role": "assistant", "content": [{"type": "tool_use", "id": id, "name": "weather", "input": input}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "sunny"}]}]}))
        .await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["content"][0]["type"], "text");
    }
}

#[tokio::test]
async fn refusals_come_back_in_each_dialects_shape() {
    let router = keyed().await;
    let anonymous = router
        .http
        .post(router.url("/v1/messages"))
        .json(&messages(FRANCE))
        .send()
        .await
        .expect("answers");
    assert_eq!(anonymous.status(), 401);
    let e: Value = anonymous.json().await.expect("json");
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "authentication_error");

    let mut unsupported = messages(FRANCE);
    unsupported["container"] = "c".into();
    let r = post(&router, "/v1/messages", unsupported).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("container"))
    );

    let r = post(
        &router,
        "/v1/messages",
        json!({"model": "gpt-9", "max_tokens": 5,
        "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["error"]["type"], "not_found_error");

    // The Responses API's errors are OpenAI's; conversation state is refused, saying why.
    let r = post(
        &router,
        "/v1/responses",
        json!({"model": "triage", "input": "hi",
        "previous_response_id": "resp_1"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["error"]["param"], "previous_response_id");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("whole conversation"))
    );
}

#[tokio::test]
async fn responses_are_routed_streamed_and_call_tools() {
    let router = keyed().await;
    let r = post(
        &router,
        "/v1/responses",
        json!({"model": "model-router",
        "instructions": "Answer briefly.", "input": FRANCE, "max_output_tokens": 200}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let model = header(&r, "x-triage-model").to_owned();
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["model"], model.as_str());
    assert_eq!(body["store"], false);
    let text = body["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(text.starts_with(&format!("[{model}]")), "{text}");
    assert!(body["usage"]["total_tokens"].as_u64() > Some(0));

    let r = post(&router, "/v1/responses", json!({"model": "model-router",
        "instructions": "Answer briefly.", "input": FRANCE, "max_output_tokens": 200, "stream": true}))
    .await;
    assert_eq!(r.status(), 200);
    let got = events(&r.text().await.expect("body"));
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(&names[..2], ["response.created", "response.in_progress"]);
    assert_eq!(names.last(), Some(&"response.completed"));
    let joined: String = got
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .filter_map(|(_, d)| d["delta"].as_str())
        .collect();
    assert_eq!(joined, text);
    let done = &got.last().map(|(_, d)| d.clone()).unwrap_or_default()["response"];
    assert_eq!(done["output"][0]["content"][0]["text"], text.as_str());
    assert!(done["usage"]["output_tokens"].as_u64() > Some(0));

    // A function tool round trip, with the conversation sent whole.
    let tools = json!([{"type": "function", "name": "weather", "parameters": {"type": "object"}}]);
    let r = post(
        &router,
        "/v1/responses",
        json!({"model": "triage", "tools": tools,
        "tool_choice": "required", "input": "What is the weather in Paris?"}),
    )
    .await;
    let body: Value = r.json().await.expect("json");
    let call = body["output"]
        .as_array()
        .and_then(|o| o.iter().find(|i| i["type"] == "function_call"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(call["name"], "weather");
    let r = post(&router, "/v1/responses", json!({"model": "triage", "tools": tools,
        "input": [{"role": "user", "content": "What is the weather in Paris?"}, call,
                  {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}]}))
    .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["output"][0]["type"], "message");
}

#[tokio::test]
async fn a_stream_cut_half_way_ends_in_each_dialects_failure_event() {
    let router = keyed().await;
    let r = post(&router, "/v1/messages", messages(FRANCE)).await;
    let model = header(&r, "x-triage-model").to_owned();
    for (path, body, last) in [
        (
            "/v1/messages",
            {
                let mut m = messages(FRANCE);
                m["stream"] = true.into();
                m
            },
            "error",
        ),
        (
            "/v1/responses",
            json!({"model": "model-router", "input": FRANCE, "stream": true}),
            "response.failed",
        ),
    ] {
        router
            .script(&model, json!([{"kind": "cut_stream", "chunks": 4}]))
            .await;
        let r = post(&router, path, body).await;
        assert_eq!(r.status(), 200, "{path}: the stream had begun");
        let got = events(&r.text().await.expect("body"));
        let (name, data) = got.last().cloned().unwrap_or_default();
        assert_eq!(name, last, "{path}");
        let message = data
            .pointer("/error/message")
            .or_else(|| data.pointer("/response/error/message"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        assert!(message.contains("cut off"), "{path}: {message}");
    }
}
