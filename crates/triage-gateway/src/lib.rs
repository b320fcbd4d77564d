//! The OpenAI-compatible HTTP front door: applications call Triage *as if it were a model*.
//!
//! `POST /v1/chat/completions` with `model: "triage"` (or `triage-quality`, `triage-cost`,
//! `triage-verify`, or a catalog model by name) is routed by the same engine as gRPC `Route`, then answered by the
//! chosen model's provider. When that model is rate-limited, down or slow to start, the next
//! model of the ranking answers instead, up to `gateway.max_attempts`; the response's `model`
//! and the `x-triage-*` headers say who answered. Each upstream call records its own feedback
//! (tokens, cost, latency, errors) in the durable log, so breakers, budgets, online learning
//! and retraining see gateway traffic exactly as they see gRPC feedback.
//!
//! Layout, a thin adapter over `triage_engine` like `triage-server` (text-embeddings-inference's
//! `router/http` beside `router/grpc`):
//! - `wire`: reads the request body, keeping unknown fields for the upstream;
//! - `ingress`: the Messages and Responses doors, translations around the chat path;
//! - `chat`: the handler and the attempt loop; `call`: one upstream call and how it ended;
//!   `relay`: streaming to the client as events arrive; `record`: the per-attempt feedback;
//! - `verify`: `triage-verify`, cheap drafts first and the acceptor's verdict;
//! - `trace`: the routing trace a permitted caller may ask for;
//! - `judge` / `rubric`: the LLM judge and shadow answers, off the request path;
//! - `collect`: model answers and verdicts for `triage collect`, outside any server;
//! - `holds`: what each call holds of a key's budget (the worst case, not a prediction);
//! - `anthropic` / `openai`: the two upstream dialects; `upstreams`: providers and clients;
//! - `params`: what each provider accepts of a reasoning model's request, and of others';
//! - `error`: the one mapping of errors to HTTP statuses and OpenAI error bodies.

mod anthropic;
mod call;
mod chat;
pub mod collect;
mod error;
mod handlers;
mod holds;
mod ingress;
mod judge;
mod openai;
mod params;
#[cfg(test)]
mod properties;
mod record;
mod relay;
mod rubric;
mod trace;
mod upstreams;
mod verify;
mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use triage_core::InvalidRequest;
use triage_core::Settings;
use triage_core::config::GatewaySettings;
use triage_engine::Service;
use triage_engine::listener::{HttpLimits, serve_http};
use triage_engine::metrics::ErrorLabels;
use triage_guard::{AccessError, Caller};

pub use error::{AttemptSummary, GatewayError};
pub use upstreams::ProviderError;
pub use wire::VIRTUAL_MODELS;

/// What every handler shares.
#[derive(Clone)]
pub struct Gateway {
    service: Service,
    upstreams: Arc<upstreams::Upstreams>,
    settings: Arc<GatewaySettings>,
    aliases: Arc<wire::Aliases>,
    /// The LLM judge, when `[judge]` turns it on.
    judge: Option<judge::Judge>,
    /// Every provider is a stand-in (`triage serve --demo`): every response says so.
    demo: bool,
}

/// Azure's name for its model router: callers written for it work unchanged.
pub const MODEL_ROUTER_ALIAS: &str = "model-router";

impl Gateway {
    /// The gateway over `service`, calling the providers `settings` configures.
    pub fn new(service: Service, settings: &Settings) -> Result<Self, ProviderError> {
        let aliases = aliases(settings)?;
        let upstreams = Arc::new(upstreams::Upstreams::from_settings(settings)?);
        let judge = judge::Judge::new(&service, settings, &upstreams)?;
        Ok(Self {
            service,
            upstreams,
            settings: Arc::new(settings.gateway.clone()),
            aliases: Arc::new(aliases),
            judge,
            demo: false,
        })
    }

    /// Marks every response as a demo's (`x-triage-demo: true`, and `demo` in `/readyz`):
    /// its providers are stand-ins, though its routing and records are real.
    pub fn demo(mut self) -> Self {
        self.demo = true;
        self
    }

    /// The axum router with every endpoint. Chat completions answer at OpenAI's path and at
    /// the ones Azure clients call: `/openai/v1/…`, the server root (Azure AI Inference), and
    /// `/openai/deployments/{deployment}/…` (any `api-version`), where the deployment is the
    /// model (a name or an alias).
    pub fn router(self) -> Router {
        let router = Router::new()
            .route("/v1/chat/completions", post(chat::chat_completions))
            .route("/openai/v1/chat/completions", post(chat::chat_completions))
            .route("/chat/completions", post(chat::chat_completions))
            .route("/models/chat/completions", post(chat::chat_completions))
            .route(
                "/openai/deployments/{deployment}/chat/completions",
                post(chat::deployment_chat_completions),
            )
            .route(
                "/v1/messages",
                post(ingress::handle::<ingress::messages::Messages>),
            )
            .route(
                "/v1/responses",
                post(ingress::handle::<ingress::responses::Responses>),
            )
            .route(
                "/openai/v1/responses",
                post(ingress::handle::<ingress::responses::Responses>),
            )
            .route("/v1/models", get(handlers::models))
            .route("/v1/feedback", post(handlers::feedback))
            .route("/healthz", get(handlers::healthz))
            .route("/readyz", get(handlers::readyz));
        let demo = self.demo;
        let router = router.with_state(self);
        if !demo {
            return router;
        }
        router.layer(axum::middleware::map_response(|mut r: Response| async {
            r.headers_mut().insert(
                "x-triage-demo",
                axum::http::HeaderValue::from_static("true"),
            );
            r
        }))
    }

