//! Start-up wiring shared by every way of serving: open (and replay) the log, build the
//! [`Service`], and run the background tasks (policy reload, log compaction, `/metrics`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use triage_core::Settings;
use triage_core::config::LogBackend;
use triage_guard::AccessControl;
use triage_log::{ArchiveFormat, EventStore, FileEventLog, LogOptions, LogRecord, compact};
use triage_postgres::{PgEventStore, PgOptions};

use crate::engine::RoutingEngine;
use crate::error::StartupError;
use crate::listener::HttpLimits;
use crate::metrics::{Metrics, ModelLabel};
use crate::scrape::serve_metrics;
use crate::service::Service;

/// Opens the decision and feedback log (`log.backend`: the file log in `settings.log.dir`, or
/// PostgreSQL at `log.url`), replaying it into budgets, alerts and online learning, and returns
/// the service both doors share. With an `archive` format the file log's compacted archives
/// are read too.
pub async fn open(
    engine: RoutingEngine,
    settings: &Settings,
    archive: Option<Arc<dyn ArchiveFormat>>,
) -> Result<Service, StartupError> {
    let access = Arc::new(AccessControl::new(&settings.auth, Path::new("."))?);
    let log: Arc<dyn EventStore> = match settings.log.backend {
        LogBackend::File => Arc::new(open_file_log(&engine, settings, archive).await?),
        LogBackend::Postgres => Arc::new(open_postgres(&engine, settings).await?),
    };
    Ok(Service::new(
        engine,
        settings.server.limits(),
        log,
        settings.log.store_prompts,
        access,
        Arc::new(Metrics::new()),
        settings.server.max_reported_cost_usd,
    ))
}

/// Replays one logged record into budgets, alerts and online learning, so they pick up where
/// they were.
fn replayer(engine: &RoutingEngine) -> impl FnMut(&LogRecord) + Send + use<> {
    let (engine, now) = (engine.clone(), chrono::Utc::now());
    move |record| {
        engine.controls().replay(record, now);
        engine.replay_learning(record);
    }
}

async fn open_file_log(
    engine: &RoutingEngine,
    settings: &Settings,
    archive: Option<Arc<dyn ArchiveFormat>>,
) -> Result<FileEventLog, StartupError> {
    let log_settings = settings.log.clone();
    let mut replay = replayer(engine);
    let log = tokio::task::spawn_blocking(move || {
        let options = LogOptions {
            dir: log_settings.dir,
            segment_bytes: log_settings.segment_bytes,
            queue_capacity: log_settings.queue_capacity,
            queue_bytes: log_settings.queue_bytes,
            retention: (log_settings.retention_days > 0)
                .then(|| Duration::from_secs(log_settings.retention_days.saturating_mul(86_400))),
            archive,
            index_max_bytes: (log_settings.index_max_bytes > 0)
                .then_some(log_settings.index_max_bytes),
        };
        // The file log's read side would scan the directory a second time: history is
        // replayed during the scan that recovers it.
        FileEventLog::open_visiting(&options, &mut replay)
    })
    .await
    .map_err(|e| StartupError::Transport(e.to_string()))??;
    Ok(log)
}

/// Connects to the shared store and replays what every replica wrote within the retention
/// (spend, breakers' history is not shared: see docs/scaling.md).
async fn open_postgres(
    engine: &RoutingEngine,
    settings: &Settings,
) -> Result<PgEventStore, StartupError> {
    let log = &settings.log;
    let store = PgEventStore::connect(&PgOptions {
        url: log.url.clone().unwrap_or_default(),
        pool_size: log.pool_size,
        queue_capacity: log.queue_capacity,
        retention_days: log.retention_days,
    })
    .await?;
    let since = (log.retention_days > 0).then(|| {
        triage_log::now_ms().saturating_sub(log.retention_days.saturating_mul(86_400_000))
    });
    let mut replay = replayer(engine);
    let mut records = 0usize;
    store
        .history(since, &mut |record| {
            records += 1;
            replay(&record);
        })
        .await?;
    tracing::info!(records, "replayed the shared log");
    Ok(store)
}

/// Tasks that run beside the front doors; stopped by [`Background::stop`] or on drop.
pub struct Background {
    tasks: Vec<JoinHandle<()>>,
}

impl Background {
    /// Starts the policy watcher (`policy.reload_interval_ms`), the log compactor (with an
    /// `archive` format and `log.compact_after_segments`) and `/metrics` on `metrics_listener`.
    pub fn start(
        service: &Service,
        settings: &Settings,
        metrics_listener: Option<TcpListener>,
        archive: Option<Arc<dyn ArchiveFormat>>,
    ) -> Self {
        let engine = service.engine();
        let mut tasks = Vec::new();
        if let Some(listener) = metrics_listener {
            tasks.push(serve_metrics(
                listener,
                service.metrics_arc(),
                scrape_refresh(engine.clone()),
                HttpLimits {
                    header_read: Duration::from_millis(settings.metrics.header_read_ms),
                    max_connections: settings.metrics.max_connections,
                    idle: Some(Duration::from_secs(settings.metrics.connection_secs)),
                    lifetime: Some(Duration::from_secs(settings.metrics.connection_secs)),
                    drain: Duration::from_secs(1),
                },
            ));
        }
        if let (Some(path), ms) = (engine.policy_path(), settings.policy.reload_interval_ms)
            && ms > 0
        {
            tasks.push(crate::reload::watch_policy(
                engine.clone(),
                path.to_path_buf(),
                Duration::from_millis(ms),
            ));
        }
        // Compaction is the file log's; a database keeps its own pages.
        let archive = archive.filter(|_| settings.log.backend == LogBackend::File);
        if let Some(task) = archive.and_then(|format| compact_periodically(settings, format)) {
            tasks.push(task);
        }
        Self { tasks }
    }

    /// Stops every task.
    pub fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
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

/// Binds an optional listener (port 0 picks a free port); `what` names it in the error.
pub async fn bind_optional(
    addr: Option<SocketAddr>,
    what: &str,
) -> Result<Option<TcpListener>, StartupError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| StartupError::Transport(format!("cannot bind {what} address {addr}: {e}")))?;
    Ok(Some(listener))
}

/// Binds `metrics.listen` when it is set (port 0 picks a free port).
pub async fn bind_metrics(settings: &Settings) -> Result<Option<TcpListener>, StartupError> {
    bind_optional(settings.metrics.listen, "metrics").await
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
