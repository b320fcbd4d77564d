//! Wire types ↔ domain types. Every check on caller input lives in `triage_core`; this module
//! only translates, naming fields by their wire paths.

use triage_core::catalog::Capability;
use triage_core::request::RequestLimits;
use triage_core::{Catalog, Conversation, InvalidRequest, Mode, Preferences};
use triage_engine::{RouteOutcome, RoutingRequest, Strategy, Verdict};
use triage_guard::Caller;
use triage_log::{ErrorKind, FeedbackRecord};
use triage_policy::{Candidate, Exclusion};
use triage_proto::v1;

/// Validates a wire request into a domain request.
pub fn routing_request(
    request: v1::RouteRequest,
    catalog: &Catalog,
    limits: RequestLimits,
    caller: Caller,
) -> Result<RoutingRequest, InvalidRequest> {
    let conversation = Conversation::from_wire(
        request
            .messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str())),
        limits,
    )?;
    let session_affinity = !request
        .preferences
        .as_ref()
        .is_some_and(|p| p.no_session_affinity);
    let preferences = match request.preferences {
        Some(p) => preferences(p)?,
        None => Preferences::default(),
    };
    preferences.validate(catalog, "preferences.")?;
    triage_core::request::check_session_id(&request.session_id, "session_id")?;
    let strategy = match v1::Strategy::try_from(request.strategy) {
        Ok(v1::Strategy::Unspecified | v1::Strategy::Route) => Strategy::Route,
        Ok(v1::Strategy::Verify) => Strategy::Verify,
        Err(_) => {
            return Err(InvalidRequest::new(
                "strategy",
                format!(
                    "unknown strategy {}; use STRATEGY_ROUTE or STRATEGY_VERIFY",
                    request.strategy
                ),
            ));
        }
    };
    Ok(RoutingRequest {
        conversation,
        preferences,
        session_id: request.session_id,
        metadata: request.metadata.into_iter().collect(),
        caller,
        session_affinity,
        pinned: None,
        reachable: None,
        strategy,
        // A gRPC caller calls the model and reports its cost: the prediction is held.
        charge: triage_engine::Charge::Predicted,
        // Route answers with the decision and its predictions: nothing passes through.
        pass_through: false,
    })
}

fn preferences(p: v1::Preferences) -> Result<Preferences, InvalidRequest> {
    let mode = match v1::Mode::try_from(p.mode) {
        Ok(v1::Mode::Unspecified | v1::Mode::Balanced) => Mode::Balanced,
        Ok(v1::Mode::Quality) => Mode::Quality,
        Ok(v1::Mode::Cost) => Mode::Cost,
        Err(_) => {
            return Err(InvalidRequest::new(
                "preferences.mode",
                format!(
                    "unknown mode {}; use MODE_QUALITY, MODE_BALANCED or MODE_COST",
                    p.mode
                ),
            ));
        }
    };
    let mut required_capabilities = Vec::with_capacity(p.required_capabilities.len());
    for (i, raw) in p.required_capabilities.iter().enumerate() {
        let capability = match v1::Capability::try_from(*raw) {
            Ok(v1::Capability::Vision) => Capability::Vision,
            Ok(v1::Capability::Tools) => Capability::Tools,
            Ok(v1::Capability::JsonOutput) => Capability::JsonOutput,
            Ok(v1::Capability::Unspecified) | Err(_) => {
                return Err(InvalidRequest::new(
                    format!("preferences.required_capabilities[{i}]"),
                    format!(
                        "unknown capability {raw}; use CAPABILITY_VISION, CAPABILITY_TOOLS or \
                         CAPABILITY_JSON_OUTPUT"
                    ),
                ));
            }
        };
        required_capabilities.push(capability);
    }
    Ok(Preferences {
        mode,
        cost_weight: p.cost_weight,
        max_cost_usd: p.max_cost_usd,
        max_latency_ms: p.max_latency_ms,
        allowed_models: p.allowed_models,
        required_capabilities,
        min_context_tokens: p.min_context_tokens,
        expected_output_tokens: p.expected_output_tokens,
    })
}

