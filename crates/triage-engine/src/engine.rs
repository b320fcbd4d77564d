//! Prompt → decision, with no gRPC in sight.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use triage_core::catalog::ModelSpec;
use triage_core::config::ExplorationSettings;
use triage_core::features::{PromptStats, features};
use triage_core::{Catalog, Conversation, EncoderInput, Preferences, Settings};
use triage_encoder::{
    Embedding, EncoderPool, OnnxEmbedder, OnnxOptions, PoolOptions, TokenCounter, init_onnxruntime,
};
use triage_guard::{Caller, FiredAlert};
use triage_log::{FeedbackRecord, LogRecord};
use triage_policy::{
    Availability, Decision, Exclusion, OnlineLearner, Policy, Prediction, apply_priors,
    decide_with, expected_call,
};

use crate::cache::{CacheUse, CachedInput, EmbeddingCache};
use crate::controls::{BudgetCap, Controls, Tokens, WorstCase};
use crate::counted::{CountedPairs, Counts};
use crate::drafts::{Direct, PlannedDrafts, Strategy, describe, plan_drafts};
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
    /// Who is asking (API key).
    pub caller: Caller,
    /// Keep the session on its previous model when possible.
    pub session_affinity: bool,
    /// The caller asked for this model by name: it is chosen when the request's constraints
    /// allow it (no exploration, no session affinity); the rest of the ranking stays as the
    /// fallback order.
    pub pinned: Option<String>,
    /// Only these models can be called by the front door asking (the gateway: models with a
    /// provider); the others count as unavailable. `None`: every catalog model.
    pub reachable: Option<Arc<HashSet<String>>>,
    /// Answer directly, or verify cheap drafts first.
    pub strategy: Strategy,
    /// What the key's budget holds for the request.
    pub charge: Charge,
    /// The front door may call the model before the prompt is scored (a model named with no
    /// fallback, no trace asked for): the engine then decides without the encoder when nothing
    /// in the decision needs predictions ([`RoutingEngine::can_pass_through`]), and the
    /// features and predictions for the log are made afterwards.
    pub pass_through: bool,
}

/// What a request holds against its key's budget while it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Charge {
    /// The predicted cost: the caller calls the model and reports what it cost (gRPC).
    #[default]
    Predicted,
    /// The worst case the request allows, for a key with limits: this process calls the
    /// models itself (the gateway), so a budget is a cap no caller's estimate can lower.
    WorstCase {
        /// The request's `max_tokens` (`None`: all the room each model's context leaves).
        max_output_tokens: Option<u32>,
        /// The most input tokens a provider can count for it: its body's bytes (a token
        /// covers at least one byte), since the encoder's count is only an estimate.
        max_input_tokens: u32,
    },
}

impl Charge {
    /// The answer's limit (`max_tokens`) of a request the gateway calls for.
    pub fn max_output_tokens(self) -> Option<u32> {
        match self {
            Charge::Predicted => None,
            Charge::WorstCase {
                max_output_tokens, ..
            } => max_output_tokens,
        }
    }

    /// The tokens a worst case reads, for a request the encoder counts as `input_tokens`
    /// (`None`: a predicted charge holds no worst case).
    pub fn tokens(self, input_tokens: u32) -> Option<Tokens> {
        match self {
            Charge::Predicted => None,
            Charge::WorstCase {
                max_output_tokens,
                max_input_tokens,
            } => Some(Tokens {
                input: input_tokens,
                max_input: max_input_tokens.max(input_tokens),
                max_output: max_output_tokens,
            }),
        }
    }
}

