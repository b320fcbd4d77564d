//! Prompt → decision, with no gRPC in sight.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use triage_core::config::ExplorationSettings;
use triage_core::features::{PromptStats, features};
use triage_core::{Catalog, Conversation, EncoderInput, Preferences, Settings};
use triage_encoder::{EncoderPool, OnnxEmbedder, OnnxOptions, PoolOptions, init_onnxruntime};
use triage_policy::{Decision, OnlineLearner, Policy, Prediction, apply_priors, decide};

use crate::error::{RouteError, StartupError};
use crate::recent::RecentPredictions;

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
    /// The feature vector the policy scored (logged so retraining needs no re-embedding).
    pub features: Vec<f32>,
    /// Probability with which the returned model was chosen.
    pub propensity: f64,
    /// Whether exploration picked the model.
    pub explored: bool,
    /// The policy's quality predictions before online corrections, per scored model.
    pub base_quality: Vec<(String, f64)>,
}

/// Catalog, encoder and policy: everything a decision needs.
///
/// The policy sits behind an atomic pointer: [`reload_policy`](Self::reload_policy) swaps in a
/// new one while requests in flight finish on the one they started with.
#[derive(Clone)]
pub struct RoutingEngine {
    catalog: Arc<Catalog>,
    encoder: EncoderPool,
    policy: Arc<ArcSwap<Policy>>,
    policy_path: Option<PathBuf>,
    learner: Arc<OnlineLearner>,
    recent: Arc<RecentPredictions>,
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
        let path = base.join(&settings.policy.path);
        let policy = Policy::load(&path)?;
        let mut engine = Self::new(catalog, pool, policy, settings.exploration.clone())?;
        engine.policy_path = Some(path);
        Ok(engine)
    }

    /// Assembles an engine, checking that encoder and policy fit together.
    pub fn new(
        catalog: Catalog,
        encoder: EncoderPool,
        policy: Policy,
        exploration: ExplorationSettings,
    ) -> Result<Self, StartupError> {
        check_policy(&catalog, encoder.dim(), &policy)?;
        Ok(Self {
            catalog: Arc::new(catalog),
            encoder,
            policy: Arc::new(ArcSwap::from_pointee(policy)),
            policy_path: None,
            learner: Arc::new(OnlineLearner::new(exploration)),
            recent: Arc::new(RecentPredictions::new(RECENT_DECISIONS)),
        })
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The policy being served now.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// The file the policy was loaded from, if any.
    pub fn policy_path(&self) -> Option<&Path> {
        self.policy_path.as_deref()
    }

    /// Loads `path` and, if it is valid and fits the encoder, serves it from the next request on.
    /// On error the current policy keeps serving.
    pub fn reload_policy(&self, path: &Path) -> Result<String, StartupError> {
        let policy = Policy::load(path)?;
        check_policy(&self.catalog, self.encoder.dim(), &policy)?;
        let version = policy.version().to_owned();
        self.policy.store(Arc::new(policy));
        self.learner.reset_corrections();
        Ok(version)
    }

    /// The online learner (corrections and exploration state).
    pub fn learner(&self) -> &OnlineLearner {
        &self.learner
    }

    /// Learns from a stored feedback report on `request_id`.
    pub fn observe_feedback(&self, request_id: &str, model: &str, quality: Option<f64>) {
        let predicted = self.recent.get(request_id, model);
        self.learner.observe(model, predicted, quality);
    }

    /// Requests waiting for the encoder.
    pub fn queue_depth(&self) -> usize {
        self.encoder.queue_depth()
    }

    /// Chooses a model for the request known as `request_id`.
    pub async fn route(
        &self,
        request_id: &str,
        request: &RoutingRequest,
    ) -> Result<RouteOutcome, RouteError> {
        let started = Instant::now();
        let input = EncoderInput::from_conversation(&request.conversation);
        let embedding = self.encoder.embed(input).await?;
        let encoded = Instant::now();

        let stats = PromptStats::new(&request.conversation, embedding.text_tokens);
        let x = features(&stats, &embedding.vector);
        let policy = self.policy.load_full();
        let mut predictions: HashMap<&str, Prediction> = policy.predict(&x)?.into_iter().collect();
        apply_priors(&self.catalog, &mut predictions);
        let base_quality: Vec<(String, f64)> = predictions
            .iter()
            .map(|(m, p)| ((*m).to_owned(), p.quality))
            .collect();
        self.learner.correct(&mut predictions);
        let mut decision = decide(
            &self.catalog,
            &predictions,
            policy.decision(),
            &request.preferences,
            stats.input_tokens,
        )?;
        let draw = self
            .learner
            .explore(&mut decision, fastrand::f64(), fastrand::f64());
        let finished = Instant::now();
        self.recent.insert(request_id, &base_quality);
        Ok(RouteOutcome {
            decision,
            policy_version: policy.version().to_owned(),
            input_tokens: stats.input_tokens,
            encoder_us: micros(encoded - started),
            policy_us: micros(finished - encoded),
            features: x,
            propensity: draw.propensity,
            explored: draw.explored,
            base_quality,
        })
    }
}

/// Decisions whose uncorrected predictions are kept for online learning from their feedback.
const RECENT_DECISIONS: usize = 100_000;

/// Checks that `policy` fits the encoder, and warns about catalog/policy mismatches.
fn check_policy(
    catalog: &Catalog,
    encoder_dim: usize,
    policy: &Policy,
) -> Result<(), StartupError> {
    let expected = policy.file().embedding_dim;
    if encoder_dim != expected {
        return Err(StartupError::DimensionMismatch {
            policy: expected,
            encoder: encoder_dim,
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
        .filter(|m| catalog.get(m).is_none_or(|spec| spec.prior_from.is_none()))
        .collect();
    if !unscored.is_empty() {
        tracing::warn!(
            models = ?unscored,
            "catalog models without predictions in the policy (and no prior_from) are never \
             chosen; retrain with `triage train` to include them"
        );
    }
    Ok(())
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
