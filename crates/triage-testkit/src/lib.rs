//! A local LLM upstream for tests and benchmarks, since real providers cannot be reached here.
//!
//! It speaks the OpenAI chat-completions API (`POST /v1/chat/completions`) and Anthropic's
//! Messages API (`POST /v1/messages`), streaming (server-sent events, sent as they are made)
//! and not, with realistic `usage`. Its answer names the model and echoes the start of the
//! prompt, so a test can tell which model answered what. Faults are scripted per model over
//! HTTP (`POST /_script`), so Rust, Python and Node tests drive it alike:
//! `{"model": "m", "faults": [{"kind": "status", "status": 429, "retry_after": 7}]}` queues
//! faults that the next calls to `m` consume in order. An answer stops at the request's
//! `max_tokens` (or `max_completion_tokens`), as a real provider's does. Kinds: `status` (any status, with an
//! optional `retry_after` in seconds), `slow_first_byte` (`ms`), `cut_stream` (after `chunks`
//! chunks the connection breaks), `malformed` (a 200 whose body is not JSON), `no_usage`, and
//! the misbehaving ones ([`misbehave`]): `redirect` (`status`, `location`), `endless_stream`
//! (`ms` between chunks), `huge_body` (`bytes`, `announce`), `trickle` (`ms` per byte of the
//! ordinary answer), `no_newlines`.
//! `GET /_calls` counts calls per model, `GET /_abandoned` those whose caller hung up while the
//! upstream was still waiting to answer; `POST /_reset` clears scripts and counts.
//!
//! Recorded answers replace the generated one: `POST /_record` with
//! `{"answers": [{"model": "m", "prompt": "…", "text": "…"}]}` makes every call to `m` whose
//! last user message is exactly `prompt` answer `text` (e.g. a model's recorded response from
//! an outcome table), streamed word by word like any other answer. `"contains": "…"` in place
//! of `"prompt"` matches any last user message holding that text (tried in order, after the
//! exact ones): a scripted judge, whose verdict depends on the answer it is shown.
//!
//! Tools: like a real provider, a request whose tool choice forces a call (OpenAI's
//! `"required"` or a named function, Anthropic's `any` or a named tool) is answered with a call
//! to that tool (else the first), in each dialect's shape, streamed or not; its arguments are
//! `{"query": …}` with the start of the prompt. Otherwise tools do not change the answer.

pub mod misbehave;
pub mod postgres;
pub mod records;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use triage_core::config::{ProviderKind, ProviderSettings};

/// One scripted fault.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer with this status (and `retry-after` seconds, if given).
    Status {
        /// HTTP status.
        status: u16,
        /// `retry-after` header, seconds.
        #[serde(default)]
        retry_after: Option<u32>,
    },
    /// Wait this long before the response head.
    SlowFirstByte {
        /// Delay, ms.
        ms: u64,
    },
    /// Stream this many chunks, then break the connection.
    CutStream {
        /// Chunks sent before the cut.
        chunks: usize,
    },
    /// A 200 whose body is not JSON.
    Malformed,
    /// Answer normally but report no token usage.
    NoUsage,
    /// A redirect (307 unless `status` says another 3xx) to `location`.
    Redirect {
        /// Where to.
        location: String,
        /// The 3xx status.
        #[serde(default)]
        status: Option<u16>,
    },
    /// A stream whose chunks never end, `ms` apart.
    EndlessStream {
        /// Delay between chunks, ms.
        ms: u64,
    },
    /// A 200 of this many bytes (generated as sent).
    HugeBody {
        /// Body size.
        bytes: u64,
        /// Whether `content-length` announces it.
        #[serde(default)]
        announce: bool,
    },
    /// The ordinary answer, one byte every `ms`.
    Trickle {
        /// Delay per byte, ms.
        ms: u64,
    },
    /// An event stream whose first line never ends.
    NoNewlines,
}

