//! Chat completions ↔ Anthropic's Messages API, both ways: system prompt, turns, `max_tokens`,
//! sampling, stop sequences, tools and tool calls, usage, stop reasons, and the streaming
//! events (`message_start`, `content_block_*`, `message_delta`) as chat-completion chunks.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use triage_core::InvalidRequest;

use crate::openai::{Usage, chunk};

/// Anthropic requires `max_tokens`; this is sent when the caller gave none.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The Messages request for a chat-completions body.
pub fn request(
    body: &Map<String, Value>,
    upstream_model: &str,
    stream: bool,
) -> Result<Value, InvalidRequest> {
    let mut system = Vec::new();
    let mut messages = Vec::new();
    let empty = Vec::new();
    let turns = body
        .get("messages")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for (i, m) in turns.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let content = m.get("content");
        match role {
            "system" | "developer" => system.extend(system_blocks(content)),
            "user" => messages.push(json!({"role": "user", "content": user_content(content)})),
            "assistant" => {
                messages.push(json!({"role": "assistant", "content": assistant_blocks(m, i)?}))
            }
            "tool" | "function" => messages.push(json!({"role": "user", "content": [{
                "type": "tool_result",
                "tool_use_id": m.get("tool_call_id").and_then(Value::as_str).unwrap_or_default(),
                "content": text(content),
            }]})),
            other => {
                return Err(InvalidRequest::new(
                    format!("messages[{i}].role"),
                    format!("unknown role {other:?}"),
                ));
            }
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), upstream_model.into());
    out.insert("messages".into(), messages.into());
    if system.iter().any(|b| b.get("cache_control").is_some()) {
        // Cache breakpoints ride on system blocks.
        out.insert("system".into(), system.into());
    } else if !system.is_empty() {
        let texts: Vec<&str> = system
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect();
        out.insert("system".into(), texts.join("\n\n").into());
    }
    let max_tokens = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    out.insert("max_tokens".into(), max_tokens.into());
    for key in ["temperature", "top_p"] {
        if let Some(v) = body.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    match body.get("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(Value::Array(tools)) = body.get("tools") {
        let tools: Vec<Value> = tools
            .iter()
            .filter_map(|t| t.get("function"))
            .map(|f| {
                json!({
                    "name": f.get("name").cloned().unwrap_or(Value::Null),
                    "description": f.get("description").cloned().unwrap_or(Value::Null),
                    "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"})),
                })
            })
            .collect();
        out.insert("tools".into(), tools.into());
    }
    if let Some(choice) = body.get("tool_choice") {
        let translated = match choice {
            Value::String(s) if s == "required" => Some(json!({"type": "any"})),
            Value::String(s) if s == "none" => Some(json!({"type": "none"})),
            Value::String(_) => Some(json!({"type": "auto"})),
            Value::Object(o) => o
                .get("function")
                .and_then(|f| f.get("name"))
                .map(|name| json!({"type": "tool", "name": name})),
            _ => None,
        };
        if let Some(t) = translated {
            out.insert("tool_choice".into(), t);
        }
    }
    if stream {
        out.insert("stream".into(), true.into());
    }
    Ok(Value::Object(out))
}

/// A system message as Messages' text blocks, keeping each part's `cache_control`.
fn system_blocks(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| {
                let mut block = json!({"type": "text", "text": p.get("text")?.as_str()?});
                if let Some(c) = p.get("cache_control") {
                    block["cache_control"] = c.clone();
                }
                Some(block)
            })
            .collect(),
        other => vec![json!({"type": "text", "text": text(other)})],
    }
}

fn text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// A user turn: plain text, or text and image blocks.
fn user_content(content: Option<&Value>) -> Value {
    let Some(Value::Array(parts)) = content else {
        return text(content).into();
    };
    let blocks: Vec<Value> = parts
        .iter()
        .filter_map(|p| match p.get("type").and_then(Value::as_str) {
            Some("text") => {
                let mut block =
                    json!({"type": "text", "text": p.get("text").cloned().unwrap_or_default()});
                // A prompt-cache breakpoint set by the caller.
                if let Some(c) = p.get("cache_control") {
                    block["cache_control"] = c.clone();
                }
                Some(block)
            }
            Some("image_url") => {
                let url = p
                    .get("image_url")
                    .and_then(|u| u.get("url"))
                    .and_then(Value::as_str)?;
                Some(image_block(url))
            }
            _ => None,
        })
        .collect();
    blocks.into()
}

