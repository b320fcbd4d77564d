//! A routing request after validation: a well-formed conversation and coherent preferences.
//!
//! Transport layers convert their wire types into these and surface [`InvalidRequest`] to the
//! caller; everything downstream may assume the invariants documented here.

use std::fmt;

use crate::catalog::{Capability, Catalog};

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The end user.
    User,
    /// An earlier model answer.
    Assistant,
    /// Output of a tool call.
    Tool,
}

impl Role {
    /// Parses the wire name (`system`, `user`, `assistant`, `tool`; case-sensitive).
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "tool" => Some(Role::Tool),
            _ => None,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Its author.
    pub role: Role,
    /// Its text.
    pub content: String,
}

/// A request that cannot be served as sent: which field, and how to fix it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidRequest {
    /// Path of the offending field, e.g. `messages[2].role`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl InvalidRequest {
    /// An error about `field`. Both are bounded whatever they repeat of the request: the
    /// field's path to [`MAX_ECHO_BYTES`], the problem to [`MAX_PROBLEM_BYTES`] (the places
    /// that quote a value clip it to [`MAX_ECHO_BYTES`] themselves, keeping the advice after it).
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        let (field, problem) = (field.into(), problem.into());
        Self {
            field: clip_to(&field, MAX_ECHO_BYTES).into_owned(),
            problem: clip_to(&problem, MAX_PROBLEM_BYTES).into_owned(),
        }
    }
}

/// Longest explanation an [`InvalidRequest`] carries, bytes.
pub const MAX_PROBLEM_BYTES: usize = 1024;

/// Most bytes of caller-sent text an error message repeats back.
pub const MAX_ECHO_BYTES: usize = 200;

/// `text` as an error message may repeat it: at most [`MAX_ECHO_BYTES`] bytes (cut at a
/// character boundary, with `…` when cut), so that a hostile name cannot make every refusal
/// as large as the request.
pub fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    clip_to(text, MAX_ECHO_BYTES)
}

/// `text`, cut to at most `max` bytes at a character boundary, with `…` when cut.
fn clip_to(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

/// Longest accepted session id, bytes: each one is kept in memory and in the decision log.
pub const MAX_SESSION_ID_BYTES: usize = 256;

/// Refuses a session id longer than [`MAX_SESSION_ID_BYTES`]; `field` names it in the error.
pub fn check_session_id(id: &str, field: &str) -> Result<(), InvalidRequest> {
    if id.len() > MAX_SESSION_ID_BYTES {
        return Err(InvalidRequest::new(
            field,
            format!(
                "is longer than {MAX_SESSION_ID_BYTES} bytes; use a short id (e.g. a UUID) per \
                 conversation"
            ),
        ));
    }
    Ok(())
}

/// Size limits a request must respect.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    /// Most messages in one conversation.
    pub max_messages: usize,
    /// Most bytes of message text in total.
    pub max_text_bytes: usize,
}

/// A non-empty conversation with at least one non-blank user turn.
#[derive(Clone, Debug, PartialEq)]
pub struct Conversation {
    messages: Vec<Message>,
}

impl Conversation {
    /// Validates `(role, content)` pairs as they arrive on the wire.
    pub fn from_wire<'a>(
        messages: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
        limits: RequestLimits,
    ) -> Result<Self, InvalidRequest> {
        if messages.len() == 0 {
            return Err(InvalidRequest::new(
                "messages",
                "the conversation is empty; send at least one message with role \"user\"",
            ));
        }
        if messages.len() > limits.max_messages {
            return Err(InvalidRequest::new(
                "messages",
                format!(
                    "{} messages is more than the limit of {}; send only the most recent turns",
                    messages.len(),
                    limits.max_messages
                ),
            ));
        }
        let mut total_bytes = 0usize;
        let mut out = Vec::with_capacity(messages.len());
        for (i, (role, content)) in messages.enumerate() {
            let role = Role::parse(role).ok_or_else(|| {
                InvalidRequest::new(
                    format!("messages[{i}].role"),
                    format!(
                        "unknown role {role:?}; use one of \"system\", \"user\", \"assistant\", \"tool\""
                    ),
                )
            })?;
            total_bytes = total_bytes.saturating_add(content.len());
            out.push(Message {
                role,
                content: content.to_owned(),
            });
        }
        if total_bytes > limits.max_text_bytes {
            return Err(InvalidRequest::new(
                "messages",
                format!(
                    "the conversation holds {total_bytes} bytes of text, more than the limit of {}; \
                     shorten or summarise earlier turns",
                    limits.max_text_bytes
                ),
            ));
        }
        Self::new(out)
    }

    /// Validates already-typed messages (training builds one-turn conversations this way).
    pub fn new(messages: Vec<Message>) -> Result<Self, InvalidRequest> {
        if messages.is_empty() {
            return Err(InvalidRequest::new(
                "messages",
                "the conversation is empty; send at least one message with role \"user\"",
            ));
        }
        if !messages
            .iter()
            .any(|m| m.role == Role::User && !m.content.trim().is_empty())
        {
            return Err(InvalidRequest::new(
                "messages",
                "the conversation has no non-empty message with role \"user\"; the router needs \
                 the user's request to choose a model",
            ));
        }
        Ok(Self { messages })
    }

    /// A conversation of one user turn.
    pub fn single_user(prompt: &str) -> Result<Self, InvalidRequest> {
        Self::new(vec![Message {
            role: Role::User,
            content: prompt.to_owned(),
        }])
    }

    /// The turns, oldest first.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The conversation as one text: a single user turn as is, several turns as
    /// `role: content` paragraphs (the form outcome tables keep prompts in).
    pub fn transcript(&self) -> String {
        match self.messages.as_slice() {
            [only] if only.role == Role::User => only.content.clone(),
            turns => turns
                .iter()
                .map(|m| format!("{}: {}", m.role.as_str(), m.content))
                .collect::<Vec<_>>()
                .join("\n\n"),
        }
    }

    /// Index of the last non-blank user turn (exists by construction).
    pub fn last_user_index(&self) -> usize {
        self.messages
            .iter()
            .rposition(|m| m.role == Role::User && !m.content.trim().is_empty())
            .unwrap_or(0)
    }
}

