//! What every front door calls: authenticate, route and log, take feedback, list models, health
//! overrides. The gRPC handlers and the HTTP gateway only translate their wire forms to these
//! calls and the errors back, so both doors log, learn, charge and count alike.

use std::sync::Arc;
use std::time::Instant;

use triage_core::catalog::ModelSpec;
use triage_core::request::RequestLimits;
use triage_encoder::EncodeError;
use triage_guard::{AccessControl, Caller, FiredAlert, Override};
use triage_log::{
    DecisionRecord, EventStore, FeedbackAck, FeedbackRecord, LogError, LoggedCandidate, Reserved,
    SpendReservation, Ticket, VerificationAck, encode_features,
};
use triage_policy::verify::{DraftAnswer, verify};

use crate::cache::CacheUse;
use crate::controls::{Tokens, WorstCase};
use crate::drafts::{plan_record, serving_plan, verification_record};
use crate::engine::{RouteOutcome, RoutingEngine, RoutingRequest};
use crate::error::RouteError;
use crate::metrics::{
    AlertLabels, CacheLabel, FeedbackLabels, Metrics, ModelLabel, RouteLabels, StageLabel,
};
use crate::passes::Passes;

/// Passed-through decisions that may wait for the encoder at once; past it, named requests
/// wait for the encoder like any other (and are shed with them when it is overloaded).
const MAX_PASSES_WAITING: usize = 4096;

/// How long a passed-through decision waits for a busy encoder before it is given up (and
/// counted in `triage_unrecorded_passes_total`).
const PASS_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Longest operator reason for marking a model down.
pub const MAX_HEALTH_REASON_BYTES: usize = 1024;

/// A decision that was made, logged and counted.
#[derive(Clone, Debug)]
pub struct Routed {
    /// The id feedback refers to.
    pub request_id: String,
    /// The decision and its facts.
    pub outcome: RouteOutcome,
    /// Time spent in [`Service::route`], µs.
    pub total_us: u64,
}

/// What the acceptor made of a request's drafts.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// The draft model whose answer to return; `None`: escalate.
    pub accepted: Option<String>,
    /// Where to escalate: the routed model, then its ranked fallbacks (empty when accepted).
    pub escalation: Vec<String>,
    /// The acceptor's probability that the returned draft is good.
    pub probability: f64,
    /// The threshold it was held to.
    pub threshold: f64,
    /// Whether the escalation model was itself a draft: its draft is the answer, with no
    /// further call.
    pub drafted: bool,
    /// Whether this repeats a verdict already given (a retried call with the same drafts).
    pub duplicate: bool,
}

impl Verdict {
    /// `accepted` or `escalated`, as metrics and headers say it.
    pub fn outcome(&self) -> &'static str {
        if self.accepted.is_some() {
            "accepted"
        } else {
            "escalated"
        }
    }
}

/// A catalog model as a caller sees it.
#[derive(Clone, Debug)]
pub struct ModelView {
    /// The catalog entry.
    pub spec: ModelSpec,
    /// Whether the serving policy scores it.
    pub in_policy: bool,
    /// Breaker state: `closed`, `half_open`, `open` or an override.
    pub health: &'static str,
}

/// The engine with its log, keys and metrics: one per process, shared by both doors.
#[derive(Clone)]
pub struct Service {
    engine: RoutingEngine,
    limits: RequestLimits,
    log: Arc<dyn EventStore>,
    store_prompts: bool,
    access: Arc<AccessControl>,
    metrics: Arc<Metrics>,
    max_reported_cost_usd: f64,
    /// What the last retrain inside `serve` did (for `/readyz`).
    last_retrain: Arc<std::sync::Mutex<Option<serde_json::Value>>>,
    /// Passed-through requests whose decision is not in the log yet.
    passes: Arc<Passes>,
}

impl Service {
    /// A service over `engine`, enforcing `limits` on every request, recording decisions and
    /// feedback in `log` (prompt text too when `store_prompts`), authenticating with `access`,
    /// counting into `metrics`, and refusing feedback that reports more than
    /// `max_reported_cost_usd`.
    pub fn new(
        engine: RoutingEngine,
        limits: RequestLimits,
        log: Arc<dyn EventStore>,
        store_prompts: bool,
        access: Arc<AccessControl>,
        metrics: Arc<Metrics>,
        max_reported_cost_usd: f64,
    ) -> Self {
        Self {
            engine,
            limits,
            log,
            store_prompts,
            access,
            metrics,
            max_reported_cost_usd,
            last_retrain: Arc::default(),
            passes: Arc::new(Passes::new(MAX_PASSES_WAITING)),
        }
    }

