//! The accept loop both HTTP listeners share (the gateway and `/metrics`).
//!
//! A listener facing more than a trusted scraper defends itself: a client gets `header_read` to
//! send each request head (a slow-loris connection is closed), at most `max_connections` are
//! served at once (the rest wait in the listen backlog instead of each costing a task and its
//! buffers), a connection may be given a `lifetime` (so an idle keep-alive cannot hold a slot
//! for ever), and an accept error (`EMFILE` when descriptors run out) backs off instead of
//! spinning a core. On shutdown it stops accepting and lets open connections finish their
//! requests.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Limits of one HTTP listener.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Time a client has to send a request head.
    pub header_read: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Longest a connection is kept (`None`: as long as it is used; streamed answers can be
    /// long).
    pub lifetime: Option<Duration>,
}

/// Longest pause after consecutive accept errors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `service` (HTTP/1.1 and HTTP/2) on `listener` within `limits` until `shutdown`
/// resolves, then waits for open connections to finish their requests.
pub async fn serve_http<S, B>(
    listener: TcpListener,
    service: S,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    builder.http2().timer(TokioTimer::new());
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        // Take a slot before accepting: at the cap, new connections wait in the backlog.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = Duration::ZERO;
                stream
            }
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        // TCP_NODELAY: a small response or a streamed chunk must not wait for the client's
        // delayed ACK.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service.clone())
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = match limits.lifetime {
                Some(lifetime) => tokio::time::timeout(lifetime, connection)
                    .await
                    .unwrap_or(Ok(())),
                None => connection.await,
            };
            drop(slot);
        });
    }
    graceful.shutdown().await;
}
