//! The one set of checks on a feedback report, whichever door it came through.

use triage_core::InvalidRequest;
use triage_core::request::MAX_ECHO_BYTES;
use triage_log::{FeedbackRecord, GATEWAY_FEEDBACK_PREFIX, JUDGE_FEEDBACK_PREFIX};

/// Longest accepted `feedback_id` and `request_id` (Triage's own ids are 36 bytes).
pub const MAX_FEEDBACK_ID_BYTES: usize = 128;

/// Refuses a `request_id` no decision could have (empty, or longer than any id Triage issues):
/// feedback and `Verify` name one, and the errors that follow repeat it.
pub fn check_request_id(request_id: &str) -> Result<(), InvalidRequest> {
    if request_id.trim().is_empty()
        || request_id.len() > MAX_FEEDBACK_ID_BYTES
        || request_id.contains('\0')
    {
        return Err(InvalidRequest::new(
            "request_id",
            format!(
                "must be 1..={MAX_FEEDBACK_ID_BYTES} bytes without NUL characters; send the \
                 request_id that the routed call returned"
            ),
        ));
    }
    Ok(())
}

/// Refuses a caller's report whose `feedback_id` lies in the namespace of the gateway's own
/// records (`gateway:…`) or the judge's (`judge:…`): taking one first would erase the recorded
/// cost of a call, or a verdict.
pub fn check_caller_id(f: &FeedbackRecord) -> Result<(), InvalidRequest> {
    for prefix in [GATEWAY_FEEDBACK_PREFIX, JUDGE_FEEDBACK_PREFIX] {
        if f.feedback_id.starts_with(prefix) {
            return Err(InvalidRequest::new(
                "feedback_id",
                format!(
                    "ids starting with {prefix:?} are the gateway's and the judge's own \
                     records; use another id (e.g. a UUID)"
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses a report that names no request, model or id, or carries an impossible number (a cost
/// above `max_cost_usd` included).
pub fn check(f: &FeedbackRecord, max_cost_usd: f64) -> Result<(), InvalidRequest> {
    check_request_id(&f.request_id)?;
    if f.feedback_id.trim().is_empty()
        || f.feedback_id.len() > MAX_FEEDBACK_ID_BYTES
        || f.feedback_id.contains('\0')
    {
        return Err(InvalidRequest::new(
            "feedback_id",
            format!(
                "must be 1..={MAX_FEEDBACK_ID_BYTES} bytes without NUL characters; use a fresh \
                 id (e.g. a UUID) per report and the same id when retrying it"
            ),
        ));
    }
    if f.model.trim().is_empty() || f.model.len() > MAX_ECHO_BYTES {
        return Err(InvalidRequest::new(
            "model",
            format!(
                "must be 1..={MAX_ECHO_BYTES} bytes; name the catalog model that actually \
                 answered"
            ),
        ));
    }
    if let Some(q) = f.quality
        && !(0.0..=1.0).contains(&q)
    {
        return Err(InvalidRequest::new(
            "quality",
            format!("{q} is outside 0..1; scale the score to 0 (bad) ..1 (good) or leave it unset"),
        ));
    }
    if !(0.0..=max_cost_usd).contains(&f.cost_usd) {
        return Err(InvalidRequest::new(
            "cost_usd",
            format!(
                "{} must be a number from 0 to {max_cost_usd} (server.max_reported_cost_usd)",
                f.cost_usd
            ),
        ));
    }
    Ok(())
}

pub use triage_log::now_ms;
