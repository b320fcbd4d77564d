//! One attempt: call one model's provider and classify what came back.
//!
//! A failure that another model may not share (connection refused, a timeout, 408, 409, 429,
//! 5xx, a redirect, a garbled or oversized answer) is a [`Failure`] and the caller tries the
//! next candidate. So are 401, 403 and 404: they say the *operator's* provider key or endpoint
//! is wrong, which is no fault of the caller's; the caller gets a generic message and the
//! operator a log line. Any other 4xx is the caller's own request being refused, returned
//! unchanged. A stream counts as answered once its first event has arrived, so that nothing is
//! committed to the client before a fallback is still possible.
//!
//! Bounded in time and memory whatever the upstream does: a stream's first event must come
//! within the provider's `first_byte_ms`, everything within its `total_ms`; a whole answer is
//! read up to `gateway.max_upstream_body_bytes`, an error body up to [`MAX_ERROR_BODY_BYTES`],
//! and a server-sent event up to [`MAX_SSE_EVENT_BYTES`]. Redirects are never followed (the
//! provider's key would go with them).

use std::borrow::Cow;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use reqwest::StatusCode;
use serde_json::Value;
use triage_core::config::ProviderKind;
use triage_log::ErrorKind;

use crate::anthropic::{self, StreamTranslator};
use crate::openai::{self, Usage};
use crate::params;
use crate::upstreams::Target;
use crate::wire::ChatRequest;

/// The upstream's remaining events.
pub type Events = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<StreamError>>> + Send>>;

/// Largest error body read from an upstream (a refusal passed back to the caller).
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Largest server-sent event from an upstream (bytes between two blank lines): a stream that
/// never ends an event is cut here instead of being buffered without limit.
pub const MAX_SSE_EVENT_BYTES: usize = 1 << 20;

/// Why an upstream's event stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The connection failed, or the call's deadline passed.
    #[error("{0}")]
    Transport(#[from] reqwest::Error),
    /// An event grew past [`MAX_SSE_EVENT_BYTES`] without ending.
    #[error("an event is longer than {0} bytes without ending")]
    EventTooLong(usize),
}

/// What a model answered.
pub enum Reply {
    /// A whole chat completion, already named after the catalog model.
    Complete {
        /// The completion.
        body: Value,
        /// Its token counts.
        usage: Usage,
    },
    /// A stream whose first chunks have arrived.
    Stream {
        /// Chunks translated so far (named after the catalog model).
        first: Vec<Value>,
        /// The rest of the upstream's events.
        rest: Events,
        /// For Anthropic upstreams: turns events into chunks.
        translator: Option<StreamTranslator>,
        /// Usage seen in the first chunks.
        usage: Usage,
    },
    /// The upstream refused the request as malformed or forbidden (4xx): passed back as is.
    Refused {
        /// Its status.
        status: StatusCode,
        /// Its body.
        body: Bytes,
    },
}

/// Why an attempt failed, in the terms breakers and the log use.
#[derive(Debug)]
pub struct Failure {
    /// For breakers and the log.
    pub kind: ErrorKind,
    /// Metric and summary label.
    pub outcome: &'static str,
    /// Readable detail (never includes upstream keys).
    pub detail: String,
    /// A 429's `retry-after`.
    pub retry_after: Option<Duration>,
}

impl Failure {
    fn new(kind: ErrorKind, outcome: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            outcome,
            detail: detail.into(),
            retry_after: None,
        }
    }

    fn bad(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Other, "bad_response", detail)
    }
}

/// An attempt's answer (or failure), with when the first byte came.
pub struct Answer {
    /// What came back.
    pub result: Result<Reply, Failure>,
    /// Time to the response head, when one came.
    pub first_byte: Option<Duration>,
}

/// Calls `model` through `target`, giving up at `deadline`, its answer capped at
/// `max_tokens` when the caller's budget covers less than the request asked for.
pub async fn call(
    target: &Target,
    request: &ChatRequest,
    model: &str,
    deadline: Instant,
    max_tokens: Option<u32>,
) -> Answer {
    let started = Instant::now();
    let provider = &target.provider;
    let body = match upstream_body(target, request, max_tokens) {
        Ok(b) => b,
        Err(detail) => {
            return Answer {
                result: Err(Failure::bad(detail)),
                first_byte: None,
            };
        }
    };
    let left = deadline.saturating_duration_since(started);
    let total = provider.total.min(left);
    let sent = provider
        .client
        .post(&provider.endpoint)
        .headers(provider.headers.clone())
        .header("content-type", "application/json")
        .body(body)
        .timeout(total)
        .send();
    // A stream must start within the first-byte timeout. A whole answer only comes once it is
    // generated, which for a long answer or a reasoning model takes longer than any first
    // byte: it is bounded by the total timeout alone (and a provider bills it either way).
    let head_within = if request.stream {
        provider.first_byte.min(left)
    } else {
        total
    };
    let response = match tokio::time::timeout(head_within, sent).await {
        Err(_) => {
            let f = Failure::new(
                ErrorKind::Timeout,
                "timeout",
                "no response before the upstream's timeout",
            );
            return Answer {
                result: Err(f),
                first_byte: None,
            };
        }
        Ok(Err(e)) => {
            return Answer {
                result: Err(transport_failure(&e)),
                first_byte: None,
            };
        }
        Ok(Ok(r)) => r,
    };
    let first_byte = Some(started.elapsed());
    let result = match classify(response, &provider.name).await {
        Classified::Success(ok) if request.stream => {
            let left = head_within.saturating_sub(started.elapsed());
            first_events(ok, provider.kind, model, left).await
        }
        Classified::Success(ok) => complete(ok, provider.kind, model, provider.max_body).await,
        Classified::Finished(result) => result,
    };
    Answer { result, first_byte }
}

