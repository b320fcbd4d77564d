//! The `triage.v1.Router` RPC handlers: convert, delegate, convert back.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};
use triage_core::request::RequestLimits;
use triage_log::{EventStore, FeedbackAck};
use triage_proto::v1;
use triage_proto::v1::router_server::Router;

use crate::convert;
use crate::engine::RoutingEngine;
use crate::error::RouteError;

/// The gRPC service.
#[derive(Clone)]
pub struct RouterService {
    engine: RoutingEngine,
    limits: RequestLimits,
    log: Arc<dyn EventStore>,
    store_prompts: bool,
}

impl RouterService {
    /// A service over `engine`, enforcing `limits` on every request and recording decisions and
    /// feedback in `log` (prompt text too when `store_prompts`).
    pub fn new(
        engine: RoutingEngine,
        limits: RequestLimits,
        log: Arc<dyn EventStore>,
        store_prompts: bool,
    ) -> Self {
        Self {
            engine,
            limits,
            log,
            store_prompts,
        }
    }
}

#[tonic::async_trait]
impl Router for RouterService {
    async fn route(
        &self,
        request: Request<v1::RouteRequest>,
    ) -> Result<Response<v1::RouteResponse>, Status> {
        let started = Instant::now();
        let request_id = uuid::Uuid::new_v4().to_string();
        let routing =
            convert::routing_request(request.into_inner(), self.engine.catalog(), self.limits)
                .map_err(RouteError::from)?;
        let outcome = self.engine.route(&request_id, &routing).await?;
        self.log
            .record_decision(convert::decision_record(
                &request_id,
                &routing,
                &outcome,
                self.store_prompts,
            ))
            .map_err(RouteError::from)?;
        let total_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        tracing::debug!(
            %request_id,
            model = %outcome.decision.chosen().model,
            encoder_us = outcome.encoder_us,
            policy_us = outcome.policy_us,
            "routed"
        );
        Ok(Response::new(convert::route_response(
            request_id, outcome, total_us,
        )))
    }

    async fn list_models(
        &self,
        _request: Request<v1::ListModelsRequest>,
    ) -> Result<Response<v1::ListModelsResponse>, Status> {
        let policy = self.engine.policy();
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
        let record = convert::feedback_record(request.into_inner()).map_err(RouteError::from)?;
        let (request_id, model, quality) = (
            record.request_id.clone(),
            record.model.clone(),
            record.quality,
        );
        let ack = self.log.record_feedback(record).map_err(RouteError::from)?;
        self.log
            .wait_durable(ack.ticket())
            .await
            .map_err(RouteError::from)?;
        let duplicate = matches!(ack, FeedbackAck::Duplicate(_));
        if !duplicate {
            self.engine.observe_feedback(&request_id, &model, quality);
        }
        Ok(Response::new(v1::FeedbackResponse { duplicate }))
    }
}
