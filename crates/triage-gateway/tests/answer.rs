//! The gateway answering for real: routing, the model named in the answer, fallback on each
//! upstream fault, streaming, Anthropic translation, and the records it writes by itself.

mod common;

use common::{FRANCE, PROOF, header, sse_data, start, start_with, user};
use serde_json::{Value, json};
use triage_testkit::Behaviour;

#[tokio::test]
async fn easy_and_hard_prompts_are_answered_by_different_models() {
    let router = start().await;
    let mut answered = Vec::new();
    let mut familiarity = Vec::new();
    for prompt in [FRANCE, PROOF] {
        let r = router
            .chat(json!({"model": "triage", "messages": user(prompt)}))
            .await;
        assert_eq!(r.status(), 200);
        let model = header(&r, "x-triage-model").to_owned();
        assert_eq!(header(&r, "x-triage-attempts"), "1");
        assert!(!header(&r, "x-triage-request-id").is_empty());
        assert!(!header(&r, "x-triage-policy-version").is_empty());
        let f: f64 = header(&r, "x-triage-familiarity")
            .parse()
            .expect("a number");
        let trust: f64 = header(&r, "x-triage-trust").parse().expect("a number");
        assert!((0.0..=1.0).contains(&trust), "{trust}");
        familiarity.push(f);
        let body: Value = r.json().await.expect("json");
        assert_eq!(
            body["model"], model,
            "the body names the model that answered"
        );
        let content = body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default();
        assert!(content.starts_with(&format!("[{model}]")), "{content}");
        assert!(
            body["usage"]["prompt_tokens"]
                .as_u64()
                .is_some_and(|n| n > 0)
        );
        answered.push(model);
    }
    assert_ne!(answered[0], answered[1]);
    // The bundled policy was trained on math and code: a proof is more like its training
    // prompts than a geography question.
    assert!(familiarity[1] > familiarity[0], "{familiarity:?}");
}

