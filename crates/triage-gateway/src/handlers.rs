//! The gateway's other endpoints: models, feedback, liveness and readiness.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use triage_core::InvalidRequest;
use triage_engine::Strategy;
use triage_log::{ErrorKind, FeedbackRecord};

use crate::Gateway;
use crate::error::GatewayError;
use crate::wire::VIRTUAL_MODELS;

/// `GET /v1/models`: the virtual models, then the catalog models the caller's key may use and
/// the gateway can call, with Triage's facts about each under `triage`.
pub async fn models(State(gw): State<Gateway>, headers: HeaderMap) -> Response {
    let caller = match gw.caller(&headers) {
        Ok(c) => c,
        Err(e) => return gw.refuse("models", e),
    };
    let mut data: Vec<_> = VIRTUAL_MODELS
        .iter()
        .map(|(name, mode, strategy)| {
            let strategy = match strategy {
                Strategy::Route => "route",
                Strategy::Verify => "verify",
            };
            json!({"id": name, "object": "model", "created": 0, "owned_by": "triage",
                   "triage": {"virtual": true, "mode": mode.to_string(), "strategy": strategy}})
        })
        .collect();
    let views = gw.service.models(&caller);
    // Aliases the caller can use: of a virtual model, or of a catalog model it may call.
    for (alias, target) in gw.aliases.iter() {
        let usable = VIRTUAL_MODELS.iter().any(|(v, ..)| v == target)
            || views.iter().any(|v| v.spec.name == *target)
                && gw.upstreams.target(target).is_some();
        if usable {
            data.push(
                json!({"id": alias, "object": "model", "created": 0, "owned_by": "triage",
                             "triage": {"virtual": true, "alias_of": target}}),
            );
        }
    }
    for view in views {
        let Some(target) = gw.upstreams.target(&view.spec.name) else {
            continue;
        };
        let m = &view.spec;
        data.push(json!({
            "id": m.name, "object": "model", "created": 0, "owned_by": target.provider.name,
            "triage": {
                "virtual": false,
                "input_usd_per_1m": m.input_usd_per_1m,
                "output_usd_per_1m": m.output_usd_per_1m,
                "context_window": m.context_window,
                "capabilities": m.capabilities.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                "enabled": m.enabled,
                "in_policy": view.in_policy,
                "health": view.health,
            },
        }));
    }
    Json(json!({"object": "list", "data": data})).into_response()
}

/// `POST /v1/feedback`: the JSON form of the gRPC `Feedback` call.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    request_id: String,
    /// Idempotency key: resend the same one to retry; a fresh one is made when absent.
    #[serde(default)]
    feedback_id: Option<String>,
    model: String,
    #[serde(default)]
    quality: Option<f64>,
    #[serde(default)]
    input_tokens: u32,
    #[serde(default)]
    output_tokens: u32,
    #[serde(default)]
    cost_usd: f64,
    #[serde(default)]
    latency_ms: u32,
    /// `none`, `rate_limited`, `unavailable`, `timeout` or `other`.
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    retry_after_ms: Option<u32>,
}

/// The handler for `POST /v1/feedback`.
pub async fn feedback(State(gw): State<Gateway>, headers: HeaderMap, body: Body) -> Response {
    match store_feedback(&gw, &headers, body).await {
        Ok(duplicate) => Json(json!({"duplicate": duplicate})).into_response(),
        Err(e) => gw.refuse("feedback", e),
    }
}

async fn store_feedback(
    gw: &Gateway,
    headers: &HeaderMap,
    body: Body,
) -> Result<bool, GatewayError> {
    let caller = gw.caller(headers)?;
    let body = gw.body(headers, body).await?;
    let f: FeedbackBody = serde_json::from_slice(&body)
        .map_err(|e| InvalidRequest::new("body", format!("not a feedback report: {e}")))?;
    let error = match f.error.as_deref() {
        None => ErrorKind::None,
        Some(name) => ErrorKind::from_name(name).ok_or_else(|| {
            InvalidRequest::new(
                "error",
                format!("unknown error kind {name:?}; use none, rate_limited, unavailable, timeout or other"),
            )
        })?,
    };
    let record = FeedbackRecord {
        request_id: f.request_id,
        feedback_id: f
            .feedback_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        time_ms: triage_engine::feedback::now_ms(),
        model: f.model,
        quality: f.quality,
        input_tokens: f.input_tokens,
        output_tokens: f.output_tokens,
        cost_usd: f.cost_usd,
        latency_ms: f.latency_ms,
        error,
        retry_after_ms: f.retry_after_ms,
        first_byte_ms: None,
        tokens_estimated: false,
        api_key: None,
        hold_usd: None,
        source: Default::default(),
        judged: None,
    };
    Ok(gw.service.feedback(&caller, record).await?)
}

/// `GET /healthz`: the process answers.
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: a policy is loaded, the log takes records, and an upstream is configured.
/// Anyone may ask (probes carry no key): the answer is ready or not, with reason codes. Only
/// an admin key also reads the details, which can name files or database errors.
pub async fn readyz(State(gw): State<Gateway>, headers: HeaderMap) -> Response {
    let mut reasons = Vec::new();
    let mut details = Vec::new();
    if let Some(why) = gw.service.log_failure() {
        reasons.push("log_unavailable");
        details.push(format!("the decision log cannot take records: {why}"));
    }
    if gw.upstreams.provider_count() == 0 {
        reasons.push("no_providers");
        details.push("no [[providers]] are configured".to_owned());
    }
    let policy = gw.service.engine().policy().version().to_owned();
    let admin = gw.caller(&headers).is_ok_and(|c| c.require_admin().is_ok());
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "status": if reasons.is_empty() { "ready" } else { "not_ready" },
        "policy_version": policy,
        "reasons": reasons,
    });
    if admin && !details.is_empty() {
        body["details"] = json!(details);
    }
    if gw.demo {
        body["demo"] = json!(true);
    }
    // What learning inside `serve` last did: counts and the gate's verdict, no prompt text.
    if let Some(retrain) = gw.service.last_retrain() {
        body["last_retrain"] = retrain;
    }
    (status, Json(body)).into_response()
}
