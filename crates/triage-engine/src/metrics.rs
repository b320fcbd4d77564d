//! Prometheus metrics (served by `scrape`, `GET /metrics`).
//!
//! One registry per server (no process-wide globals, so tests can run several servers). Names
//! are prefixed `triage_`; latency buckets run from 50 µs to about 6.5 s.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets, linear_buckets};
use prometheus_client::registry::Registry;

/// `model`, `mode`, `key` of a routed request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Chosen model.
    pub model: String,
    /// `quality`, `balanced`, `cost` or `lambda`.
    pub mode: String,
    /// API key name or `anonymous`.
    pub key: String,
}

/// One label: `model`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    /// Catalog model.
    pub model: String,
}

/// `stage` of the decision latency: `encoder`, `policy`, `total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// Stage.
    pub stage: String,
}

/// `method` and gRPC `code` of a failed call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// RPC method.
    pub method: String,
    /// gRPC status code name.
    pub code: String,
}

/// `model` and `error` kind of a feedback report.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeedbackLabels {
    /// Model used.
    pub model: String,
    /// `none`, `rate_limited`, `unavailable`, `timeout`, `other`.
    pub error: String,
}

/// How a verification ended: `accepted` or `escalated`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerifyLabels {
    /// `accepted` or `escalated`.
    pub outcome: String,
}

/// `scope` and `period` of a cost alert.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// `global` or an API key's name.
    pub scope: String,
    /// `day` or `month`.
    pub period: String,
}

/// `model`, `provider` and `outcome` of one upstream call by the gateway.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// Catalog model.
    pub model: String,
    /// `[[providers]]` name.
    pub provider: String,
    /// `ok`, `rate_limited`, `unavailable`, `timeout`, `client_error`, `bad_response`,
    /// `cancelled`.
    pub outcome: String,
}

/// `result` of an exact-repeat cache lookup: `hit` or `miss`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabel {
    /// `hit` or `miss`.
    pub result: String,
}

/// `model` and `direction` (`input`, `output`) of counted tokens.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// Catalog model.
    pub model: String,
    /// `input` or `output`.
    pub direction: String,
}

/// `source` of a judge's verdict: `judge` (the answer a caller got) or `shadow`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    /// `judge` or `shadow`.
    pub source: String,
}

/// `reason` an answer went unjudged: `queue_full`, `daily_cap`, `failed`, `not_recorded`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    /// Why.
    pub reason: String,
}

/// `outcome` of a retrain inside `serve`: `promoted`, `kept` or `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetrainLabel {
    /// `promoted`, `kept` or `failed`.
    pub outcome: String,
}

type FloatCounter = Counter<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(50e-6, 2.0, 18))
}

