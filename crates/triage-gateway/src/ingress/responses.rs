//! `POST /v1/responses`: OpenAI's Responses API as a door (what OpenAI recommends for new
//! projects, and what its Agents SDK calls).
//!
//! Translated: `input` as a string or as items (messages with text and image parts, function
//! calls and their outputs), `instructions`, function `tools`, `tool_choice`,
//! `parallel_tool_calls`, `max_output_tokens`, `temperature`, `top_p`, `reasoning.effort`,
//! `text.format` (JSON schema or object), `user`, `service_tier`, `stream` (with the
//! Responses event sequence and usage). Echoed back: `metadata`.
//!
//! Triage keeps no conversation state, so `previous_response_id`, `store: true` and item
//! references are refused with a 400 that says to send the whole conversation in `input`.
//! Every response says `store: false`.

use axum::body::Bytes;
use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use triage_core::InvalidRequest;
use triage_core::request::clip;

use super::{Answer, Dialect, Event, ToolCall};

/// Fields read; anything else is refused by name.
const KNOWN: [&str; 20] = [
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_output_tokens",
    "temperature",
    "top_p",
    "reasoning",
    "text",
    "user",
    "service_tier",
    "stream",
    "stream_options",
    "store",
    "previous_response_id",
    "metadata",
    "truncation",
    "include",
];

/// Settings the response object repeats back, as OpenAI's does.
const ECHOED: [&str; 11] = [
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_output_tokens",
    "temperature",
    "top_p",
    "reasoning",
    "text",
    "metadata",
    "user",
];

/// What state-keeping fields are refused with.
const STATELESS: &str = "Triage keeps no conversation state: send the whole conversation in \
                         `input`, with store false or absent";

/// A Responses exchange: the request's settings (echoed in the response object) and the
/// state of a stream being written.
#[derive(Default)]
pub struct Responses {
    echo: Map<String, Value>,
    answer: Answer,
    sequence: u64,
    /// Output items finished so far, and the one open.
    output: Vec<Value>,
    open: Option<Open>,
}

enum Open {
    Text { text: String },
    Tool { index: usize, call: ToolCall },
}

impl Dialect for Responses {
    const METHOD: &'static str = "responses";

    fn read(body: Map<String, Value>) -> Result<(Map<String, Value>, Self), InvalidRequest> {
        check_supported(&body)?;
        let mut chat = Map::new();
        for key in [
            "model",
            "temperature",
            "top_p",
            "parallel_tool_calls",
            "user",
            "service_tier",
            "triage",
        ] {
            if let Some(v) = body.get(key).filter(|v| !v.is_null()) {
                chat.insert(key.into(), v.clone());
            }
        }
        if let Some(n) = body.get("max_output_tokens").filter(|v| !v.is_null()) {
            if n.as_u64().is_none() {
                return Err(InvalidRequest::new(
                    "max_output_tokens",
                    format!("{} must be a whole number of tokens", clip(&n.to_string())),
                ));
            }
            chat.insert("max_completion_tokens".into(), n.clone());
        }
        chat.insert("messages".into(), chat_messages(&body)?.into());
        if let Some(tools) = body.get("tools").filter(|v| !v.is_null()) {
            chat.insert("tools".into(), chat_tools(tools)?);
        }
        if let Some(choice) = body.get("tool_choice").filter(|v| !v.is_null()) {
            chat.insert("tool_choice".into(), tool_choice(choice)?);
        }
        if let Some(effort) = body
            .get("reasoning")
            .and_then(|r| r.get("effort"))
            .filter(|v| !v.is_null())
        {
            chat.insert("reasoning_effort".into(), effort.clone());
        }
        text_settings(&body, &mut chat)?;
        if body.get("stream").and_then(Value::as_bool) == Some(true) {
            chat.insert("stream".into(), true.into());
            chat.insert("stream_options".into(), json!({"include_usage": true}));
        }
        let echo = ECHOED
            .into_iter()
            .filter_map(|k| body.get(k).map(|v| (k.to_owned(), v.clone())))
            .collect();
        let dialect = Self {
            echo,
            ..Self::default()
        };
        Ok((chat, dialect))
    }

    fn whole(&self, answer: &Answer) -> Value {
        let mut output = Vec::new();
        if !answer.text.is_empty() || answer.tool_calls.is_empty() {
            output.push(message_item(
                &item_id(&answer.id, 0),
                &answer.text,
                "completed",
            ));
        }
        output.extend(answer.tool_calls.iter().map(|c| call_item(c, "completed")));
        self.response(answer, output, None)
    }

