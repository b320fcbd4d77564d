//! The accept loop both HTTP listeners share (the gateway and `/metrics`).
//!
//! A listener facing more than a trusted scraper defends its connection slots: at most
//! `max_connections` are served at once (the rest wait in the listen backlog instead of each
//! costing a task and its buffers), and no client can hold a slot by saying nothing. Each
//! phase where a client could stall has one deadline:
//! - the protocol sniff: the first bytes (HTTP/1 or the HTTP/2 preface) within `header_read`;
//! - an HTTP/1 request head within `header_read` (hyper's own timer);
//! - a request body: the handler's (the gateway reads bodies within `gateway.body_read_ms`);
//! - idleness: a connection with no request in flight for `idle` is closed, HTTP/1 keep-alive
//!   and HTTP/2 alike (an HTTP/2 client answering pings still holds no request);
//! - a `lifetime`: then the connection takes no new request (HTTP/2 `GOAWAY`), and requests in
//!   flight get `drain` to finish.
//!
//! A request is in flight from its head until its response body has been sent or dropped, so a
//! long streamed answer is never cut as idle. An accept error (`EMFILE` when descriptors run
//! out) backs off instead of spinning a core. On shutdown the listener stops accepting, and
//! open connections finish their requests within `drain`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;

/// Limits of one HTTP listener.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Time a client has to send its first bytes, then each request head.
    pub header_read: Duration,
    /// Longest a connection stays open with no request in flight (`None`: no limit).
    pub idle: Option<Duration>,
    /// Longest a connection takes new requests (`None`: for ever).
    pub lifetime: Option<Duration>,
    /// How long requests in flight get to finish once their connection (or the server) stops
    /// taking new ones.
    pub drain: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

/// Longest pause after consecutive accept errors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The HTTP/2 connection preface a cleartext HTTP/2 client starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves `service` (HTTP/1.1 and HTTP/2) on `listener` within `limits` until `shutdown`
/// resolves, then waits (up to `limits.drain`) for open connections to finish their requests.
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
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let (stop, stopped) = watch::channel(false);
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
        let connection = serve_connection(
            stream,
            service.clone(),
            builder.clone(),
            limits,
            stopped.clone(),
        );
        tokio::spawn(async move {
            connection.await;
            drop(slot);
        });
    }
    let _ = stop.send(true);
    // Every slot back means every connection has ended.
    let _ = tokio::time::timeout(
        limits.drain + limits.header_read,
        slots.acquire_many(u32::try_from(max).unwrap_or(u32::MAX)),
    )
    .await;
}

/// Serves one connection within `limits` until it ends, goes idle, outlives its lifetime, or
/// `stopped` says the server is shutting down.
async fn serve_connection<S, B>(
    stream: TcpStream,
    service: S,
    builder: Builder<TokioExecutor>,
    limits: HttpLimits,
    mut stopped: watch::Receiver<bool>,
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
    if !first_bytes(&stream, limits.header_read).await {
        return;
    }
    let activity = Arc::new(Activity::new());
    let service = Tracked {
        inner: service,
        activity: Arc::clone(&activity),
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let retire_at = limits.lifetime.map(|l| Instant::now() + l);
    let grace = loop {
        let idle_at = limits
            .idle
            .and_then(|idle| activity.idle_since().map(|since| since + idle));
        let wake = [idle_at, retire_at].into_iter().flatten().min();
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = stopped.changed() => break limits.drain,
            () = activity.changed.notified() => {}
            () = sleep_until(wake) => {
                let now = Instant::now();
                let idle = limits.idle.is_some_and(|idle| {
                    activity.idle_since().is_some_and(|since| since + idle <= now)
                });
                // Idle: nothing is in flight, so a peer that ignores the goodbye (an HTTP/2
                // client that never finished its handshake) gets only a short one.
                if idle {
                    break limits.header_read;
                }
                if retire_at.is_some_and(|at| at <= now) {
                    break limits.drain;
                }
            }
        }
    };
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(grace, connection).await;
}

/// Sleeps until `at`, or for ever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits for the bytes that tell HTTP/1 from HTTP/2 (hyper's sniff has no deadline of its
/// own). Returns whether they came within `within` (false: silence, or the client left).
async fn first_bytes(stream: &TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; H2_PREFACE.len()];
    let sniffed = async {
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n == buf.len() || !H2_PREFACE.starts_with(&buf[..n]) => return true,
                // Part of an HTTP/2 preface: wait for the rest (rare; a few polls at most).
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    };
    tokio::time::timeout(within, sniffed).await.unwrap_or(false)
}

/// Requests in flight on one connection, and since when it has had none.
struct Activity {
    /// (requests in flight, when the last one ended or the connection opened).
    state: Mutex<(usize, Instant)>,
    /// Wakes the connection's watchdog when a request starts or ends.
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new((0, Instant::now())),
            changed: Notify::new(),
        }
    }

    /// When the connection went idle, if it has no request in flight.
    fn idle_since(&self) -> Option<Instant> {
        let (in_flight, since) = *self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (in_flight == 0).then_some(since)
    }

    fn update(&self, change: impl FnOnce(&mut (usize, Instant))) {
        change(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
        self.changed.notify_one();
    }
}

/// One request in flight, until dropped with its response body.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.update(|s| s.0 += 1);
        Self(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.update(|s| {
            s.0 = s.0.saturating_sub(1);
            s.1 = Instant::now();
        });
    }
}

/// The service, counting each request in flight until its response body is done.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::start(&self.activity);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                body: Box::pin(body),
                _in_flight: in_flight,
            }))
        })
    }
}

/// A response body that keeps its request in flight until it is sent or dropped.
struct TrackedBody<B> {
    body: Pin<Box<B>>,
    _in_flight: InFlight,
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.body.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
