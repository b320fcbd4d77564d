//! The `GET /metrics` endpoint.
//!
//! It listens on its own port, often reachable by more than the scraper, so it defends itself:
//! a client gets `header_read` to send its request head (a slow-loris connection is closed),
//! at most `max_connections` are served at once (the rest wait in the listen backlog rather
//! than each costing a task and a buffer), a connection lives at most `lifetime` (an idle
//! keep-alive cannot hold a slot for ever), and an accept error (`EMFILE` when descriptors run
//! out) backs off instead of spinning a core.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// Limits of the endpoint (`[metrics]` in the configuration).
#[derive(Clone, Copy, Debug)]
pub struct ScrapeLimits {
    /// Time a client has to send its request head.
    pub header_read: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Longest a connection is kept, keep-alive included.
    pub lifetime: Duration,
}

/// Longest pause after consecutive accept errors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `GET /metrics` on `listener` within `limits`, calling `refresh` (gauges read at
/// scrape time) before each scrape.
pub fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    refresh: Arc<dyn Fn(&Metrics) + Send + Sync>,
    limits: ScrapeLimits,
) -> JoinHandle<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::spawn(async move {
        let mut backoff = Duration::ZERO;
        loop {
            // Take a slot before accepting: at the cap, new connections wait in the backlog.
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    backoff = Duration::ZERO;
                    stream
                }
                Err(e) => {
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "metrics endpoint: accept failed");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            let (metrics, refresh) = (Arc::clone(&metrics), Arc::clone(&refresh));
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let response = scrape(req.uri().path(), &metrics, &*refresh);
                        async move { Ok::<_, Infallible>(response) }
                    });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(limits.lifetime, connection).await;
                drop(slot);
            });
        }
    })
}

fn scrape(
    path: &str,
    metrics: &Metrics,
    refresh: &(dyn Fn(&Metrics) + Send + Sync),
) -> Response<Full<Bytes>> {
    let response = if path == "/metrics" {
        refresh(metrics);
        Response::builder()
            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(metrics.render())))
    } else {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"metrics are at /metrics\n")))
    };
    response.unwrap_or_default()
}
