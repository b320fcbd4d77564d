//! Relaying a stream: each upstream event goes to the client as soon as it arrives (no
//! buffering of the body), renamed after the catalog model, with usage kept for the record.
//!
//! The attempt's record is written when the stream ends, before `[DONE]` is sent; a stream cut
//! half-way ends with an error event and a failure record; a client that goes away drops the
//! relay, which cancels the upstream call and records what was streamed so far.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use triage_log::ErrorKind;

use crate::anthropic::StreamTranslator;
use crate::call::{Events, Translated, translate};
use crate::judge::Pending;
use crate::openai::{Usage, now_secs, usage_chunk};
use crate::record::{Attempt, Outcome};

/// The most answer text kept for counting tokens when the upstream reports none; beyond it
/// the rest is counted as one token per four bytes.
const MAX_KEPT_TEXT: usize = 1 << 20;

/// A stream on its way to the client.
pub struct Relay {
    rest: Events,
    translator: Option<StreamTranslator>,
    model: String,
    include_usage: bool,
    usage: Usage,
    answer: String,
    extra_bytes: usize,
    attempt: Option<Attempt>,
    queue: VecDeque<Bytes>,
    finished: bool,
    /// The judge's, once the whole answer has been streamed.
    judged: Option<Pending>,
}

impl Relay {
    /// Starts relaying: `first` are the chunks already read.
    pub fn new(
        first: Vec<Value>,
        rest: Events,
        translator: Option<StreamTranslator>,
        usage: Usage,
        attempt: Attempt,
        include_usage: bool,
    ) -> Self {
        let mut relay = Self {
            rest,
            translator,
            model: attempt.model.clone(),
            include_usage,
            usage,
            answer: String::new(),
            extra_bytes: 0,
            attempt: Some(attempt),
            queue: VecDeque::new(),
            finished: false,
            judged: None,
        };
        for chunk in first {
            relay.push(chunk);
        }
        relay
    }

    /// Sends the answer to the judge when (and only when) the stream ends whole.
    pub fn judged(mut self, judged: Option<Pending>) -> Self {
        self.judged = judged;
        self
    }

    /// The SSE body.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
        futures::stream::unfold(self, |mut relay| async move {
            loop {
                if let Some(bytes) = relay.queue.pop_front() {
                    return Some((Ok(bytes), relay));
                }
                if relay.finished {
                    return None;
                }
                relay.step().await;
            }
        })
    }

    /// Reads one upstream event and queues what it turns into.
    async fn step(&mut self) {
        let event = match self.rest.next().await {
            None => return self.fail("the upstream's stream ended before it finished"),
            Some(Err(e)) => return self.fail(&format!("the upstream's stream failed: {e}")),
            Some(Ok(event)) => event,
        };
        match translate(
            &event,
            self.translator.as_mut(),
            &self.model,
            &mut self.usage,
        ) {
            Translated::Chunks(chunks) => {
                for chunk in chunks {
                    self.push(chunk);
                }
            }
            Translated::Done => self.done(),
            Translated::Error(detail) => self.fail(&detail),
        }
    }

    fn push(&mut self, mut chunk: Value) {
        self.keep_text(&chunk);
        let usage_only = chunk
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty);
        if !self.include_usage {
            // The gateway always asks the upstream for usage; the client only gets it if it
            // asked too.
            if usage_only {
                return;
            }
            if let Value::Object(o) = &mut chunk {
                o.remove("usage");
            }
        }
        self.queue.push_back(sse(&chunk));
    }

    fn keep_text(&mut self, chunk: &Value) {
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return;
        };
        for c in choices {
            let text = c
                .pointer("/delta/content")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if self.answer.len() + text.len() <= MAX_KEPT_TEXT {
                self.answer.push_str(text);
            } else {
                self.extra_bytes += text.len();
            }
        }
    }

    fn done(&mut self) {
        if let (Some(t), true) = (&self.translator, self.include_usage) {
            let chunk = usage_chunk(t.id(), &self.model, now_secs(), &self.usage);
            self.queue.push_back(sse(&chunk));
        }
        self.finish(ErrorKind::None, "ok");
        self.queue.push_back(Bytes::from_static(DONE));
        self.finished = true;
    }

    fn fail(&mut self, detail: &str) {
        self.finish(ErrorKind::Unavailable, "unavailable");
        let error = json!({"error": {
            "message": format!("the answer from {} was cut off: {detail}", self.model),
            "type": "server_error",
            "code": "upstream_stream_failed",
        }});
        self.queue.push_back(sse(&error));
        self.finished = true;
    }

    fn finish(&mut self, error: ErrorKind, label: &str) {
        let Some(attempt) = self.attempt.take() else {
            return;
        };
        let answer = std::mem::take(&mut self.answer);
        // Text past the kept bound is counted at about four bytes a token.
        let extra_tokens = triage_encoder::approx_tokens(self.extra_bytes);
        attempt.finish(&Outcome {
            error,
            label,
            usage: self.usage,
            answer: &answer,
            extra_tokens,
            retry_after: None,
            billed: true,
        });
        // Only a whole answer is judged (not one cut off, cancelled or too long to keep).
        if let Some(judged) = self.judged.take()
            && error == ErrorKind::None
            && self.extra_bytes == 0
        {
            judged.answered(answer);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The client went away mid-stream: the upstream call is cancelled with this relay;
        // record what it streamed so far (billed, but no fault of the model's).
        self.finish(ErrorKind::Other, "cancelled");
    }
}

/// The event that ends a chat-completions stream.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// A server-sent-event response over `body`.
pub fn event_stream(body: Body) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// One server-sent event.
pub fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}
