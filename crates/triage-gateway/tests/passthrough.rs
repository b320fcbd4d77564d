//! A request that names its model is forwarded before the encoder scores its prompt; its
//! decision is logged in full afterwards, ahead of every record on it.

mod common;

use common::*;
use serde_json::{Value, json};
use triage_log::{LogRecord, decode_features, read_log};

const MINI: &str = "gpt-4o-mini-2024-07-18";

/// A router and its log directory.
async fn router() -> (Router, std::path::PathBuf) {
    let mut dir = None;
    let router = start_with(Default::default(), |s| {
        s.gateway.explain_keys = vec!["*".into()];
        dir = Some(s.log.dir.clone());
    })
    .await;
    (router, dir.expect("settings seen"))
}

#[tokio::test]
async fn a_named_model_is_answered_first_and_its_decision_logged_in_full_before_its_records() {
    let (router, dir) = router().await;
    let r = router
        .chat(json!({"model": MINI, "messages": user(PROOF)}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-triage-model"), MINI);
    assert_eq!(
        header(&r, "x-triage-familiarity"),
        "",
        "nothing was scored before the call"
    );
    let request_id = header(&r, "x-triage-request-id").to_owned();
    // A score sent the moment the answer arrives joins the decision: it waits for it.
    let score =
        json!({"request_id": request_id, "feedback_id": "s", "model": MINI, "quality": 0.7});
    let r = router.feedback(score).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(router.service.log_counts(), (1, 2));
    assert!(router.metrics().contains("triage_passed_through_total 1"));

    // Routed the usual way, the same prompt logs features of the same width.
    let r = router
        .chat(json!({"model": "triage", "messages": user(PROOF)}))
        .await;
    assert_eq!(r.status(), 200);
    // An acknowledged report is durable, and so is everything logged before it.
    let score = json!({"request_id": header(&r, "x-triage-request-id"), "feedback_id": "s",
        "model": header(&r, "x-triage-model"), "quality": 0.7});
    let r = router.feedback(score).await;
    assert_eq!(r.status(), 200);
    let (records, _) = read_log(&dir).expect("log reads");
    let kinds: Vec<&str> = records
        .iter()
        .filter(|r| r.request_id() == request_id)
        .map(LogRecord::kind)
        .collect();
    assert_eq!(kinds, ["decision", "feedback", "feedback"]);
    let decisions: Vec<_> = records.iter().filter_map(LogRecord::as_decision).collect();
    assert_eq!(decisions.len(), 2, "{records:#?}");
    let (passed, routed) = (decisions[0], decisions[1]);
    assert_eq!(passed.chosen, MINI);
    assert_eq!(passed.propensity, 1.0);
    let width =
        |d: &triage_log::DecisionRecord| decode_features(&d.features).expect("decodes").len();
    assert!(width(routed) > 0);
    assert_eq!(width(passed), width(routed));
    assert_eq!(
        passed.features, routed.features,
        "the same prompt, the same features"
    );
    assert_eq!(passed.input_tokens, routed.input_tokens);
    let mini = passed
        .candidates
        .iter()
        .find(|c| c.model == MINI)
        .expect("the named model is a candidate");
    assert!(mini.eligible);
    assert!(
        mini.predicted_quality > 0.0 && mini.base_quality.is_some(),
        "the policy's prediction is filled in: {mini:?}"
    );
    let same = routed
        .candidates
        .iter()
        .find(|c| c.model == MINI)
        .expect("candidate");
    assert!((same.predicted_cost_usd - mini.predicted_cost_usd).abs() < 1e-12);
    assert!(passed.familiarity.is_some());
}

#[tokio::test]
async fn a_named_model_still_meets_every_constraint_and_a_trace_waits_for_the_scores() {
    let (router, _dir) = router().await;
    // Qwen2 has no tools: a request with tools is refused before any call.
    let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    let r = router
        .chat(json!({"model": "Qwen2-72B-Instruct", "messages": user(FRANCE), "tools": tools}))
        .await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "model_excluded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("lacks capability tools") && !m.contains("gpt-4o")),
        "only the model asked for, and why: {body}"
    );
    assert_eq!(router.calls("Qwen2-72B-Instruct").await, 0);
    // The context window counts the prompt without the encoder.
    let r = router
        .chat(json!({"model": MINI, "messages": user(FRANCE), "max_tokens": 200_000}))
        .await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("context too small")),
        "{body}"
    );
    // A trace shows predictions, so it is scored first.
    let r = router
        .chat(json!({"model": MINI, "messages": user(FRANCE), "triage": {"explain": true}}))
        .await;
    assert_eq!(r.status(), 200);
    assert_ne!(header(&r, "x-triage-familiarity"), "");
    // Allowing fallback needs the ranking, so it is scored first too.
    let r = router
        .chat(json!({"model": MINI, "messages": user(FRANCE), "triage": {"fallback": true}}))
        .await;
    assert_eq!(r.status(), 200);
    assert_ne!(header(&r, "x-triage-familiarity"), "");
    assert!(!router.metrics().contains("triage_passed_through_total 1"));
}
