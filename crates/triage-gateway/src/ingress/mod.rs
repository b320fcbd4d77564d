//! Doors for the other dialects callers speak: Anthropic's Messages (`POST /v1/messages`) and
//! OpenAI's Responses (`POST /v1/responses`).
//!
//! Each door is a translation around the one chat-completions path, never a second one: the
//! dialect's request becomes a chat-completions body, [`answer_chat`] routes it, calls the
//! providers with failover and records every attempt exactly as for chat, and its response
//! (a whole completion, a stream of chunks, or an error) is translated back. So routing,
//! budgets, failover, the judge and the records cannot drift between dialects; a door only
//! knows its own wire shapes.
//!
//! A stream is translated as it flows: each chat chunk becomes [`Event`]s, which the dialect
//! writes as its own server-sent events (with `event:` names, as both SDKs dispatch on them).

pub mod messages;
pub mod responses;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::{Stream, StreamExt};
use serde_json::{Map, Value};
use triage_core::InvalidRequest;

use crate::Gateway;
use crate::chat::answer_chat;
use crate::error::GatewayError;
use crate::openai::Usage;
use crate::relay::event_stream;

/// One dialect's door: how its requests become chat-completions bodies and how answers go
/// back. The value carries what the way back needs (the request's echoed settings, and the
/// state of a stream being written).
pub trait Dialect: Sized + Send + 'static {
    /// The method label of its refusals in the metrics.
    const METHOD: &'static str;

    /// The chat-completions body a request asks for, and the state for the way back.
    fn read(body: Map<String, Value>) -> Result<(Map<String, Value>, Self), InvalidRequest>;

    /// A whole answer in the dialect.
    fn whole(&self, answer: &Answer) -> Value;

    /// The dialect's events for one step of a stream.
    fn event(&mut self, event: Event) -> Vec<Bytes>;

    /// The dialect's error body for a refusal whose OpenAI-shaped body is `openai`.
    fn error(status: StatusCode, openai: &Value) -> Value;
}

/// A whole answer, as the chat completion said it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Answer {
    /// The completion's id.
    pub id: String,
    /// The catalog model that answered.
    pub model: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// The answer's text.
    pub text: String,
    /// Tool calls, in order.
    pub tool_calls: Vec<ToolCall>,
    /// OpenAI's `finish_reason` (`stop`, `length`, `tool_calls`, `content_filter`).
    pub finish: Option<String>,
    /// Tokens, as the provider reported them.
    pub usage: Usage,
}

/// One tool call of an answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToolCall {
    /// The call's id (the caller returns it with the tool's output).
    pub id: String,
    /// The function's name.
    pub name: String,
    /// Its arguments, a JSON text.
    pub arguments: String,
}

impl Answer {
    /// The answer of a `chat.completion`; `None` when `v` is not one.
    pub fn from_completion(v: &Value) -> Option<Self> {
        let choice = v.pointer("/choices/0")?;
        let message = choice.get("message")?;
        let tool_calls = message
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| ToolCall {
                id: str_at(c, "/id"),
                name: str_at(c, "/function/name"),
                arguments: str_at(c, "/function/arguments"),
            })
            .collect();
        Some(Self {
            id: str_at(v, "/id"),
            model: str_at(v, "/model"),
            created: v.get("created").and_then(Value::as_u64).unwrap_or_default(),
            text: str_at(message, "/content"),
            tool_calls,
            finish: choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .map(str::to_owned),
            usage: Usage::from_openai(v.get("usage")),
        })
    }

    /// Applies one stream event: a stream's answer is the sum of its events.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Start { id, model, created } => {
                (self.id, self.model, self.created) = (id.clone(), model.clone(), *created);
            }
            Event::Text(t) => self.text.push_str(t),
            Event::ToolCall {
                index,
                id,
                name,
                arguments,
            } => {
                if self.tool_calls.len() <= *index {
                    self.tool_calls.resize(index + 1, ToolCall::default());
                }
                let call = &mut self.tool_calls[*index];
                if let Some(id) = id {
                    call.id.clone_from(id);
                }
                if let Some(name) = name {
                    call.name.clone_from(name);
                }
                call.arguments.push_str(arguments);
            }
            Event::Finish(reason) => self.finish = Some(reason.clone()),
            Event::Usage(usage) => self.usage = *usage,
            Event::Failed(_) | Event::Done => {}
        }
    }
}

