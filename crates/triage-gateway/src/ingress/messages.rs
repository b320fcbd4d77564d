//! `POST /v1/messages`: Anthropic's Messages API as a door. Claude Code and the Anthropic SDKs
//! call Triage unchanged (`x-api-key` is the Triage key); `model` takes virtual models,
//! aliases and catalog names, and whichever provider answers, the caller reads Messages.
//!
//! Translated: `system`, content blocks (text, image, `tool_use`, `tool_result`), `tools`
//! (client tools), `tool_choice`, `stop_sequences`, `max_tokens`, `temperature`, `top_p`,
//! `stream`. Accepted and not forwarded, since the routed model may not be Claude: `top_k`,
//! `metadata`, `thinking`, `service_tier`. Anything else is refused by name.

use axum::body::Bytes;
use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use triage_core::InvalidRequest;
use triage_core::request::clip;

use super::{Answer, Dialect, Event, error_message, named_sse};
use crate::anthropic::{image_url, stop_reason};

/// Fields translated into the chat request.
const TRANSLATED: [&str; 11] = [
    "model",
    "messages",
    "system",
    "max_tokens",
    "temperature",
    "top_p",
    "stop_sequences",
    "stream",
    "tools",
    "tool_choice",
    "triage",
];
/// Fields accepted and not forwarded.
const IGNORED: [&str; 4] = ["top_k", "metadata", "thinking", "service_tier"];

/// A Messages exchange: the state of the answer being written back.
#[derive(Default)]
pub struct Messages {
    answer: Answer,
    /// The content block open in a stream, and the index of the next one.
    open: Option<Block>,
    blocks: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Block {
    Text,
    /// A tool call, by its index among the answer's calls.
    Tool(usize),
}

impl Dialect for Messages {
    const METHOD: &'static str = "messages";

    fn read(body: Map<String, Value>) -> Result<(Map<String, Value>, Self), InvalidRequest> {
        if let Some(field) = body
            .keys()
            .find(|k| !TRANSLATED.contains(&k.as_str()) && !IGNORED.contains(&k.as_str()))
        {
            return Err(InvalidRequest::new(
                clip(field),
                format!(
                    "is not supported by the Messages door; it translates {} (and accepts {} \
                     without forwarding them)",
                    TRANSLATED.join(", "),
                    IGNORED.join(", ")
                ),
            ));
        }
        let mut chat = Map::new();
        for key in ["model", "temperature", "top_p", "triage"] {
            if let Some(v) = body.get(key) {
                chat.insert(key.into(), v.clone());
            }
        }
        match body.get("max_tokens").and_then(Value::as_u64) {
            Some(n) => chat.insert("max_tokens".into(), n.into()),
            None => {
                return Err(InvalidRequest::new(
                    "max_tokens",
                    "is required and must be a whole number of tokens",
                ));
            }
        };
        chat.insert("messages".into(), chat_messages(&body)?.into());
        if let Some(stop) = body.get("stop_sequences").filter(|v| !v.is_null()) {
            chat.insert("stop".into(), stop.clone());
        }
        if let Some(tools) = body.get("tools").filter(|v| !v.is_null()) {
            chat.insert("tools".into(), chat_tools(tools)?);
        }
        if let Some(choice) = body.get("tool_choice").filter(|v| !v.is_null()) {
            tool_choice(choice, &mut chat)?;
        }
        if body.get("stream").and_then(Value::as_bool) == Some(true) {
            chat.insert("stream".into(), true.into());
            chat.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Ok((chat, Self::default()))
    }

    fn whole(&self, answer: &Answer) -> Value {
        let mut content = Vec::new();
        if !answer.text.is_empty() {
            content.push(json!({"type": "text", "text": answer.text}));
        }
        for call in &answer.tool_calls {
            content.push(json!({"type": "tool_use", "id": call.id, "name": call.name,
                                "input": input(&call.arguments)}));
        }
        let mut message = message(answer);
        message["content"] = content.into();
        message
    }

    fn event(&mut self, event: Event) -> Vec<Bytes> {
        self.answer.apply(&event);
        let mut out = Vec::new();
        match event {
            Event::Start { .. } => {
                let mut start = message(&self.answer);
                start["usage"] = json!({"input_tokens": 0, "output_tokens": 0});
                out.push(named_sse(
                    "message_start",
                    &json!({"type": "message_start", "message": start}),
                ));
            }
            Event::Text(text) => {
                if self.open != Some(Block::Text) {
                    out.extend(self.close());
                    out.push(self.begin(Block::Text, json!({"type": "text", "text": ""})));
                }
                out.push(self.delta(json!({"type": "text_delta", "text": text})));
            }
            Event::ToolCall {
                index,
                id,
                name,
                arguments,
            } => {
                if self.open != Some(Block::Tool(index)) {
                    out.extend(self.close());
                    let block = json!({"type": "tool_use", "id": id.unwrap_or_default(),
                                       "name": name.unwrap_or_default(), "input": {}});
                    out.push(self.begin(Block::Tool(index), block));
                }
                if !arguments.is_empty() {
                    out.push(
                        self.delta(json!({"type": "input_json_delta", "partial_json": arguments})),
                    );
                }
            }
            Event::Finish(_) | Event::Usage(_) => {}
            Event::Done => {
                out.extend(self.close());
                let end = message(&self.answer);
                out.push(named_sse(
                    "message_delta",
                    &json!({"type": "message_delta",
                            "delta": {"stop_reason": end["stop_reason"], "stop_sequence": null},
                            "usage": end["usage"]}),
                ));
                out.push(named_sse("message_stop", &json!({"type": "message_stop"})));
            }
            Event::Failed(why) => {
                let error = json!({"type": "error",
                                   "error": {"type": "api_error", "message": why}});
                out.push(named_sse("error", &error));
            }
        }
        out
    }

    fn error(status: StatusCode, openai: &Value) -> Value {
        let kind = match status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            s if s >= 500 => "api_error",
            _ => "invalid_request_error",
        };
        json!({"type": "error", "error": {"type": kind, "message": error_message(openai)}})
    }
}

impl Messages {
    fn begin(&mut self, block: Block, content_block: Value) -> Bytes {
        self.open = Some(block);
        named_sse(
            "content_block_start",
            &json!({"type": "content_block_start", "index": self.blocks,
                    "content_block": content_block}),
        )
    }

