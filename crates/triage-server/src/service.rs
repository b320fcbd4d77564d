//! The `triage.v1.Router` RPC handlers: authenticate, convert, delegate to the engine's
//! [`Service`], convert back, count errors. No routing, logging or learning happens here.

use tonic::{Request, Response, Status};
use tracing::Instrument;
use triage_engine::metrics::ErrorLabels;
use triage_engine::{RouteError, Service};
use triage_guard::{Caller, Override};
use triage_policy::verify::DraftAnswer;
use triage_proto::v1;
use triage_proto::v1::router_server::Router;

use crate::convert;
use crate::error::status;

/// The gRPC service.
#[derive(Clone)]
pub struct RouterService {
    service: Service,
}

impl RouterService {
    /// The gRPC door over `service`.
    pub fn new(service: Service) -> Self {
        Self { service }
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
        self.service.authenticate(header)
    }

    fn counted<T>(&self, method: &str, result: Result<T, RouteError>) -> Result<T, Status> {
        result.map_err(|e| {
            let status = status(e);
            self.service
                .metrics()
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
        let caller = self.caller(&request)?;
        let routing = convert::routing_request(
            request.into_inner(),
            self.service.engine().catalog(),
            self.service.limits(),
            caller,
        )?;
        let routed = self.service.route(&routing).await?;
        Ok(convert::route_response(
            routed.request_id,
            routed.outcome,
            routed.total_us,
        ))
    }

    async fn feedback_inner(
        &self,
        request: Request<v1::FeedbackRequest>,
    ) -> Result<v1::FeedbackResponse, RouteError> {
        let caller = self.caller(&request)?;
        let record = convert::feedback_record(request.into_inner())?;
        let duplicate = self.service.feedback(&caller, record).await?;
        Ok(v1::FeedbackResponse { duplicate })
    }

    async fn verify_inner(
        &self,
        request: Request<v1::VerifyRequest>,
    ) -> Result<v1::VerifyResponse, RouteError> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let drafts: Vec<DraftAnswer<'_>> = r
            .drafts
            .iter()
            .map(|d| DraftAnswer {
                model: &d.model,
                text: &d.response,
            })
            .collect();
        let verdict = self.service.verify(&caller, &r.request_id, &drafts).await?;
        Ok(convert::verify_response(verdict))
    }

    fn report_health_inner(
        &self,
        request: Request<v1::ReportHealthRequest>,
    ) -> Result<v1::ReportHealthResponse, RouteError> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
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
        let health = self.service.report_health(&caller, &r.model, manual)?;
        Ok(v1::ReportHealthResponse {
            health: health.into(),
        })
    }

    fn list_models_inner(
        &self,
        request: Request<v1::ListModelsRequest>,
    ) -> Result<v1::ListModelsResponse, RouteError> {
        let caller = self.caller(&request)?;
        let models = self
            .service
            .models(&caller)
            .into_iter()
            .map(|view| {
                let m = view.spec;
                v1::ModelInfo {
                    capabilities: m
                        .capabilities
                        .iter()
                        .map(|c| convert::capability(*c) as i32)
                        .collect(),
                    name: m.name,
                    provider: m.provider,
                    input_usd_per_1m: m.input_usd_per_1m,
                    output_usd_per_1m: m.output_usd_per_1m,
                    context_window: m.context_window,
                    enabled: m.enabled,
                    in_policy: view.in_policy,
                    health: view.health.into(),
                }
            })
            .collect();
        Ok(v1::ListModelsResponse {
            models,
            policy_version: self.service.engine().policy().version().to_owned(),
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
        let result = self.list_models_inner(request);
        self.counted("ListModels", result).map(Response::new)
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

    async fn verify(
        &self,
        request: Request<v1::VerifyRequest>,
    ) -> Result<Response<v1::VerifyResponse>, Status> {
        let result = self.verify_inner(request).await;
        self.counted("Verify", result).map(Response::new)
    }

    async fn report_health(
        &self,
        request: Request<v1::ReportHealthRequest>,
    ) -> Result<Response<v1::ReportHealthResponse>, Status> {
        let result = self.report_health_inner(request);
        self.counted("ReportHealth", result).map(Response::new)
    }
}