/// The request body for the provider: OpenAI's own (model renamed, usage always asked for when
/// streaming, so that the gateway can account), or its Messages translation; `max_tokens`
/// replaces the caller's answer length when given.
fn upstream_body(
    target: &Target,
    request: &ChatRequest,
    max_tokens: Option<u32>,
) -> Result<Vec<u8>, String> {
    // Copied only where it changes: the Messages translation reads the caller's body as is.
    let mut body = Cow::Borrowed(&request.body);
    if let Some(cap) = max_tokens {
        let field = if body.contains_key("max_completion_tokens") {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body.to_mut().insert(field.into(), cap.into());
    }
    let value = match target.provider.kind {
        ProviderKind::Openai => {
            let mut body = body.into_owned();
            body.insert("model".into(), target.upstream_model.clone().into());
            params::openai(&mut body, target.reasoning);
            if request.stream {
                let options = body
                    .entry("stream_options")
                    .or_insert_with(|| Value::Object(Default::default()));
                if let Value::Object(o) = options {
                    o.insert("include_usage".into(), true.into());
                }
            }
            Value::Object(body)
        }
        ProviderKind::Anthropic => {
            let mut translated = anthropic::request(&body, &target.upstream_model, request.stream)
                .map_err(|e| e.to_string())?;
            params::anthropic(&mut translated, &body, target.reasoning);
            translated
        }
    };
    serde_json::to_vec(&value).map_err(|e| e.to_string())
}

fn transport_failure(e: &reqwest::Error) -> Failure {
    if e.is_timeout() {
        Failure::new(ErrorKind::Timeout, "timeout", "the upstream call timed out")
    } else if e.is_connect() {
        Failure::new(
            ErrorKind::Unavailable,
            "unavailable",
            "cannot connect to the upstream",
        )
    } else {
        Failure::new(
            ErrorKind::Unavailable,
            "unavailable",
            "the upstream connection failed",
        )
    }
}

/// What an upstream's status line says.
enum Classified {
    /// 2xx: read the answer.
    Success(reqwest::Response),
    /// An error status: a failure to fall back from, or a refusal to pass back.
    Finished(Result<Reply, Failure>),
}

/// Sorts a response by its status (`provider` names it in the operator's log).
async fn classify(response: reqwest::Response, provider: &str) -> Classified {
    let status = response.status();
    if status.is_success() {
        return Classified::Success(response);
    }
    let retry_after = retry_after(response.headers());
    let failure = |kind, outcome| {
        Classified::Finished(Err(Failure {
            kind,
            outcome,
            detail: format!("upstream answered {status}"),
            retry_after,
        }))
    };
    match status.as_u16() {
        429 => failure(ErrorKind::RateLimited, "rate_limited"),
        408 => failure(ErrorKind::Timeout, "timeout"),
        409 | 500..=599 => failure(ErrorKind::Unavailable, "unavailable"),
        300..=399 => Classified::Finished(Err(Failure::new(
            ErrorKind::Unavailable,
            "redirected",
            format!(
                "upstream answered {status}; redirects are never followed (the provider's key \
                 would go with them)"
            ),
        ))),
        401 | 403 | 404 => {
            // The operator's key or endpoint is wrong, not the caller's request: the caller
            // learns only that the provider failed; the operator reads why here.
            tracing::warn!(%provider, %status, "the provider refused the gateway's own request: \
                check its base_url, the model's upstream_model and the key in its api_key_env");
            Classified::Finished(Err(Failure::new(
                ErrorKind::Unavailable,
                "provider_error",
                "the provider refused the gateway's credentials or endpoint (the operator's \
                 configuration; logged for them)",
            )))
        }
        _ => Classified::Finished(match read_limited(response, MAX_ERROR_BODY_BYTES).await {
            Ok(body) => Ok(Reply::Refused {
                status,
                body: body.into(),
            }),
            Err(failure) => Err(failure),
        }),
    }
}

/// The whole body, refused past `limit` bytes (announced or read) without reading on.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, Failure> {
    let too_large = || {
        Failure::bad(format!(
            "the upstream's answer is larger than {limit} bytes (gateway.max_upstream_body_bytes)"
        ))
    };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport_failure(&e))? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The response's bytes, cut with [`StreamError::EventTooLong`] once an event runs past