    /// The caller behind `Authorization: Bearer KEY`, Azure-style `api-key: KEY` or
    /// Anthropic-style `x-api-key: KEY`.
    fn caller(&self, headers: &HeaderMap) -> Result<Caller, GatewayError> {
        let value = |name: &str| -> Result<Option<String>, GatewayError> {
            headers
                .get(name)
                .map(|v| {
                    v.to_str()
                        .map(str::to_owned)
                        .map_err(|_| triage_engine::RouteError::from(AccessError::Malformed).into())
                })
                .transpose()
        };
        let key = match value("api-key")? {
            Some(key) => Some(key),
            None => value("x-api-key")?,
        };
        let authorization = match (value("authorization")?, key) {
            (Some(a), _) => Some(a),
            (None, Some(key)) => Some(format!("Bearer {key}")),
            (None, None) => None,
        };
        Ok(self.service.authenticate(authorization.as_deref())?)
    }

    /// The request body, read only once the caller is known (a bad key costs no body), within
    /// `gateway.max_body_bytes` and `gateway.body_read_ms`.
    async fn body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, GatewayError> {
        let limit = self.settings.max_body_bytes;
        let announced = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > limit as u64) {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        let ms = self.settings.body_read_ms;
        let read = Limited::new(body, limit).collect();
        match tokio::time::timeout(Duration::from_millis(ms), read).await {
            Err(_) => Err(GatewayError::BodyTimeout { ms }),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                Err(GatewayError::BodyTooLarge { limit })
            }
            Ok(Err(e)) => Err(GatewayError::Invalid(InvalidRequest::new(
                "body",
                format!("cannot be read: {e}"),
            ))),
        }
    }

    /// Counts a refused request and answers with its error.
    fn refuse(&self, method: &str, error: GatewayError) -> Response {
        self.service
            .metrics()
            .errors
            .get_or_create(&ErrorLabels {
                method: method.into(),
                code: error.status().as_u16().to_string(),
            })
            .inc();
        error.into_response()
    }
}

/// `gateway.aliases`, with `model-router` → `triage` unless it is mapped otherwise; each maps
/// to a virtual or catalog model, and none hides one.
fn aliases(settings: &Settings) -> Result<wire::Aliases, ProviderError> {
    let mut aliases = settings.gateway.aliases.clone();
    aliases
        .entry(MODEL_ROUTER_ALIAS.to_owned())
        .or_insert_with(|| "triage".to_owned());
    let is_virtual = |name: &str| VIRTUAL_MODELS.iter().any(|(v, ..)| *v == name);
    let in_catalog = |name: &str| settings.models.iter().any(|m| m.name == name);
    for (alias, target) in &aliases {
        let problem = if is_virtual(alias) || in_catalog(alias) {
            Some("the alias is itself a model's name")
        } else if !(is_virtual(target) || in_catalog(target)) {
            Some("it maps to no model")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(ProviderError::Alias {
                alias: alias.clone(),
                target: target.clone(),
                problem,
            });
        }
    }
    Ok(aliases)
}

/// Serves the gateway on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish.
pub async fn serve(
    gateway: Gateway,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let s = &gateway.settings;
    let limits = HttpLimits {
        header_read: Duration::from_millis(s.header_read_ms),
        max_connections: s.max_connections,
        idle: Some(Duration::from_millis(s.idle_ms)),
        lifetime: Some(Duration::from_millis(s.connection_lifetime_ms)),
        // A request in flight may take its whole deadline, streamed answers included.
        drain: Duration::from_millis(s.deadline_ms),
    };
    if let Some(judge) = &gateway.judge {
        judge.start();
    }
    let service = hyper_util::service::TowerToHyperService::new(gateway.router());
    serve_http(listener, service, limits, shutdown).await;
    Ok(())
}

/// A gateway running on a background task (tests, embedding).
pub struct GatewayHandle {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl GatewayHandle {
    /// Stops accepting, lets in-flight requests finish, and waits.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.map_err(std::io::Error::other)?
    }
}

/// Binds `addr` (port 0 picks a free port) and serves `gateway` in the background.
pub async fn start(gateway: Gateway, addr: SocketAddr) -> std::io::Result<GatewayHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(gateway, listener, async {
        let _ = stopped.await;
    }));
    Ok(GatewayHandle {
        addr,
        stop: Some(stop),
        task,
    })
}
