//! Log records for tests and benchmarks that exercise a store directly (no engine).

use triage_log::{DecisionRecord, ErrorKind, FeedbackRecord, LoggedCandidate, now_ms};

/// A decision on `request_id` now, scoring `models` (each predicted to cost `predicted_usd`)
/// and choosing the last, with a 2-wide feature vector and no key.
pub fn decision(request_id: &str, models: &[&str], predicted_usd: f64) -> DecisionRecord {
    DecisionRecord {
        request_id: request_id.into(),
        time_ms: now_ms(),
        policy_version: "p1".into(),
        features: triage_log::encode_features(&[0.5, -0.25]),
        input_tokens: 12,
        knob: "balanced".into(),
        cost_weight: None,
        candidates: models
            .iter()
            .map(|m| LoggedCandidate {
                model: (*m).into(),
                predicted_quality: 0.5,
                base_quality: None,
                predicted_cost_usd: predicted_usd,
                eligible: true,
            })
            .collect(),
        chosen: models.last().map_or_else(String::new, |m| (*m).to_owned()),
        propensity: 1.0,
        explored: false,
        session_id: String::new(),
        prompt: None,
        api_key: None,
        draft_plan: None,
        familiarity: None,
        held_usd: None,
    }
}

/// A good answer from `model` on `request_id` now, costing `cost_usd`, with no key.
pub fn report(request_id: &str, feedback_id: &str, model: &str, cost_usd: f64) -> FeedbackRecord {
    FeedbackRecord {
        request_id: request_id.into(),
        feedback_id: feedback_id.into(),
        time_ms: now_ms(),
        model: model.into(),
        quality: Some(1.0),
        input_tokens: 12,
        output_tokens: 40,
        cost_usd,
        latency_ms: 300,
        error: ErrorKind::None,
        retry_after_ms: None,
        first_byte_ms: None,
        tokens_estimated: false,
        api_key: None,
        hold_usd: None,
        source: Default::default(),
        judged: None,
    }
}