    fn delta(&self, delta: Value) -> Bytes {
        named_sse(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": self.blocks, "delta": delta}),
        )
    }

    fn close(&mut self) -> Option<Bytes> {
        self.open.take()?;
        let stop = json!({"type": "content_block_stop", "index": self.blocks});
        self.blocks += 1;
        Some(named_sse("content_block_stop", &stop))
    }
}

/// A message's envelope (everything but its content).
fn message(answer: &Answer) -> Value {
    let id = if answer.id.starts_with("msg_") {
        answer.id.clone()
    } else {
        format!("msg_{}", answer.id)
    };
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": [],
        "stop_reason": answer.finish.as_deref().map(stop_reason),
        "stop_sequence": null,
        "usage": usage(&answer.usage),
    })
}

/// Anthropic's usage: `input_tokens` leaves out the tokens read from and written to the cache.
fn usage(u: &crate::openai::Usage) -> Value {
    let fresh = u.input.unwrap_or(0).saturating_sub(u.cached + u.written);
    json!({"input_tokens": fresh, "output_tokens": u.output.unwrap_or(0),
           "cache_read_input_tokens": u.cached, "cache_creation_input_tokens": u.written})
}

/// A tool call's input object (its arguments' JSON; `{}` when they are not an object).
fn input(arguments: &str) -> Value {
    serde_json::from_str::<Value>(arguments)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}))
}

