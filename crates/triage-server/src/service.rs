//! The `triage.v1.Router` RPC handlers: authenticate, convert, delegate, convert back, count.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};
use tracing::Instrument;
use triage_core::request::RequestLimits;
use triage_guard::{AccessControl, Caller, FiredAlert, Override};
use triage_log::{EventStore, FeedbackAck, FeedbackRecord};
use triage_policy::Rule;
use triage_proto::v1;
use triage_proto::v1::router_server::Router;

use crate::convert;
use crate::engine::{RouteOutcome, RoutingEngine};
use crate::error::RouteError;
use crate::metrics::{
    AlertLabels, ErrorLabels, FeedbackLabels, Metrics, ModelLabel, RouteLabels, StageLabel,
};

/// The gRPC service.
#[derive(Clone)]
pub struct RouterService {
    engine: RoutingEngine,
    limits: RequestLimits,
    log: Arc<dyn EventStore>,
    store_prompts: bool,
    access: Arc<AccessControl>,
    metrics: Arc<Metrics>,
}

impl RouterService {
    /// A service over `engine`, enforcing `limits` on every request, recording decisions and
    /// feedback in `log` (prompt text too when `store_prompts`), authenticating with `access`
    /// and counting into `metrics`.
    pub fn new(
        engine: RoutingEngine,
        limits: RequestLimits,
        log: Arc<dyn EventStore>,
        store_prompts: bool,
        access: Arc<AccessControl>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            engine,
            limits,
            log,
            store_prompts,
            access,
            metrics,
        }
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, RouteError> {
        let header = match request.metadata().get("authorization") {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .map_err(|_| triage_guard::AccessError::Malformed)?,
            ),
        };
        Ok(self.access.authenticate(header)?)
    }

    fn counted<T>(&self, method: &str, result: Result<T, RouteError>) -> Result<T, Status> {
        result.map_err(|e| {
            let status = Status::from(e);
            self.metrics
                .errors
                .get_or_create(&ErrorLabels {
                    method: method.into(),
                    code: format!("{:?}", status.code()),
                })
                .inc();
            status
        })
    }

    async fn route_inner(
        &self,
        request: Request<v1::RouteRequest>,
    ) -> Result<v1::RouteResponse, RouteError> {
        let started = Instant::now();
        let caller = self.caller(&request)?;
        let request_id = uuid::Uuid::new_v4().to_string();
        let routing = convert::routing_request(
            request.into_inner(),
            self.engine.catalog(),
            self.limits,
            caller,
        )?;
        let outcome = self.engine.route(&request_id, &routing).await?;
        self.log.record_decision(convert::decision_record(
            &request_id,
            &routing,
            &outcome,
            self.store_prompts,
        ))?;
        let total_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.count_route(routing.caller.name(), &outcome, total_us);
        tracing::debug!(
            %request_id,
            model = %outcome.decision.chosen().model,
            key = routing.caller.name(),
            encoder_us = outcome.encoder_us,
            policy_us = outcome.policy_us,
            "routed"
        );
        Ok(convert::route_response(request_id, outcome, total_us))
    }

    fn count_route(&self, key: &str, outcome: &RouteOutcome, total_us: u64) {
        let m = &self.metrics;
        let chosen = outcome.decision.chosen();
        let mode = match outcome.decision.rule {
            Rule::Mode(mode) => mode.to_string(),
            Rule::CostWeight(_) => "lambda".into(),
        };
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
        for (stage, us) in [
            ("encoder", outcome.encoder_us),
            ("policy", outcome.policy_us),
            ("total", total_us),
        ] {
            m.decision_seconds
                .get_or_create(&StageLabel {
                    stage: stage.into(),
                })
                .observe(us as f64 / 1e6);
        }
        if outcome.explored {
            m.explorations.inc();
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

    async fn feedback_inner(
        &self,
        request: Request<v1::FeedbackRequest>,
    ) -> Result<v1::FeedbackResponse, RouteError> {
        self.caller(&request)?;
        let record = convert::feedback_record(request.into_inner())?;
        let ack = self.log.record_feedback(record.clone())?;
        self.log.wait_durable(ack.ticket()).await?;
        let duplicate = matches!(ack, FeedbackAck::Duplicate(_));
        if !duplicate {
            let fired = self.engine.observe_feedback(&record);
            self.count_feedback(&record);
            self.fire(&fired);
        }
        Ok(v1::FeedbackResponse { duplicate })
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
        }
    }

    fn report_health_inner(
        &self,
        request: Request<v1::ReportHealthRequest>,
    ) -> Result<v1::ReportHealthResponse, RouteError> {
        self.caller(&request)?
            .require_admin(self.access.allows_anonymous())?;
        let r = request.into_inner();
        if self.engine.catalog().get(&r.model).is_none() {
            return Err(RouteError::UnknownModel(r.model));
        }
        let manual = match v1::HealthOverride::try_from(r.state) {
            Ok(v1::HealthOverride::Auto) => None,
            Ok(v1::HealthOverride::Up) => Some(Override::Up),
            Ok(v1::HealthOverride::Down) => Some(Override::Down(if r.reason.is_empty() {
                "by an operator".into()
            } else {
                r.reason.clone()
            })),
            Err(_) => {
                return Err(RouteError::Invalid(triage_core::InvalidRequest::new(
                    "state",
                    "use HEALTH_OVERRIDE_AUTO, HEALTH_OVERRIDE_DOWN or HEALTH_OVERRIDE_UP",
                )));
            }
        };
        tracing::info!(model = %r.model, state = r.state, reason = %r.reason, "health override");
        let health = &self.engine.controls().health;
        health.set_override(&r.model, manual);
        Ok(v1::ReportHealthResponse {
            health: health.state(&r.model).into(),
        })
    }
}