/// `max_event` bytes without the blank line that ends it.
fn bounded_events(
    response: reqwest::Response,
    max_event: usize,
) -> impl Stream<Item = Result<Bytes, StreamError>> + Send {
    let mut since_blank = 0usize;
    let mut line_start = true;
    response.bytes_stream().map(move |chunk| {
        let bytes = chunk?;
        for &b in bytes.iter() {
            match b {
                b'\n' => {
                    if line_start {
                        since_blank = 0;
                    }
                    line_start = true;
                }
                b'\r' => {}
                _ => {
                    line_start = false;
                    since_blank += 1;
                }
            }
        }
        if since_blank > max_event {
            return Err(StreamError::EventTooLong(max_event));
        }
        Ok(bytes)
    })
}

/// `retry-after-ms`, or `retry-after` in seconds.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let number = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok();
    let ms = number("retry-after-ms").or_else(|| number("retry-after").map(|s| s * 1000.0))?;
    (ms.is_finite() && ms >= 0.0).then(|| Duration::from_millis(ms.min(u32::MAX as f64) as u64))
}

async fn complete(
    response: reqwest::Response,
    kind: ProviderKind,
    model: &str,
    max_body: usize,
) -> Result<Reply, Failure> {
    let bytes = read_limited(response, max_body).await?;
    let mut value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Failure::bad(format!("the upstream's answer is not JSON ({e})")))?;
    match kind {
        ProviderKind::Openai => {
            if !value.get("choices").is_some_and(Value::is_array) {
                return Err(Failure::bad("the upstream's answer has no choices"));
            }
            value["model"] = model.into();
            let usage = Usage::from_openai(value.get("usage"));
            Ok(Reply::Complete { body: value, usage })
        }
        ProviderKind::Anthropic => {
            let (body, usage) = anthropic::response(&value, model, openai::now_secs())
                .ok_or_else(|| Failure::bad("the upstream's answer is not a Messages response"))?;
            Ok(Reply::Complete { body, usage })
        }
    }
}

/// Reads events until the first chunks for the client, within `first_byte`.
async fn first_events(
    response: reqwest::Response,
    kind: ProviderKind,
    model: &str,
    first_byte: Duration,
) -> Result<Reply, Failure> {
    let mut rest: Events = Box::pin(bounded_events(response, MAX_SSE_EVENT_BYTES).eventsource());
    let mut translator =
        (kind == ProviderKind::Anthropic).then(|| StreamTranslator::new(model, openai::now_secs()));
    let mut usage = Usage::default();
    let wait = async {
        loop {
            let Some(event) = rest.next().await else {
                return Err(Failure::bad(
                    "the upstream's stream ended before any answer",
                ));
            };
            let event = event.map_err(|e| {
                Failure::new(
                    ErrorKind::Unavailable,
                    "unavailable",
                    format!("stream failed: {e}"),
                )
            })?;
            match translate(&event, translator.as_mut(), model, &mut usage) {
                Translated::Chunks(chunks) if !chunks.is_empty() => return Ok(chunks),
                Translated::Chunks(_) => {}
                Translated::Done => {
                    return Err(Failure::bad(
                        "the upstream's stream ended before any answer",
                    ));
                }
                Translated::Error(detail) => {
                    return Err(Failure::new(ErrorKind::Unavailable, "unavailable", detail));
                }
            }
        }
    };
    let first = match tokio::time::timeout(first_byte, wait).await {
        Err(_) => {
            return Err(Failure::new(
                ErrorKind::Timeout,
                "timeout",
                "no stream event before the first-byte timeout",
            ));
        }
        Ok(r) => r?,
    };
    Ok(Reply::Stream {
        first,
        rest,
        translator,
        usage,
    })
}

/// One upstream event, as the client will see it.
pub enum Translated {
    /// Chunks to relay (possibly none).
    Chunks(Vec<Value>),
    /// The upstream finished.
    Done,
    /// The upstream reported an error, or sent garbage.
    Error(String),
}

/// Turns one upstream event into chunks named after `model`, noting usage.
pub fn translate(
    event: &Event,
    translator: Option<&mut StreamTranslator>,
    model: &str,
    usage: &mut Usage,
) -> Translated {
    if event.data.trim() == "[DONE]" {
        return Translated::Done;
    }
    let Ok(mut value) = serde_json::from_str::<Value>(&event.data) else {
        return Translated::Error("the upstream sent an event that is not JSON".into());
    };
    match translator {
        Some(t) => {
            if value.get("type").and_then(Value::as_str) == Some("message_stop") {
                *usage = t.usage;
                return Translated::Done;
            }
            let r = t.event(&value);
            *usage = t.usage;
            match r {
                Ok(chunks) => Translated::Chunks(chunks),
                Err(detail) => Translated::Error(detail),
            }
        }
        None => {
            if let Some(e) = value.get("error") {
                let message = e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("upstream error");
                return Translated::Error(message.to_owned());
            }
            if value.get("choices").is_none() {
                return Translated::Error("the upstream sent a chunk without choices".into());
            }
            let reported = Usage::from_openai(value.get("usage"));
            if reported.reported() {
                *usage = reported;
            }
            value["model"] = model.into();
            Translated::Chunks(vec![value])
        }
    }
}