/// How the upstream answers when no fault is scripted.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// Delay before the response head.
    pub first_byte: Duration,
    /// Delay between streamed chunks.
    pub chunk_delay: Duration,
    /// Words in an answer (besides the echo of the prompt).
    pub answer_words: usize,
    /// Stands in for real providers (`triage serve --demo`): each answer begins
    /// `[demo:MODEL]`, so no one mistakes it for a model's.
    pub demo: bool,
    /// Reasoning models, by upstream name. When any are listed the upstream refuses what real
    /// providers refuse: OpenAI's reasoning models `max_tokens`, `temperature` and `top_p`,
    /// other models `reasoning_effort`, and Anthropic's thinking beside `temperature` or
    /// `top_p`, or on a model that does not reason (400 naming the parameter). A reasoning
    /// model's usage counts 50 hidden reasoning tokens in its output, as OpenAI's does.
    pub reasoning_models: Vec<String>,
    /// A prompt cache, as providers keep one: OpenAI-style calls whose messages were sent to
    /// the model before report all their input as cached; Messages calls with a
    /// `cache_control` breakpoint write the cache the first time and read it after.
    pub prompt_cache: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            first_byte: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            answer_words: 12,
            demo: false,
            reasoning_models: Vec::new(),
            prompt_cache: false,
        }
    }
}

#[derive(Default)]
struct Script {
    faults: HashMap<String, VecDeque<Fault>>,
    calls: HashMap<String, u64>,
    /// Calls whose caller went away before the answer began.
    abandoned: HashMap<String, u64>,
    /// Recorded answers by (model, prompt).
    recorded: HashMap<(String, String), String>,
    /// The prompt cache: (model, messages) already sent.
    cached: std::collections::HashSet<(String, String)>,
    /// Answers by (model, a substring of the prompt), tried in order after the exact ones
    /// (a scripted judge: "an answer by model X gets this verdict").
    containing: Vec<(String, String, String)>,
}

/// Counts a call as abandoned if it is dropped (the caller hung up) before `done`.
struct Waiting {
    script: Arc<Mutex<Script>>,
    model: String,
    done: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.done {
            let mut s = self.script.lock().unwrap_or_else(PoisonError::into_inner);
            *s.abandoned.entry(self.model.clone()).or_default() += 1;
        }
    }
}

#[derive(Clone)]
struct Upstream {
    script: Arc<Mutex<Script>>,
    behaviour: Arc<Behaviour>,
}

impl Upstream {
    /// Counts the call and takes the model's next fault.
    fn next_fault(&self, model: &str) -> Option<Fault> {
        let mut s = self.script.lock().unwrap_or_else(PoisonError::into_inner);
        *s.calls.entry(model.to_owned()).or_default() += 1;
        s.faults.get_mut(model).and_then(VecDeque::pop_front)
    }
}

/// A running local upstream.
pub struct LocalUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl LocalUpstream {
    /// Starts one on `127.0.0.1` on a free port.
    pub async fn start(behaviour: Behaviour) -> std::io::Result<Self> {
        Self::bind(
            "127.0.0.1:0".parse().map_err(std::io::Error::other)?,
            behaviour,
        )
        .await
    }

    /// Starts one on `addr`.
    pub async fn bind(addr: SocketAddr, behaviour: Behaviour) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Upstream {
            script: Arc::default(),
            behaviour: Arc::new(behaviour),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/v1/messages", post(anthropic))
            .route("/_script", post(script))
            .route("/_record", post(record))
            .route("/_reset", post(reset))
            .route("/_calls", get(calls))
            .route("/_abandoned", get(abandoned))
            .with_state(state);
        // TCP_NODELAY, as real upstreams stream: each chunk leaves when it is written.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, task })
    }