/// The chat messages: `system` first, then each turn; a user turn's `tool_result` blocks
/// become `tool` messages ahead of its other content, as chat orders them.
fn chat_messages(body: &Map<String, Value>) -> Result<Vec<Value>, InvalidRequest> {
    let mut out = Vec::new();
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => out.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            // Kept as parts, so that cache breakpoints reach an Anthropic upstream.
            texts(blocks, "system")?;
            out.push(json!({"role": "system", "content": blocks}));
        }
        Some(_) => {
            return Err(InvalidRequest::new(
                "system",
                "must be a string or an array of text blocks",
            ));
        }
    }
    let Some(Value::Array(turns)) = body.get("messages") else {
        return Err(InvalidRequest::new(
            "messages",
            "is missing or not an array; send at least one {\"role\": \"user\", \"content\": ...}",
        ));
    };
    for (i, turn) in turns.iter().enumerate() {
        let role = turn.get("role").and_then(Value::as_str);
        let content = turn.get("content");
        match (role, content) {
            (Some(role @ ("user" | "assistant")), Some(Value::String(text))) => {
                out.push(json!({"role": role, "content": text}));
            }
            (Some("user"), Some(Value::Array(blocks))) => user_turn(blocks, i, &mut out)?,
            (Some("assistant"), Some(Value::Array(blocks))) => {
                out.push(assistant_turn(blocks, i)?);
            }
            (Some("user" | "assistant"), _) => {
                return Err(InvalidRequest::new(
                    format!("messages[{i}].content"),
                    "must be a string or an array of content blocks",
                ));
            }
            _ => {
                return Err(InvalidRequest::new(
                    format!("messages[{i}].role"),
                    "must be \"user\" or \"assistant\"",
                ));
            }
        }
    }
    Ok(out)
}

/// The text of text blocks, joined; any other block is refused.
fn texts(blocks: &[Value], field: &str) -> Result<String, InvalidRequest> {
    let mut out = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        match (
            b.get("type").and_then(Value::as_str),
            b.get("text").and_then(Value::as_str),
        ) {
            (Some("text"), Some(t)) => out.push(t),
            _ => {
                return Err(InvalidRequest::new(
                    format!("{field}[{j}]"),
                    "must be a text block ({\"type\": \"text\", \"text\": ...})",
                ));
            }
        }
    }
    Ok(out.join("\n"))
}

fn user_turn(blocks: &[Value], i: usize, out: &mut Vec<Value>) -> Result<(), InvalidRequest> {
    let mut parts = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let field = || format!("messages[{i}].content[{j}]");
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                let mut part = json!({"type": "text", "text": b.get("text")});
                if let Some(c) = b.get("cache_control") {
                    part["cache_control"] = c.clone();
                }
                parts.push(part);
            }
            Some("image") => {
                let url = b.get("source").and_then(image_url).ok_or_else(|| {
                    InvalidRequest::new(
                        field(),
                        "needs a source of type base64 (media_type, data) or url",
                    )
                })?;
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            Some("tool_result") => {
                let content = match b.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(inner)) => texts(inner, &format!("{}.content", field()))?,
                    Some(_) => {
                        return Err(InvalidRequest::new(
                            format!("{}.content", field()),
                            "must be a string or an array of text blocks",
                        ));
                    }
                };
                let id = b
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        InvalidRequest::new(format!("{}.tool_use_id", field()), "is missing")
                    })?;
                out.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
            _ => {
                return Err(InvalidRequest::new(
                    field(),
                    "must be a text, image or tool_result block",
                ));
            }
        }
    }
    if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

fn assistant_turn(blocks: &[Value], i: usize) -> Result<Value, InvalidRequest> {
    let mut text = Vec::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push(b.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("tool_use") => calls.push(json!({
                "id": b.get("id").cloned().unwrap_or_default(),
                "type": "function",
                "function": {
                    "name": b.get("name").cloned().unwrap_or_default(),
                    "arguments": b.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            })),
            // A model's thinking is its own; another model does not read it.
            Some("thinking" | "redacted_thinking") => {}
            _ => {
                return Err(InvalidRequest::new(
                    format!("messages[{i}].content[{j}]"),
                    "must be a text, tool_use or thinking block",
                ));
            }
        }
    }
    let mut message = json!({"role": "assistant", "content": text.join("")});
    if !calls.is_empty() {
        message["tool_calls"] = calls.into();
    }
    Ok(message)
}

/// Client tools as chat's function tools; server tools (`web_search_…`) are refused.
fn chat_tools(tools: &Value) -> Result<Value, InvalidRequest> {
    let Value::Array(tools) = tools else {
        return Err(InvalidRequest::new("tools", "must be an array"));
    };
    let mut out = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        let name = t.get("name").and_then(Value::as_str);
        match (t.get("type").and_then(Value::as_str), name) {
            (None | Some("custom"), Some(name)) => out.push(json!({"type": "function", "function": {
                "name": name,
                "description": t.get("description").cloned().unwrap_or(Value::Null),
                "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
            }})),
            (Some(kind), _) if kind != "custom" => {
                return Err(InvalidRequest::new(
                    format!("tools[{i}]"),
                    format!(
                        "server tools ({}) are not supported: any model may answer; send client \
                         tools (name, description, input_schema)",
                        clip(kind)
                    ),
                ));
            }
            _ => return Err(InvalidRequest::new(format!("tools[{i}].name"), "is missing")),
        }
    }
    Ok(out.into())
}

