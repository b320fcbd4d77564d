//! Runs the tonic server: router, health, reflection, limits, shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use triage_core::Settings;
use triage_log::{FileEventLog, LogOptions};
use triage_proto::v1::router_server::RouterServer;

use crate::engine::RoutingEngine;
use crate::error::StartupError;
use crate::service::RouterService;

/// Serves on `listener` until `shutdown` resolves, then drains in-flight calls and flushes the
/// decision and feedback log (opened in `settings.log.dir`).
pub async fn serve(
    engine: RoutingEngine,
    settings: &Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let log_settings = settings.log.clone();
    let log = tokio::task::spawn_blocking(move || {
        FileEventLog::open(&LogOptions {
            dir: log_settings.dir,
            segment_bytes: log_settings.segment_bytes,
            queue_capacity: log_settings.queue_capacity,
        })
    })
    .await
    .map_err(|e| StartupError::Transport(e.to_string()))??;
    let watcher = match (engine.policy_path(), settings.policy.reload_interval_ms) {
        (Some(path), ms) if ms > 0 => Some(crate::reload::watch_policy(
            engine.clone(),
            path.to_path_buf(),
            Duration::from_millis(ms),
        )),
        _ => None,
    };
    let max = settings.server.max_message_bytes;
    let service = RouterService::new(
        engine,
        settings.server.limits(),
        Arc::new(log),
        settings.log.store_prompts,
    );
    let router = RouterServer::new(service)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RouterServer<RouterService>>().await;

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

    let served = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(router)
        // TCP_NODELAY: without it small responses wait for the peer's delayed ACK (~40 ms).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .map_err(|e| StartupError::Transport(e.to_string()));
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    // The router (and with it the log) is dropped by now: queued records are flushed.
    served
}

/// A server running on a background task (tests, embedding in other programs).
pub struct ServerHandle {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
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
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let settings = settings.clone();
    let task = tokio::spawn(async move {
        serve(engine, &settings, listener, async {
            let _ = stopped.await;
        })
        .await
    });
    Ok(ServerHandle {
        addr,
        stop: Some(stop),
        task,
    })
}