    fn event(&mut self, event: Event) -> Vec<Bytes> {
        self.answer.apply(&event);
        let mut out = Vec::new();
        match event {
            Event::Start { .. } => {
                let mut response = self.response(&self.answer, Vec::new(), None);
                response["status"] = "in_progress".into();
                response["usage"] = Value::Null;
                out.push(self.emit("response.created", json!({"response": response})));
                out.push(self.emit("response.in_progress", json!({"response": response})));
            }
            Event::Text(delta) => {
                if !matches!(self.open, Some(Open::Text { .. })) {
                    out.extend(self.close());
                    out.extend(self.open_text());
                }
                if let Some(Open::Text { text }) = &mut self.open {
                    text.push_str(&delta);
                }
                let (item_id, index) = (self.message_id(), self.output.len());
                out.push(self.emit(
                    "response.output_text.delta",
                    json!({"item_id": item_id,
                    "output_index": index, "content_index": 0, "delta": delta, "logprobs": []}),
                ));
            }
            Event::ToolCall {
                index,
                id,
                name,
                arguments,
            } => {
                if !matches!(self.open, Some(Open::Tool { index: i, .. }) if i == index) {
                    out.extend(self.close());
                    let call = ToolCall {
                        id: id.unwrap_or_default(),
                        name: name.unwrap_or_default(),
                        arguments: String::new(),
                    };
                    let item = call_item(&call, "in_progress");
                    out.push(self.emit(
                        "response.output_item.added",
                        json!({"output_index": self.output.len(), "item": item}),
                    ));
                    self.open = Some(Open::Tool { index, call });
                }
                if let Some(Open::Tool { call, .. }) = &mut self.open
                    && !arguments.is_empty()
                {
                    call.arguments.push_str(&arguments);
                    let item_id = call_id(call);
                    out.push(self.emit("response.function_call_arguments.delta",
                        json!({"item_id": item_id, "output_index": self.output.len(), "delta": arguments})));
                }
            }
            Event::Finish(_) | Event::Usage(_) => {}
            Event::Done => {
                out.extend(self.close());
                let response = self.response(&self.answer, self.output.clone(), None);
                out.push(self.emit("response.completed", json!({"response": response})));
            }
            Event::Failed(why) => {
                out.extend(self.close());
                let error = json!({"code": "server_error", "message": why});
                let response = self.response(&self.answer, self.output.clone(), Some(error));
                out.push(self.emit("response.failed", json!({"response": response})));
            }
        }
        out
    }

    fn error(_: StatusCode, openai: &Value) -> Value {
        // The Responses API's errors are OpenAI's error body.
        openai.clone()
    }
}

