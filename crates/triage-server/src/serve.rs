//! Runs the tonic server: router, health, reflection, limits, shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use triage_core::Settings;
use triage_engine::startup::{self, Background, bind_metrics};
use triage_engine::{ArchiveFormat, RoutingEngine, Service, StartupError};
use triage_proto::v1::router_server::RouterServer;

use crate::service::RouterService;

/// Opens the service (log replay included) and serves gRPC on `listener`, with `/metrics` on
/// `metrics_listener` and the background tasks, until `shutdown` resolves; then drains
/// in-flight calls and flushes the log. The `triage` binary serves the HTTP gateway beside it
/// over the same [`Service`] (see `triage_gateway`).
pub async fn serve(
    engine: RoutingEngine,
    settings: &Settings,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    archive: Option<Arc<dyn ArchiveFormat>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let service = startup::open(engine, settings, archive.clone()).await?;
    let _background = Background::start(&service, settings, metrics_listener, archive);
    serve_grpc(service, settings, listener, shutdown).await
}

/// Serves `triage.v1.Router`, health and reflection over `service` on `listener` until
/// `shutdown` resolves, then gives in-flight calls `server.drain_secs` to finish.
pub async fn serve_grpc(
    service: Service,
    settings: &Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let max = settings.server.max_message_bytes;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RouterServer<RouterService>>().await;
    let health_task = tokio::spawn(follow_log_health(service.clone(), health));
    let router = RouterServer::new(RouterService::new(service))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);

    let transport = |e: tonic_reflection::server::Error| StartupError::Transport(e.to_string());
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(triage_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(transport)?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(triage_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(transport)?;

    let mut builder = limited_server(&settings.server);
    if let Some(tls) = &settings.server.tls {
        let handshake = Duration::from_millis(settings.server.tls_handshake_ms);
        builder = builder
            .tls_config(tls_config(tls)?.timeout(handshake))
            .map_err(|e| StartupError::Transport(format!("TLS configuration rejected: {e}")))?;
    }
    // After the shutdown signal, in-flight calls get `drain_secs` to finish.
    let (signalled, mut drain_started) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = signalled.send(true);
    };
    let drain = Duration::from_secs_f64(settings.server.drain_secs.max(0.0));
    let serving = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(router)
        // TCP_NODELAY: without it small responses wait for the peer's delayed ACK (~40 ms).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(keepalive(&settings.server)),
            shutdown,
        );
    let served = tokio::select! {
        served = serving => served.map_err(|e| StartupError::Transport(e.to_string())),
        () = async {
            let _ = drain_started.wait_for(|s| *s).await;
            tokio::time::sleep(drain).await;
        } => {
            tracing::warn!(seconds = drain.as_secs_f64(), "drain timeout: stopping with calls in flight");
            Ok(())
        }
    };
    // The health task holds the service (and so the log) too: it must be gone before the log
    // can close.
    health_task.abort();
    let _ = health_task.await;
    // The router (and with it the log, once the other door has let go) is dropped by now:
    // queued records are flushed.
    served
}

/// How often gRPC health looks at whether the log can write.
const LOG_HEALTH_INTERVAL: Duration = Duration::from_millis(200);

/// Keeps `grpc.health.v1` in step with the log: `NOT_SERVING` while it cannot write (a full
/// disk), so load balancers send traffic elsewhere, and `SERVING` again once it can.
async fn follow_log_health(service: Service, health: tonic_health::server::HealthReporter) {
    let mut was_failing = false;
    loop {
        let failure = service.log_failure();
        if failure.is_some() != was_failing {
            was_failing = failure.is_some();
            let status = if was_failing {
                tracing::warn!(reason = ?failure, "health: NOT_SERVING while the log cannot write");
                tonic_health::ServingStatus::NotServing
            } else {
                tracing::info!("health: SERVING, the log writes again");
                tonic_health::ServingStatus::Serving
            };
            health.set_service_status("", status).await;
            health
                .set_service_status(
                    <RouterServer<RouterService> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
        }
        tokio::time::sleep(LOG_HEALTH_INTERVAL).await;
    }
}

/// A tonic server with the limits of `[server]`: streams per connection, a server-side
/// timeout on every call, HTTP/2 keepalive (dead peers release their connections; TCP
/// keepalive is set on the listener's sockets).
fn limited_server(s: &triage_core::config::ServerSettings) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(s.max_concurrent_streams)
        .timeout(Duration::from_millis(s.request_timeout_ms))
        .http2_keepalive_interval(keepalive(s))
        .http2_keepalive_timeout(Some(Duration::from_secs_f64(s.keepalive_timeout_secs)))
}

/// Interval of HTTP/2 PINGs and TCP keepalive probes (`None`: off).
fn keepalive(s: &triage_core::config::ServerSettings) -> Option<Duration> {
    (s.keepalive_secs > 0.0).then(|| Duration::from_secs_f64(s.keepalive_secs))
}

fn tls_config(
    tls: &triage_core::config::TlsSettings,
) -> Result<tonic::transport::ServerTlsConfig, StartupError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| {
            StartupError::Transport(format!("cannot read TLS file {}: {e}", path.display()))
        })
    };
    let identity = tonic::transport::Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
    Ok(tonic::transport::ServerTlsConfig::new().identity(identity))
}

/// A server running on a background task (tests, embedding in other programs).
pub struct ServerHandle {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The bound metrics address, when `metrics.listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<Result<(), StartupError>>,
}

impl ServerHandle {
    /// Stops accepting, drains, and waits for the server to finish.
    pub async fn shutdown(mut self) -> Result<(), StartupError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task
            .await
            .map_err(|e| StartupError::Transport(e.to_string()))?
    }
}

/// Binds `addr` (port 0 picks a free port) and serves in the background.
pub async fn start(
    engine: RoutingEngine,
    settings: &Settings,
    addr: SocketAddr,
) -> Result<ServerHandle, StartupError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| StartupError::Transport(format!("cannot bind {addr}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartupError::Transport(e.to_string()))?;
    let metrics_listener = bind_metrics(settings).await?;
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let settings = settings.clone();
    let task = tokio::spawn(async move {
        serve(engine, &settings, listener, metrics_listener, None, async {
            let _ = stopped.await;
        })
        .await
    });
    Ok(ServerHandle {
        addr,
        metrics_addr,
        stop: Some(stop),
        task,
    })
}