fn str_at(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// One step of a chat-completions stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The first chunk: who is answering.
    Start {
        /// The completion's id.
        id: String,
        /// The catalog model.
        model: String,
        /// Seconds since the epoch.
        created: u64,
    },
    /// More answer text.
    Text(String),
    /// A tool call begins (with its id and name) or its arguments go on.
    ToolCall {
        /// Its place among the answer's calls.
        index: usize,
        /// Set on the call's first chunk.
        id: Option<String>,
        /// Set on the call's first chunk.
        name: Option<String>,
        /// More of its arguments' text.
        arguments: String,
    },
    /// Why the answer ended.
    Finish(String),
    /// The final token counts.
    Usage(Usage),
    /// The stream was cut: the message says why.
    Failed(String),
    /// The stream ended whole.
    Done,
}

/// The events of one chat chunk (`data:` payload); `started` says whether a `Start` was sent.
fn chunk_events(data: &str, started: &mut bool) -> Vec<Event> {
    if data == "[DONE]" {
        return vec![Event::Done];
    }
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return vec![Event::Failed(
            "the answer's stream held an unreadable event".into(),
        )];
    };
    if let Some(e) = v.get("error") {
        let message = e.get("message").and_then(Value::as_str).unwrap_or("failed");
        return vec![Event::Failed(message.to_owned())];
    }
    let mut events = Vec::new();
    if !*started {
        *started = true;
        events.push(Event::Start {
            id: str_at(&v, "/id"),
            model: str_at(&v, "/model"),
            created: v.get("created").and_then(Value::as_u64).unwrap_or_default(),
        });
    }
    for choice in v
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let delta = choice.get("delta");
        if let Some(text) = delta
            .and_then(|d| d.get("content"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            events.push(Event::Text(text.to_owned()));
        }
        for (j, call) in delta
            .and_then(|d| d.get("tool_calls"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let owned = |p: &str| call.pointer(p).and_then(Value::as_str).map(str::to_owned);
            events.push(Event::ToolCall {
                index: call
                    .get("index")
                    .and_then(Value::as_u64)
                    .and_then(|i| usize::try_from(i).ok())
                    .unwrap_or(j),
                id: owned("/id"),
                name: owned("/function/name"),
                arguments: owned("/function/arguments").unwrap_or_default(),
            });
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            events.push(Event::Finish(reason.to_owned()));
        }
    }
    if let Some(usage) = v.get("usage").filter(|u| u.is_object()) {
        events.push(Event::Usage(Usage::from_openai(Some(usage))));
    }
    events
}

/// The handler of a dialect's door.
pub async fn handle<D: Dialect>(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    match answer::<D>(&gw, &headers, body, started).await {
        Ok(response) => response,
        Err(e) => translate_refusal::<D>(gw.refuse(D::METHOD, e)).await,
    }
}

async fn answer<D: Dialect>(
    gw: &Gateway,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<Response, GatewayError> {
    let caller = gw.caller(headers)?;
    let body = gw.body(headers, body).await?;
    let (chat, dialect) = D::read(crate::wire::object(&body)?)?;
    let bytes = serde_json::to_vec(&chat)
        .map_err(|e| InvalidRequest::new("body", format!("cannot be re-encoded: {e}")))?;
    let response = answer_chat(gw, caller, &bytes, started).await?;
    Ok(translate(response, dialect).await)
}

/// The dialect's response for a chat-completions response: a whole answer, a stream, or
/// an error (the upstream refused the caller's request).
async fn translate<D: Dialect>(response: Response, dialect: D) -> Response {
    if response.status() != StatusCode::OK {
        return translate_refusal::<D>(response).await;
    }
    let streamed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    if streamed {
        let mut out = event_stream(Body::from_stream(translate_stream(body, dialect)));
        for (name, value) in &parts.headers {
            if !out.headers().contains_key(name) {
                out.headers_mut().insert(name, value.clone());
            }
        }
        return out;
    }
    // A whole answer is already in memory (the gateway read it within its limits).
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let completion = serde_json::from_slice::<Value>(&bytes).unwrap_or_default();
    let answer = Answer::from_completion(&completion).unwrap_or_default();
    let mut whole = dialect.whole(&answer);
    // A routing trace the caller asked for travels in any dialect.
    if let Some(trace) = completion.get("triage") {
        whole["triage"] = trace.clone();
    }
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(whole.to_string()))
}