/// The image URL of an Anthropic image `source` (the inverse of [`image_block`]).
pub fn image_url(source: &Value) -> Option<String> {
    match source.get("type").and_then(Value::as_str)? {
        "base64" => Some(format!(
            "data:{};base64,{}",
            source.get("media_type").and_then(Value::as_str)?,
            source.get("data").and_then(Value::as_str)?
        )),
        "url" => source.get("url").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn image_block(url: &str) -> Value {
    // `data:image/png;base64,...` becomes an inline image; anything else is passed by URL.
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((media, data)) = rest.split_once(";base64,")
    {
        return json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}});
    }
    json!({"type": "image", "source": {"type": "url", "url": url}})
}

/// An assistant turn: its text and its tool calls as `tool_use` blocks.
fn assistant_blocks(m: &Value, i: usize) -> Result<Vec<Value>, InvalidRequest> {
    let mut blocks = Vec::new();
    let said = text(m.get("content"));
    if !said.is_empty() {
        blocks.push(json!({"type": "text", "text": said}));
    }
    for (j, call) in m
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let f = call.get("function");
        let arguments = f
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .unwrap_or("{}");
        let input: Value = serde_json::from_str(arguments).map_err(|e| {
            InvalidRequest::new(
                format!("messages[{i}].tool_calls[{j}].function.arguments"),
                format!("is not a JSON object ({e})"),
            )
        })?;
        blocks.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or_default(),
            "name": f.and_then(|f| f.get("name")).cloned().unwrap_or_default(),
            "input": input,
        }));
    }
    Ok(blocks)
}

/// Anthropic's `stop_reason` and OpenAI's `finish_reason` for the same ending; read both
/// ways (the first row of a `finish_reason` is its `stop_reason`).
const STOP_REASONS: [(&str, &str); 5] = [
    ("end_turn", "stop"),
    ("stop_sequence", "stop"),
    ("max_tokens", "length"),
    ("tool_use", "tool_calls"),
    ("refusal", "content_filter"),
];

/// OpenAI's `finish_reason` for Anthropic's `stop_reason`.
fn finish_reason(stop: Option<&str>) -> Value {
    let Some(stop) = stop else {
        return Value::Null;
    };
    STOP_REASONS
        .iter()
        .find(|(anthropic, _)| *anthropic == stop)
        .map_or(stop, |(_, openai)| openai)
        .into()
}

/// Anthropic's `stop_reason` for OpenAI's `finish_reason`.
pub fn stop_reason(finish: &str) -> &str {
    STOP_REASONS
        .iter()
        .find(|(_, openai)| *openai == finish)
        .map_or(finish, |(anthropic, _)| anthropic)
}

/// The chat completion for a Messages response, named `model`; `None` when it is not one.
pub fn response(v: &Value, model: &str, created: u64) -> Option<(Value, Usage)> {
    let blocks = v.get("content")?.as_array()?;
    let mut said = String::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => said.push_str(b.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("tool_use") => calls.push(json!({
                "id": b.get("id").cloned().unwrap_or_default(),
                "type": "function",
                "function": {
                    "name": b.get("name").cloned().unwrap_or_default(),
                    "arguments": b.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                },
            })),
            _ => {}
        }
    }
    let usage = Usage::from_anthropic(v.get("usage"));
    let mut message = json!({"role": "assistant", "content": if said.is_empty() && !calls.is_empty() { Value::Null } else { said.into() }});
    if !calls.is_empty() {
        message["tool_calls"] = calls.into();
    }
    let completion = json!({
        "id": v.get("id").cloned().unwrap_or_default(),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason(v.get("stop_reason").and_then(Value::as_str)),
        }],
        "usage": usage.openai(),
    });
    Some((completion, usage))
}

/// Turns a Messages event stream into chat-completion chunks.
pub struct StreamTranslator {
    id: String,
    model: String,
    created: u64,
    /// Anthropic content-block index → OpenAI tool-call index.
    tools: HashMap<u64, usize>,
    /// Token counts from `message_start` and `message_delta`.
    pub usage: Usage,
}

impl StreamTranslator {
    /// A translator naming `model` in every chunk.
    pub fn new(model: &str, created: u64) -> Self {
        Self {
            id: String::new(),
            model: model.to_owned(),
            created,
            tools: HashMap::new(),
            usage: Usage::default(),
        }
    }

