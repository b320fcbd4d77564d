//! Upstreams that misbehave on purpose, for the gateway's bounds: a redirect elsewhere, an
//! endless stream, a huge body, a slow trickle of bytes, and server-sent events that never end
//! a line. Each is a scripted [`Fault`](crate::Fault) like the others.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

/// Size of each piece of a generated body.
const PIECE: usize = 64 * 1024;

/// A `status` redirect (3xx) to `location`.
pub fn redirect(status: u16, location: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::TEMPORARY_REDIRECT);
    let mut r = status.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// A 200 whose JSON body never ends: a chunk every `every`, for ever (until the caller leaves).
pub fn endless_stream(model: &str, every: Duration) -> Response {
    let chunk = format!(
        "data: {}\n\n",
        serde_json::json!({"id": "chatcmpl-endless", "object": "chat.completion.chunk",
            "created": 1, "model": model,
            "choices": [{"index": 0, "delta": {"content": " again"}, "finish_reason": null}]})
    );
    let body = futures::stream::repeat(Bytes::from(chunk)).then(move |b| async move {
        tokio::time::sleep(every).await;
        Ok::<_, std::io::Error>(b)
    });
    event_stream(Body::from_stream(body))
}

/// A 200 of `bytes` bytes (generated as sent, never held), announced with its length when
/// `announce`.
pub fn huge_body(bytes: u64, announce: bool) -> Response {
    let pieces = bytes.div_ceil(PIECE as u64);
    let body = futures::stream::iter(0..pieces).map(move |i| {
        let n = (bytes - i * PIECE as u64).min(PIECE as u64) as usize;
        Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; n]))
    });
    let mut r = Response::new(Body::from_stream(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if announce {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes));
    }
    r
}

/// `body` sent one byte every `every`.
pub fn trickle(body: Vec<u8>, content_type: &'static str, every: Duration) -> Response {
    let bytes = futures::stream::iter(body).then(move |b| async move {
        tokio::time::sleep(every).await;
        Ok::<_, std::io::Error>(Bytes::from(vec![b]))
    });
    let mut r = Response::new(Body::from_stream(bytes));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// An event stream that starts an event and never ends its line: `data: xxxx…` for ever.
pub fn no_newlines() -> Response {
    let start = futures::stream::once(async { Ok(Bytes::from_static(b"data: ")) });
    let rest = futures::stream::repeat(Bytes::from(vec![b'x'; PIECE])).then(|b| async move {
        tokio::task::yield_now().await;
        Ok::<_, std::io::Error>(b)
    });
    event_stream(Body::from_stream(start.chain(rest)))
}

fn event_stream(body: Body) -> Response {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r
}