impl Responses {
    /// The response object: `error` set when it failed.
    fn response(&self, answer: &Answer, output: Vec<Value>, error: Option<Value>) -> Value {
        let incomplete = answer.finish.as_deref() == Some("length");
        let status = match (&error, incomplete) {
            (Some(_), _) => "failed",
            (None, true) => "incomplete",
            (None, false) => "completed",
        };
        let (input, output_tokens) = (
            answer.usage.input.unwrap_or(0),
            answer.usage.output.unwrap_or(0),
        );
        let echo = |k: &str, default: Value| self.echo.get(k).cloned().unwrap_or(default);
        json!({
            "id": format!("resp_{}", answer.id),
            "object": "response",
            "created_at": answer.created,
            "status": status,
            "model": answer.model,
            "output": output,
            "error": error,
            "incomplete_details": if incomplete { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "usage": {
                "input_tokens": input,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input + output_tokens,
            },
            "instructions": echo("instructions", Value::Null),
            "max_output_tokens": echo("max_output_tokens", Value::Null),
            "metadata": echo("metadata", json!({})),
            "parallel_tool_calls": echo("parallel_tool_calls", true.into()),
            "reasoning": echo("reasoning", json!({"effort": null, "summary": null})),
            "temperature": echo("temperature", Value::Null),
            "text": echo("text", json!({"format": {"type": "text"}})),
            "tool_choice": echo("tool_choice", "auto".into()),
            "tools": echo("tools", json!([])),
            "top_p": echo("top_p", Value::Null),
            "user": echo("user", Value::Null),
            "previous_response_id": null,
            "store": false,
            "truncation": "disabled",
        })
    }

    /// One event, numbered.
    fn emit(&mut self, kind: &str, mut data: Value) -> Bytes {
        data["type"] = kind.into();
        data["sequence_number"] = self.sequence.into();
        self.sequence += 1;
        super::named_sse(kind, &data)
    }

    fn message_id(&self) -> String {
        item_id(&self.answer.id, self.output.len())
    }

    fn open_text(&mut self) -> Vec<Bytes> {
        let index = self.output.len();
        let mut item = message_item(&self.message_id(), "", "in_progress");
        item["content"] = json!([]);
        let part = json!({"type": "output_text", "text": "", "annotations": []});
        self.open = Some(Open::Text {
            text: String::new(),
        });
        let item_id = self.message_id();
        vec![
            self.emit(
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
            ),
            self.emit(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": part}),
            ),
        ]
    }

    /// Finishes the open item: its `done` events, and it joins the output.
    fn close(&mut self) -> Vec<Bytes> {
        let index = self.output.len();
        let (events, item) = match self.open.take() {
            None => return Vec::new(),
            Some(Open::Text { text }) => {
                let item_id = self.message_id();
                let item = message_item(&item_id, &text, "completed");
                let ids = json!({"item_id": item_id, "output_index": index, "content_index": 0});
                let mut done = ids.clone();
                done["text"] = text.into();
                let mut part = ids;
                part["part"] = item["content"][0].clone();
                let events = vec![
                    self.emit("response.output_text.done", done),
                    self.emit("response.content_part.done", part),
                ];
                (events, item)
            }
            Some(Open::Tool { call, .. }) => {
                let item = call_item(&call, "completed");
                let done = json!({"item_id": call_id(&call), "output_index": index,
                                  "arguments": call.arguments});
                (
                    vec![self.emit("response.function_call_arguments.done", done)],
                    item,
                )
            }
        };
        let mut events = events;
        events.push(self.emit(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        ));
        self.output.push(item);
        events
    }
}

/// A message output item; `id` is the item's own.
fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "id": id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

/// The id of the message item at `index` of answer `answer_id`'s output.
fn item_id(answer_id: &str, index: usize) -> String {
    format!("msg_{answer_id}_{index}")
}

fn call_id(call: &ToolCall) -> String {
    format!("fc_{}", call.id)
}

fn call_item(call: &ToolCall, status: &str) -> Value {
    json!({
        "id": call_id(call),
        "type": "function_call",
        "status": status,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
    })
}

fn check_supported(body: &Map<String, Value>) -> Result<(), InvalidRequest> {
    if let Some(field) = body
        .keys()
        .find(|k| !KNOWN.contains(&k.as_str()) && k.as_str() != "triage")
    {
        return Err(InvalidRequest::new(
            clip(field),
            format!(
                "is not supported by the Responses door; it reads {}",
                KNOWN.join(", ")
            ),
        ));
    }
    let present = |k: &str| body.get(k).filter(|v| !v.is_null());
    if present("previous_response_id").is_some() {
        return Err(InvalidRequest::new("previous_response_id", STATELESS));
    }
    if present("store").is_some_and(|v| v.as_bool() != Some(false)) {
        return Err(InvalidRequest::new("store", STATELESS));
    }
    if present("include").is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())) {
        return Err(InvalidRequest::new(
            "include",
            "must be empty or absent: nothing beyond the answer is kept to include",
        ));
    }
    Ok(())
}

/// `text.format` as chat's `response_format`, and `text.verbosity` as chat's `verbosity`.
fn text_settings(
    body: &Map<String, Value>,
    chat: &mut Map<String, Value>,
) -> Result<(), InvalidRequest> {
    if let Some(v) = body
        .get("text")
        .and_then(|t| t.get("verbosity"))
        .filter(|v| !v.is_null())
    {
        chat.insert("verbosity".into(), v.clone());
    }
    let Some(format) = body
        .get("text")
        .and_then(|t| t.get("format"))
        .filter(|v| !v.is_null())
    else {
        return Ok(());
    };
    let translated = match format.get("type").and_then(Value::as_str) {
        Some("text") => return Ok(()),
        Some("json_object") => json!({"type": "json_object"}),
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "schema", "strict", "description"] {
                if let Some(v) = format.get(key) {
                    schema.insert(key.into(), v.clone());
                }
            }
            json!({"type": "json_schema", "json_schema": schema})
        }
        _ => {
            return Err(InvalidRequest::new(
                "text.format.type",
                "must be text, json_object or json_schema",
            ));
        }
    };
    chat.insert("response_format".into(), translated);
    Ok(())
}

