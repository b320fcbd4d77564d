//! What the log stores: decisions and feedback reports.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// One entry of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogRecord {
    /// A `Route` decision.
    Decision(DecisionRecord),
    /// A `Feedback` report.
    Feedback(FeedbackRecord),
    /// The acceptor's verdict on the drafts of a verify-then-escalate request.
    Verification(VerificationRecord),
}

impl LogRecord {
    /// The request it is about.
    pub fn request_id(&self) -> &str {
        match self {
            LogRecord::Decision(d) => &d.request_id,
            LogRecord::Feedback(f) => &f.request_id,
            LogRecord::Verification(v) => &v.request_id,
        }
    }

    /// `decision`, `feedback` or `verification`.
    pub fn kind(&self) -> &'static str {
        match self {
            LogRecord::Decision(_) => "decision",
            LogRecord::Feedback(_) => "feedback",
            LogRecord::Verification(_) => "verification",
        }
    }

    /// The decision, when it is one.
    pub fn as_decision(&self) -> Option<&DecisionRecord> {
        match self {
            LogRecord::Decision(d) => Some(d),
            LogRecord::Feedback(_) | LogRecord::Verification(_) => None,
        }
    }

    /// When it was written, ms since the epoch.
    pub fn time_ms(&self) -> u64 {
        match self {
            LogRecord::Decision(d) => d.time_ms,
            LogRecord::Feedback(f) => f.time_ms,
            LogRecord::Verification(v) => v.time_ms,
        }
    }
}

/// A scored candidate as the deciding policy saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoggedCandidate {
    /// Catalog model.
    pub model: String,
    /// Predicted good-answer probability.
    pub predicted_quality: f64,
    /// The policy's prediction before online corrections (absent in older logs): lets a
    /// restarted server replay its corrections exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_quality: Option<f64>,
    /// Predicted cost of this request, USD.
    pub predicted_cost_usd: f64,
    /// Whether the request's constraints allowed it.
    pub eligible: bool,
}

/// One routing decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Returned to the caller; feedback refers to it.
    pub request_id: String,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Policy that decided.
    pub policy_version: String,
    /// Feature vector (`triage_core::features`), f32 little-endian, base64: retraining needs no
    /// re-embedding.
    pub features: String,
    /// Estimated input tokens.
    pub input_tokens: u32,
    /// The trade-off asked for: `quality`, `balanced`, `cost` or `lambda`.
    pub knob: String,
    /// λ when `knob` is `lambda`.
    pub cost_weight: Option<f64>,
    /// Every candidate, eligible or not.
    pub candidates: Vec<LoggedCandidate>,
    /// The model returned.
    pub chosen: String,
    /// Probability with which `chosen` was picked (1 for a greedy decision; less when the bandit
    /// explored), for inverse-propensity estimates.
    pub propensity: f64,
    /// Whether this decision was an exploration.
    pub explored: bool,
    /// How like the policy's training prompts this prompt was (`None`: the policy could not
    /// tell, or the record predates it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub familiarity: Option<f64>,
    /// Caller's session id.
    pub session_id: String,
    /// Prompt text, only when `log.store_prompts` is on.
    pub prompt: Option<String>,
    /// Name of the caller's API key (`None`: anonymous).
    #[serde(default)]
    pub api_key: Option<String>,
    /// The drafts to run first, when the request asked to verify then escalate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft_plan: Option<DraftPlanRecord>,
    /// What was held against the key's budget when it is not the prediction: the worst case
    /// the request allows, for a key with limits whose calls this process makes itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_usd: Option<f64>,
}

impl DecisionRecord {
    /// What routing reserved against the key's budget for this request: the chosen model's
    /// predicted cost, plus any drafts planned before it (one definition for the ledger's
    /// replay and the shared stores' budgets).
    pub fn reserved_usd(&self) -> f64 {
        if let Some(held) = self.held_usd {
            return held;
        }
        let predicted = |model: &str| {
            self.candidates
                .iter()
                .find(|c| c.model == model)
                .map_or(0.0, |c| c.predicted_cost_usd)
        };
        let drafts: f64 = self
            .draft_plan
            .iter()
            .flat_map(|p| &p.drafts)
            .filter(|m| **m != self.chosen)
            .map(|m| predicted(m))
            .sum();
        predicted(&self.chosen) + drafts
    }
}