    /// Keeps the record of a retrain inside `serve` (counts, the gate's evidence, promoted or
    /// not, the version) for `/readyz`.
    pub fn set_last_retrain(&self, record: serde_json::Value) {
        *self
            .last_retrain
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(record);
    }

    /// The record of the last retrain inside `serve`, if there was one.
    pub fn last_retrain(&self) -> Option<serde_json::Value> {
        self.last_retrain
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The routing engine.
    pub fn engine(&self) -> &RoutingEngine {
        &self.engine
    }

    /// Request size limits.
    pub fn limits(&self) -> RequestLimits {
        self.limits
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metrics registry, shared (for the `/metrics` endpoint).
    pub fn metrics_arc(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Why the decision and feedback log cannot take records now, if it cannot.
    pub fn log_failure(&self) -> Option<String> {
        self.log.failure()
    }

    /// Writes what the log still has queued (before the process ends), after the decisions of
    /// passed-through requests still being described (they take the encoder's milliseconds).
    pub async fn close_log(&self) -> Result<(), RouteError> {
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while self.passes.len() > 0 && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(self.log.close().await?)
    }

    /// Decisions and distinct feedback reports the log holds.
    pub fn log_counts(&self) -> (usize, usize) {
        self.log.counts()
    }

    /// The caller behind an `Authorization` header value (`None`: no header).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, RouteError> {
        Ok(self.access.authenticate(authorization)?)
    }

    /// Decides, logs the decision and counts it. A request that can pass through is decided
    /// without the encoder, and its decision is logged once its prompt is described, off the
    /// request path (see [`crate::passes`]).
    pub async fn route(&self, routing: &RoutingRequest) -> Result<Routed, RouteError> {
        // A decision that cannot be logged cannot take feedback: refuse before charging budgets.
        if let Some(why) = self.log.refuses_decisions() {
            return Err(RouteError::Log(LogError::Unavailable(why)));
        }
        let started = Instant::now();
        // UUIDv7: its first bits are the time, so feedback for an id past the log's retention
        // is told "expired" rather than "unknown".
        let request_id = uuid::Uuid::now_v7().to_string();
        let passing = self.engine.can_pass_through(routing) && self.passes.has_room();
        let outcome = if passing {
            self.engine.pass_through(&request_id, routing)?
        } else {
            self.engine.route(&request_id, routing).await?
        };
        let record = decision_record(&request_id, routing, &outcome, self.store_prompts);
        let shared = match self
            .reserve_shared(
                &routing.caller,
                &request_id,
                record.reserved_usd(),
                record.time_ms,
            )
            .await
        {
            Ok(shared) => shared,
            Err(e) => {
                self.engine.controls().release(&request_id);
                return Err(e);
            }
        };
        if passing {
            self.passes.open(&request_id);
            let (service, id, request) = (self.clone(), request_id.clone(), routing.clone());
            let passed = outcome.clone();
            tokio::spawn(async move {
                service
                    .record_passed(&id, &request, &passed, record.time_ms)
                    .await;
            });
        } else if let Err(e) = self.log.record_decision(record) {
            // Not served: no charge stays behind, here or in the budgets replicas share.
            self.engine.controls().release(&request_id);
            if let Some(reservation) = shared
                && let Err(release) = self.log.release_spend(reservation).await
            {
                tracing::warn!(error = %release, %request_id,
                    "a refused request's shared budget reservation could not be taken back");
            }
            return Err(e.into());
        }
        let total_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.count_route(routing.caller.name(), &outcome, total_us, passing);
        tracing::debug!(
            %request_id,
            model = %outcome.decision.chosen().model,
            key = routing.caller.name(),
            encoder_us = outcome.encoder_us,
            policy_us = outcome.policy_us,
            passing,
            "routed"
        );
        Ok(Routed {
            request_id,
            outcome,
            total_us,
        })
    }

    /// Logs a passed-through decision, decided at `time_ms`, once its prompt is described,
    /// then the reports that waited for it. A decision that cannot be described or written is
    /// counted and warned about; its reports still teach budgets and breakers.
    async fn record_passed(
        &self,
        request_id: &str,
        routing: &RoutingRequest,
        passed: &RouteOutcome,
        time_ms: u64,
    ) {
        let written = match self.describe_passed(request_id, routing, passed).await {
            Ok(outcome) => {
                let mut record = decision_record(request_id, routing, &outcome, self.store_prompts);
                record.time_ms = time_ms;
                self.log
                    .record_decision(record)
                    .map(drop)
                    .map_err(RouteError::from)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &written {
            self.metrics.unrecorded_passes.inc();
            tracing::warn!(error = %e, %request_id,
                "a passed-through request's decision could not be logged; its calls are \
                 learned from but not logged");
        }
        self.passes.written(request_id, |record| {
            let learn = match &written {
                Err(_) => true,
                Ok(()) => match self.log.record_attempt(record.clone()) {
                    Ok(stored) => stored,
                    Err(e) => {
                        tracing::warn!(error = %e, %request_id, "a call's record was refused");
                        false
                    }
                },
            };
            if learn {
                self.learn(&record);
            }
        });
    }

    /// The passed-through decision with its prompt's features and predictions. The encoder
    /// may be busy with routed requests: this waits its turn (they have a client waiting)
    /// for up to [`PASS_PATIENCE`].
    async fn describe_passed(
        &self,
        request_id: &str,
        routing: &RoutingRequest,
        passed: &RouteOutcome,
    ) -> Result<RouteOutcome, RouteError> {
        let give_up = Instant::now() + PASS_PATIENCE;
        let mut pause = std::time::Duration::from_millis(10);
        loop {
            match self.engine.describe(request_id, routing, passed).await {
                Err(RouteError::Encode(
                    EncodeError::QueueFull { .. } | EncodeError::Overloaded { .. },
                )) if Instant::now() < give_up => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(1));
                }
                described => return described,
            }
        }
    }

    /// Reserves what the engine's ledger has held for a request in the store's shared budgets
    /// too, when the caller's key has limits and the store keeps budgets across replicas (the
    /// ledger checked it against this replica's view of the key's spend only). A refusal, or a
    /// store that cannot answer, is an error: a key with limits is not served on a guess; the
    /// caller takes back the local hold. Returns the reservation the store charged, if any.
    async fn reserve_shared(
        &self,
        caller: &Caller,
        request_id: &str,
        usd: f64,
        time_ms: u64,
    ) -> Result<Option<SpendReservation>, RouteError> {
        let Some(key) = caller.key.as_ref().filter(|k| k.has_limits()) else {
            return Ok(None);
        };
        let reservation = reservation(key, request_id, usd, time_ms);
        let controls = self.engine.controls();
        match self.log.reserve_spend(reservation.clone()).await? {
            Reserved::Local => Ok(None),
            Reserved::Charged { day_usd, month_usd } => {
                controls.observe_spend(&key.name, day_usd, month_usd);
                Ok(Some(reservation))
            }
            Reserved::Refused { day_usd, month_usd } => {
                controls.observe_spend(&key.name, day_usd, month_usd);
                Err(crate::controls::Controls::shared_refusal(
                    key, day_usd, month_usd,
                ))
            }
        }
    }

    /// Holds the worst case of one more call of `request_id` (a fallback to `model` the
    /// gateway is about to make), for a key with limits, here and in the shared budgets.
    /// Returns the hold (for the call's record to settle) and the answer length the budget
    /// covers when it is less than the request allows; `None`: nothing to hold.
    pub async fn hold_call(
        &self,
        caller: &Caller,
        request_id: &str,
        model: &str,
        tokens: Tokens,
    ) -> Result<Option<WorstCase>, RouteError> {
        let Some(spec) = self.engine.catalog().get(model) else {
            return Ok(None);
        };
        let controls = self.engine.controls();
        let held = controls.worst_case(caller, &[spec], tokens, chrono::Utc::now())?;
        let Some(held) = held else {
            return Ok(None);
        };
        let usd = held.total_usd();
        if !controls.hold_more(caller, request_id, usd) {
            return Err(crate::controls::Controls::raced_budget(caller));
        }
        let time_ms = crate::feedback::now_ms();
        if let Err(e) = self.reserve_shared(caller, request_id, usd, time_ms).await {
            controls.release_hold(request_id, usd);
            return Err(e);
        }
        Ok(Some(held))
    }

    /// Gives back `usd` held for calls of `request_id` that were never made, here and in the
    /// shared budgets.
    pub async fn release_hold(&self, caller: &Caller, request_id: &str, usd: f64) {
        self.engine.controls().release_hold(request_id, usd);
        let Some(key) = &caller.key else {
            return;
        };
        let reservation = reservation(key, request_id, usd, crate::feedback::now_ms());
        if let Err(e) = self.log.release_spend(reservation).await {
            tracing::warn!(error = %e, %request_id, "an unused budget hold could not be given back");
        }
    }

    fn count_route(&self, key: &str, outcome: &RouteOutcome, total_us: u64, passed: bool) {
        let m = &self.metrics;
        let chosen = outcome.decision.chosen();
        let mode = outcome.decision.rule.name().to_owned();
        m.routes
            .get_or_create(&RouteLabels {
                model: chosen.model.clone(),
                mode,
                key: key.into(),
            })
            .inc();
        m.predicted_cost
            .get_or_create(&ModelLabel {
                model: chosen.model.clone(),
            })
            .inc_by(chosen.cost_usd);
        if passed {
            m.passed_through.inc();
        }
        for (stage, us) in [
            // A passed-through request did not wait for the encoder.
            ("encoder", (!passed).then_some(outcome.encoder_us)),
            ("policy", Some(outcome.policy_us)),
            ("total", Some(total_us)),
        ] {
            let Some(us) = us else { continue };
            m.decision_seconds
                .get_or_create(&StageLabel {
                    stage: stage.into(),
                })
                .observe(us as f64 / 1e6);
        }
        if outcome.explored {
            m.explorations.inc();
        }
        if let Some(f) = outcome.familiarity {
            m.familiarity.observe(f);
            m.trust.observe(outcome.trust);
        }
        let lookup = |result: &str| CacheLabel {
            result: result.into(),
        };
        match outcome.cache {
            CacheUse::Hit => {
                m.encoder_cache.get_or_create(&lookup("hit")).inc();
            }
            CacheUse::Miss { evicted } => {
                m.encoder_cache.get_or_create(&lookup("miss")).inc();
                if evicted {
                    m.encoder_cache_evictions.inc();
                }
            }
            CacheUse::Off => {}
        }
        self.fire(&outcome.fired_alerts);
    }

    /// Cost alerts go to the log (target `triage::alert`) and to `triage_cost_alerts_total`.
    fn fire(&self, alerts: &[FiredAlert]) {
        for a in alerts {
            tracing::warn!(
                target: "triage::alert",
                scope = %a.spec.scope,
                period = a.spec.period.as_str(),
                threshold_usd = a.spec.threshold_usd,
                spent_usd = a.spent_usd,
                "cost alert: spend crossed its threshold"
            );
            self.metrics
                .cost_alerts
                .get_or_create(&AlertLabels {
                    scope: a.spec.scope.clone(),
                    period: a.spec.period.as_str().into(),
                })
                .inc();
        }
    }

    /// Stores a feedback report durably, then learns from it (breakers, budgets, online
    /// corrections). Returns whether it was a retry of a report already stored, which is
    /// acknowledged without being counted again.
    /// Only `caller`, the key that routed the request, may report on it.
    pub async fn feedback(
        &self,
        caller: &Caller,
        mut record: FeedbackRecord,
    ) -> Result<bool, RouteError> {
        record.api_key = caller.key_name().map(str::to_owned);
        crate::feedback::check(&record, self.max_reported_cost_usd)?;
        crate::feedback::check_caller_id(&record)?;
        // A report on a passed-through request comes after its decision.
        self.passes.wait(&record.request_id).await;
        // Storing and learning happen on their own task, whatever the caller does: a client
        // that gives up (its deadline, a dropped connection) before then would otherwise leave
        // a stored report that breakers, budgets and the learner never see, since its retry is
        // a duplicate. The caller hears the first outcome.
        let (told, outcome) = tokio::sync::oneshot::channel();
        let service = self.clone();
        tokio::spawn(async move { service.store_and_learn(record, told).await });
        outcome
            .await
            .map_err(|_| RouteError::Log(LogError::WriterStopped("the log is closed".into())))?
    }

    /// Stores `record`, telling `told` whether it was a duplicate (or why it was refused), and
    /// learns from it once durable.
    async fn store_and_learn(
        &self,
        record: FeedbackRecord,
        told: tokio::sync::oneshot::Sender<Result<bool, RouteError>>,
    ) {
        let ticket = match self.log.record_feedback(record.clone()).await {
            Ok(FeedbackAck::Stored(ticket)) => ticket,
            Ok(FeedbackAck::Duplicate(ticket)) => {
                let waited = self.log.wait_durable(ticket).await;
                let _ = told.send(waited.map(|()| true).map_err(RouteError::Log));
                return;
            }
            Err(e) => {
                let _ = told.send(Err(RouteError::Log(e)));
                return;
            }
        };
        self.apply_when_durable(ticket, record, told).await;
    }

    /// Learns from `record` once it is durable, telling `told` how the first wait ended. While
    /// the log cannot write, the caller hears `UNAVAILABLE` and this keeps waiting: the report
    /// is queued, and is applied when the log writes it.
    async fn apply_when_durable(
        &self,
        ticket: Ticket,
        record: FeedbackRecord,
        told: tokio::sync::oneshot::Sender<Result<bool, RouteError>>,
    ) {
        let mut told = Some(told);
        let mut pause = std::time::Duration::from_millis(50);
        loop {
            let waited = self.log.wait_durable(ticket).await;
            let retry = matches!(waited, Err(LogError::Unavailable(_)));
            if waited.is_ok() {
                self.learn(&record);
            }
            if let Some(told) = told.take() {
                let _ = told.send(waited.map(|()| false).map_err(RouteError::Log));
            }
            if !retry {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(2));
        }
    }

    /// Judges the drafts of a request routed to verify then escalate, and logs the verdict.
    /// Only the key that routed the request may; a retry with the same drafts gets the same
    /// verdict (judging is deterministic) and is not logged twice.
    pub async fn verify(
        &self,
        caller: &Caller,
        request_id: &str,
        drafts: &[DraftAnswer<'_>],
    ) -> Result<Verdict, RouteError> {
        crate::feedback::check_request_id(request_id)?;
        let key = caller.key_name();
        let planned = self.log.planned(request_id, key).await?;
        let policy = self.engine.policy();
        let plan = serving_plan(&policy, &planned).ok_or_else(|| RouteError::PlanRetired {
            request_id: request_id.to_owned(),
            policy_version: planned.policy_version.clone(),
        })?;
        let recorded = &planned.plan;
        let predicted = |model: &str| {
            recorded
                .drafts
                .iter()
                .zip(&recorded.predicted_quality)
                .find(|(m, _)| *m == model)
                .map_or(0.0, |(_, q)| *q)
        };
        let verification = verify(plan, recorded.threshold, predicted, drafts)?;
        let record = verification_record(request_id, recorded, &verification, key);
        let duplicate = match self.log.record_verification(record).await? {
            VerificationAck::Stored(_) => false,
            VerificationAck::Duplicate => true,
        };
        let drafted = verification.accepted.is_none()
            && recorded
                .escalation
                .first()
                .is_some_and(|m| recorded.drafts.contains(m));
        let verdict = Verdict {
            drafted,
            escalation: match verification.accepted {
                Some(_) => Vec::new(),
                None => recorded.escalation.clone(),
            },
            accepted: verification.accepted,
            probability: verification.probability,
            threshold: verification.threshold,
            duplicate,
        };
        self.metrics
            .verifications
            .get_or_create(&crate::metrics::VerifyLabels {
                outcome: verdict.outcome().into(),
            })
            .inc();
        Ok(verdict)
    }

    /// Records what one upstream call by a front door did (the gateway's own feedback): queued
    /// behind its decision in the log without waiting for `fsync` (a later durable report
    /// implies it is durable too, since one writer appends in order), and learned from at once.
    pub fn record_attempt(
        &self,
        caller: &Caller,
        mut record: FeedbackRecord,
    ) -> Result<(), RouteError> {
        record.api_key = caller.key_name().map(str::to_owned);
        crate::feedback::check(&record, self.max_reported_cost_usd)?;
        // Written behind its decision when that is still being described.
        let Some(record) = self.passes.hold(record) else {
            return Ok(());
        };
        if self.log.record_attempt(record.clone())? {
            self.learn(&record);
        }
        Ok(())
    }

    /// What a newly stored report teaches: breakers, budgets, online corrections, metrics and
    /// the alerts its cost sets off.
    fn learn(&self, f: &FeedbackRecord) {
        let fired = self.engine.observe_feedback(f);
        self.count_feedback(f);
        self.fire(&fired);
    }

    fn count_feedback(&self, f: &FeedbackRecord) {
        let m = &self.metrics;
        let model = ModelLabel {
            model: f.model.clone(),
        };
        m.feedback
            .get_or_create(&FeedbackLabels {
                model: f.model.clone(),
                error: f.error.as_str().into(),
            })
            .inc();
        m.reported_cost.get_or_create(&model).inc_by(f.cost_usd);
        if let Some(q) = f.quality {
            m.feedback_quality.get_or_create(&model).observe(q);
            m.scored_feedback.inc();
        }
    }

    /// Sets or clears an operator's health override; admin keys only. Returns the new state.
    pub fn report_health(
        &self,
        caller: &Caller,
        model: &str,
        manual: Option<Override>,
    ) -> Result<&'static str, RouteError> {
        caller.require_admin()?;
        if let Some(Override::Down(reason)) = &manual
            && reason.len() > MAX_HEALTH_REASON_BYTES
        {
            return Err(RouteError::Invalid(triage_core::InvalidRequest::new(
                "reason",
                format!(
                    "is {} bytes; keep it to {MAX_HEALTH_REASON_BYTES} (it is shown in every \
                     Route response that skips the model)",
                    reason.len()
                ),
            )));
        }
        if self.engine.catalog().get(model).is_none() {
            return Err(RouteError::unknown_model(model));
        }
        tracing::info!(%model, ?manual, "health override");
        let health = &self.engine.controls().health;
        health.set_override(model, manual);
        Ok(health.state(model))
    }

    /// The catalog models `caller` may use, with policy coverage and health.
    pub fn models(&self, caller: &Caller) -> Vec<ModelView> {
        let policy = self.engine.policy();
        let health = &self.engine.controls().health;
        self.engine
            .catalog()
            .models()
            .iter()
            .filter(|m| caller.may_use(&m.name))
            .map(|m| ModelView {
                spec: m.clone(),
                in_policy: policy.model_names().any(|p| p == m.name),
                health: health.state(&m.name),
            })
            .collect()
    }
}

/// `usd` of `key`'s budget for `request_id`, at `time_ms`.
fn reservation(
    key: &triage_guard::KeySpec,
    request_id: &str,
    usd: f64,
    time_ms: u64,
) -> SpendReservation {
    SpendReservation {
        api_key: key.name.clone(),
        request_id: request_id.to_owned(),
        usd,
        daily_usd: key.daily_usd,
        monthly_usd: key.monthly_usd,
        time_ms,
    }
}

/// What the log keeps of a decision. The prompt text only when `store_prompt` is set.
fn decision_record(
    request_id: &str,
    request: &RoutingRequest,
    outcome: &RouteOutcome,
    store_prompt: bool,
) -> DecisionRecord {
    let decision = &outcome.decision;
    DecisionRecord {
        request_id: request_id.to_owned(),
        time_ms: crate::feedback::now_ms(),
        policy_version: outcome.policy_version.clone(),
        features: encode_features(&outcome.features),
        input_tokens: outcome.input_tokens,
        knob: decision.rule.name().into(),
        cost_weight: decision.rule.cost_weight(),
        candidates: decision
            .candidates
            .iter()
            .map(|c| LoggedCandidate {
                model: c.model.clone(),
                predicted_quality: c.quality,
                base_quality: outcome
                    .base_quality
                    .iter()
                    .find(|(m, _)| *m == c.model)
                    .map(|(_, q)| *q),
                predicted_cost_usd: c.cost_usd,
                eligible: c.exclusion.is_none(),
            })
            .collect(),
        chosen: decision.chosen().model.clone(),
        propensity: outcome.propensity,
        explored: outcome.explored,
        familiarity: outcome.familiarity,
        session_id: request.session_id.clone(),
        prompt: store_prompt.then(|| request.conversation.transcript()),
        api_key: request.caller.key_name().map(str::to_owned),
        draft_plan: match &outcome.drafts {
            Some(Ok(planned)) => Some(plan_record(planned, decision)),
            Some(Err(_)) | None => None,
        },
        held_usd: outcome.held.as_ref().map(WorstCase::total_usd),
    }
}
