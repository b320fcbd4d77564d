//! A budget is a cap, not a prediction the caller can lower: concurrent streams, answers as
//! long as `max_tokens` allows, and fallbacks all stay within a key's limit.

mod common;

use std::time::Duration;

use common::{FRANCE, Router, header, start_with, user};
use serde_json::{Value, json};
use triage_guard::{KeySpec, hash_key};
use triage_testkit::Behaviour;

const GPT4O: &str = "gpt-4o-2024-08-06";
const SONNET: &str = "claude-3-5-sonnet-20241022";

/// A router whose only key may spend `daily_usd` a day on `models`, and whose upstream answers
/// at length (about 70,000 tokens unless `max_tokens` stops it), `chunk_delay` apart.
async fn capped(daily_usd: f64, models: &[&str], chunk_delay: Duration) -> Router {
    let behaviour = Behaviour {
        answer_words: 50_000,
        chunk_delay,
        ..Behaviour::default()
    };
    let models: Vec<String> = models.iter().map(|m| (*m).to_owned()).collect();
    start_with(behaviour, move |s| {
        s.auth.allow_anonymous = Some(false);
        s.auth.keys = vec![KeySpec {
            name: "capped".into(),
            sha256: hash_key("key"),
            allowed_models: models,
            daily_usd: Some(daily_usd),
            monthly_usd: None,
            admin: false,
        }];
        s.health.min_reports = 1000;
    })
    .await
}

async fn send(router: &Router, body: Value) -> reqwest::Response {
    router
        .http
        .post(router.url("/v1/chat/completions"))
        .header("authorization", "Bearer key")
        .json(&body)
        .send()
        .await
        .expect("answers")
}

#[tokio::test]
async fn concurrent_streams_cannot_spend_past_the_limit_by_predicting_short_answers() {
    let router = capped(0.40, &[GPT4O], Duration::ZERO).await;
    let body = json!({"model": "triage", "messages": user(FRANCE), "stream": true,
        "max_tokens": 100_000, "triage": {"expected_output_tokens": 1}});
    let streams = (0..5).map(|_| async {
        let r = send(&router, body.clone()).await;
        let status = r.status().as_u16();
        let _ = r.text().await;
        status
    });
    let statuses = futures::future::join_all(streams).await;
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.contains(&429),
        "the rest are refused: {statuses:?}"
    );
    let spent = router.spent();
    assert!(
        spent > 0.3,
        "the answer was as long as the budget allowed: ${spent}"
    );
    assert!(spent <= 0.40 + 1e-9, "spent ${spent} of a $0.40 day");
}

#[tokio::test]
async fn the_answer_is_cut_to_what_the_budget_covers() {
    let router = capped(0.05, &[GPT4O], Duration::ZERO).await;
    let r = send(
        &router,
        json!({"model": "triage", "messages": user(FRANCE), "max_tokens": 100_000}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let cost: f64 = header(&r, "x-triage-cost-usd").parse().expect("a cost");
    let body: Value = r.json().await.expect("json");
    let tokens = body["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    assert!(
        tokens > 1000 && tokens < 5000,
        "max_tokens lowered to what $0.05 covers: {tokens}"
    );
    assert!(cost <= 0.05 + 1e-9, "${cost}");
}

#[tokio::test]
async fn a_fallback_holds_its_own_worst_case_before_it_runs() {
    // The fallback streams slowly, holding the budget; a request sent meanwhile finds none.
    let router = capped(0.40, &[GPT4O, SONNET], Duration::from_millis(2)).await;
    let first = send(
        &router,
        json!({"model": "triage", "messages": user(FRANCE), "max_tokens": 20_000,
               "triage": {"allowed_models": [GPT4O]}}),
    )
    .await;
    assert_eq!(first.status(), 200);
    drop(first.text().await);
    router
        .script(GPT4O, json!([{"kind": "status", "status": 503}]))
        .await;
    let fallback = send(
        &router,
        json!({"model": GPT4O, "messages": user(FRANCE), "stream": true, "max_tokens": 20_000,
               "triage": {"fallback": true}}),
    )
    .await;
    assert_eq!(fallback.status(), 200);
    assert_eq!(header(&fallback, "x-triage-model"), SONNET);
    let meanwhile = send(
        &router,
        json!({"model": GPT4O, "messages": user(FRANCE), "max_tokens": 20_000}),
    )
    .await;
    assert_eq!(
        meanwhile.status(),
        429,
        "the fallback's hold leaves no room while it runs"
    );
    drop(fallback.text().await);
    let spent = router.spent();
    assert!(spent <= 0.40 + 1e-9, "spent ${spent} of a $0.40 day");
}

#[tokio::test]
async fn fields_that_multiply_spend_are_refused() {
    let router = capped(1.0, &[GPT4O], Duration::ZERO).await;
    for (field, value) in [
        ("best_of", json!(5)),
        ("service_tier", json!("priority")),
        ("store", json!(true)),
        ("n", json!(3)),
        ("max_tokens", json!(-1)),
    ] {
        let mut body = json!({"model": "triage", "messages": user(FRANCE)});
        body[field] = value;
        let r = send(&router, body).await;
        assert_eq!(r.status(), 400, "{field}");
        let error: Value = r.json().await.expect("json");
        assert_eq!(error["error"]["param"], field, "{error}");
    }
    let mut fine = json!({"model": "triage", "messages": user(FRANCE)});
    fine["service_tier"] = json!("auto");
    fine["logit_bias"] = json!({"50256": -100});
    fine["store"] = json!(false);
    assert_eq!(send(&router, fine).await.status(), 200);
}