/// `instructions`, then `input`, as chat messages.
fn chat_messages(body: &Map<String, Value>) -> Result<Vec<Value>, InvalidRequest> {
    let mut out = Vec::new();
    match body.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => out.push(json!({"role": "system", "content": s})),
        Some(_) => return Err(InvalidRequest::new("instructions", "must be a string")),
    }
    match body.get("input") {
        Some(Value::String(s)) => out.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(item, i, &mut out)?;
            }
        }
        _ => {
            return Err(InvalidRequest::new(
                "input",
                "is missing; send a string or an array of input items",
            ));
        }
    }
    Ok(out)
}

fn input_item(item: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), InvalidRequest> {
    let field = |rest: &str| format!("input[{i}]{rest}");
    let text = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or_default();
    match item.get("type").and_then(Value::as_str) {
        None | Some("message") => out.push(message(item, i)?),
        Some("function_call") => {
            let call = json!({"id": text("call_id"), "type": "function",
                              "function": {"name": text("name"), "arguments": text("arguments")}});
            // Calls made together sit in one assistant message, after its text.
            match out.last_mut() {
                Some(last) if last["role"] == "assistant" => {
                    if let Some(calls) = last["tool_calls"].as_array_mut() {
                        calls.push(call);
                    } else {
                        last["tool_calls"] = json!([call]);
                    }
                }
                _ => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        Some("function_call_output") => {
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts_text(parts),
                _ => return Err(InvalidRequest::new(field(".output"), "must be a string")),
            };
            out.push(json!({"role": "tool", "tool_call_id": text("call_id"), "content": output}));
        }
        // A model's reasoning is its own; another model does not read it.
        Some("reasoning") => {}
        Some("item_reference") => return Err(InvalidRequest::new(field(""), STATELESS)),
        Some(other) => {
            return Err(InvalidRequest::new(
                field(".type"),
                format!(
                    "{} is not supported; send message, function_call or function_call_output items",
                    clip(other)
                ),
            ));
        }
    }
    Ok(())
}

fn parts_text(parts: &[Value]) -> String {
    parts
        .iter()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A message item as a chat message.
fn message(item: &Value, i: usize) -> Result<Value, InvalidRequest> {
    let role = match item.get("role").and_then(Value::as_str) {
        Some(r @ ("user" | "assistant" | "system" | "developer")) => r,
        _ => {
            return Err(InvalidRequest::new(
                format!("input[{i}].role"),
                "must be user, assistant, system or developer",
            ));
        }
    };
    let content = match item.get("content") {
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Array(parts)) if role == "assistant" => parts_text(parts).into(),
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                out.push(content_part(p, i, j)?);
            }
            out.into()
        }
        _ => {
            return Err(InvalidRequest::new(
                format!("input[{i}].content"),
                "must be a string or an array of content parts",
            ));
        }
    };
    Ok(json!({"role": role, "content": content}))
}

fn content_part(p: &Value, i: usize, j: usize) -> Result<Value, InvalidRequest> {
    match p.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text") => Ok(json!({"type": "text", "text": p.get("text")})),
        Some("input_image") => match p.get("image_url").and_then(Value::as_str) {
            Some(url) => {
                let mut image = json!({"url": url});
                if let Some(detail) = p.get("detail") {
                    image["detail"] = detail.clone();
                }
                Ok(json!({"type": "image_url", "image_url": image}))
            }
            None => Err(InvalidRequest::new(
                format!("input[{i}].content[{j}].image_url"),
                "is missing: send the image as a URL or data URL (file ids need stored files)",
            )),
        },
        _ => Err(InvalidRequest::new(
            format!("input[{i}].content[{j}].type"),
            "must be input_text or input_image",
        )),
    }
}

/// Function tools as chat's; hosted tools (web search, file search, ...) are refused.
fn chat_tools(tools: &Value) -> Result<Value, InvalidRequest> {
    let Value::Array(tools) = tools else {
        return Err(InvalidRequest::new("tools", "must be an array"));
    };
    let mut out = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(InvalidRequest::new(
                format!("tools[{i}].type"),
                "only function tools are supported: any model may answer, and hosted tools \
                 are OpenAI's",
            ));
        }
        let mut function = Map::new();
        for key in ["name", "description", "parameters", "strict"] {
            if let Some(v) = t.get(key).filter(|v| !v.is_null()) {
                function.insert(key.into(), v.clone());
            }
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(out.into())
}

