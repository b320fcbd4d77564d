//! The `GET /metrics` endpoint, served within [`HttpLimits`] (see `listener`): it often listens
//! where more than the scraper can reach it.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::listener::{HttpLimits, serve_http};
use crate::metrics::Metrics;

/// Serves `GET /metrics` on `listener` within `limits`, calling `refresh` (gauges read at
/// scrape time) before each scrape, until the task is aborted.
pub fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    refresh: Arc<dyn Fn(&Metrics) + Send + Sync>,
    limits: HttpLimits,
) -> JoinHandle<()> {
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let response = scrape(req.uri().path(), &metrics, &*refresh);
        async move { Ok::<_, Infallible>(response) }
    });
    tokio::spawn(serve_http(
        listener,
        service,
        limits,
        std::future::pending(),
    ))
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