/// A refusal in the dialect's error shape, with its status and headers (`retry-after`).
async fn translate_refusal<D: Dialect>(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    // Refusals are small: the gateway's own, or an upstream's read within its error bound.
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let openai = serde_json::from_slice::<Value>(&bytes).unwrap_or_else(|_| {
        serde_json::json!({"error": {"message": String::from_utf8_lossy(&bytes), "type": "api_error"}})
    });
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = D::error(parts.status, &openai).to_string();
    Response::from_parts(parts, Body::from(body))
}

/// A chat-completions SSE body, translated event by event as it arrives.
fn translate_stream<D: Dialect>(
    body: Body,
    dialect: D,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    struct State<D> {
        upstream: axum::body::BodyDataStream,
        pending: Vec<u8>,
        out: VecDeque<Bytes>,
        dialect: D,
        started: bool,
        ended: bool,
    }
    let state = State {
        upstream: body.into_data_stream(),
        pending: Vec::new(),
        out: VecDeque::new(),
        dialect,
        started: false,
        ended: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(bytes) = s.out.pop_front() {
                return Some((Ok(bytes), s));
            }
            if s.ended {
                return None;
            }
            let events = match s.upstream.next().await {
                Some(Ok(bytes)) => {
                    s.pending.extend_from_slice(&bytes);
                    frames(&mut s.pending)
                        .iter()
                        .flat_map(|data| chunk_events(data, &mut s.started))
                        .collect()
                }
                Some(Err(e)) => vec![Event::Failed(format!("the stream failed: {e}"))],
                None => vec![Event::Failed("the stream ended before it finished".into())],
            };
            for event in events {
                let last = matches!(event, Event::Done | Event::Failed(_));
                s.out.extend(s.dialect.event(event));
                if last {
                    s.ended = true;
                    break;
                }
            }
        }
    })
}

/// The `data:` payloads of the whole events in `pending`, which keeps the unfinished rest.
fn frames(pending: &mut Vec<u8>) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
        let frame: Vec<u8> = pending.drain(..end + 2).collect();
        let text = String::from_utf8_lossy(&frame);
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim_start)
            .collect();
        if !data.is_empty() {
            out.push(data.join("\n"));
        }
    }
    out
}

/// One named server-sent event (`event: NAME`), as Anthropic and the Responses API send them.
pub fn named_sse(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The message of an OpenAI-shaped error body.
pub fn error_message(openai: &Value) -> String {
    openai
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("the request failed")
        .to_owned()
}

/// The chat body a dialect's request becomes (tests).
#[cfg(test)]
pub fn read_as_chat<D: Dialect>(body: Value) -> Result<Map<String, Value>, InvalidRequest> {
    let Value::Object(body) = body else {
        return Err(InvalidRequest::new("body", "must be a JSON object"));
    };
    D::read(body).map(|(chat, _)| chat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_become_events_and_events_sum_to_the_answer() {
        let mut started = false;
        let mut pending = b"data: {\"id\":\"c\",\"model\":\"m\",\"created\":3,\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"Pa\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"t\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\ndata: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n\ndata: [DO".to_vec();
        let events: Vec<Event> = frames(&mut pending)
            .iter()
            .flat_map(|d| chunk_events(d, &mut started))
            .collect();
        assert_eq!(pending, b"data: [DO", "an unfinished frame waits");
        let mut answer = Answer::default();
        for e in &events {
            answer.apply(e);
        }
        assert_eq!(answer.model, "m");
        assert_eq!(answer.text, "Pa");
        assert_eq!(
            answer.tool_calls,
            vec![ToolCall {
                id: "t".into(),
                name: "f".into(),
                arguments: "{\"a\":1}".into()
            }]
        );
        assert_eq!(answer.finish.as_deref(), Some("tool_calls"));
        assert_eq!(
            (answer.usage.input, answer.usage.output),
            (Some(4), Some(2))
        );
        pending.extend_from_slice(b"NE]\n\n");
        assert_eq!(frames(&mut pending), vec!["[DONE]".to_owned()]);
        assert_eq!(
            chunk_events("{\"error\":{\"message\":\"cut\"}}", &mut started),
            vec![Event::Failed("cut".into())]
        );
    }
}
