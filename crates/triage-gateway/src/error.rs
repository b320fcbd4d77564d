//! The gateway's errors and their one mapping to HTTP: a status and OpenAI's error body
//! (`{"error": {"message", "type", "param", "code"}}`), which every OpenAI SDK surfaces as a
//! typed exception. Engine errors map exhaustively, without a wildcard arm.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use triage_core::InvalidRequest;
use triage_encoder::{EncodeError, EncoderError};
use triage_engine::RouteError;
use triage_guard::AccessError;
use triage_log::LogError;
use triage_policy::PolicyError;

/// How one upstream attempt ended, as the final error lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AttemptSummary {
    /// Catalog model tried.
    pub model: String,
    /// `rate_limited`, `unavailable`, `timeout`, `bad_response`, ...
    pub outcome: &'static str,
    /// What happened, without upstream secrets.
    pub detail: String,
}

/// Why a gateway request failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The engine refused or failed (validation, keys, budgets, health, log).
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The request is malformed; names the field.
    #[error("{0}")]
    Invalid(#[from] InvalidRequest),
    /// The body is larger than `gateway.max_body_bytes`.
    #[error("request body is larger than the limit of {limit} bytes; send a shorter conversation")]
    BodyTooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// The body did not arrive within `gateway.body_read_ms`.
    #[error("the request body did not arrive within {ms} ms (gateway.body_read_ms); send it whole")]
    BodyTimeout {
        /// The limit, ms.
        ms: u64,
    },
    /// A catalog model asked for by name has no provider the gateway can call.
    #[error(
        "model {0:?} has no [[providers]] entry, so this gateway cannot call it (it stays \
         routable over gRPC); use model=\"triage\" or a model listed by GET /v1/models"
    )]
    NotServed(String),
    /// Every attempt failed.
    #[error("every attempt failed: {}", summary(.attempts))]
    AllAttemptsFailed {
        /// Each attempt and how it ended.
        attempts: Vec<AttemptSummary>,
        /// Whether they all failed for want of capacity (rate limits, outages): 503, else 502.
        unavailable: bool,
    },
    /// The key asked for a routing trace it may not see.
    #[error(
        "key {0:?} may not see routing traces; leave out triage.explain, or ask the operator \
         to add the key to gateway.explain_keys"
    )]
    TraceNotAllowed(String),
    /// The gateway has no upstream at all.
    #[error(
        "no [[providers]] are configured, so the gateway cannot answer; add one (see docs/gateway.md)"
    )]
    NoProviders,
}