/// The wire response for a decision.
pub fn route_response(
    request_id: String,
    outcome: RouteOutcome,
    total_us: u64,
) -> v1::RouteResponse {
    let decision = outcome.decision;
    let draft_plan = match outcome.drafts {
        Some(Ok(planned)) => Some(v1::DraftPlan {
            drafts: planned.drafts,
            threshold: planned.threshold,
        }),
        Some(Err(_)) | None => None,
    };
    v1::RouteResponse {
        request_id,
        model: decision.chosen().model.clone(),
        candidates: decision.candidates.into_iter().map(candidate).collect(),
        policy_version: outcome.policy_version,
        explanation: decision.explanation,
        input_tokens: outcome.input_tokens,
        timings: Some(v1::Timings {
            encoder_us: outcome.encoder_us,
            policy_us: outcome.policy_us,
            total_us,
        }),
        explored: outcome.explored,
        propensity: outcome.propensity,
        sticky: outcome.sticky,
        draft_plan,
        familiarity: outcome.familiarity,
        trust: outcome.familiarity.map(|_| outcome.trust),
    }
}

/// The wire verdict.
pub fn verify_response(verdict: Verdict) -> v1::VerifyResponse {
    let accepted = verdict.accepted.is_some();
    let (model, fallbacks) = match verdict.accepted {
        Some(model) => (model, Vec::new()),
        None => {
            let mut ranked = verdict.escalation.into_iter();
            (ranked.next().unwrap_or_default(), ranked.collect())
        }
    };
    v1::VerifyResponse {
        accepted,
        model,
        fallbacks,
        probability: verdict.probability,
        threshold: verdict.threshold,
        drafted: verdict.drafted,
        duplicate: verdict.duplicate,
    }
}

/// Translates a wire feedback report; the checks on its values are the engine's
/// (`triage_engine::feedback::check`), shared with the HTTP gateway.
pub fn feedback_record(f: v1::FeedbackRequest) -> Result<FeedbackRecord, InvalidRequest> {
    let error = match v1::ErrorKind::try_from(f.error) {
        Ok(v1::ErrorKind::ErrorUnspecified) => ErrorKind::None,
        Ok(v1::ErrorKind::ErrorRateLimited) => ErrorKind::RateLimited,
        Ok(v1::ErrorKind::ErrorUnavailable) => ErrorKind::Unavailable,
        Ok(v1::ErrorKind::ErrorTimeout) => ErrorKind::Timeout,
        Ok(v1::ErrorKind::ErrorOther) => ErrorKind::Other,
        Err(_) => {
            return Err(InvalidRequest::new(
                "error",
                format!(
                    "unknown error kind {}; use ERROR_UNSPECIFIED (none), ERROR_RATE_LIMITED, \
                     ERROR_UNAVAILABLE, ERROR_TIMEOUT or ERROR_OTHER",
                    f.error
                ),
            ));
        }
    };
    Ok(FeedbackRecord {
        request_id: f.request_id,
        feedback_id: f.feedback_id,
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
    })
}

fn candidate(c: Candidate) -> v1::Candidate {
    let exclusion = match &c.exclusion {
        None => v1::ExclusionReason::Unspecified,
        Some(Exclusion::Disabled) => v1::ExclusionReason::Disabled,
        Some(Exclusion::NotInPolicy) => v1::ExclusionReason::NotInPolicy,
        Some(Exclusion::NotAllowed) => v1::ExclusionReason::NotAllowed,
        Some(Exclusion::MissingCapability(_)) => v1::ExclusionReason::MissingCapability,
        Some(Exclusion::ContextTooSmall { .. }) => v1::ExclusionReason::ContextTooSmall,
        Some(Exclusion::OverBudget { .. }) => v1::ExclusionReason::OverBudget,
        Some(Exclusion::TooSlow { .. }) => v1::ExclusionReason::TooSlow,
        Some(Exclusion::Unavailable { .. }) => v1::ExclusionReason::Unavailable,
        Some(Exclusion::NotPermitted { .. }) => v1::ExclusionReason::NotPermitted,
    };
    v1::Candidate {
        model: c.model,
        predicted_quality: c.quality,
        predicted_cost_usd: c.cost_usd,
        eligible: c.exclusion.is_none(),
        reason: c.exclusion.map(|e| e.to_string()).unwrap_or_default(),
        exclusion: exclusion as i32,
        predicted_output_tokens: saturating_u32(c.output_tokens),
        predicted_latency_ms: saturating_u32(c.latency_ms),
    }
}

fn saturating_u32(x: f64) -> u32 {
    // `as` saturates and maps NaN to 0, which is what a display field wants.
    x.round() as u32
}

/// The wire form of a catalog capability.
pub fn capability(c: Capability) -> v1::Capability {
    match c {
        Capability::Vision => v1::Capability::Vision,
        Capability::Tools => v1::Capability::Tools,
        Capability::JsonOutput => v1::Capability::JsonOutput,
    }
}