fn quality_histogram() -> Histogram {
    Histogram::new(linear_buckets(0.1, 0.1, 10))
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Routed requests.
    pub routes: Family<RouteLabels, Counter>,
    /// Failed calls by method and status code.
    pub errors: Family<ErrorLabels, Counter>,
    /// Predicted cost of routed requests, USD.
    pub predicted_cost: Family<ModelLabel, FloatCounter>,
    /// Reported cost from feedback, USD.
    pub reported_cost: Family<ModelLabel, FloatCounter>,
    /// Decision latency by stage, seconds.
    pub decision_seconds: Family<StageLabel, Histogram, fn() -> Histogram>,
    /// Requests waiting for the encoder.
    pub queue_depth: Gauge<i64, AtomicI64>,
    /// Breaker state per model: 0 closed, 1 half-open, 2 open.
    pub breaker_state: Family<ModelLabel, Gauge<i64, AtomicI64>>,
    /// Feedback reports by model and error kind.
    pub feedback: Family<FeedbackLabels, Counter>,
    /// Reported quality by model.
    pub feedback_quality: Family<ModelLabel, Histogram, fn() -> Histogram>,
    /// Cost alerts fired.
    pub cost_alerts: Family<AlertLabels, Counter>,
    /// Verdicts on drafts by outcome.
    pub verifications: Family<VerifyLabels, Counter>,
    /// Requests the bandit explored.
    pub explorations: Counter,
    /// Requests for a named model forwarded before their prompt was scored.
    pub passed_through: Counter,
    /// Passed-through decisions whose record could not be completed and written (their
    /// features and outcomes are missing from the log).
    pub unrecorded_passes: Counter,
    /// Exact-repeat embedding cache lookups by result.
    pub encoder_cache: Family<CacheLabel, Counter>,
    /// Entries the embedding cache evicted to make room.
    pub encoder_cache_evictions: Counter,
    /// Gateway calls to upstream models by model, provider and outcome.
    pub upstream_requests: Family<UpstreamLabels, Counter>,
    /// Time from sending an upstream request to its first response byte, by model, seconds.
    pub upstream_first_byte_seconds: Family<ModelLabel, Histogram, fn() -> Histogram>,
    /// Whole upstream call, by model, seconds.
    pub upstream_seconds: Family<ModelLabel, Histogram, fn() -> Histogram>,
    /// Gateway requests answered by a model other than the first one tried.
    pub fallbacks: Counter,
    /// Tokens by model and direction, as the upstream reported them (or estimated).
    pub tokens: Family<TokenLabels, Counter>,
    /// The gateway's own time per request: everything but the encoder and the upstream.
    pub gateway_overhead_seconds: Histogram,
    /// How like the policy's training prompts routed prompts were (mean cosine similarity).
    pub familiarity: Histogram,
    /// How far the policy trusted its prompt-specific predictions (0..1).
    pub trust: Histogram,
    /// Judge verdicts recorded, by source.
    pub judge_verdicts: Family<VerdictLabel, Counter>,
    /// Judge answers that held no verdict (never recorded as a score).
    pub judge_unparsable: Counter,
    /// Answers sampled for the judge but not judged, by reason.
    pub judge_dropped: Family<DropLabel, Counter>,
    /// The judge's and shadow answers' spend, USD (the operator's, never a caller's).
    pub judge_spend_usd: FloatCounter,
    /// One judge call, seconds.
    pub judge_seconds: Histogram,
    /// Stored reports with a quality score (a caller's or the judge's) since start.
    pub scored_feedback: Counter,
    /// Retrains inside `serve`, by outcome.
    pub retrains: Family<RetrainLabel, Counter>,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("triage");
        let m = Self {
            routes: Family::default(),
            errors: Family::default(),
            predicted_cost: Family::default(),
            reported_cost: Family::default(),
            decision_seconds: Family::new_with_constructor(latency_histogram),
            queue_depth: Gauge::default(),
            breaker_state: Family::default(),
            feedback: Family::default(),
            feedback_quality: Family::new_with_constructor(quality_histogram),
            cost_alerts: Family::default(),
            verifications: Family::default(),
            explorations: Counter::default(),
            passed_through: Counter::default(),
            unrecorded_passes: Counter::default(),
            encoder_cache: Family::default(),
            encoder_cache_evictions: Counter::default(),
            upstream_requests: Family::default(),
            upstream_first_byte_seconds: Family::new_with_constructor(latency_histogram),
            upstream_seconds: Family::new_with_constructor(latency_histogram),
            fallbacks: Counter::default(),
            tokens: Family::default(),
            gateway_overhead_seconds: latency_histogram(),
            familiarity: quality_histogram(),
            trust: quality_histogram(),
            judge_verdicts: Family::default(),
            judge_unparsable: Counter::default(),
            judge_dropped: Family::default(),
            judge_spend_usd: FloatCounter::default(),
            judge_seconds: latency_histogram(),
            scored_feedback: Counter::default(),
            retrains: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "route_requests",
            "Routed requests by chosen model, mode and API key",
            m.routes.clone(),
        );
        registry.register(
            "errors",
            "Failed calls by method and status code (gRPC code name, or HTTP status)",
            m.errors.clone(),
        );
        registry.register(
            "predicted_cost_usd",
            "Predicted cost of routed requests by model, USD",
            m.predicted_cost.clone(),
        );
        registry.register(
            "reported_cost_usd",
            "Cost reported through Feedback by model, USD",
            m.reported_cost.clone(),
        );
        registry.register(
            "decision_seconds",
            "Route latency by stage (encoder, policy, total)",
            m.decision_seconds.clone(),
        );
        registry.register(
            "encoder_queue_depth",
            "Requests waiting for the encoder",
            m.queue_depth.clone(),
        );
        registry.register(
            "breaker_state",
            "Circuit breaker per model: 0 closed, 1 half-open, 2 open",
            m.breaker_state.clone(),
        );
        registry.register(
            "feedback",
            "Feedback reports by model and error kind",
            m.feedback.clone(),
        );
        registry.register(
            "feedback_quality",
            "Reported quality by model",
            m.feedback_quality.clone(),
        );
        registry.register(
            "cost_alerts",
            "Cost alerts fired by scope and period",
            m.cost_alerts.clone(),
        );
        registry.register(
            "verifications",
            "Verdicts on verify-then-escalate drafts by outcome",
            m.verifications.clone(),
        );
        registry.register(
            "explorations",
            "Requests routed by exploration",
            m.explorations.clone(),
        );
        registry.register(
            "passed_through",
            "Requests for a named model forwarded before their prompt was scored",
            m.passed_through.clone(),
        );
        registry.register(
            "unrecorded_passes",
            "Passed-through decisions whose record could not be completed and written",
            m.unrecorded_passes.clone(),
        );
        registry.register(
            "encoder_cache_requests",
            "Exact-repeat embedding cache lookups by result (hit, miss)",
            m.encoder_cache.clone(),
        );
        registry.register(
            "encoder_cache_evictions",
            "Embeddings evicted from the exact-repeat cache",
            m.encoder_cache_evictions.clone(),
        );
        registry.register(
            "upstream_requests",
            "Gateway calls to upstream models by model, provider and outcome",
            m.upstream_requests.clone(),
        );
        registry.register(
            "upstream_first_byte_seconds",
            "Gateway: time to the upstream's first response byte by model",
            m.upstream_first_byte_seconds.clone(),
        );
        registry.register(
            "upstream_seconds",
            "Gateway: whole upstream call by model",
            m.upstream_seconds.clone(),
        );
        registry.register(
            "fallbacks",
            "Gateway requests answered by a fallback model",
            m.fallbacks.clone(),
        );
        registry.register(
            "tokens",
            "Tokens by model and direction (input, output)",
            m.tokens.clone(),
        );
        registry.register(
            "gateway_overhead_seconds",
            "Gateway time per request other than the encoder and the upstream",
            m.gateway_overhead_seconds.clone(),
        );
        registry.register(
            "familiarity",
            "How like the policy's training prompts each routed prompt was (mean cosine similarity \
             to the nearest ones); only for policies that carry their training prompts",
            m.familiarity.clone(),
        );
        registry.register(
            "trust",
            "How far the policy trusted its prompt-specific predictions per routed prompt (0..1)",
            m.trust.clone(),
        );
        m.register_judge(&mut registry);
        Self { registry, ..m }
    }

    fn register_judge(&self, registry: &mut Registry) {
        registry.register(
            "judge_verdicts",
            "Judge verdicts recorded as feedback, by source (judge, shadow)",
            self.judge_verdicts.clone(),
        );
        registry.register(
            "judge_unparsable",
            "Judge answers that held no verdict (never recorded as a score)",
            self.judge_unparsable.clone(),
        );
        registry.register(
            "judge_dropped",
            "Answers sampled for the judge but not judged, by reason (queue_full, daily_cap, \
             failed, not_recorded)",
            self.judge_dropped.clone(),
        );
        registry.register(
            "judge_spend_usd",
            "The judge's and shadow answers' spend, USD (the operator's, never a caller's)",
            self.judge_spend_usd.clone(),
        );
        registry.register(
            "judge_seconds",
            "One judge call, seconds",
            self.judge_seconds.clone(),
        );
        registry.register(
            "scored_feedback",
            "Stored reports with a quality score (a caller's or the judge's) since start",
            self.scored_feedback.clone(),
        );
        registry.register(
            "retrains",
            "Retrains inside serve ([learning]) by outcome (promoted, kept, failed)",
            self.retrains.clone(),
        );
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