    /// Base URL of its OpenAI-style API (`…/v1`); the Anthropic one is the same.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

impl Drop for LocalUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordedAnswer {
    model: String,
    /// The whole last user message…
    #[serde(default)]
    prompt: Option<String>,
    /// …or a part of it.
    #[serde(default)]
    contains: Option<String>,
    text: String,
}

#[derive(Deserialize)]
struct RecordBody {
    answers: Vec<RecordedAnswer>,
}

async fn record(State(up): State<Upstream>, body: axum::Json<RecordBody>) -> StatusCode {
    let mut s = up.script.lock().unwrap_or_else(PoisonError::into_inner);
    for a in body.0.answers {
        match (a.prompt, a.contains) {
            (Some(prompt), None) => {
                s.recorded.insert((a.model, prompt), a.text);
            }
            (None, Some(part)) => s.containing.push((a.model, part, a.text)),
            _ => return StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct ScriptBody {
    model: String,
    faults: Vec<Fault>,
}

async fn script(State(up): State<Upstream>, body: axum::Json<ScriptBody>) -> StatusCode {
    let mut s = up.script.lock().unwrap_or_else(PoisonError::into_inner);
    s.faults
        .entry(body.0.model)
        .or_default()
        .extend(body.0.faults);
    StatusCode::NO_CONTENT
}

async fn reset(State(up): State<Upstream>) -> StatusCode {
    *up.script.lock().unwrap_or_else(PoisonError::into_inner) = Script::default();
    StatusCode::NO_CONTENT
}

async fn abandoned(State(up): State<Upstream>) -> axum::Json<HashMap<String, u64>> {
    let s = up.script.lock().unwrap_or_else(PoisonError::into_inner);
    axum::Json(s.abandoned.clone())
}

async fn calls(State(up): State<Upstream>) -> axum::Json<HashMap<String, u64>> {
    axum::Json(
        up.script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .calls
            .clone(),
    )
}

/// The prompt's last user text.
fn prompt_of(body: &Value) -> String {
    let last = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| {
            m.iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        });
    match last.and_then(|m| m.get("content")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The answer's pieces, streamed one per chunk: the recorded answer for (model, prompt) cut
/// after each run of whitespace, else the model's name, an echo of the prompt's start, then
/// filler.
fn answer_pieces(up: &Upstream, model: &str, prompt: &str, n: usize) -> Vec<String> {
    let s = up.script.lock().unwrap_or_else(PoisonError::into_inner);
    let containing = s
        .containing
        .iter()
        .find(|(m, part, _)| m == model && prompt.contains(part.as_str()))
        .map(|(.., text)| text);
    if let Some(text) = s
        .recorded
        .get(&(model.to_owned(), prompt.to_owned()))
        .or(containing)
    {
        return text
            .split_inclusive(char::is_whitespace)
            .map(str::to_owned)
            .collect();
    }
    let mut words = vec![if up.behaviour.demo {
        format!("[demo:{model}]")
    } else {
        format!("[{model}]")
    }];
    words.extend(prompt.split_whitespace().take(6).map(str::to_owned));
    words.extend((0..n).map(|i| format!("w{i}")));
    words
        .into_iter()
        .enumerate()
        .map(|(i, w)| if i == 0 { w } else { format!(" {w}") })
        .collect()
}

/// Hidden reasoning tokens a reasoning model's answer counts (see [`Behaviour::reasoning_models`]).
pub const HIDDEN_REASONING_TOKENS: u64 = 50;

/// Roughly 4 bytes a token, at least 1.
fn tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4).max(1)
}

struct Call {
    model: String,
    /// Of the input tokens, those read from and written to the prompt cache.
    cache_read: u64,
    cache_written: u64,
    stream: bool,
    /// A forced tool call: (tool name, arguments as JSON text).
    tool_call: Option<(String, String)>,
    /// The answer, in the pieces it is streamed in.
    pieces: Vec<String>,
    input_tokens: u64,
    fault: Option<Fault>,
}

/// Reads a call (a Messages request when `anthropic`), or the response that ends it early.
async fn prepare(up: &Upstream, body: &Bytes, anthropic: bool) -> Result<Call, Response> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad JSON: {e}")).into_response())?;
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Some(refused) = refused_parameter(&up.behaviour, &body, anthropic) {
        let message =
            format!("Unsupported parameter: '{refused}' is not supported with this model.");
        return Err((
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"error": {"message": message, "type": "invalid_request_error",
                                        "param": refused}}),
            ),
        )
            .into_response());
    }
    let prompt = prompt_of(&body);
    let fault = up.next_fault(&model);
    let delay = match &fault {
        Some(Fault::SlowFirstByte { ms }) => Duration::from_millis(*ms),
        _ => up.behaviour.first_byte,
    };
    if !delay.is_zero() {
        let mut waiting = Waiting {
            script: Arc::clone(&up.script),
            model: model.clone(),
            done: false,
        };
        tokio::time::sleep(delay).await;
        waiting.done = true;
    }
    if let Some(Fault::Status {
        status,
        retry_after,
    }) = &fault
    {
        let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (
            status,
            axum::Json(json!({"error": {"message": "scripted fault", "type": "scripted"}})),
        )
            .into_response();
        if let Some(s) = retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*s));
        }
        return Err(r);
    }
    match &fault {
        Some(Fault::Malformed) => {
            return Err((StatusCode::OK, "this is { not json").into_response());
        }
        Some(Fault::Redirect { location, status }) => {
            return Err(misbehave::redirect(status.unwrap_or(307), location));
        }
        Some(Fault::EndlessStream { ms }) => {
            return Err(misbehave::endless_stream(
                &model,
                Duration::from_millis(*ms),
            ));
        }
        Some(Fault::HugeBody { bytes, announce }) => {
            return Err(misbehave::huge_body(*bytes, *announce));
        }
        Some(Fault::NoNewlines) => return Err(misbehave::no_newlines()),
        _ => {}
    }
    let all_text = body
        .get("messages")
        .map(Value::to_string)
        .unwrap_or_default();
    // Like a real provider, the answer stops at the caller's max_tokens.
    let max_tokens = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64);
    let mut pieces = answer_pieces(up, &model, &prompt, up.behaviour.answer_words);
    if let Some(max) = max_tokens {
        let mut bytes = 0u64;
        pieces.retain(|p| {
            bytes += p.len() as u64;
            bytes <= max.saturating_mul(4)
        });
    }
    let input_tokens = tokens(&all_text);
    let (cache_read, cache_written) = if up.behaviour.prompt_cache {
        let seen = !up
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cached
            .insert((model.clone(), all_text.clone()));
        // Anthropic caches only up to a caller's breakpoint; OpenAI caches by itself.
        let breakpoint = body.to_string().contains("\"cache_control\"");
        match (anthropic, seen) {
            (true, _) if !breakpoint => (0, 0),
            (_, true) => (input_tokens, 0),
            (true, false) => (0, input_tokens),
            (false, false) => (0, 0),
        }
    } else {
        (0, 0)
    };
    Ok(Call {
        cache_read,
        cache_written,
        stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
        tool_call: forced_tool(&body).map(|name| {
            let head: Vec<&str> = prompt.split_whitespace().take(6).collect();
            (name, json!({"query": head.join(" ")}).to_string())
        }),
        pieces,
        input_tokens,
        model,
        fault,
    })
}