#[tokio::test]
async fn a_rate_limited_model_is_answered_by_the_next_and_its_breaker_sees_the_429() {
    let router = start().await;
    let first = router
        .chat(json!({"model": "triage", "messages": user(FRANCE)}))
        .await;
    let chosen = header(&first, "x-triage-model").to_owned();
    router
        .script(
            &chosen,
            json!([{"kind": "status", "status": 429, "retry_after": 7}]),
        )
        .await;
    let r = router
        .chat(json!({"model": "triage", "messages": user(FRANCE)}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-triage-attempts"), "2");
    let fallback = header(&r, "x-triage-model").to_owned();
    assert_ne!(fallback, chosen);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["model"], fallback);
    assert_eq!(router.calls(&chosen).await, 2);
    let metrics = router.metrics();
    let seen = format!("triage_feedback_total{{model=\"{chosen}\",error=\"rate_limited\"}} 1");
    assert!(metrics.contains(&seen), "breaker input missing:\n{metrics}");
    assert!(metrics.contains("triage_fallbacks_total 1"));
    let upstream = format!(
        "triage_upstream_requests_total{{model=\"{chosen}\",provider=\"{}\",outcome=\"rate_limited\"}} 1",
        router
            .service
            .engine()
            .catalog()
            .get(&chosen)
            .map(|m| m.provider.clone())
            .unwrap_or_default()
    );
    assert!(metrics.contains(&upstream), "{metrics}");
}

#[tokio::test]
async fn every_retryable_fault_fails_over_and_a_refusal_passes_through() {
    let router = start_with(Behaviour::default(), |s| {
        for p in &mut s.providers {
            p.first_byte_ms = 300;
        }
        // Five failures in a row would open the chosen model's breaker (rightly), and the
        // next requests would not try it at all: this test is about each fault alone.
        s.health.min_reports = 1000;
    })
    .await;
    let chosen = {
        let r = router
            .chat(json!({"model": "triage", "messages": user(FRANCE)}))
            .await;
        header(&r, "x-triage-model").to_owned()
    };
    for fault in [
        json!({"kind": "status", "status": 500}),
        json!({"kind": "status", "status": 503}),
        json!({"kind": "status", "status": 408}),
        json!({"kind": "slow_first_byte", "ms": 1500}),
        json!({"kind": "malformed"}),
    ] {
        router.script(&chosen, json!([fault])).await;
        // The first-byte timeout holds a stream to its start; a whole answer may take longer.
        let stream = fault["kind"] == "slow_first_byte";
        let r = router
            .chat(json!({"model": "triage", "messages": user(FRANCE), "stream": stream}))
            .await;
        assert_eq!(r.status(), 200, "{fault}");
        assert_eq!(header(&r, "x-triage-attempts"), "2", "{fault}");
        assert_ne!(header(&r, "x-triage-model"), chosen, "{fault}");
    }
    router
        .script(&chosen, json!([{"kind": "status", "status": 400}]))
        .await;
    let r = router
        .chat(json!({"model": "triage", "messages": user(FRANCE)}))
        .await;
    assert_eq!(
        r.status(),
        400,
        "the caller's own bad request is not retried elsewhere"
    );
    assert_eq!(header(&r, "x-triage-attempts"), "1");
}

#[tokio::test]
async fn when_every_attempt_fails_the_error_lists_each_attempt() {
    let router = start_with(Behaviour::default(), |s| s.gateway.max_attempts = 3).await;
    let models = router.model_names();
    for m in &models {
        router
            .script(m, json!([{"kind": "status", "status": 503}]))
            .await;
    }
    let r = router
        .chat(json!({"model": "triage", "messages": user(FRANCE)}))
        .await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.expect("json");
    let attempts = body["error"]["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(attempts.len(), 3, "{body}");
    assert!(attempts.iter().all(|a| a["outcome"] == "unavailable"));
}

#[tokio::test]
async fn a_model_that_cannot_be_reached_is_skipped() {
    // A provider on a port nobody listens on: connection refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("http://{}/v1", closed.local_addr().expect("addr"));
    drop(closed);
    let router = start_with(Behaviour::default(), |s| {
        for p in &mut s.providers {
            if p.name == "openai" {
                p.base_url = dead.clone();
            }
        }
    })
    .await;
    let r = router
        .chat(json!({"model": "gpt-4o-mini-2024-07-18", "messages": user(FRANCE),
                     "triage": {"fallback": true,
                                "allowed_models": ["gpt-4o-mini-2024-07-18", "claude-3-haiku-20240307"]}}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-triage-attempts"), "2");
    assert_eq!(header(&r, "x-triage-model"), "claude-3-haiku-20240307");
    let refused = "triage_upstream_requests_total{model=\"gpt-4o-mini-2024-07-18\",provider=\"openai\",outcome=\"unavailable\"} 1";
    assert!(router.metrics().contains(refused), "{}", router.metrics());

    // Without `fallback`, a model asked for by name is the only one tried.
    let r = router
        .chat(json!({"model": "gpt-4o-mini-2024-07-18", "messages": user(FRANCE)}))
        .await;
    assert_eq!(r.status(), 503);
}

#[tokio::test]
async fn streams_relay_chunks_named_after_the_model_then_done() {
    let router = start().await;
    let r = router
        .chat(
            json!({"model": "triage", "messages": user(FRANCE), "stream": true,
                     "stream_options": {"include_usage": true}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/event-stream");
    let model = header(&r, "x-triage-model").to_owned();
    let data = sse_data(&r.text().await.expect("body"));
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk JSON"))
        .collect();
    assert!(chunks.iter().all(|c| c["model"] == model.as_str()));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(text.starts_with(&format!("[{model}]")), "{text}");
    assert!(
        chunks
            .last()
            .is_some_and(|c| c["usage"]["completion_tokens"].as_u64() > Some(0))
    );

    let r = router
        .chat(json!({"model": "triage", "messages": user(FRANCE), "stream": true}))
        .await;
    let data = sse_data(&r.text().await.expect("body"));
    assert!(
        data.iter().all(|d| !d.contains("\"usage\"")),
        "usage only when asked for"
    );
}

#[tokio::test]
async fn a_stream_cut_half_way_is_not_retried_and_ends_with_an_error_event() {
    let router = start().await;
    let model = "gpt-4o-mini-2024-07-18";
    router
        .script(model, json!([{"kind": "cut_stream", "chunks": 3}]))
        .await;
    let r = router
        .chat(
            json!({"model": model, "messages": user(FRANCE), "stream": true,
                     "triage": {"fallback": true}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-triage-attempts"), "1");
    let data = sse_data(&r.text().await.expect("body"));
    assert!(data.len() >= 2, "{data:?}");
    assert!(
        data.last()
            .is_some_and(|d| d.contains("upstream_stream_failed")),
        "{data:?}"
    );
    assert!(!data.iter().any(|d| d == "[DONE]"));
    assert_eq!(
        router.calls(model).await,
        1,
        "no second call once bytes reached the client"
    );
}

#[tokio::test]
async fn anthropic_models_are_translated_both_ways() {
    let router = start().await;
    let model = "claude-3-5-haiku-20241022";
    let r = router
        .chat(
            json!({"model": model, "messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": FRANCE}], "max_tokens": 64}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["model"], model);
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|c| c.starts_with(&format!("[{model}]")))
    );
    assert!(body["usage"]["completion_tokens"].as_u64() > Some(0));

    let r = router
        .chat(
            json!({"model": model, "messages": user(FRANCE), "stream": true,
                     "stream_options": {"include_usage": true}}),
        )
        .await;
    let data = sse_data(&r.text().await.expect("body"));
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop")
    );
    assert!(
        chunks
            .last()
            .is_some_and(|c| c["usage"]["prompt_tokens"].as_u64() > Some(0))
    );
}

#[tokio::test]
async fn each_attempt_is_recorded_and_a_later_score_joins_the_same_decision_once() {
    let router = start().await;
    let r = router
        .chat(json!({"model": "triage", "messages": user(FRANCE)}))
        .await;
    let request_id = header(&r, "x-triage-request-id").to_owned();
    let model = header(&r, "x-triage-model").to_owned();
    let cost: f64 = header(&r, "x-triage-cost-usd")
        .parse()
        .expect("cost header");
    assert!(cost > 0.0);
    assert_eq!(
        router.service.log_counts(),
        (1, 1),
        "one decision, one attempt record"
    );
    let score =
        json!({"request_id": request_id, "feedback_id": "score-1", "model": model, "quality": 0.9});
    for duplicate in [false, true] {
        let r = router
            .http
            .post(router.url("/v1/feedback"))
            .json(&score)
            .send()
            .await
            .expect("answers");
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["duplicate"], duplicate);
    }
    assert_eq!(router.service.log_counts(), (1, 2));
    assert_eq!(
        router.service.engine().learner().feedback_count(&model),
        1,
        "the recorded call and its later score are one report for breakers and counts"
    );
    // The score is the same decision's: gRPC Feedback on it is accepted too.
    let bad = json!({"request_id": "nope", "model": model, "quality": 0.5});
    let r = router
        .http
        .post(router.url("/v1/feedback"))
        .json(&bad)
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status(), 404);
    let metrics = router.metrics();
    assert!(metrics.contains(&format!(
        "triage_tokens_total{{model=\"{model}\",direction=\"output\"}}"
    )));
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_cancels_the_upstream_and_leaves_a_whole_record() {
    let router = start_with(
        Behaviour {
            chunk_delay: std::time::Duration::from_millis(200),
            ..Behaviour::default()
        },
        |_| {},
    )
    .await;
    let mut r = router
        .chat(json!({"model": "gpt-4o-mini-2024-07-18", "messages": user(FRANCE), "stream": true}))
        .await;
    assert!(r.chunk().await.expect("first chunk").is_some());
    drop(r);
    // The gateway notices at its next write; wait for the record, bounded.
    for _ in 0..100 {
        if router.service.log_counts().1 == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(router.service.log_counts(), (1, 1));
    assert!(router.metrics().contains("outcome=\"cancelled\"} 1"));
}

#[tokio::test]
async fn a_client_that_gives_up_cancels_the_upstream_call() {
    let router = start().await;
    let model = "gpt-4o-mini-2024-07-18";
    router
        .script(model, json!([{"kind": "slow_first_byte", "ms": 1500}]))
        .await;
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .expect("client");
    let gave_up = impatient
        .post(router.url("/v1/chat/completions"))
        .json(&json!({"model": model, "messages": user(FRANCE)}))
        .send()
        .await;
    assert!(gave_up.is_err());
    // The gateway drops the call with its client; the upstream sees its caller hang up.
    for _ in 0..100 {
        if router.abandoned(model).await == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        router.abandoned(model).await,
        1,
        "the upstream call was not cancelled"
    );
    assert_eq!(
        router.service.log_counts(),
        (1, 0),
        "no half-written attempt record"
    );
}