impl RoutingRequest {
    /// An anonymous request outside any session (the CLI's `triage route`, tests).
    pub fn anonymous(conversation: Conversation, preferences: Preferences) -> Self {
        Self {
            conversation,
            preferences,
            session_id: String::new(),
            metadata: BTreeMap::new(),
            caller: Caller::default(),
            session_affinity: false,
            pinned: None,
            reachable: None,
            strategy: Strategy::Route,
            charge: Charge::Predicted,
            pass_through: false,
        }
    }
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
    /// How like the policy's training prompts this one is (`None`: the policy cannot tell).
    pub familiarity: Option<f64>,
    /// How far the policy trusted its prompt-specific predictions here (0..1).
    pub trust: f64,
    /// The policy's quality predictions before online corrections, per scored model.
    pub base_quality: Vec<(String, f64)>,
    /// Whether session affinity kept the session's previous model.
    pub sticky: bool,
    /// Whether the embedding came from the exact-repeat cache.
    pub cache: CacheUse,
    /// Spend alerts this request's charge set off.
    pub fired_alerts: Vec<FiredAlert>,
    /// For a verify request: its drafts, or why it routes directly (`None`: not asked to
    /// verify).
    pub drafts: Option<Result<PlannedDrafts, Direct>>,
    /// The worst case held for a [`Charge::WorstCase`] request on a key with limits.
    pub held: Option<WorstCase>,
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
    controls: Arc<Controls>,
    tokens: Option<Arc<TokenCounter>>,
    counted: Arc<CountedPairs>,
    cache: Option<Arc<EmbeddingCache>>,
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
                max_queue_wait: (settings.encoder.max_queue_wait_ms > 0)
                    .then(|| std::time::Duration::from_millis(settings.encoder.max_queue_wait_ms)),
            },
            |_| OnnxEmbedder::load(&options),
        )?;
        let path = base.join(&settings.policy.path);
        let policy = Policy::load(&path)?;
        let mut engine = Self::new(catalog, pool, policy, settings)?;
        engine.policy_path = Some(path);
        engine.tokens = Some(Arc::new(TokenCounter::load(&options.tokenizer)?));
        Ok(engine)
    }

    /// Assembles an engine, checking that encoder and policy fit together.
    pub fn new(
        catalog: Catalog,
        encoder: EncoderPool,
        policy: Policy,
        settings: &Settings,
    ) -> Result<Self, StartupError> {
        check_policy(&catalog, encoder.dim(), &policy)?;
        let exploration: ExplorationSettings = settings.exploration.clone();
        Ok(Self {
            catalog: Arc::new(catalog),
            encoder,
            policy: Arc::new(ArcSwap::from_pointee(policy)),
            policy_path: None,
            learner: Arc::new(OnlineLearner::new(exploration)),
            recent: Arc::new(RecentPredictions::new(RECENT_DECISIONS)),
            controls: Arc::new(Controls::new(settings)),
            tokens: None,
            counted: Arc::new(CountedPairs::new(RECENT_DECISIONS)),
            cache: EmbeddingCache::new(settings.encoder.cache_entries).map(Arc::new),
        })
    }

    /// Tokens in `text` by the encoder's tokenizer (one per four bytes without one).
    pub fn count_tokens(&self, text: &str) -> u32 {
        match &self.tokens {
            Some(t) => t.count(text),
            None => triage_encoder::approx_tokens(text.len()),
        }
    }

    /// Health, budgets, alerts and sessions.
    pub fn controls(&self) -> &Controls {
        &self.controls
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

    /// Learns from a stored feedback report: quality correction, breaker, real cost. Returns
    /// spend alerts the real cost set off.
    pub fn observe_feedback(&self, report: &FeedbackRecord) -> Vec<FiredAlert> {
        let counts = self.learn(report);
        self.controls
            .feedback(report, counts.outcome, chrono::Utc::now())
    }

    /// Online learning from one report, each (request, model) counted once; returns what the
    /// report counted for.
    fn learn(&self, report: &FeedbackRecord) -> Counts {
        let counts = self
            .counted
            .mark(&report.request_id, &report.model, report.quality.is_some());
        if report.error == triage_log::ErrorKind::None {
            let predicted = self.recent.get(&report.request_id, &report.model);
            let score = report.quality.filter(|_| counts.score);
            match counts.outcome {
                true => self.learner.observe(&report.model, predicted, score),
                false => self.learner.observe_score(&report.model, predicted, score),
            }
        }
        counts
    }

    /// Replays one logged record (at start-up, oldest first) into the online learner, so that
    /// feedback counts and the serving policy's corrections survive a restart. Decisions made
    /// under another policy version only count their feedback: their corrections were folded
    /// into (or reset by) the policy now serving.
    pub fn replay_learning(&self, record: &LogRecord) {
        match record {
            LogRecord::Decision(d) => {
                if d.policy_version != self.policy.load().version() {
                    return;
                }
                let base: Vec<(String, f64)> = d
                    .candidates
                    .iter()
                    .filter_map(|c| Some((c.model.clone(), c.base_quality?)))
                    .collect();
                if !base.is_empty() {
                    self.recent.insert(&d.request_id, &base);
                }
            }
            LogRecord::Feedback(f) => {
                self.learn(f);
            }
            // Verdicts teach the acceptor in offline retraining, not the online learner.
            LogRecord::Verification(_) => {}
        }
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
        let scoring = self.score(request).await?;
        self.decide_and_charge(request_id, request, scoring, started)
    }

    /// Whether `request` can be decided before its prompt is scored: its front door allows it
    /// ([`RoutingRequest::pass_through`]), it names the only model it allows, and nothing in
    /// the decision compares predictions (a cost or latency limit without the answer's length
    /// given, or a key whose budget caps predicted costs).
    pub fn can_pass_through(&self, request: &RoutingRequest) -> bool {
        let Some(model) = &request.pinned else {
            return false;
        };
        let prefs = &request.preferences;
        let predicted_limits = prefs.expected_output_tokens.is_none()
            && (prefs.max_cost_usd.is_some() || prefs.max_latency_ms.is_some());
        let capped_by_prediction = request.charge == Charge::Predicted
            && request.caller.key.as_ref().is_some_and(|k| k.has_limits());
        request.pass_through
            && request.strategy == Strategy::Route
            && prefs.allowed_models.len() == 1
            && prefs.allowed_models[0] == *model
            && !predicted_limits
            && !capped_by_prediction
    }

    /// Decides a request that [`can pass through`](Self::can_pass_through) without the
    /// encoder: permissions, capabilities, the context window, health and budgets are checked
    /// and charged as for any request, but no prediction is made (the candidates' predicted
    /// quality reads 0 or next to it, their cost counts the input alone). [`Self::describe`]
    /// fills the predictions in afterwards, off the request path.
    pub fn pass_through(
        &self,
        request_id: &str,
        request: &RoutingRequest,
    ) -> Result<RouteOutcome, RouteError> {
        let started = Instant::now();
        let input = EncoderInput::from_conversation(&request.conversation);
        let text_tokens = self
            .count_tokens(&input.primary)
            .saturating_add(self.count_tokens(&input.context));
        let policy = self.policy.load_full();
        // Every model the policy scores, and those resting on a prior, as scoring would cover
        // them; nothing is predicted (a prior on nothing is nothing).
        let mut predictions: HashMap<&str, Prediction> = policy
            .model_names()
            .map(|m| {
                let unknown = Prediction {
                    quality: 0.0,
                    output_tokens: 0.0,
                };
                (m, unknown)
            })
            .collect();
        apply_priors(&self.catalog, &mut predictions);
        let scoring = Scoring {
            predictions: predictions
                .into_iter()
                .map(|(m, p)| (m.to_owned(), p))
                .collect(),
            policy,
            input_tokens: PromptStats::new(&request.conversation, text_tokens).input_tokens,
            trust: 1.0,
            familiarity: None,
            base_quality: Vec::new(),
            features: Vec::new(),
            cache: CacheUse::Off,
            encoded: started,
        };
        self.decide_and_charge(request_id, request, scoring, started)
    }

    /// A passed-through decision (`passed`) with what it lacked, once the encoder has embedded
    /// the prompt: the features, the policy's predictions for every candidate, familiarity. The
    /// decision stays as made (the caller named its model); the time the encoder took here is
    /// not the request's.
    pub async fn describe(
        &self,
        request_id: &str,
        request: &RoutingRequest,
        passed: &RouteOutcome,
    ) -> Result<RouteOutcome, RouteError> {
        let scoring = self.score(request).await?;
        let mut outcome = passed.clone();
        for c in &mut outcome.decision.candidates {
            let (Some(p), Some(spec)) = (
                scoring.predictions.get(&c.model),
                self.catalog.get(&c.model),
            ) else {
                continue;
            };
            let call = expected_call(spec, Some(p), &request.preferences, scoring.input_tokens);
            c.quality = p.quality;
            c.output_tokens = call.output_tokens;
            c.cost_usd = call.cost_usd;
            c.latency_ms = call.latency_ms;
        }
        outcome.policy_version = scoring.policy.version().to_owned();
        outcome.input_tokens = scoring.input_tokens;
        outcome.features = scoring.features;
        outcome.familiarity = scoring.familiarity;
        outcome.trust = scoring.trust;
        outcome.cache = scoring.cache;
        self.recent.insert(request_id, &scoring.base_quality);
        outcome.base_quality = scoring.base_quality;
        Ok(outcome)
    }

    /// The prompt's embedding, features and (online-corrected) predictions.
    async fn score(&self, request: &RoutingRequest) -> Result<Scoring, RouteError> {
        let input = EncoderInput::from_conversation(&request.conversation);
        let (entry, cache) = self.embed(input).await?;
        let encoded = Instant::now();

        let embedding = &entry.embedding;
        let stats = PromptStats::new(&request.conversation, embedding.text_tokens);
        let x = features(&stats, &embedding.vector);
        let policy = self.policy.load_full();
        let scored = match entry.scored(policy.version(), &x) {
            Some(scored) => scored,
            None => {
                let scores = policy.score(&x)?;
                let owned = scores
                    .predictions
                    .into_iter()
                    .map(|(m, p)| (m.to_owned(), p))
                    .collect();
                entry.remember(policy.version(), &x, owned, scores.familiarity)
            }
        };
        let familiarity = scored.familiarity;
        let trust = policy
            .familiarity()
            .zip(familiarity)
            .map_or(1.0, |(curve, f)| curve.trust(f));
        let mut predictions: HashMap<&str, Prediction> = scored
            .predictions
            .iter()
            .map(|(m, p)| (m.as_str(), *p))
            .collect();
        apply_priors(&self.catalog, &mut predictions);
        let base_quality: Vec<(String, f64)> = predictions
            .iter()
            .map(|(m, p)| ((*m).to_owned(), p.quality))
            .collect();
        self.learner.correct(&mut predictions);
        let predictions = predictions
            .into_iter()
            .map(|(m, p)| (m.to_owned(), p))
            .collect();
        Ok(Scoring {
            predictions,
            input_tokens: stats.input_tokens,
            policy,
            trust,
            familiarity,
            base_quality,
            features: x,
            cache,
            encoded,
        })
    }

    /// Decides on `scoring`'s predictions under the key's current budget and charges the
    /// choice.
    fn decide_and_charge(
        &self,
        request_id: &str,
        request: &RoutingRequest,
        scoring: Scoring,
        started: Instant,
    ) -> Result<RouteOutcome, RouteError> {
        let Reserved {
            chosen:
                Chosen {
                    decision,
                    draw,
                    sticky,
                },
            drafts,
            held,
            fired_alerts,
        } = self.reserve(request_id, request, &scoring)?;
        let policy = &scoring.policy;
        let mut decision = decision;
        if let Some(drafts) = &drafts {
            let said = describe(drafts, &decision.chosen().model);
            decision.explanation = format!("{}; {said}", decision.explanation);
        }
        let finished = Instant::now();
        if !scoring.base_quality.is_empty() {
            self.recent.insert(request_id, &scoring.base_quality);
        }
        Ok(RouteOutcome {
            decision,
            policy_version: policy.version().to_owned(),
            input_tokens: scoring.input_tokens,
            encoder_us: micros(scoring.encoded - started),
            policy_us: micros(finished - scoring.encoded),
            features: scoring.features,
            propensity: draw.propensity,
            explored: draw.explored,
            familiarity: scoring.familiarity,
            trust: scoring.trust,
            base_quality: scoring.base_quality,
            sticky,
            cache: scoring.cache,
            fired_alerts,
            drafts,
            held,
        })
    }

    /// A decision on `scoring`'s predictions with its cost reserved against the key's budget.
    /// Deciding reads the key's remaining budget; charging it reserves the chosen model's
    /// predicted cost atomically. A concurrent request may spend the remainder in between: then
    /// the reservation fails and the request is decided again against what is left.
    fn reserve(
        &self,
        request_id: &str,
        request: &RoutingRequest,
        scoring: &Scoring,
    ) -> Result<Reserved, RouteError> {
        let predictions: HashMap<&str, Prediction> = scoring
            .predictions
            .iter()
            .map(|(m, p)| (m.as_str(), *p))
            .collect();
        let policy = &scoring.policy;
        let now_utc = chrono::Utc::now();
        for _ in 0..MAX_RESERVATION_TRIES {
            let chosen = self.choose(
                request,
                &predictions,
                policy,
                Prompt {
                    input_tokens: scoring.input_tokens,
                    trust: scoring.trust,
                },
                now_utc,
            )?;
            let drafts = (request.strategy == Strategy::Verify)
                .then(|| plan_drafts(policy, &chosen.decision));
            let held = self.worst_case(
                request,
                &chosen.decision,
                &drafts,
                scoring.input_tokens,
                now_utc,
            )?;
            let picked = chosen.decision.chosen();
            // A verify request reserves what its drafts are predicted to cost as well.
            let drafts_cost = match &drafts {
                Some(Ok(planned)) => planned.predicted_cost_usd,
                Some(Err(_)) | None => 0.0,
            };
            let hold = held
                .as_ref()
                .map_or(picked.cost_usd + drafts_cost, WorstCase::total_usd);
            if let Some(fired_alerts) = self.controls.routed(
                request_id,
                &request.session_id,
                &request.caller,
                &picked.model,
                hold,
                now_utc,
            ) {
                return Ok(Reserved {
                    chosen,
                    drafts,
                    held,
                    fired_alerts,
                });
            }
        }
        Err(Controls::raced_budget(&request.caller))
    }

    /// The worst case a [`Charge::WorstCase`] request's planned calls may cost (the chosen
    /// model and any drafts), when its key has limits.
    fn worst_case(
        &self,
        request: &RoutingRequest,
        decision: &Decision,
        drafts: &Option<Result<PlannedDrafts, Direct>>,
        input_tokens: u32,
        now_utc: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<WorstCase>, RouteError> {
        let Some(tokens) = request.charge.tokens(input_tokens) else {
            return Ok(None);
        };
        // Most keys have no limits: nothing to hold, nothing to gather.
        if !request.caller.key.as_ref().is_some_and(|k| k.has_limits()) {
            return Ok(None);
        }
        let mut calls = vec![decision.chosen().model.as_str()];
        if let Some(Ok(planned)) = drafts {
            for draft in &planned.drafts {
                if !calls.contains(&draft.as_str()) {
                    calls.push(draft);
                }
            }
        }
        let specs: Vec<&ModelSpec> = calls.iter().filter_map(|m| self.catalog.get(m)).collect();
        self.controls
            .worst_case(&request.caller, &specs, tokens, now_utc)
    }

    /// One decision for `request` under its key's current budget: constraints, availability,
    /// pinning, session affinity and exploration, before anything is charged.
    fn choose(
        &self,
        request: &RoutingRequest,
        predictions: &HashMap<&str, Prediction>,
        policy: &Policy,
        prompt: Prompt,
        now_utc: chrono::DateTime<chrono::Utc>,
    ) -> Result<Chosen, RouteError> {
        let Prompt {
            input_tokens,
            trust,
        } = prompt;
        let mut preferences = request.preferences.clone();
        let cap = self
            .controls
            .cap_budget(&request.caller, &mut preferences, now_utc)?;
        // The context window must hold the conversation and the answer the caller allows.
        if let Some(room) = request.charge.max_output_tokens() {
            let needed = input_tokens.saturating_add(room);
            preferences.min_context_tokens =
                Some(preferences.min_context_tokens.unwrap_or(0).max(needed));
        }
        let caller = &request.caller;
        let not_permitted = |m: &str| (!caller.may_use(m)).then(|| caller.name().to_owned());
        let now = Instant::now();
        let down = |m: &str| match &request.reachable {
            Some(r) if !r.contains(m) => Some(UNREACHABLE.to_owned()),
            _ => self.controls.health.check(m, now).err(),
        };
        let decided = decide_with(
            &self.catalog,
            predictions,
            policy.decision(),
            &preferences,
            input_tokens,
            Availability {
                not_permitted: &not_permitted,
                down: &down,
            },
        );
        let mut decision = match decided {
            Ok(d) => d,
            Err(e) => {
                // A request that allows one model hears why that model, not every other.
                let only = match preferences.allowed_models.as_slice() {
                    [model] => Some(model.as_str()),
                    _ => None,
                };
                return Err(refusal(e, cap, only));
            }
        };
        if let Some(model) = &request.pinned {
            pin(&mut decision, model)?;
        }
        let sticky = request.pinned.is_none()
            && request.session_affinity
            && self.controls.stick(&request.session_id, &mut decision);
        let draw = if sticky || request.pinned.is_some() {
            triage_policy::Draw {
                propensity: 1.0,
                explored: false,
            }
        } else {
            let (u, v) = self.learner.draw();
            self.learner.explore(&mut decision, u, v, trust)
        };
        Ok(Chosen {
            decision,
            draw,
            sticky,
        })
    }

    /// The input's embedding (and last predictions), from the exact-repeat cache when it holds it.
    async fn embed(&self, input: EncoderInput) -> Result<(Arc<CachedInput>, CacheUse), RouteError> {
        let fresh = |e: Embedding| Arc::new(CachedInput::new(e));
        let Some(cache) = &self.cache else {
            return Ok((fresh(self.encoder.embed(input).await?), CacheUse::Off));
        };
        let key = EmbeddingCache::key(&input);
        if let Some(hit) = cache.get(&key) {
            return Ok((hit, CacheUse::Hit));
        }
        let embedding = fresh(self.encoder.embed(input).await?);
        let evicted = cache.insert(&key, Arc::clone(&embedding));
        Ok((embedding, CacheUse::Miss { evicted }))
    }
}

/// A prompt's predictions and what produced them, before anything is decided or charged.
struct Scoring {
    /// Online-corrected predictions per scored model (priors included).
    predictions: HashMap<String, Prediction>,
    /// The policy that made them.
    policy: Arc<Policy>,
    input_tokens: u32,
    trust: f64,
    familiarity: Option<f64>,
    /// Predicted quality before online corrections.
    base_quality: Vec<(String, f64)>,
    features: Vec<f32>,
    cache: CacheUse,
    /// When the embedding was ready.
    encoded: Instant,
}

/// What the decision needs to know of the prompt besides its predictions.
#[derive(Clone, Copy)]
struct Prompt {
    /// Estimated input tokens.
    input_tokens: u32,
    /// How far the policy trusted its prompt-specific predictions (exploration rises as it falls).
    trust: f64,
}

/// A decision whose cost is reserved, with its drafts and the worst case held.
struct Reserved {
    chosen: Chosen,
    drafts: Option<Result<PlannedDrafts, Direct>>,
    held: Option<WorstCase>,
    fired_alerts: Vec<FiredAlert>,
}

/// A decision before it is charged.
struct Chosen {
    decision: Decision,
    draw: triage_policy::Draw,
    sticky: bool,
}

/// Decisions tried for one request when concurrent requests keep spending its key's budget
/// first.
const MAX_RESERVATION_TRIES: usize = 3;

/// Why no model could be chosen: every allowed model down, the key's budget, or the request's
/// own constraints (those that excluded `only`, when it was the one model allowed).
fn refusal(
    e: triage_policy::DecisionError,
    cap: Option<BudgetCap>,
    only: Option<&str>,
) -> RouteError {
    let unavailable: Vec<String> = e
        .exclusions
        .iter()
        .filter_map(|(m, x)| match x {
            Exclusion::Unavailable { reason } => Some(format!("{m} ({reason})")),
            _ => None,
        })
        .collect();
    let over_budget = e
        .exclusions
        .iter()
        .any(|(_, x)| matches!(x, Exclusion::OverBudget { .. }));
    match (cap, unavailable.is_empty()) {
        (_, false) => RouteError::AllUnavailable(format!(
            "every model the request allows is down: {}; retry later or allow other models",
            unavailable.join("; ")
        )),
        (Some(cap), true) if over_budget => Controls::budget_refusal(cap),
        _ => match only.and_then(|m| e.exclusions.iter().find(|(x, _)| x == m)) {
            Some((model, why)) => RouteError::ModelExcluded {
                model: model.clone(),
                reason: why.to_string(),
            },
            None => RouteError::NoEligibleModel(e),
        },
    }
}

/// Why a model the front door cannot call is left out.
const UNREACHABLE: &str = "no [[providers]] entry serves it, so the gateway cannot call it";

/// Moves `model` to the head of the ranking when it is eligible; otherwise says why it cannot
/// serve the request.
fn pin(decision: &mut Decision, model: &str) -> Result<(), RouteError> {
    let Some(i) = decision.candidates.iter().position(|c| c.model == model) else {
        return Err(RouteError::unknown_model(model));
    };
    if let Some(why) = &decision.candidates[i].exclusion {
        return Err(RouteError::ModelExcluded {
            model: model.to_owned(),
            reason: why.to_string(),
        });
    }
    let chosen = decision.candidates.remove(i);
    decision.candidates.insert(0, chosen);
    decision.explanation = format!("{model} was asked for by name");
    Ok(())
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