/// The parameter a strict upstream refuses in `body`, a Messages request when `anthropic`
/// (see [`Behaviour::reasoning_models`]).
fn refused_parameter(behaviour: &Behaviour, body: &Value, anthropic: bool) -> Option<&'static str> {
    if behaviour.reasoning_models.is_empty() {
        return None;
    }
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let reasons = behaviour.reasoning_models.iter().any(|m| m == model);
    let has = |k: &str| body.get(k).is_some_and(|v| !v.is_null());
    match (anthropic, reasons) {
        (true, _) if has("thinking") && !reasons => Some("thinking"),
        (true, _) if has("thinking") => ["temperature", "top_p"].into_iter().find(|k| has(k)),
        (true, _) => None,
        (false, true) => ["max_tokens", "temperature", "top_p"]
            .into_iter()
            .find(|k| has(k)),
        (false, false) => has("reasoning_effort").then_some("reasoning_effort"),
    }
}

/// The tool a request forces a call to: the one named, else the first (either dialect).
fn forced_tool(body: &Value) -> Option<String> {
    let choice = body.get("tool_choice")?;
    let named = choice
        .pointer("/function/name")
        .or_else(|| choice.get("name"))
        .and_then(Value::as_str);
    let forced = named.is_some()
        || choice.as_str() == Some("required")
        || choice.get("type").and_then(Value::as_str) == Some("any");
    if !forced {
        return None;
    }
    let first = body
        .pointer("/tools/0/function/name")
        .or_else(|| body.pointer("/tools/0/name"));
    named
        .map(str::to_owned)
        .or_else(|| first.and_then(Value::as_str).map(str::to_owned))
}

