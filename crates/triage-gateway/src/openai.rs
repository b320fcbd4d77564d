//! Chat-completions shapes the gateway writes or rewrites: chunks, usage, the `model` field.

use serde_json::{Value, json};

/// Token counts an upstream reported (either may be missing).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// Prompt tokens, all of them (those read from or written to the prompt cache included).
    pub input: Option<u64>,
    /// Completion tokens (hidden reasoning included).
    pub output: Option<u64>,
    /// Of `input`, those read from the provider's prompt cache.
    pub cached: u64,
    /// Of `input`, those written to the prompt cache (Anthropic's cache writes).
    pub written: u64,
}

impl Usage {
    /// From an OpenAI `usage` object (`prompt_tokens` counts the cached ones too).
    pub fn from_openai(usage: Option<&Value>) -> Self {
        let number = |pointer: &str| {
            usage
                .and_then(|u| u.pointer(pointer))
                .and_then(Value::as_u64)
        };
        Self {
            input: number("/prompt_tokens"),
            output: number("/completion_tokens"),
            cached: number("/prompt_tokens_details/cached_tokens").unwrap_or(0),
            written: number("/prompt_tokens_details/cache_write_tokens").unwrap_or(0),
        }
    }

    /// From an Anthropic `usage` object, whose `input_tokens` leaves out the tokens read
    /// from and written to the cache: they are added back, so `input` is every input token.
    pub fn from_anthropic(usage: Option<&Value>) -> Self {
        let number = |key: &str| usage.and_then(|u| u.get(key)).and_then(Value::as_u64);
        let cached = number("cache_read_input_tokens").unwrap_or(0);
        let written = number("cache_creation_input_tokens").unwrap_or(0);
        Self {
            input: number("input_tokens").map(|n| n + cached + written),
            output: number("output_tokens"),
            cached,
            written,
        }
    }

    /// As an OpenAI `usage` object.
    pub fn openai(&self) -> Value {
        let (i, o) = (self.input.unwrap_or(0), self.output.unwrap_or(0));
        let mut usage = json!({"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o});
        if self.cached > 0 || self.written > 0 {
            // `cache_write_tokens` is Triage's: Anthropic's cache writes, priced apart.
            usage["prompt_tokens_details"] =
                json!({"cached_tokens": self.cached, "cache_write_tokens": self.written});
        }
        usage
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