fn tool_choice(choice: &Value, chat: &mut Map<String, Value>) -> Result<(), InvalidRequest> {
    let translated = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match choice.get("name").and_then(Value::as_str) {
            Some(name) => json!({"type": "function", "function": {"name": name}}),
            None => return Err(InvalidRequest::new("tool_choice.name", "is missing")),
        },
        _ => {
            return Err(InvalidRequest::new(
                "tool_choice",
                "must have type auto, any, tool or none",
            ));
        }
    };
    chat.insert("tool_choice".into(), translated);
    if choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        == Some(true)
    {
        chat.insert("parallel_tool_calls".into(), false.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: Value) -> Result<Map<String, Value>, InvalidRequest> {
        crate::ingress::read_as_chat::<Messages>(body)
    }

    #[test]
    fn a_tool_round_trip_becomes_chat_turns_in_chat_order() {
        let chat = read(json!({
            "model": "model-router", "max_tokens": 64, "system": [{"type": "text", "text": "brief"}],
            "stop_sequences": ["END"], "top_k": 5, "stream": true,
            "tools": [{"name": "weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                    {"type": "text", "text": "and tomorrow?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}]},
            ],
        }))
        .expect("translates");
        let m = &chat["messages"];
        assert_eq!(m[0]["content"][0]["text"], "brief");
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "t1", "content": "sunny"})
        );
        assert_eq!(
            m[4]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AA"
        );
        assert_eq!(chat["stop"], json!(["END"]));
        assert_eq!(chat["tool_choice"], "required");
        assert_eq!(chat["parallel_tool_calls"], false);
        assert_eq!(chat["stream_options"]["include_usage"], true);
        assert!(chat.get("top_k").is_none(), "accepted, not forwarded");
    }

    #[test]
    fn unsupported_requests_name_the_field() {
        let base = json!({"model": "triage", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
        let with = |key: &str, v: Value| {
            let mut b = base.clone();
            b[key] = v;
            read(b).err().map(|e| e.field).unwrap_or_default()
        };
        assert_eq!(with("container", json!("c")), "container");
        assert_eq!(
            with(
                "tools",
                json!([{"type": "web_search_20250305", "name": "w"}])
            ),
            "tools[0]"
        );
        assert_eq!(with("max_tokens", Value::Null), "max_tokens");
        assert_eq!(
            with("messages", json!([{"role": "system", "content": "x"}])),
            "messages[0].role"
        );
    }

    #[test]
    fn answers_and_streams_read_as_messages() {
        let answer = Answer {
            id: "c1".into(),
            model: "gpt-4o-mini".into(),
            text: "Paris".into(),
            finish: Some("length".into()),
            usage: crate::openai::Usage {
                input: Some(7),
                output: Some(2),
                ..Default::default()
            },
            ..Answer::default()
        };
        let whole = Messages::default().whole(&answer);
        assert_eq!(whole["stop_reason"], "max_tokens");
        assert_eq!(whole["content"][0]["text"], "Paris");
        assert_eq!(whole["usage"]["input_tokens"], 7);

        let mut m = Messages::default();
        let mut names = Vec::new();
        for e in [
            Event::Start {
                id: "c".into(),
                model: "m".into(),
                created: 0,
            },
            Event::Text("Hi".into()),
            Event::ToolCall {
                index: 0,
                id: Some("t".into()),
                name: Some("f".into()),
                arguments: "{}".into(),
            },
            Event::Finish("tool_calls".into()),
            Event::Done,
        ] {
            for frame in m.event(e) {
                let text = String::from_utf8_lossy(&frame).into_owned();
                names.push(text.lines().next().unwrap_or_default().to_owned());
            }
        }
        let names: Vec<&str> = names
            .iter()
            .map(|n| n.trim_start_matches("event: "))
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
    }
}