async fn openai(State(up): State<Upstream>, body: Bytes) -> Response {
    let call = match prepare(&up, &body, false).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let text = call.pieces.concat();
    // A reasoning model's output counts its hidden reasoning, as OpenAI reports it.
    let reasoning = if up.behaviour.reasoning_models.contains(&call.model) {
        HIDDEN_REASONING_TOKENS
    } else {
        0
    };
    let completion = tokens(&text) + reasoning;
    let usage = json!({"prompt_tokens": call.input_tokens, "completion_tokens": completion,
                       "total_tokens": call.input_tokens + completion,
                       "prompt_tokens_details": {"cached_tokens": call.cache_read},
                       "completion_tokens_details": {"reasoning_tokens": reasoning}});
    let with_usage = !matches!(call.fault, Some(Fault::NoUsage));
    if let Some((name, arguments)) = &call.tool_call {
        return openai_tool_call(&call, name, arguments, usage);
    }
    if !call.stream {
        let mut v = json!({"id": "chatcmpl-local", "object": "chat.completion", "created": 1,
            "model": call.model, "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": text}}]});
        if with_usage {
            v["usage"] = usage;
        }
        if let Some(Fault::Trickle { ms }) = call.fault {
            let body = v.to_string().into_bytes();
            return misbehave::trickle(body, "application/json", Duration::from_millis(ms));
        }
        return axum::Json(v).into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-local", "object": "chat.completion.chunk", "created": 1,
               "model": call.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for piece in &call.pieces {
        events.push(chunk(json!({"content": piece}), Value::Null));
    }
    events.push(chunk(json!({}), "stop".into()));
    if with_usage {
        events.push(
            json!({"id": "chatcmpl-local", "object": "chat.completion.chunk", "created": 1,
                           "model": call.model, "choices": [], "usage": usage}),
        );
    }
    let frames: Vec<String> = events
        .iter()
        .map(|e| format!("data: {e}\n\n"))
        .chain(["data: [DONE]\n\n".to_owned()])
        .collect();
    sse(frames, &call, up.behaviour.chunk_delay)
}

/// An OpenAI answer that calls `name`, whole or streamed (the call's id, then its arguments).
fn openai_tool_call(call: &Call, name: &str, arguments: &str, usage: Value) -> Response {
    let tool = json!({"id": "call_local", "type": "function",
                      "function": {"name": name, "arguments": arguments}});
    if !call.stream {
        return axum::Json(json!({"id": "chatcmpl-local", "object": "chat.completion",
            "created": 1, "model": call.model, "usage": usage, "choices": [{"index": 0,
            "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": null, "tool_calls": [tool]}}]}))
        .into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-local", "object": "chat.completion.chunk", "created": 1,
               "model": call.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut opening = tool.clone();
    opening["index"] = 0.into();
    opening["function"]["arguments"] = "".into();
    let events = [
        chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [opening]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}),
            Value::Null,
        ),
        chunk(json!({}), "tool_calls".into()),
        json!({"id": "chatcmpl-local", "object": "chat.completion.chunk", "created": 1,
               "model": call.model, "choices": [], "usage": usage}),
    ];
    let frames = events
        .iter()
        .map(|e| format!("data: {e}\n\n"))
        .chain(["data: [DONE]\n\n".to_owned()])
        .collect();
    sse(frames, call, Duration::ZERO)
}

/// An Anthropic answer that calls `name`, whole or streamed.
fn anthropic_tool_use(call: &Call, name: &str, arguments: &str) -> Response {
    let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
    let usage = json!({"input_tokens": call.input_tokens, "output_tokens": tokens(arguments)});
    if !call.stream {
        return axum::Json(
            json!({"id": "msg_local", "type": "message", "role": "assistant",
            "model": call.model, "stop_reason": "tool_use", "usage": usage,
            "content": [{"type": "tool_use", "id": "toolu_local", "name": name, "input": input}]}),
        )
        .into_response();
    }
    let frames = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_local",
            "type": "message", "role": "assistant", "model": call.model, "content": [],
            "usage": anthropic_usage(call, 1)}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_local", "name": name, "input": {}}}),
        ),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": arguments}}),
        ),
        event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        event(
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": tokens(arguments)}}),
        ),
        event("message_stop", json!({"type": "message_stop"})),
    ];
    sse(frames, call, Duration::ZERO)
}

async fn anthropic(State(up): State<Upstream>, body: Bytes) -> Response {
    let call = match prepare(&up, &body, true).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Some((name, arguments)) = &call.tool_call {
        return anthropic_tool_use(&call, name, arguments);
    }
    let text = call.pieces.concat();
    let out = tokens(&text);
    if !call.stream {
        return axum::Json(
            json!({"id": "msg_local", "type": "message", "role": "assistant",
            "model": call.model, "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn", "usage": anthropic_usage(&call, out)}),
        )
        .into_response();
    }
    let mut frames = vec![event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_local",
        "type": "message", "role": "assistant", "model": call.model, "content": [],
        "usage": anthropic_usage(&call, 1)}}),
    )];
    frames.push(event(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0,
        "content_block": {"type": "text", "text": ""}}),
    ));
    for piece in &call.pieces {
        frames.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    frames.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    frames.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": out}}),
    ));
    frames.push(event("message_stop", json!({"type": "message_stop"})));
    sse(frames, &call, up.behaviour.chunk_delay)
}