/// The drafts a verify-then-escalate request runs before its escalation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DraftPlanRecord {
    /// The draft models, in the order the acceptor reads them.
    pub drafts: Vec<String>,
    /// The routing policy's predicted quality per draft model (online corrections included):
    /// part of the acceptor's evidence.
    pub predicted_quality: Vec<f64>,
    /// Least accept probability at which a draft is returned.
    pub threshold: f64,
    /// Where a declined request goes: the routing policy's choice, then its ranked fallbacks.
    pub escalation: Vec<String>,
}

/// What one draft offered the acceptor (its text is not kept, only what was read from it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoggedDraft {
    /// The model that wrote it.
    pub model: String,
    /// Its final-answer key, if one was found.
    pub answer: Option<String>,
    /// Where the key was found (`boxed`, `json_field`, `stated`, `choice`, `code`, `number`).
    pub form: Option<String>,
    /// Length in characters.
    pub chars: u64,
    /// Whether it declines to answer.
    pub refuses: bool,
    /// Whether it signals doubt.
    pub hedges: bool,
}

/// The acceptor's verdict on a request's drafts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerificationRecord {
    /// The decision whose plan the drafts followed.
    pub request_id: String,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The drafts, in the plan's order.
    pub drafts: Vec<LoggedDraft>,
    /// The head's input, for audits (retraining reads the drafts, with its own predictions).
    pub evidence: Vec<f64>,
    /// The acceptor's probability that the returned draft is good.
    pub probability: f64,
    /// The threshold it was held to.
    pub threshold: f64,
    /// The draft model whose answer was returned; `None`: escalated.
    pub accepted: Option<String>,
    /// The model escalated to (`None` when accepted).
    pub escalated_to: Option<String>,
    /// Name of the caller's API key (`None`: anonymous).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

impl VerificationRecord {
    /// A digest of the verdict without its time: a retried `Verify` with the same drafts has
    /// the same one. The log's index keeps only this, not the record, so that a verdict's
    /// answer keys cost no memory for the retention.
    pub fn verdict_digest(&self) -> u64 {
        digest(&VerificationRecord {
            time_ms: 0,
            ..self.clone()
        })
    }
}

/// How the upstream call failed, if it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The model answered.
    None,
    /// HTTP 429 or equivalent.
    RateLimited,
    /// The provider was down.
    Unavailable,
    /// No answer in time.
    Timeout,
    /// Anything else.
    Other,
}

/// One feedback report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRecord {
    /// The decision it reports on.
    pub request_id: String,
    /// Caller's idempotency key.
    pub feedback_id: String,
    /// Milliseconds since the Unix epoch (server clock at receipt).
    pub time_ms: u64,
    /// Model actually used (the chosen one or a fallback).
    pub model: String,
    /// 0..1, when judged.
    pub quality: Option<f64>,
    /// Tokens sent.
    pub input_tokens: u32,
    /// Tokens received.
    pub output_tokens: u32,
    /// Realised cost, USD.
    pub cost_usd: f64,
    /// End-to-end latency.
    pub latency_ms: u32,
    /// Upstream failure.
    pub error: ErrorKind,
    /// Provider's retry-after for a rate limit, ms.
    #[serde(default)]
    pub retry_after_ms: Option<u32>,
    /// Time to the upstream's first byte, ms (the gateway measures it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_ms: Option<u32>,
    /// The token counts are the encoder tokenizer's estimate: the upstream reported none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tokens_estimated: bool,
    /// Name of the API key that sent the report (`None`: anonymous). Only the key that routed
    /// the request may report on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The part of the key's budget held for this call, which this report settles (the
    /// gateway's records on keys with limits). `None`: the first report replaces the
    /// request's held prediction and later ones add their cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_usd: Option<f64>,
    /// Who wrote it: a caller, the gateway's record of a call, or the judge.
    #[serde(default, skip_serializing_if = "FeedbackSource::is_caller")]
    pub source: FeedbackSource,
    /// The judge's mark on a judge or shadow record: which judge, which rubric, what it cost
    /// the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judged: Option<Judged>,
}

/// Who wrote a feedback record. A caller's score outranks the judge's on the same request and
/// model; only a caller's report and the gateway's record of a call are the caller's spend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackSource {
    /// A caller's report (gRPC `Feedback`, `POST /v1/feedback`).
    #[default]
    Caller,
    /// The gateway's own record of an upstream call.
    Gateway,
    /// The judge's verdict on the answer a caller got.
    Judge,
    /// The judge's verdict on a shadow answer: a model that was not chosen, asked after the
    /// caller was answered and shown to no one.
    Shadow,
}

