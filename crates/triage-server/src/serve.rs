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
use triage_guard::AccessControl;
use triage_log::{ArchiveFormat, FileEventLog, LogOptions, compact};
use triage_proto::v1::router_server::RouterServer;

use crate::engine::RoutingEngine;
use crate::error::StartupError;
use crate::metrics::{Metrics, ModelLabel, serve_metrics};
use crate::service::RouterService;

/// Serves gRPC on `listener` (and `/metrics` on `metrics_listener`) until `shutdown` resolves,
/// then drains in-flight calls and flushes the decision and feedback log (`settings.log.dir`).
/// With an `archive` format the log's compacted archives are read at start, and sealed segments
/// are compacted into new ones as `log.compact_after_segments` says.
pub async fn serve(
    engine: RoutingEngine,
    settings: &Settings,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    archive: Option<Arc<dyn ArchiveFormat>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let access = Arc::new(AccessControl::new(&settings.auth, Path::new("."))?);
    let log_settings = settings.log.clone();
    let controls_engine = engine.clone();
    let log_archive = archive.clone();
    let log = tokio::task::spawn_blocking(move || {
        let options = LogOptions {
            dir: log_settings.dir,
            segment_bytes: log_settings.segment_bytes,
            queue_capacity: log_settings.queue_capacity,
            archive: log_archive,
        };
        // Budgets, alerts and online learning pick up where they were: the log is replayed
        // during the scan that recovers it.
        let controls = controls_engine.controls();
        let now = chrono::Utc::now();
        FileEventLog::open_visiting(&options, |record| {
            controls.replay(record, now);
            controls_engine.replay_learning(record);
        })
    })
    .await
    .map_err(|e| StartupError::Transport(e.to_string()))??;
    let metrics = Arc::new(Metrics::new());
    let metrics_task = metrics_listener.map(|listener| {
        serve_metrics(
            listener,
            Arc::clone(&metrics),
            scrape_refresh(engine.clone()),
        )
    });
    let watcher = match (engine.policy_path(), settings.policy.reload_interval_ms) {
        (Some(path), ms) if ms > 0 => Some(crate::reload::watch_policy(
            engine.clone(),
            path.to_path_buf(),
            Duration::from_millis(ms),
        )),
        _ => None,
    };
    let compactor = archive.and_then(|format| compact_periodically(settings, format));
    let max = settings.server.max_message_bytes;
    let service = RouterService::new(
        engine,
        settings.server.limits(),
        Arc::new(log),
        settings.log.store_prompts,
        access,
        metrics,
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

    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &settings.server.tls {
        builder = builder
            .tls_config(tls_config(tls)?)
            .map_err(|e| StartupError::Transport(format!("TLS configuration rejected: {e}")))?;
    }
    // After the shutdown signal, in-flight calls get `drain_secs` to finish.
    let (signalled, mut drain_started) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = signalled.send(true);
    };
    let drain = std::time::Duration::from_secs_f64(settings.server.drain_secs.max(0.0));
    let serving = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(router)
        // TCP_NODELAY: without it small responses wait for the peer's delayed ACK (~40 ms).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
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
    for task in [watcher, compactor].into_iter().flatten() {
        task.abort();
    }
    if let Some(task) = metrics_task {
        task.abort();
    }
    // The router (and with it the log) is dropped by now: queued records are flushed.
    served
}

/// Compacts the log's sealed segments every `log.compact_interval_ms` once
/// `log.compact_after_segments` wait (off at 0). A failed compaction changes nothing on disk
/// that readers rely on (see `triage_log::compact`), so it is logged and tried again later.
fn compact_periodically(
    settings: &Settings,
    format: Arc<dyn ArchiveFormat>,
) -> Option<JoinHandle<()>> {
    let threshold = settings.log.compact_after_segments;
    if threshold == 0 {
        return None;
    }
    let dir = settings.log.dir.clone();
    let every = Duration::from_millis(settings.log.compact_interval_ms.max(1));
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let (dir, format) = (dir.clone(), Arc::clone(&format));
            let compacted =
                tokio::task::spawn_blocking(move || compact(&dir, format.as_ref(), threshold))
                    .await;
            match compacted {
                Ok(Ok(report)) if report.archives > 0 || report.leftovers_deleted > 0 => {
                    tracing::info!(
                        archives = report.archives,
                        segments = report.segments,
                        records = report.records,
                        segment_bytes = report.segment_bytes,
                        archive_bytes = report.archive_bytes,
                        "log segments compacted"
                    );
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "log compaction failed; will retry"),
                Err(e) => tracing::warn!(error = %e, "log compaction task failed"),
            }
        }
    }))
}

/// Binds `metrics.listen` when it is set (port 0 picks a free port).
pub async fn bind_metrics(settings: &Settings) -> Result<Option<TcpListener>, StartupError> {
    let Some(addr) = settings.metrics.listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| StartupError::Transport(format!("cannot bind metrics address {addr}: {e}")))?;
    Ok(Some(listener))
}

/// Gauges read at scrape time: queue depth and breaker states.
fn scrape_refresh(engine: RoutingEngine) -> Arc<dyn Fn(&Metrics) + Send + Sync> {
    Arc::new(move |m: &Metrics| {
        m.queue_depth
            .set(i64::try_from(engine.queue_depth()).unwrap_or(i64::MAX));
        let health = &engine.controls().health;
        for spec in engine.catalog().models() {
            let value = match health.state(&spec.name) {
                "open" => 2,
                "half_open" => 1,
                _ => 0,
            };
            m.breaker_state
                .get_or_create(&ModelLabel {
                    model: spec.name.clone(),
                })
                .set(value);
        }
    })
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