/// The built-in trade-offs between quality and cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Highest predicted quality.
    Quality,
    /// Cheapest model within the policy's small quality margin of the best.
    #[default]
    Balanced,
    /// Cheapest model within the policy's wide quality margin of the best.
    Cost,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Quality => "quality",
            Mode::Balanced => "balanced",
            Mode::Cost => "cost",
        })
    }
}

/// The caller's constraints and trade-off, validated against the catalog.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Preferences {
    /// Built-in trade-off; ignored when `cost_weight` is set.
    pub mode: Mode,
    /// λ ≥ 0: choose the model maximising `quality - λ * cost_usd`.
    pub cost_weight: Option<f64>,
    /// Hard limit on predicted cost per request, USD.
    pub max_cost_usd: Option<f64>,
    /// Hard limit on predicted latency, milliseconds.
    pub max_latency_ms: Option<u32>,
    /// When non-empty, only these models.
    pub allowed_models: Vec<String>,
    /// Capabilities the model must have.
    pub required_capabilities: Vec<Capability>,
    /// The model's context window must be at least this.
    pub min_context_tokens: Option<u32>,
    /// Caller's answer-length estimate; replaces the policy's prediction.
    pub expected_output_tokens: Option<u32>,
}

impl Preferences {
    /// Checks numbers and model names; `field_prefix` is prepended to field paths in errors.
    pub fn validate(&self, catalog: &Catalog, field_prefix: &str) -> Result<(), InvalidRequest> {
        let field = |name: &str| format!("{field_prefix}{name}");
        if let Some(w) = self.cost_weight
            && (!w.is_finite() || w < 0.0)
        {
            return Err(InvalidRequest::new(
                field("cost_weight"),
                format!(
                    "{w} is not a valid cost weight; give a finite number >= 0 \
                         (quality points traded per USD), or leave it unset to use `mode`"
                ),
            ));
        }
        if let Some(b) = self.max_cost_usd
            && (!b.is_finite() || b < 0.0)
        {
            return Err(InvalidRequest::new(
                field("max_cost_usd"),
                format!(
                    "{b} is not a valid budget; give a finite number of USD >= 0, \
                         or leave it unset for no budget"
                ),
            ));
        }
        for (i, name) in self.allowed_models.iter().enumerate() {
            if catalog.get(name).is_none() {
                let known: Vec<&str> = catalog.models().iter().map(|m| m.name.as_str()).collect();
                return Err(InvalidRequest::new(
                    field(&format!("allowed_models[{i}]")),
                    format!(
                        "unknown model {:?}; the catalog has: {} (see ListModels)",
                        clip(name),
                        known.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits = RequestLimits {
        max_messages: 4,
        max_text_bytes: 100,
    };

    fn wire(pairs: &[(&'static str, &'static str)]) -> Result<Conversation, InvalidRequest> {
        Conversation::from_wire(pairs.iter().copied(), LIMITS)
    }

    #[test]
    fn echoes_are_clipped_at_a_character_boundary() {
        assert_eq!(clip("gpt-4o"), "gpt-4o");
        let long = "é".repeat(MAX_ECHO_BYTES);
        let shown = clip(&long);
        assert!(shown.len() <= MAX_ECHO_BYTES + '…'.len_utf8() && shown.ends_with('…'));
    }

    #[test]
    fn accepts_a_normal_conversation_and_finds_the_last_user_turn() {
        let c = wire(&[
            ("system", "be brief"),
            ("user", "hi"),
            ("assistant", "hello"),
            ("user", "q"),
        ])
        .expect("valid");
        assert_eq!(c.last_user_index(), 3);
    }

    #[test]
    fn names_the_field_for_each_invalid_shape() {
        assert_eq!(wire(&[]).err().map(|e| e.field), Some("messages".into()));
        assert_eq!(
            wire(&[("user", "a"), ("robot", "b")])
                .err()
                .map(|e| e.field),
            Some("messages[1].role".into())
        );
        assert!(wire(&[("system", "only instructions")]).is_err());
        assert!(wire(&[("user", "   ")]).is_err());
        assert!(wire(&[("user", "a"); 5]).is_err());
        let long: &'static str = Box::leak("x".repeat(101).into_boxed_str());
        let err = wire(&[("user", long)])
            .err()
            .map(|e| e.problem)
            .unwrap_or_default();
        assert!(err.contains("limit of 100"), "{err}");
    }
}