fn summary(attempts: &[AttemptSummary]) -> String {
    attempts
        .iter()
        .map(|a| format!("{} ({}: {})", a.model, a.outcome, a.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

/// (status, OpenAI error `type`, `code`, `param`, retry-after seconds)
type Shape = (
    StatusCode,
    &'static str,
    &'static str,
    Option<String>,
    Option<u32>,
);

fn route_shape(e: &RouteError) -> Shape {
    use StatusCode as S;
    let invalid = "invalid_request_error";
    match e {
        RouteError::Invalid(i) => (
            S::BAD_REQUEST,
            invalid,
            "invalid_value",
            Some(i.field.clone()),
            None,
        ),
        RouteError::Encode(EncodeError::QueueFull { .. } | EncodeError::Overloaded { .. }) => (
            S::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "overloaded",
            None,
            Some(1),
        ),
        RouteError::Encode(EncodeError::Stopped) => (
            S::SERVICE_UNAVAILABLE,
            "server_error",
            "shutting_down",
            None,
            None,
        ),
        RouteError::Encode(EncodeError::Failed(e)) => match e {
            EncoderError::Tokenize(_) => (
                S::BAD_REQUEST,
                invalid,
                "invalid_value",
                Some("messages".into()),
                None,
            ),
            EncoderError::Inference(_)
            | EncoderError::Runtime { .. }
            | EncoderError::Model { .. }
            | EncoderError::Tokenizer { .. }
            | EncoderError::CudaNotBuilt => (
                S::INTERNAL_SERVER_ERROR,
                "server_error",
                "encoder_failed",
                None,
                None,
            ),
        },
        RouteError::NoEligibleModel(_) => (
            S::BAD_REQUEST,
            invalid,
            "no_eligible_model",
            Some("triage".into()),
            None,
        ),
        RouteError::Policy(p) => match p {
            PolicyError::Io { .. } | PolicyError::Parse { .. } | PolicyError::Invalid { .. } => (
                S::INTERNAL_SERVER_ERROR,
                "server_error",
                "policy_error",
                None,
                None,
            ),
        },
        RouteError::AllUnavailable(_) => (
            S::SERVICE_UNAVAILABLE,
            "server_error",
            "models_unavailable",
            None,
            Some(5),
        ),
        RouteError::BudgetExhausted(_) => (
            S::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "budget_exhausted",
            None,
            Some(60),
        ),
        RouteError::Access(a) => match a {
            AccessError::Missing | AccessError::Unknown | AccessError::Malformed => (
                S::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
                None,
                None,
            ),
            AccessError::NotAdmin(_) | AccessError::AnonymousNotAdmin => {
                (S::FORBIDDEN, "permission_error", "not_admin", None, None)
            }
            AccessError::Config(_) => (
                S::INTERNAL_SERVER_ERROR,
                "server_error",
                "auth_config",
                None,
                None,
            ),
        },
        RouteError::UnknownModel(_) => (
            S::NOT_FOUND,
            invalid,
            "model_not_found",
            Some("model".into()),
            None,
        ),
        RouteError::ModelExcluded { .. } => (
            S::BAD_REQUEST,
            invalid,
            "model_excluded",
            Some("model".into()),
            None,
        ),
        RouteError::ModelNotPermitted { .. } => (
            S::FORBIDDEN,
            "permission_error",
            "model_not_permitted",
            Some("model".into()),
            None,
        ),
        // The gateway judges drafts it called itself; these reach a client only if that goes
        // wrong (it escalates instead wherever it can).
        RouteError::Verify(_) => (S::BAD_GATEWAY, "server_error", "draft_unusable", None, None),
        RouteError::PlanRetired { .. } => (
            S::SERVICE_UNAVAILABLE,
            "server_error",
            "policy_reloaded",
            None,
            Some(1),
        ),
        RouteError::Log(l) => match l {
            LogError::UnknownRequest(_) | LogError::ExpiredRequest(..) | LogError::Evicted(..) => (
                S::NOT_FOUND,
                invalid,
                "unknown_request",
                Some("request_id".into()),
                None,
            ),
            LogError::NotYourRequest(_) => (
                S::FORBIDDEN,
                "permission_error",
                "not_your_request",
                Some("request_id".into()),
                None,
            ),
            LogError::ConflictingFeedback(_) => (
                S::CONFLICT,
                invalid,
                "conflicting_feedback",
                Some("feedback_id".into()),
                None,
            ),
            LogError::AlreadyVerified(_) => (
                S::CONFLICT,
                invalid,
                "already_verified",
                Some("request_id".into()),
                None,
            ),
            LogError::NotPlanned(_) => (
                S::CONFLICT,
                invalid,
                "not_planned",
                Some("request_id".into()),
                None,
            ),
            LogError::InvalidRecord(_) => (S::BAD_REQUEST, invalid, "invalid_value", None, None),
            LogError::TooManyReports(..) => (
                S::CONFLICT,
                invalid,
                "too_many_reports",
                Some("request_id".into()),
                None,
            ),
            LogError::Full => (
                S::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "log_full",
                None,
                Some(1),
            ),
            LogError::WriterStopped(_) => (
                S::SERVICE_UNAVAILABLE,
                "server_error",
                "log_stopped",
                None,
                None,
            ),
            LogError::Unavailable(_) => (
                S::SERVICE_UNAVAILABLE,
                "server_error",
                "log_unavailable",
                None,
                Some(1),
            ),
            LogError::Io { .. } | LogError::Locked { .. } => (
                S::INTERNAL_SERVER_ERROR,
                "server_error",
                "log_io",
                None,
                None,
            ),
        },
    }
}

impl GatewayError {
    fn shape(&self) -> Shape {
        use StatusCode as S;
        let invalid = "invalid_request_error";
        match self {
            GatewayError::Route(e) => route_shape(e),
            GatewayError::Invalid(i) => (
                S::BAD_REQUEST,
                invalid,
                "invalid_value",
                Some(i.field.clone()),
                None,
            ),
            GatewayError::BodyTooLarge { .. } => {
                (S::PAYLOAD_TOO_LARGE, invalid, "body_too_large", None, None)
            }
            GatewayError::BodyTimeout { .. } => {
                (S::REQUEST_TIMEOUT, invalid, "body_timeout", None, None)
            }
            GatewayError::NotServed(_) => (
                S::BAD_REQUEST,
                invalid,
                "model_not_served",
                Some("model".into()),
                None,
            ),
            GatewayError::TraceNotAllowed(_) => (
                S::FORBIDDEN,
                "permission_error",
                "trace_not_allowed",
                Some("triage.explain".into()),
                None,
            ),
            GatewayError::AllAttemptsFailed {
                unavailable: true, ..
            } => (
                S::SERVICE_UNAVAILABLE,
                "server_error",
                "upstreams_unavailable",
                None,
                Some(5),
            ),
            GatewayError::AllAttemptsFailed {
                unavailable: false, ..
            } => (
                S::BAD_GATEWAY,
                "server_error",
                "upstreams_failed",
                None,
                None,
            ),
            GatewayError::NoProviders => (
                S::SERVICE_UNAVAILABLE,
                "server_error",
                "no_providers",
                None,
                None,
            ),
        }
    }

    /// The HTTP status it answers with.
    pub fn status(&self) -> StatusCode {
        self.shape().0
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let (status, kind, code, param, retry_after) = self.shape();
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %self, "gateway request failed");
        }
        let mut error = json!({
            "message": self.to_string(),
            "type": kind,
            "param": param,
            "code": code,
        });
        if let GatewayError::AllAttemptsFailed { attempts, .. } = &self {
            error["attempts"] = json!(attempts);
        }
        let mut response = (status, axum::Json(json!({ "error": error }))).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