impl FeedbackSource {
    /// `caller`, `gateway`, `judge` or `shadow`.
    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackSource::Caller => "caller",
            FeedbackSource::Gateway => "gateway",
            FeedbackSource::Judge => "judge",
            FeedbackSource::Shadow => "shadow",
        }
    }

    /// The inverse of [`as_str`](Self::as_str).
    pub fn from_name(name: &str) -> Option<Self> {
        [
            FeedbackSource::Caller,
            FeedbackSource::Gateway,
            FeedbackSource::Judge,
            FeedbackSource::Shadow,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }

    fn is_caller(&self) -> bool {
        *self == FeedbackSource::Caller
    }

    /// Whether the judge wrote it (its score ranks below a caller's).
    pub fn is_judge(self) -> bool {
        matches!(self, FeedbackSource::Judge | FeedbackSource::Shadow)
    }
}

/// What a judge or shadow record carries besides its score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    /// The catalog model (or upstream model) that judged.
    pub judge_model: String,
    /// The rubric's hash (the first 16 hex digits of its SHA-256).
    pub rubric: String,
    /// The operator's spend on this record, USD: the judge's call, plus the shadow answer's
    /// call for a shadow record. Never charged to the caller's key.
    pub spend_usd: f64,
    /// For a shadow record, the probability with which its model was picked (off-policy
    /// estimates weight by its inverse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propensity: Option<f64>,
}

impl ErrorKind {
    /// `none`, `rate_limited`, `unavailable`, `timeout` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::None => "none",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Other => "other",
        }
    }

    /// The inverse of [`as_str`](Self::as_str).
    pub fn from_name(name: &str) -> Option<Self> {
        [
            ErrorKind::None,
            ErrorKind::RateLimited,
            ErrorKind::Unavailable,
            ErrorKind::Timeout,
            ErrorKind::Other,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == name)
    }
}

/// Feedback ids starting with this are the gateway's own records of its upstream calls: a
/// caller's report may not use them, so that no caller can take (and so erase) the record of
/// what its request really cost.
pub const GATEWAY_FEEDBACK_PREFIX: &str = "gateway:";

/// Feedback ids starting with this are the judge's verdicts (on an answer or a shadow answer):
/// reserved like the gateway's, so that no caller can take the id of a verdict before it lands.
pub const JUDGE_FEEDBACK_PREFIX: &str = "judge:";

/// The most reports one request may have (a caller's, the gateway's calls, a judge's): enough
/// for every model a request can try, and a bound on what one request adds to the index.
pub const MAX_REPORTS_PER_REQUEST: usize = 64;

impl FeedbackRecord {
    /// Whether its cost is the caller's spend (settled into the key's budget): a caller's
    /// report or the gateway's record of a call, never the judge's.
    pub fn charges_caller(&self) -> bool {
        !self.source.is_judge()
    }

    /// A digest of the report without its receipt time: a retry has the same one. The file
    /// log's index keeps only this, not the record.
    pub fn report_digest(&self) -> u64 {
        digest(&FeedbackRecord {
            time_ms: 0,
            ..self.clone()
        })
    }

    /// The report without its receipt time: two sends of the same report compare equal.
    pub fn same_report(&self, other: &FeedbackRecord) -> bool {
        let strip = |f: &FeedbackRecord| FeedbackRecord {
            time_ms: 0,
            ..f.clone()
        };
        strip(self) == strip(other)
    }
}

/// A digest of a record's JSON (what the index keeps instead of the record).
fn digest(record: &impl Serialize) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    serde_json::to_string(record)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

/// Packs a feature vector for [`DecisionRecord::features`].
pub fn encode_features(features: &[f32]) -> String {
    let bytes: Vec<u8> = features.iter().flat_map(|v| v.to_le_bytes()).collect();
    STANDARD.encode(bytes)
}

/// Unpacks [`DecisionRecord::features`].
pub fn decode_features(packed: &str) -> Result<Vec<f32>, String> {
    let bytes = STANDARD
        .decode(packed)
        .map_err(|e| format!("features: {e}"))?;
    if bytes.len() % 4 != 0 {
        return Err(format!(
            "features: {} bytes is not a whole number of f32",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_round_trip_exactly() {
        let x = [0.0f32, -1.5, 3.25e-7, f32::MAX];
        assert_eq!(decode_features(&encode_features(&x)), Ok(x.to_vec()));
        assert!(decode_features("AAA=").is_err());
        assert!(decode_features("not base64!").is_err());
    }
}
