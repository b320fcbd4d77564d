//! The routing trace a caller may ask for (`"triage": {"explain": true}`): why this model,
//! from the decision itself (the rule, the ranked candidates with their predictions, and why
//! each excluded model was left out), so a newcomer can check that routing makes sense.
//!
//! Only keys the operator lists in `gateway.explain_keys` (and admin keys) may see it. A whole
//! answer carries it as a `triage` object in the body; a stream, in the `x-triage-trace`
//! header (its body is already on its way).

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use triage_engine::Routed;
use triage_guard::Caller;

use crate::error::GatewayError;

/// Eligible candidates shown, best first.
const SHOWN: usize = 5;

/// Whether `caller` may see traces under `explain_keys`.
pub fn check(caller: &Caller, explain_keys: &[String]) -> Result<(), GatewayError> {
    let listed = explain_keys.iter().any(|k| k == "*" || k == caller.name());
    if listed || caller.require_admin().is_ok() {
        Ok(())
    } else {
        Err(GatewayError::TraceNotAllowed(caller.name().to_owned()))
    }
}

/// The trace of `routed`.
pub fn trace(routed: &Routed) -> Value {
    let outcome = &routed.outcome;
    let decision = &outcome.decision;
    let candidates: Vec<Value> = decision
        .candidates
        .iter()
        .filter(|c| c.exclusion.is_none())
        .take(SHOWN)
        .map(|c| {
            json!({"model": c.model, "quality": c.quality, "cost_usd": c.cost_usd,
                   "latency_ms": c.latency_ms})
        })
        .collect();
    let excluded: Vec<Value> = decision
        .candidates
        .iter()
        .filter_map(|c| {
            let why = c.exclusion.as_ref()?;
            Some(json!({"model": c.model, "reason": why.to_string()}))
        })
        .collect();
    json!({
        "request_id": routed.request_id,
        "rule": decision.rule.name(),
        "cost_weight": decision.rule.cost_weight(),
        "chosen": decision.chosen().model,
        "explanation": decision.explanation,
        "policy_version": outcome.policy_version,
        "familiarity": outcome.familiarity,
        "trust": outcome.trust,
        "explored": outcome.explored,
        "sticky": outcome.sticky,
        "input_tokens": outcome.input_tokens,
        "candidates": candidates,
        "excluded": excluded,
    })
}

/// `response` with `trace` attached, completed by who answered and in how many calls.
pub async fn attach(response: Response, mut trace: Value) -> Response {
    let (mut parts, body) = response.into_parts();
    let header_of = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    trace["answered_by"] = header_of("x-triage-model").into();
    trace["attempts"] = header_of("x-triage-attempts")
        .and_then(|a| a.parse::<u64>().ok())
        .into();
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if parts.status != StatusCode::OK || !json {
        if let Ok(v) = HeaderValue::from_str(&trace.to_string()) {
            parts.headers.insert("x-triage-trace", v);
        }
        return Response::from_parts(parts, body);
    }
    // A whole answer is in memory already.
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(mut answer)) => {
            answer.insert("triage".into(), trace);
            parts.headers.remove(header::CONTENT_LENGTH);
            Body::from(Value::Object(answer).to_string())
        }
        _ => Body::from(bytes),
    };
    Response::from_parts(parts, body)
}
