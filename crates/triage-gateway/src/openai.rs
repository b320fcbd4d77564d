//! Chat-completions shapes the gateway writes or rewrites: chunks, usage, the `model` field.

use serde_json::{Value, json};

/// Token counts an upstream reported (either may be missing).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// Prompt tokens.
    pub input: Option<u64>,
    /// Completion tokens.
    pub output: Option<u64>,
}

impl Usage {
    /// From an OpenAI `usage` object.
    pub fn from_openai(usage: Option<&Value>) -> Self {
        Self {
            input: usage
                .and_then(|u| u.get("prompt_tokens"))
                .and_then(Value::as_u64),
            output: usage
                .and_then(|u| u.get("completion_tokens"))
                .and_then(Value::as_u64),
        }
    }

    /// As an OpenAI `usage` object.
    pub fn openai(&self) -> Value {
        let (i, o) = (self.input.unwrap_or(0), self.output.unwrap_or(0));
        json!({"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o})
    }

    /// Whether the upstream said anything about tokens.
    pub fn reported(&self) -> bool {
        self.input.is_some() || self.output.is_some()
    }
}

/// The answer text of a chat completion ("" when it has none).
pub fn completion_text(body: &Value) -> &str {
    body.pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// A `chat.completion.chunk` with one choice.
pub fn chunk(id: &str, model: &str, created: u64, delta: Value, finish: Value) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
}

/// The final usage chunk (`stream_options.include_usage`): no choices, only usage.
pub fn usage_chunk(id: &str, model: &str, created: u64, usage: &Usage) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage.openai(),
    })
}

/// Seconds since the Unix epoch, for `created`.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
