//! Prompt → decision, with no gRPC in sight.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use triage_core::features::{PromptStats, features};
use triage_core::{Catalog, Conversation, EncoderInput, Preferences, Settings};
use triage_encoder::{EncoderPool, OnnxEmbedder, OnnxOptions, PoolOptions, init_onnxruntime};
use triage_policy::{Decision, Policy, Prediction, decide};

use crate::error::{RouteError, StartupError};

/// A validated routing request.
#[derive(Clone, Debug)]
pub struct RoutingRequest {
    /// The conversation.
    pub conversation: Conversation,
    /// Constraints and trade-off.
    pub preferences: Preferences,
    /// Caller's session, if any.
    pub session_id: String,
    /// Caller's free-form metadata.
    pub metadata: BTreeMap<String, String>,
}

/// A decision with the facts that produced it.
#[derive(Clone, Debug)]
pub struct RouteOutcome {
    /// Ranked candidates and the rule.
    pub decision: Decision,
    /// Version of the policy that decided.
    pub policy_version: String,
    /// Estimated input tokens of the conversation.
    pub input_tokens: u32,
    /// Time spent waiting for and running the encoder, µs.
    pub encoder_us: u64,
    /// Time spent in features, prediction and decision, µs.
    pub policy_us: u64,
}

/// Catalog, encoder and policy: everything a decision needs.
#[derive(Clone)]
pub struct RoutingEngine {
    catalog: Arc<Catalog>,
    encoder: EncoderPool,
    policy: Arc<Policy>,
}

impl RoutingEngine {
    /// Loads the encoder and policy named by `settings`, resolving relative paths against `base`.
    pub fn from_settings(settings: &Settings, base: &Path) -> Result<Self, StartupError> {
        let catalog = settings.catalog()?;
        let library = settings.encoder.onnxruntime.as_ref().map(|p| base.join(p));
        init_onnxruntime(library.as_deref())?;
        let options = OnnxOptions::from_settings(&settings.encoder, base);
        let pool = EncoderPool::start(
            PoolOptions {
                workers: settings.encoder.workers,
                queue_capacity: settings.encoder.queue_capacity,
                max_batch: settings.encoder.max_batch,
            },
            |_| OnnxEmbedder::load(&options),
        )?;
        let policy = Policy::load(&base.join(&settings.policy.path))?;
        Self::new(catalog, pool, policy)
    }

    /// Assembles an engine, checking that encoder and policy fit together.
    pub fn new(
        catalog: Catalog,
        encoder: EncoderPool,
        policy: Policy,
    ) -> Result<Self, StartupError> {
        let expected = policy.file().embedding_dim;
        if encoder.dim() != expected {
            return Err(StartupError::DimensionMismatch {
                policy: expected,
                encoder: encoder.dim(),
            });
        }
        let missing: Vec<&str> = policy
            .model_names()
            .filter(|m| catalog.get(m).is_none())
            .collect();
        if !missing.is_empty() {
            tracing::warn!(
                models = ?missing,
                "the policy scores models that are not in the catalog; they cannot be chosen \
                 until added under [[models]]"
            );
        }
        let unscored: Vec<&str> = catalog
            .models()
            .iter()
            .map(|m| m.name.as_str())
            .filter(|m| !policy.model_names().any(|p| p == *m))
            .collect();
        if !unscored.is_empty() {
            tracing::warn!(
                models = ?unscored,
                "catalog models without predictions in the policy are never chosen; retrain \
                 with `triage train` to include them"
            );
        }
        Ok(Self {
            catalog: Arc::new(catalog),
            encoder,
            policy: Arc::new(policy),
        })
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The policy being served.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Requests waiting for the encoder.
    pub fn queue_depth(&self) -> usize {
        self.encoder.queue_depth()
    }

    /// Chooses a model.
    pub async fn route(&self, request: &RoutingRequest) -> Result<RouteOutcome, RouteError> {
        let started = Instant::now();
        let input = EncoderInput::from_conversation(&request.conversation);
        let embedding = self.encoder.embed(input).await?;
        let encoded = Instant::now();

        let stats = PromptStats::new(&request.conversation, embedding.text_tokens);
        let x = features(&stats, &embedding.vector);
        let policy = Arc::clone(&self.policy);
        let predictions: HashMap<&str, Prediction> = policy.predict(&x)?.into_iter().collect();
        let decision = decide(
            &self.catalog,
            &predictions,
            policy.decision(),
            &request.preferences,
            stats.input_tokens,
        )?;
        let finished = Instant::now();
        Ok(RouteOutcome {
            decision,
            policy_version: policy.version().to_owned(),
            input_tokens: stats.input_tokens,
            encoder_us: micros(encoded - started),
            policy_us: micros(finished - encoded),
        })
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