    /// The chunks for one event (none for `ping`, `content_block_stop`, `message_stop`), or
    /// the upstream's message when it reports an error.
    pub fn event(&mut self, data: &Value) -> Result<Vec<Value>, String> {
        let delta = |me: &Self, delta: Value, finish: Value| {
            chunk(&me.id, &me.model, me.created, delta, finish)
        };
        Ok(match data.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                self.id = data
                    .pointer("/message/id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                self.usage = Usage::from_anthropic(data.pointer("/message/usage"));
                // Output is counted at the end (message_delta); its start is a placeholder.
                self.usage.output = None;
                vec![delta(
                    self,
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                )]
            }
            Some("content_block_start") => {
                let block = data.get("content_block");
                if block.and_then(|b| b.get("type")).and_then(Value::as_str) != Some("tool_use") {
                    return Ok(Vec::new());
                }
                let index = data
                    .get("index")
                    .and_then(Value::as_u64)
                    .unwrap_or_default();
                let n = self.tools.len();
                self.tools.insert(index, n);
                vec![delta(
                    self,
                    json!({"tool_calls": [{
                        "index": n,
                        "id": block.and_then(|b| b.get("id")).cloned().unwrap_or_default(),
                        "type": "function",
                        "function": {"name": block.and_then(|b| b.get("name")).cloned().unwrap_or_default(), "arguments": ""},
                    }]}),
                    Value::Null,
                )]
            }
            Some("content_block_delta") => {
                let d = data.get("delta");
                match d.and_then(|d| d.get("type")).and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = d.and_then(|d| d.get("text")).cloned().unwrap_or_default();
                        vec![delta(self, json!({"content": text}), Value::Null)]
                    }
                    Some("input_json_delta") => {
                        let index = data
                            .get("index")
                            .and_then(Value::as_u64)
                            .unwrap_or_default();
                        let n = self.tools.get(&index).copied().unwrap_or_default();
                        let part = d
                            .and_then(|d| d.get("partial_json"))
                            .cloned()
                            .unwrap_or_default();
                        vec![delta(
                            self,
                            json!({"tool_calls": [{"index": n, "function": {"arguments": part}}]}),
                            Value::Null,
                        )]
                    }
                    _ => Vec::new(),
                }
            }
            Some("message_delta") => {
                if let Some(out) = data.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    self.usage.output = Some(out);
                }
                let stop = data.pointer("/delta/stop_reason").and_then(Value::as_str);
                vec![delta(self, json!({}), finish_reason(stop))]
            }
            Some("error") => {
                let message = data
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("upstream error");
                return Err(message.to_owned());
            }
            _ => Vec::new(),
        })
    }

    /// The id the chunks carry.
    pub fn id(&self) -> &str {
        &self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_translate_system_tools_and_tool_turns() {
        let body: Map<String, Value> = serde_json::from_value(json!({
            "model": "triage",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
            "max_tokens": 50, "temperature": 0.2, "stop": "END",
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
        }))
        .expect("object");
        let r = request(&body, "claude-x", true).expect("translates");
        assert_eq!(r["system"], "be brief");
        assert_eq!(r["model"], "claude-x");
        assert_eq!(r["max_tokens"], 50);
        assert_eq!(r["stop_sequences"], json!(["END"]));
        assert_eq!(r["tool_choice"], json!({"type": "any"}));
        assert_eq!(r["tools"][0]["input_schema"], json!({"type": "object"}));
        assert_eq!(
            r["messages"][1]["content"][0]["input"],
            json!({"city": "Paris"})
        );
        assert_eq!(r["messages"][2]["content"][0]["tool_use_id"], "c1");
        assert_eq!(r["stream"], true);
    }

    #[test]
    fn responses_and_stream_events_become_chat_completions() {
        let v = json!({"id": "m1", "content": [{"type": "text", "text": "Paris"},
            {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 9, "output_tokens": 3}});
        let (c, usage) = response(&v, "claude", 1).expect("a message");
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            c["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(c["usage"]["total_tokens"], 12);
        assert_eq!((usage.input, usage.output), (Some(9), Some(3)));

        let mut t = StreamTranslator::new("claude", 1);
        let start = t.event(&json!({"type": "message_start", "message": {"id": "m2", "usage": {"input_tokens": 5}}}));
        assert_eq!(
            start.expect("ok")[0]["choices"][0]["delta"]["role"],
            "assistant"
        );
        let text = t.event(&json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}));
        assert_eq!(text.expect("ok")[0]["choices"][0]["delta"]["content"], "hi");
        let end = t.event(&json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}}));
        assert_eq!(end.expect("ok")[0]["choices"][0]["finish_reason"], "stop");
        assert_eq!((t.usage.input, t.usage.output), (Some(5), Some(4)));
        assert!(
            t.event(&json!({"type": "error", "error": {"message": "overloaded"}}))
                .is_err()
        );
    }
}
