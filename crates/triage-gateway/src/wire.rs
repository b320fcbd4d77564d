//! The chat-completions request as the gateway reads it.
//!
//! The body stays a JSON object: the gateway reads what it needs (`model`, `messages`,
//! `stream`, `n`, the `triage` preferences) and forwards every other field unchanged, so
//! options it does not know (`response_format`, `seed`, `logprobs`, ...) still reach the model.

use serde::Deserialize;
use serde_json::{Map, Value};
use triage_core::catalog::Capability;
use triage_core::request::{RequestLimits, clip};
use triage_core::{Conversation, InvalidRequest, Mode, Preferences};
use triage_engine::Strategy;

/// The virtual models, the mode each routes in and how each answers (`triage-verify` runs the
/// policy's cheap drafts first and escalates only when the acceptor declines them).
pub const VIRTUAL_MODELS: [(&str, Mode, Strategy); 4] = [
    ("triage", Mode::Balanced, Strategy::Route),
    ("triage-quality", Mode::Quality, Strategy::Route),
    ("triage-cost", Mode::Cost, Strategy::Route),
    ("triage-verify", Mode::Balanced, Strategy::Verify),
];

/// What `model` asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// A virtual model: route in this mode, answering by this strategy.
    Route(Mode, Strategy),
    /// A model asked for by name.
    Named(String),
}

/// A parsed chat request.
#[derive(Debug)]
pub struct ChatRequest {
    /// The body without `triage`, forwarded (with `model` replaced).
    pub body: Map<String, Value>,
    /// What `model` asked for.
    pub target: Target,
    /// The conversation's text, for the encoder.
    pub conversation: Conversation,
    /// Stream server-sent events.
    pub stream: bool,
    /// The client asked for a final usage chunk.
    pub include_usage: bool,
    /// Routing preferences from the `triage` object.
    pub options: TriageOptions,
    /// The most input tokens a provider can count for it (the body's bytes): what a budget's
    /// worst case holds.
    pub max_input_tokens: u32,
    /// What the request itself needs of a model (tools, images, JSON output), whether or not
    /// the caller repeats it in `triage.required_capabilities`.
    pub needs: Vec<Capability>,
}

/// The `triage` object of a request body (what OpenAI SDKs send with `extra_body`): the same
/// preferences as gRPC `Preferences`, validated the same way.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriageOptions {
    /// `quality`, `balanced` or `cost`; overrides the virtual model's mode.
    #[serde(default)]
    pub mode: Option<WireMode>,
    /// λ ≥ 0, quality points traded per USD; overrides `mode`.
    #[serde(default)]
    pub cost_weight: Option<f64>,
    /// Only these catalog models.
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// Hard limit on predicted cost, USD.
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    /// Hard limit on predicted latency, ms.
    #[serde(default)]
    pub max_latency_ms: Option<u32>,
    /// `vision`, `tools`, `json_output`.
    #[serde(default)]
    pub required_capabilities: Vec<Capability>,
    /// Smallest context window.
    #[serde(default)]
    pub min_context_tokens: Option<u32>,
    /// Caller's answer-length estimate.
    #[serde(default)]
    pub expected_output_tokens: Option<u32>,
    /// Conversation id for session affinity.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Route each turn on its own even within a session.
    #[serde(default)]
    pub no_session_affinity: bool,
    /// With a model asked for by name: fall back to the ranking's next models when it fails.
    #[serde(default)]
    pub fallback: bool,
    /// `route` or `verify`; overrides the virtual model's strategy.
    #[serde(default)]
    pub strategy: Option<WireStrategy>,
    /// Return the routing trace (keys in `gateway.explain_keys`, and admin keys, only).
    #[serde(default)]
    pub explain: bool,
}

/// `strategy` as written in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireStrategy {
    /// The routed model answers.
    Route,
    /// Cheap drafts first, escalating when the acceptor declines them.
    Verify,
}

/// `mode` as written in JSON.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireMode {
    /// Highest quality.
    Quality,
    /// The default trade-off.
    Balanced,
    /// Cheapest within the wide margin.
    Cost,
}

