//! Feedback without the caller: each upstream call becomes one feedback record in the durable
//! log (tokens, cost at catalog prices, time to first byte, latency, error kind), which drives
//! breakers, budget settlement, online learning and `train --from-log` exactly like a report
//! sent over gRPC, and counts into the gateway's metrics.

use std::time::{Duration, Instant};

use triage_engine::Service;
use triage_engine::metrics::{ModelLabel, TokenLabels, UpstreamLabels};
use triage_guard::Caller;
use triage_log::{ErrorKind, FeedbackRecord, FeedbackSource, GATEWAY_FEEDBACK_PREFIX};

use crate::call::Failure;
use crate::openai::Usage;

/// One upstream call being made for a routed request.
pub struct Attempt {
    service: Service,
    caller: Caller,
    request_id: String,
    /// 1 for the chosen model, 2 for the first fallback, ...
    pub number: usize,
    /// Catalog model called.
    pub model: String,
    provider: String,
    /// The encoder's estimate of the prompt's tokens.
    input_estimate: u32,
    started: Instant,
    /// Time to the response head.
    pub first_byte: Option<Duration>,
    /// What the call holds of the caller's budget, which its record settles.
    pub hold: Option<f64>,
}

/// How an attempt ended.
pub struct Outcome<'a> {
    /// For breakers and the log.
    pub error: ErrorKind,
    /// Metric label.
    pub label: &'a str,
    /// The upstream's token counts.
    pub usage: Usage,
    /// The answer's text, to count tokens when the upstream reported none.
    pub answer: &'a str,
    /// Tokens of answer text not kept in `answer` (estimated apart).
    pub extra_tokens: u32,
    /// A 429's retry-after.
    pub retry_after: Option<Duration>,
    /// Whether the call produced an answer that is billed (a failed call costs nothing).
    pub billed: bool,
}

impl<'a> Outcome<'a> {
    /// A call that answered `answer` (billed; tokens from `usage`, else counted from the text).
    pub fn answered(usage: Usage, answer: &'a str) -> Self {
        Self {
            error: ErrorKind::None,
            label: "ok",
            usage,
            answer,
            extra_tokens: 0,
            retry_after: None,
            billed: true,
        }
    }
}

impl Outcome<'static> {
    /// A failed call, as the attempt's classification says.
    pub fn failed(failure: &Failure) -> Self {
        Self::unbilled(failure.kind, failure.outcome, failure.retry_after)
    }

    /// A call that produced nothing billed: a failure to fall back from, or a refusal.
    pub fn unbilled(error: ErrorKind, label: &'static str, retry_after: Option<Duration>) -> Self {
        Self {
            error,
            label,
            usage: Usage::default(),
            answer: "",
            extra_tokens: 0,
            retry_after,
            billed: false,
        }
    }
}

impl Attempt {
    /// An attempt starting now.
    pub fn start(
        service: &Service,
        caller: &Caller,
        request_id: &str,
        number: usize,
        model: &str,
        provider: &str,
        input_estimate: u32,
    ) -> Self {
        Self {
            service: service.clone(),
            caller: caller.clone(),
            request_id: request_id.to_owned(),
            number,
            model: model.to_owned(),
            provider: provider.to_owned(),
            input_estimate,
            started: Instant::now(),
            first_byte: None,
            hold: None,
        }
    }

    /// Time since the attempt started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Writes the attempt's record and counts it. Returns its cost, USD.
    pub fn finish(&self, outcome: &Outcome<'_>) -> f64 {
        let estimated = !outcome.usage.reported() && outcome.billed;
        let input = outcome
            .usage
            .input
            .map_or(self.input_estimate, saturating_u32);
        let output = match outcome.usage.output {
            Some(n) => saturating_u32(n),
            None if outcome.billed => self
                .service
                .engine()
                .count_tokens(outcome.answer)
                .saturating_add(outcome.extra_tokens),
            None => 0,
        };
        let (input, output) = if outcome.billed {
            (input, output)
        } else {
            (0, 0)
        };
        let cost = self
            .service
            .engine()
            .catalog()
            .get(&self.model)
            .map_or(0.0, |spec| {
                // Cache reads and writes are priced at their own rates, when billed.
                let (cached, written) = if outcome.billed {
                    (outcome.usage.cached as f64, outcome.usage.written as f64)
                } else {
                    (0.0, 0.0)
                };
                spec.cost_with_cache(f64::from(input), cached, written, f64::from(output))
            });
        let elapsed = self.started.elapsed();
        let record = FeedbackRecord {
            request_id: self.request_id.clone(),
            feedback_id: format!(
                "{GATEWAY_FEEDBACK_PREFIX}{}:{}",
                self.request_id, self.number
            ),
            time_ms: triage_engine::feedback::now_ms(),
            model: self.model.clone(),
            quality: None,
            input_tokens: input,
            output_tokens: output,
            cost_usd: cost,
            latency_ms: millis(elapsed),
            error: outcome.error,
            retry_after_ms: outcome.retry_after.map(millis),
            first_byte_ms: self.first_byte.map(millis),
            tokens_estimated: estimated,
            api_key: None,
            hold_usd: self.hold,
            source: FeedbackSource::Gateway,
            judged: None,
        };
        if let Err(e) = self.service.record_attempt(&self.caller, record) {
            tracing::warn!(error = %e, request_id = %self.request_id, "gateway feedback not recorded");
        }
        self.count(outcome.label, input, output, elapsed);
        cost
    }

    fn count(&self, label: &str, input: u32, output: u32, elapsed: Duration) {
        let m = self.service.metrics();
        m.upstream_requests
            .get_or_create(&UpstreamLabels {
                model: self.model.clone(),
                provider: self.provider.clone(),
                outcome: label.to_owned(),
            })
            .inc();
        let model = ModelLabel {
            model: self.model.clone(),
        };
        if let Some(fb) = self.first_byte {
            m.upstream_first_byte_seconds
                .get_or_create(&model)
                .observe(fb.as_secs_f64());
        }
        m.upstream_seconds
            .get_or_create(&model)
            .observe(elapsed.as_secs_f64());
        for (direction, n) in [("input", input), ("output", output)] {
            m.tokens
                .get_or_create(&TokenLabels {
                    model: self.model.clone(),
                    direction: direction.into(),
                })
                .inc_by(u64::from(n));
        }
    }
}

fn saturating_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}
