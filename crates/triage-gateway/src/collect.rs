//! The calls behind `triage collect`: ask a catalog model a prompt through the configured
//! providers, and have the judge score the answer, outside any server, so that a deployment
//! can build an outcome table of its own prompts before it serves them.
//!
//! The same upstream calls (dialect translation, reasoning parameters, time and size bounds)
//! and the same judge ([`Asker`]) as serving; only the accounting differs: nothing is logged,
//! and the caller (the CLI) keeps the spend against its own cap.

use std::time::{Duration, Instant};

use triage_core::Settings;
use triage_core::request::RequestLimits;
use triage_encoder::approx_tokens;

use crate::call::{Reply, call};
use crate::judge::Asker;
use crate::openai::completion_text;
use crate::upstreams::{ProviderError, Upstreams};
use crate::wire;

/// One model's answer to one prompt.
#[derive(Clone, Debug)]
pub struct Collected {
    /// The answer's text.
    pub text: String,
    /// Input tokens (the provider's count, else about four bytes a token).
    pub input_tokens: u32,
    /// Output tokens, likewise.
    pub output_tokens: u32,
    /// At catalog prices.
    pub cost_usd: f64,
    /// The call's wall time.
    pub latency_ms: u32,
}

/// Why a collection call gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The model is not in the catalog or has no provider.
    #[error("model {0:?} is not a catalog model with a [[providers]] entry")]
    NotServed(String),
    /// The prompt cannot be sent (too long, empty).
    #[error("the prompt cannot be sent: {0}")]
    Invalid(#[from] triage_core::InvalidRequest),
    /// The provider did not answer.
    #[error("{model}: {outcome}: {detail}")]
    Failed {
        /// The model asked.
        model: String,
        /// `timeout`, `rate_limited`, `refused`, ...
        outcome: &'static str,
        /// What happened.
        detail: String,
    },
    /// The judge did not answer.
    #[error("the judge's call failed")]
    JudgeFailed,
}

/// Asks models and the judge.
pub struct Collector {
    upstreams: Upstreams,
    settings: Settings,
    judge: Asker,
    limits: RequestLimits,
}

impl Collector {
    /// Over the providers and the judge of `settings` (`[judge]`'s `model`, or `provider` and
    /// `upstream_model`, must be set).
    pub fn new(settings: &Settings) -> Result<Self, ProviderError> {
        let upstreams = Upstreams::from_settings(settings)?;
        let judge = Asker::new(settings, &upstreams)?;
        Ok(Self {
            upstreams,
            settings: settings.clone(),
            judge,
            limits: settings.server.limits(),
        })
    }

    /// The judge's name and rubric hash, as verdicts are marked.
    pub fn judge_mark(&self) -> (&str, &str) {
        (&self.judge.name, &self.judge.rubric.hash)
    }

    /// `model`'s answer to `prompt` (one user turn).
    pub async fn answer(&self, model: &str, prompt: &str) -> Result<Collected, CollectError> {
        let spec = self.settings.models.iter().find(|m| m.name == model);
        let (Some(spec), Some(target)) = (spec, self.upstreams.target(model)) else {
            return Err(CollectError::NotServed(model.to_owned()));
        };
        let body = serde_json::json!({"model": model,
            "messages": [{"role": "user", "content": prompt}]});
        let request = wire::parse(
            body.to_string().as_bytes(),
            self.limits,
            &Default::default(),
        )?;
        let started = Instant::now();
        let deadline = started + Duration::from_millis(self.settings.gateway.deadline_ms);
        let failed = |outcome, detail| CollectError::Failed {
            model: model.to_owned(),
            outcome,
            detail,
        };
        let (body, usage) = match call(target, &request, model, deadline, None).await.result {
            Ok(Reply::Complete { body, usage }) => (body, usage),
            Ok(Reply::Refused { status, .. }) => {
                return Err(failed("refused", format!("the provider answered {status}")));
            }
            Ok(Reply::Stream { .. }) => {
                return Err(failed("bad_response", "a stream, not asked for".into()));
            }
            Err(f) => return Err(failed(f.outcome, f.detail)),
        };
        let text = completion_text(&body).to_owned();
        let count = |t: &str| approx_tokens(t.len());
        let input_tokens = usage.input.map_or_else(|| count(prompt), saturate64);
        let output_tokens = usage.output.map_or_else(|| count(&text), saturate64);
        Ok(Collected {
            cost_usd: spec.cost_usd(f64::from(input_tokens), f64::from(output_tokens)),
            latency_ms: u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX),
            text,
            input_tokens,
            output_tokens,
        })
    }

    /// The judge's quality for `answer` (0..1; `None` when its verdict was unreadable) and
    /// what asking cost.
    pub async fn judge(
        &self,
        prompt: &str,
        answer: &str,
    ) -> Result<(Option<f64>, f64), CollectError> {
        let count = |t: &str| approx_tokens(t.len());
        self.judge
            .ask(prompt, answer, &count)
            .await
            .ok_or(CollectError::JudgeFailed)
    }
}

fn saturate64(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