impl TriageOptions {
    /// The engine's preferences, with `mode` as the default when none is given.
    pub fn preferences(&self, mode: Mode) -> Preferences {
        Preferences {
            mode: match self.mode {
                Some(WireMode::Quality) => Mode::Quality,
                Some(WireMode::Balanced) => Mode::Balanced,
                Some(WireMode::Cost) => Mode::Cost,
                None => mode,
            },
            cost_weight: self.cost_weight,
            max_cost_usd: self.max_cost_usd,
            max_latency_ms: self.max_latency_ms,
            allowed_models: self.allowed_models.clone(),
            required_capabilities: self.required_capabilities.clone(),
            min_context_tokens: self.min_context_tokens,
            expected_output_tokens: self.expected_output_tokens,
        }
    }
}

/// Other names for models (`gateway.aliases`): alias → a virtual model or a catalog model.
pub type Aliases = std::collections::BTreeMap<String, String>;

/// What a model name asks for: a virtual model routes, any other name is asked for by name.
pub fn target(name: &str) -> Target {
    VIRTUAL_MODELS
        .iter()
        .find(|(virtual_name, ..)| *virtual_name == name)
        .map_or_else(
            || Target::Named(name.to_owned()),
            |(_, mode, strategy)| Target::Route(*mode, *strategy),
        )
}

/// Parses and checks a request body; `model` may be one of `aliases`.
pub fn parse(
    bytes: &[u8],
    limits: RequestLimits,
    aliases: &Aliases,
) -> Result<ChatRequest, InvalidRequest> {
    let mut body = object(bytes)?;
    let options = match body.remove("triage") {
        None | Some(Value::Null) => TriageOptions::default(),
        Some(v) => {
            // serde quotes the offending value (a 100 kB `mode`, say): clipped.
            serde_json::from_value(v)
                .map_err(|e| InvalidRequest::new("triage", clip(&e.to_string())))?
        }
    };
    if let Some(id) = &options.session_id {
        triage_core::request::check_session_id(id, "triage.session_id")?;
    }
    let target = match body.get("model") {
        Some(Value::String(m)) => target(aliases.get(m).unwrap_or(m)),
        _ => {
            return Err(InvalidRequest::new(
                "model",
                "is missing or not a string; use \"triage\" (or triage-quality, triage-cost, \
                 triage-verify, or a catalog model)",
            ));
        }
    };
    match body.get("n") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64() == Some(1) => {}
        Some(n) => {
            return Err(InvalidRequest::new(
                "n",
                format!(
                    "{} is not supported: the gateway returns one choice; send n=1",
                    clip(&n.to_string())
                ),
            ));
        }
    }
    check_spend_fields(&body)?;
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(InvalidRequest::new("stream", "must be true or false")),
    };
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let conversation = conversation(&body, limits)?;
    let needs = needs(&body);
    if options.strategy == Some(WireStrategy::Verify) && matches!(target, Target::Named(_)) {
        return Err(InvalidRequest::new(
            "triage.strategy",
            "\"verify\" needs a routed request: use model \"triage-verify\" (or another \
             virtual model), not a model asked for by name",
        ));
    }
    Ok(ChatRequest {
        body,
        target,
        conversation,
        stream,
        include_usage,
        options,
        // A provider's token covers at least one byte of what it reads.
        max_input_tokens: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
        needs,
    })
}

/// The capabilities a chat body needs of the model that answers it: `tools` for tool
/// definitions (`tools`, `functions`) or tool turns, `vision` for an image part, `json_output`
/// for a JSON response format. Read from the request's structure, never its words.
fn needs(body: &Map<String, Value>) -> Vec<Capability> {
    let non_empty = |key: &str| {
        body.get(key)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    let messages = body.get("messages").and_then(Value::as_array);
    let turns = || messages.into_iter().flatten();
    let tool_turns = turns().any(|m| {
        matches!(
            m.get("role").and_then(Value::as_str),
            Some("tool" | "function")
        ) || m
            .get("tool_calls")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty())
    });
    let image = turns()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
        .any(|p| p.get("type").and_then(Value::as_str) == Some("image_url"));
    let json = matches!(
        body.get("response_format")
            .and_then(|f| f.get("type"))
            .and_then(Value::as_str),
        Some("json_schema" | "json_object")
    );
    let mut needs = Vec::new();
    if non_empty("tools") || non_empty("functions") || tool_turns {
        needs.push(Capability::Tools);
    }
    if image {
        needs.push(Capability::Vision);
    }
    if json {
        needs.push(Capability::JsonOutput);
    }
    needs
}