/// Anthropic's usage: `input_tokens` leaves out what was read from or written to the cache.
fn anthropic_usage(call: &Call, output: u64) -> Value {
    let fresh = call.input_tokens - call.cache_read - call.cache_written;
    json!({"input_tokens": fresh, "output_tokens": output,
           "cache_read_input_tokens": call.cache_read,
           "cache_creation_input_tokens": call.cache_written})
}

fn event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// Sends `frames` one by one, `delay` apart; a `cut_stream` fault breaks the body part-way.
fn sse(frames: Vec<String>, call: &Call, delay: Duration) -> Response {
    let cut = match call.fault {
        Some(Fault::CutStream { chunks }) => Some(chunks),
        Some(Fault::Trickle { ms }) => {
            let body = frames.concat().into_bytes();
            return misbehave::trickle(body, "text/event-stream", Duration::from_millis(ms));
        }
        _ => None,
    };
    let stream = futures::stream::unfold(
        (frames.into_iter().enumerate(), cut, delay),
        |(mut it, cut, delay)| async move {
            let (i, frame) = it.next()?;
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if cut.is_some_and(|c| i >= c) {
                // Let what was sent reach the client first, as when a real upstream dies.
                tokio::time::sleep(Duration::from_millis(50)).await;
                // An error ends the body without its terminating chunk: the client sees a broken
                // connection, as with a real upstream that dies mid-answer.
                return Some((Err(std::io::Error::other("scripted cut")), (it, cut, delay)));
            }
            Some((
                Ok::<_, std::io::Error>(Bytes::from(frame)),
                (it, cut, delay),
            ))
        },
    );
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r
}

/// One `[[providers]]` entry per `provider` name the catalog uses, all pointed at `base_url`
/// (an upstream from this crate): Anthropic's models speak the Messages API, the rest OpenAI's.
pub fn local_providers(settings: &triage_core::Settings, base_url: &str) -> Vec<ProviderSettings> {
    let mut names: Vec<String> = settings.models.iter().map(|m| m.provider.clone()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| ProviderSettings {
            kind: if name == "anthropic" {
                ProviderKind::Anthropic
            } else {
                ProviderKind::Openai
            },
            name,
            base_url: base_url.to_owned(),
            api_key_env: None,
            headers: Default::default(),
            connect_ms: 2000,
            first_byte_ms: 30_000,
            total_ms: 120_000,
        })
        .collect()
}

/// Writes `policy` (a policy file, e.g. the bundled one) to `dir` with its acceptor replaced by
/// one plan of the two `drafts` whose head trusts their agreement and nothing else: agreeing
/// drafts are accepted (probability ≈ 0.98), disagreeing ones escalate (≈ 0.02), at every
/// trade-off. Tests of the serving path use it so that what they check is the wiring, not a
/// trained head's judgement of one example. Returns the new file's path.
pub fn policy_trusting_agreement(
    policy: &std::path::Path,
    drafts: [&str; 2],
    dir: &std::path::Path,
) -> std::io::Result<std::path::PathBuf> {
    let text = std::fs::read_to_string(policy)?;
    let mut file: Value = serde_json::from_str(&text).map_err(std::io::Error::other)?;
    let width = triage_policy::acceptor::evidence_len(2);
    let mut weights = vec![0.0; width];
    // The last feature of a pair's evidence is whether their answers agree.
    weights[width - 1] = 8.0;
    file["acceptor"] = json!({
        "plans": [{"drafts": drafts, "head": {"weights": weights, "bias": -4.0}}],
        "settings": [{"cost_weight": 0.0, "plan": 0, "threshold": 0.5}],
        "answers": "generic",
    });
    let version = file["version"].as_str().unwrap_or("policy").to_owned();
    file["version"] = format!("{version}-trusts-agreement").into();
    let path = dir.join("policy-trusting-agreement.json");
    std::fs::write(&path, file.to_string())?;
    Ok(path)
}

/// A file of the shared data directory (`$TRIAGE_SHARED_DATA`, else `../shared/data` beside the
/// repository at `root`), or `None` with a SKIPPED line when it is absent: tests that need the
/// shared tables skip, saying so, where they are not.
pub fn shared_data_file(root: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("TRIAGE_SHARED_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/data"));
    let path = dir.join(name);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: {} not found (set TRIAGE_SHARED_DATA to the shared data directory)",
            path.display()
        );
        None
    }
}