#[tonic::async_trait]
impl Router for RouterService {
    async fn route(
        &self,
        request: Request<v1::RouteRequest>,
    ) -> Result<Response<v1::RouteResponse>, Status> {
        let result = self
            .route_inner(request)
            .instrument(tracing::info_span!("route"))
            .await;
        self.counted("Route", result).map(Response::new)
    }

    async fn list_models(
        &self,
        request: Request<v1::ListModelsRequest>,
    ) -> Result<Response<v1::ListModelsResponse>, Status> {
        let caller = self.caller(&request);
        self.counted("ListModels", caller)?;
        let policy = self.engine.policy();
        let health = &self.engine.controls().health;
        let models = self
            .engine
            .catalog()
            .models()
            .iter()
            .map(|m| v1::ModelInfo {
                name: m.name.clone(),
                provider: m.provider.clone(),
                input_usd_per_1m: m.input_usd_per_1m,
                output_usd_per_1m: m.output_usd_per_1m,
                context_window: m.context_window,
                capabilities: m
                    .capabilities
                    .iter()
                    .map(|c| convert::capability(*c) as i32)
                    .collect(),
                enabled: m.enabled,
                in_policy: policy.model_names().any(|p| p == m.name),
                health: health.state(&m.name).into(),
            })
            .collect();
        Ok(Response::new(v1::ListModelsResponse {
            models,
            policy_version: policy.version().to_owned(),
        }))
    }

    async fn feedback(
        &self,
        request: Request<v1::FeedbackRequest>,
    ) -> Result<Response<v1::FeedbackResponse>, Status> {
        let result = self
            .feedback_inner(request)
            .instrument(tracing::info_span!("feedback"))
            .await;
        self.counted("Feedback", result).map(Response::new)
    }

    async fn report_health(
        &self,
        request: Request<v1::ReportHealthRequest>,
    ) -> Result<Response<v1::ReportHealthResponse>, Status> {
        let result = self.report_health_inner(request);
        self.counted("ReportHealth", result).map(Response::new)
    }
}