/// A request body as a JSON object (every dialect's body is one).
pub fn object(body: &[u8]) -> Result<Map<String, Value>, InvalidRequest> {
    let text = std::str::from_utf8(body)
        .map_err(|e| InvalidRequest::new("body", format!("is not UTF-8 ({e}); send JSON text")))?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        InvalidRequest::new(
            "body",
            format!(
                "is not valid JSON ({}); send a request object",
                clip(&e.to_string())
            ),
        )
    })?;
    match value {
        Value::Object(body) => Ok(body),
        _ => Err(InvalidRequest::new("body", "must be a JSON object")),
    }
}

impl ChatRequest {
    /// The answer length the caller allows (`max_completion_tokens`, else `max_tokens`).
    pub fn max_output_tokens(&self) -> Option<u32> {
        self.body
            .get("max_completion_tokens")
            .or_else(|| self.body.get("max_tokens"))
            .and_then(Value::as_u64)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// How the request is answered: `triage.strategy`, else its virtual model's.
    pub fn strategy(&self) -> Strategy {
        match (self.options.strategy, &self.target) {
            (Some(WireStrategy::Verify), _) => Strategy::Verify,
            (Some(WireStrategy::Route), _) | (None, Target::Named(_)) => Strategy::Route,
            (None, Target::Route(_, strategy)) => *strategy,
        }
    }

    /// The same request asking for one whole answer (drafts are judged whole): no `stream`,
    /// no `stream_options`.
    pub fn unstreamed(&self) -> ChatRequest {
        let mut body = self.body.clone();
        body.remove("stream");
        body.remove("stream_options");
        ChatRequest {
            body,
            target: self.target.clone(),
            conversation: self.conversation.clone(),
            stream: false,
            include_usage: false,
            options: TriageOptions::default(),
            max_input_tokens: self.max_input_tokens,
            needs: self.needs.clone(),
        }
    }
}

/// The body fields that change what a call costs or who keeps it, each decided: `n` and
/// `best_of` above 1 would multiply the answers billed, a `service_tier` other than `auto` or
/// `default` is priced apart from the catalog, and `store: true` would keep the prompt at the
/// operator's provider account: refused. `max_tokens` and `max_completion_tokens` must be
/// whole numbers (the budget's worst case reads them). Anything else (`logit_bias`, `seed`,
/// `temperature`, ...) is forwarded unchanged: it does not change the price.
fn check_spend_fields(body: &Map<String, Value>) -> Result<(), InvalidRequest> {
    let present = |key: &str| body.get(key).filter(|v| !v.is_null());
    if let Some(n) = present("best_of")
        && n.as_u64() != Some(1)
    {
        return Err(InvalidRequest::new(
            "best_of",
            format!(
                "{} is not supported: each of best_of answers is billed; leave it out",
                clip(&n.to_string())
            ),
        ));
    }
    if let Some(tier) = present("service_tier")
        && !matches!(tier.as_str(), Some("auto" | "default"))
    {
        return Err(InvalidRequest::new(
            "service_tier",
            format!(
                "{} is not supported: the catalog prices the default tier only; use \"auto\" \
                 or \"default\", or leave it out",
                clip(&tier.to_string())
            ),
        ));
    }
    if let Some(store) = present("store")
        && store.as_bool() != Some(false)
    {
        return Err(InvalidRequest::new(
            "store",
            "must be false or absent: the gateway does not keep prompts at the operator's \
             provider account for a caller",
        ));
    }
    for key in ["max_tokens", "max_completion_tokens"] {
        if let Some(v) = present(key)
            && v.as_u64().is_none()
        {
            return Err(InvalidRequest::new(
                key,
                format!("{} must be a whole number of tokens", clip(&v.to_string())),
            ));
        }
    }
    Ok(())
}

/// The messages' roles and text, as the encoder reads them.
fn conversation(
    body: &Map<String, Value>,
    limits: RequestLimits,
) -> Result<Conversation, InvalidRequest> {
    let Some(Value::Array(messages)) = body.get("messages") else {
        return Err(InvalidRequest::new(
            "messages",
            "is missing or not an array; send at least one {\"role\": \"user\", \"content\": ...}",
        ));
    };
    let mut turns: Vec<(String, String)> = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = match m.get("role").and_then(Value::as_str) {
            // OpenAI's newer name for system instructions, and its older name for tool output.
            Some("developer") => "system",
            Some("function") => "tool",
            Some(r) => r,
            None => {
                return Err(InvalidRequest::new(
                    format!("messages[{i}].role"),
                    "is missing or not a string",
                ));
            }
        };
        turns.push((role.to_owned(), text_of(m.get("content"), i)?));
    }
    Conversation::from_wire(turns.iter().map(|(r, c)| (r.as_str(), c.as_str())), limits)
}

