//! Upstreams that misbehave: each one ends bounded, in time and memory, with the right
//! breaker input and a clear answer to the caller (the next model's, or an error that says what
//! happened without the operator's secrets).

mod common;

use std::time::{Duration, Instant};

use common::{FRANCE, Router, header, sse_data, start_with, user};
use serde_json::{Value, json};
use triage_testkit::{Behaviour, LocalUpstream};

/// A router whose providers give up on a call after `total_ms`, and whose breakers stay
/// closed (each fault is tested alone).
async fn router(total_ms: u64, tweak: impl FnOnce(&mut triage_core::Settings)) -> Router {
    start_with(Behaviour::default(), |s| {
        for p in &mut s.providers {
            p.first_byte_ms = 1000;
            p.total_ms = total_ms;
        }
        s.health.min_reports = 1000;
        tweak(s);
    })
    .await
}

/// The model `model: "triage"` routes FRANCE to.
async fn chosen(router: &Router) -> String {
    let r = router
        .chat(json!({"model": "triage", "messages": user(FRANCE)}))
        .await;
    assert_eq!(r.status(), 200);
    header(&r, "x-triage-model").to_owned()
}

/// Asserts that the gateway counted an upstream call to `model` ending in `outcome`.
fn assert_counted(router: &Router, model: &str, outcome: &str) {
    let metrics = router.metrics();
    let counted = metrics.lines().any(|l| {
        l.starts_with("triage_upstream_requests_total")
            && l.contains(&format!("model=\"{model}\""))
            && l.contains(&format!("outcome=\"{outcome}\""))
    });
    assert!(counted, "no {outcome} call of {model} counted:\n{metrics}");
}

/// Asks for FRANCE (streamed or not) and expects the next model to answer, within 5 s
/// whatever the chosen model's upstream does.
async fn falls_over(router: &Router, chosen: &str, stream: bool) -> Value {
    let started = Instant::now();
    let r = router
        .chat(json!({"model": "triage", "messages": user(FRANCE), "stream": stream}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-triage-attempts"), "2");
    assert_ne!(header(&r, "x-triage-model"), chosen);
    let body = if stream {
        json!(sse_data(&r.text().await.expect("body")))
    } else {
        r.json().await.expect("json")
    };
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the fall-over took {took:?}");
    body
}

#[tokio::test]
async fn a_redirect_is_never_followed_and_the_key_stays_home() {
    let catcher = LocalUpstream::start(Behaviour::default())
        .await
        .expect("catcher starts");
    let router = router(10_000, |_| {}).await;
    let chosen = chosen(&router).await;
    for status in [307, 302] {
        let location = format!("http://{}/v1/chat/completions", catcher.addr);
        router
            .script(
                &chosen,
                json!([{"kind": "redirect", "status": status, "location": location}]),
            )
            .await;
        falls_over(&router, &chosen, false).await;
    }
    let calls: Value = reqwest::get(format!("http://{}/_calls", catcher.addr))
        .await
        .expect("catcher answers")
        .json()
        .await
        .expect("json");
    assert_eq!(
        calls,
        json!({}),
        "the redirect's target never saw the prompt nor the provider's headers"
    );
    assert_counted(&router, &chosen, "redirected");
}

#[tokio::test]
async fn provider_credential_errors_fall_over_and_never_reach_the_caller() {
    let router = router(10_000, |_| {}).await;
    let chosen = chosen(&router).await;
    for status in [401, 403, 404] {
        router
            .script(&chosen, json!([{"kind": "status", "status": status}]))
            .await;
        falls_over(&router, &chosen, false).await;
    }
    let breaker_input =
        format!("triage_feedback_total{{model=\"{chosen}\",error=\"unavailable\"}} 3");
    assert!(
        router.metrics().contains(&breaker_input),
        "{}",
        router.metrics()
    );
    // Named without fallback, the one attempt fails: the caller hears a generic failure, not
    // the provider's body (which may carry the operator's masked key).
    router
        .script(&chosen, json!([{"kind": "status", "status": 401}]))
        .await;
    let r = router
        .chat(json!({"model": chosen, "messages": user(FRANCE)}))
        .await;
    assert_eq!(r.status(), 503);
    let body = r.text().await.expect("body");
    assert!(body.contains("provider_error"), "{body}");
    assert!(
        !body.contains("scripted fault") && !body.contains("401"),
        "{body}"
    );
}

#[tokio::test]
async fn an_endless_stream_is_cut_at_the_total_timeout() {
    let router = router(1500, |_| {}).await;
    let chosen = chosen(&router).await;
    router
        .script(&chosen, json!([{"kind": "endless_stream", "ms": 20}]))
        .await;
    let started = Instant::now();
    let r = router
        .chat(json!({"model": "triage", "messages": user(FRANCE), "stream": true}))
        .await;
    assert_eq!(r.status(), 200, "the stream had begun: it is relayed");
    let body = r.text().await.expect("body ends");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let events = sse_data(&body);
    let last = events.last().cloned().unwrap_or_default();
    assert!(last.contains("upstream_stream_failed"), "{last}");
    assert!(events.len() > 5, "chunks were relayed as they came");
}

#[tokio::test]
async fn a_huge_body_is_refused_at_the_limit_without_reading_on() {
    let router = router(10_000, |s| s.gateway.max_upstream_body_bytes = 1 << 20).await;
    let chosen = chosen(&router).await;
    for announce in [false, true] {
        router
            .script(
                &chosen,
                json!([{"kind": "huge_body", "bytes": 100_000_000u64, "announce": announce}]),
            )
            .await;
        falls_over(&router, &chosen, false).await;
    }
    assert_counted(&router, &chosen, "bad_response");
}

#[tokio::test]
async fn a_trickle_is_bounded_by_the_total_timeout() {
    let router = router(1000, |_| {}).await;
    let chosen = chosen(&router).await;
    router
        .script(&chosen, json!([{"kind": "trickle", "ms": 50}]))
        .await;
    falls_over(&router, &chosen, false).await;
    assert_counted(&router, &chosen, "timeout");
}

#[tokio::test]
async fn a_whole_answer_slower_than_the_first_byte_timeout_is_not_a_timeout() {
    // Longer than the first-byte timeout (1 s here) but within the total one: an answer,
    // billed, not a failure retried on every model.
    let router = router(10_000, |_| {}).await;
    let chosen = chosen(&router).await;
    router
        .script(&chosen, json!([{"kind": "slow_first_byte", "ms": 1500}]))
        .await;
    let r = router
        .chat(json!({"model": "triage", "messages": user(FRANCE)}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-triage-attempts"), "1");
    assert_eq!(header(&r, "x-triage-model"), chosen);
    let cost: f64 = header(&r, "x-triage-cost-usd").parse().expect("a cost");
    assert!(cost > 0.0, "the slow answer is billed");
}

#[tokio::test]
async fn an_event_that_never_ends_is_cut_at_its_bound() {
    let router = router(30_000, |_| {}).await;
    let chosen = chosen(&router).await;
    router
        .script(&chosen, json!([{"kind": "no_newlines"}]))
        .await;
    falls_over(&router, &chosen, true).await;
}
