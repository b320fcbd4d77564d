//! What a request needs is what routing requires: tools, an image part or a JSON response
//! format exclude the models without that capability, and the answer's room (`max_tokens`)
//! the models whose context cannot hold it, as the chosen model and as a fallback. The routing
//! trace says why each model was left out, and only permitted keys may read it.

mod common;

use common::{FRANCE, Router, header, start_with};
use serde_json::{Value, json};
use triage_core::catalog::Capability;
use triage_guard::{KeySpec, hash_key};
use triage_testkit::Behaviour;

async fn open_traces() -> Router {
    start_with(Behaviour::default(), |s| {
        s.gateway.explain_keys = vec!["*".into()];
    })
    .await
}

fn has(router: &Router, model: &str, capability: Capability) -> bool {
    router
        .service
        .engine()
        .catalog()
        .get(model)
        .is_some_and(|m| m.has(capability))
}

fn image_request() -> Value {
    json!({"model": "triage-cost", "triage": {"explain": true}, "messages": [{"role": "user",
        "content": [{"type": "text", "text": FRANCE},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}]})
}

#[tokio::test]
async fn an_image_goes_only_to_vision_models_chosen_or_fallen_back_to() {
    let router = open_traces().await;
    let r = router.chat(image_request()).await;
    assert_eq!(r.status(), 200);
    let chosen = header(&r, "x-triage-model").to_owned();
    let body: Value = r.json().await.expect("json");
    assert!(has(&router, &chosen, Capability::Vision), "{chosen}");
    let trace = &body["triage"];
    assert_eq!(trace["rule"], "cost");
    assert_eq!(trace["answered_by"], chosen.as_str());
    let excluded = trace["excluded"].as_array().cloned().unwrap_or_default();
    let lacking: Vec<&str> = excluded
        .iter()
        .filter(|e| e["reason"] == "lacks capability vision")
        .filter_map(|e| e["model"].as_str())
        .collect();
    assert!(lacking.contains(&"Meta-Llama-3.1-8B-Instruct"), "{trace}");
    for model in &lacking {
        assert!(!has(&router, model, Capability::Vision));
    }
    // The chosen model is rate-limited: every model tried next can see images too.
    router
        .script(&chosen, json!([{"kind": "status", "status": 429}]))
        .await;
    let r = router.chat(image_request()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-triage-attempts"), "2");
    let fallback = header(&r, "x-triage-model").to_owned();
    assert_ne!(fallback, chosen);
    assert!(has(&router, &fallback, Capability::Vision), "{fallback}");
}

#[tokio::test]
async fn tools_json_output_and_the_answers_room_are_required_in_every_dialect() {
    let router = open_traces().await;
    let tool =
        json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}});
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"model": "triage-cost", "tools": [tool],
            "response_format": {"type": "json_object"}, "triage": {"explain": true},
            "messages": [{"role": "user", "content": FRANCE}]}),
        ),
        (
            "/v1/messages",
            json!({"model": "triage-cost", "max_tokens": 100, "triage": {"explain": true},
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": FRANCE}]}),
        ),
        (
            "/v1/responses",
            json!({"model": "triage-cost", "triage": {"explain": true},
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "input": FRANCE}),
        ),
    ] {
        let r = router
            .http
            .post(router.url(path))
            .json(&body)
            .send()
            .await
            .expect("answers");
        assert_eq!(r.status(), 200, "{path}");
        let chosen = header(&r, "x-triage-model").to_owned();
        assert!(has(&router, &chosen, Capability::Tools), "{path}: {chosen}");
        let body: Value = r.json().await.expect("json");
        let reasons = body["triage"]["excluded"].to_string();
        assert!(
            reasons.contains("lacks capability tools"),
            "{path}: {reasons}"
        );
    }
    // 20,000 tokens of answer room do not fit gpt-3.5-turbo's 16,385-token window.
    let r = router
        .chat(
            json!({"model": "triage-cost", "max_tokens": 20000, "triage": {"explain": true},
                     "messages": [{"role": "user", "content": FRANCE}]}),
        )
        .await;
    let body: Value = r.json().await.expect("json");
    let small = body["triage"]["excluded"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["model"] == "gpt-3.5-turbo-0125")
        .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    assert!(small.starts_with("context too small"), "{body}");
}

#[tokio::test]
async fn a_trace_is_refused_to_keys_the_operator_has_not_allowed() {
    let key = |name: &str, admin| KeySpec {
        name: name.into(),
        sha256: hash_key(name),
        allowed_models: Vec::new(),
        daily_usd: None,
        monthly_usd: None,
        admin,
    };
    let router = start_with(Behaviour::default(), |s| {
        s.auth.allow_anonymous = Some(false);
        s.auth.keys = vec![key("app", false), key("ops", true), key("dev", false)];
        s.gateway.explain_keys = vec!["dev".into()];
    })
    .await;
    let ask = |key: &'static str, path: &'static str, body: Value| {
        router
            .http
            .post(router.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    let chat = json!({"model": "triage", "triage": {"explain": true},
                      "messages": [{"role": "user", "content": FRANCE}]});
    let r = ask("app", "/v1/chat/completions", chat.clone())
        .await
        .expect("answers");
    assert_eq!(r.status(), 403);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["error"]["code"], "trace_not_allowed");
    let r = ask(
        "app",
        "/v1/messages",
        json!({"model": "triage", "max_tokens": 10,
        "triage": {"explain": true}, "messages": [{"role": "user", "content": FRANCE}]}),
    )
    .await
    .expect("answers");
    assert_eq!(r.status(), 403);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["error"]["type"], "permission_error");
    for allowed in ["dev", "ops"] {
        let r = ask(allowed, "/v1/chat/completions", chat.clone())
            .await
            .expect("answers");
        assert_eq!(r.status(), 200, "{allowed}");
        let body: Value = r.json().await.expect("json");
        assert!(
            body["triage"]["candidates"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
        );
    }
    // Streamed, the trace rides in a header; without `explain` there is none.
    let mut streamed = chat.clone();
    streamed["stream"] = true.into();
    let r = ask("dev", "/v1/chat/completions", streamed)
        .await
        .expect("answers");
    let trace: Value = serde_json::from_str(header(&r, "x-triage-trace")).expect("a JSON trace");
    assert_eq!(trace["chosen"], header(&r, "x-triage-model"));
    let r = ask(
        "app",
        "/v1/chat/completions",
        json!({"model": "triage",
        "messages": [{"role": "user", "content": FRANCE}]}),
    )
    .await
    .expect("answers");
    let body: Value = r.json().await.expect("json");
    assert!(body.get("triage").is_none());
}