/// A message's text: a string, or the text parts of a content array (images carry no text).
fn text_of(content: Option<&Value>, i: usize) -> Result<String, InvalidRequest> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => Ok(parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n")),
        Some(_) => Err(InvalidRequest::new(
            format!("messages[{i}].content"),
            "must be a string or an array of content parts",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits = RequestLimits {
        max_messages: 8,
        max_text_bytes: 1000,
    };

    fn err(body: &str) -> String {
        parse(body.as_bytes(), LIMITS, &Aliases::new())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn reads_model_stream_preferences_and_keeps_the_rest() {
        let body = r#"{"model":"triage-cost","messages":[{"role":"developer","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url"}]}],
            "stream":true,"stream_options":{"include_usage":true},"seed":7,
            "triage":{"max_cost_usd":0.01,"required_capabilities":["tools"],"session_id":"s"}}"#;
        let r = parse(body.as_bytes(), LIMITS, &Aliases::new()).expect("parses");
        assert_eq!(r.target, Target::Route(Mode::Cost, Strategy::Route));
        assert_eq!(r.strategy(), Strategy::Route);
        assert!(r.stream && r.include_usage);
        assert_eq!(r.body.get("seed"), Some(&Value::from(7)));
        assert!(
            r.body.get("triage").is_none(),
            "preferences are not forwarded"
        );
        let p = r.options.preferences(Mode::Cost);
        assert_eq!(p.max_cost_usd, Some(0.01));
        assert_eq!(p.required_capabilities, vec![Capability::Tools]);
        assert_eq!(r.conversation.messages().len(), 2);
    }

    #[test]
    fn the_request_says_what_it_needs() {
        let needs = |body: &str| {
            parse(body.as_bytes(), LIMITS, &Aliases::new())
                .map(|r| r.needs)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert!(
            needs(r#"{"model":"triage","messages":[{"role":"user","content":"x"}]}"#).is_empty()
        );
        assert_eq!(
            needs(
                r#"{"model":"triage","tools":[{"type":"function","function":{"name":"f"}}],
                "response_format":{"type":"json_schema"},
                "messages":[{"role":"user","content":[{"type":"text","text":"x"},
                {"type":"image_url","image_url":{"url":"u"}}]}]}"#
            ),
            vec![
                Capability::Tools,
                Capability::Vision,
                Capability::JsonOutput
            ]
        );
        assert_eq!(
            needs(
                r#"{"model":"triage","tools":[],"messages":[{"role":"user","content":"x"},
                {"role":"assistant","tool_calls":[{"id":"c"}]},{"role":"tool","content":"y"}]}"#
            ),
            vec![Capability::Tools]
        );
    }

    #[test]
    fn bad_bodies_name_the_field() {
        assert!(err("{").contains("body: is not valid JSON"));
        assert!(parse(&[0xff, 0xfe], LIMITS, &Aliases::new()).is_err_and(|e| e.field == "body"));
        assert!(err("[]").contains("JSON object"));
        assert!(err(r#"{"messages":[]}"#).starts_with("model"));
        assert!(err(r#"{"model":"triage","messages":[]}"#).starts_with("messages"));
        assert!(
            err(r#"{"model":"triage","messages":[{"role":"robot","content":"x"}]}"#)
                .starts_with("messages[0].role")
        );
        assert!(
            err(r#"{"model":"triage","n":2,"messages":[{"role":"user","content":"x"}]}"#)
                .starts_with("n:")
        );
        assert!(err(r#"{"model":"triage","triage":{"mode":"fast"},"messages":[{"role":"user","content":"x"}]}"#)
            .starts_with("triage:"));
        assert!(err(r#"{"model":"triage","triage":{"budget":1},"messages":[{"role":"user","content":"x"}]}"#)
            .contains("unknown field `budget`"));
        let long = "x".repeat(triage_core::request::MAX_SESSION_ID_BYTES + 1);
        let body = format!(
            r#"{{"model":"triage","triage":{{"session_id":"{long}"}},"messages":[{{"role":"user","content":"x"}}]}}"#
        );
        assert!(err(&body).starts_with("triage.session_id"));
    }
}