fn tool_choice(choice: &Value) -> Result<Value, InvalidRequest> {
    match choice {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => {
            Ok(choice.clone())
        }
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            match o.get("name").and_then(Value::as_str) {
                Some(name) => Ok(json!({"type": "function", "function": {"name": name}})),
                None => Err(InvalidRequest::new("tool_choice.name", "is missing")),
            }
        }
        _ => Err(InvalidRequest::new(
            "tool_choice",
            "must be auto, none, required or {\"type\": \"function\", \"name\": ...}",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: Value) -> Result<Map<String, Value>, InvalidRequest> {
        crate::ingress::read_as_chat::<Responses>(body)
    }

    #[test]
    fn items_become_chat_turns() {
        let chat = read(json!({
            "model": "triage", "instructions": "be brief", "max_output_tokens": 50,
            "reasoning": {"effort": "low"}, "stream": true,
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
            "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "weather"},
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Paris?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AA"}]},
                {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            ],
        }))
        .expect("translates");
        let m = &chat["messages"];
        assert_eq!(m[0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(
            m[1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AA"
        );
        assert_eq!(m[2]["tool_calls"].as_array().map(Vec::len), Some(2));
        assert_eq!(m[3]["tool_call_id"], "c1");
        assert_eq!(chat["max_completion_tokens"], 50);
        assert_eq!(chat["reasoning_effort"], "low");
        assert_eq!(chat["response_format"]["json_schema"]["name"], "w");
        assert_eq!(chat["tool_choice"]["function"]["name"], "weather");
        assert_eq!(chat["stream_options"]["include_usage"], true);
    }

    #[test]
    fn state_and_hosted_tools_are_refused_by_name() {
        let with = |key: &str, v: Value| {
            let mut b = json!({"model": "triage", "input": "x"});
            b[key] = v;
            read(b).err().map(|e| e.field).unwrap_or_default()
        };
        assert_eq!(
            with("previous_response_id", json!("resp_1")),
            "previous_response_id"
        );
        assert_eq!(with("store", json!(true)), "store");
        assert_eq!(with("store", json!(false)), "");
        assert_eq!(
            with("tools", json!([{"type": "web_search"}])),
            "tools[0].type"
        );
        assert_eq!(with("background", json!(true)), "background");
        assert_eq!(with("max_output_tokens", json!(-5)), "max_output_tokens");
        assert_eq!(
            with("input", json!([{"type": "item_reference", "id": "x"}])),
            "input[0]"
        );
    }

    #[test]
    fn a_stream_ends_with_the_whole_response() {
        let mut r = Responses::default();
        let mut frames = Vec::new();
        for e in [
            Event::Start {
                id: "c".into(),
                model: "m".into(),
                created: 1,
            },
            Event::Text("Hi".into()),
            Event::Text(" there".into()),
            Event::ToolCall {
                index: 0,
                id: Some("t".into()),
                name: Some("f".into()),
                arguments: "{}".into(),
            },
            Event::Usage(crate::openai::Usage {
                input: Some(3),
                output: Some(4),
                ..Default::default()
            }),
            Event::Done,
        ] {
            frames.extend(r.event(e));
        }
        let events: Vec<Value> = frames
            .iter()
            .filter_map(|f| {
                let text = String::from_utf8_lossy(f).into_owned();
                text.lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .and_then(|d| serde_json::from_str(d).ok())
            })
            .collect();
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
        assert_eq!(kinds.first(), Some(&"response.created"));
        assert!(kinds.contains(&"response.output_text.delta"));
        assert!(kinds.contains(&"response.function_call_arguments.done"));
        let last = events.last().cloned().unwrap_or_default();
        assert_eq!(last["type"], "response.completed");
        assert_eq!(
            last["response"]["output"][0]["content"][0]["text"],
            "Hi there"
        );
        assert_eq!(last["response"]["output"][1]["call_id"], "t");
        assert_eq!(last["response"]["usage"]["total_tokens"], 7);
        let numbers: Vec<u64> = events
            .iter()
            .filter_map(|e| e["sequence_number"].as_u64())
            .collect();
        assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
    }
}
