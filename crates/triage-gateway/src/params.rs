//! What each provider accepts of a request, by whether the model reasons: one place for the
//! rules, applied to every upstream call.
//!
//! - OpenAI-style providers: a reasoning model (o-series, GPT-5, R1-style) takes its answer
//!   limit as `max_completion_tokens` and refuses sampling and penalty settings, which are
//!   dropped; any other model refuses `reasoning_effort`, which is dropped (routing may send a
//!   request written for a reasoning model to one that is not).
//! - Anthropic: a reasoning model given `reasoning_effort` thinks, with a budget per effort
//!   (LiteLLM's mapping: low 1,024, medium 2,048, high 4,096 tokens) when `max_tokens` leaves
//!   room for it; thinking refuses `temperature` and `top_p`, which are dropped then. The
//!   Messages translation never forwards `reasoning_effort` itself.
//!
//! Prompt-cache breakpoints (`cache_control`) go to Anthropic only.
//!
//! Hidden reasoning tokens need no rule: both providers count them in the answer's output
//! tokens (`completion_tokens`, `output_tokens`), which are priced as output.

use serde_json::{Map, Value, json};

use crate::anthropic::DEFAULT_MAX_TOKENS;

/// What OpenAI's reasoning models refuse.
const OPENAI_REASONING_REFUSES: [&str; 7] = [
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
];

/// Anthropic thinking budgets by `reasoning_effort`, tokens.
const THINKING_BUDGETS: [(&str, u64); 3] = [("low", 1024), ("medium", 2048), ("high", 4096)];

/// An OpenAI-style body for a model that does (or does not) reason. Anthropic's prompt-cache
/// breakpoints (`cache_control` on content parts) are removed: OpenAI caches by itself.
pub fn openai(body: &mut Map<String, Value>, reasoning: bool) {
    if let Some(Value::Array(messages)) = body.get_mut("messages") {
        for part in messages
            .iter_mut()
            .filter_map(|m| m.get_mut("content").and_then(Value::as_array_mut))
            .flatten()
        {
            if let Value::Object(p) = part {
                p.remove("cache_control");
            }
        }
    }
    if !reasoning {
        body.remove("reasoning_effort");
        return;
    }
    if let Some(limit) = body.remove("max_tokens") {
        body.entry("max_completion_tokens").or_insert(limit);
    }
    for key in OPENAI_REASONING_REFUSES {
        body.remove(key);
    }
}

/// A Messages request (translated from `chat`) for a model that does (or does not) reason.
pub fn anthropic(request: &mut Value, chat: &Map<String, Value>, reasoning: bool) {
    let effort = chat.get("reasoning_effort").and_then(Value::as_str);
    let budget = THINKING_BUDGETS
        .iter()
        .find(|(name, _)| Some(*name) == effort)
        .map(|(_, budget)| *budget);
    let (true, Some(budget)) = (reasoning, budget) else {
        return;
    };
    let room = request
        .get("max_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    // Anthropic needs the thinking budget below max_tokens.
    if room <= budget {
        return;
    }
    if let Value::Object(o) = request {
        o.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": budget}),
        );
        o.remove("temperature");
        o.remove("top_p");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(o) => o,
            _ => Map::new(),
        }
    }

    #[test]
    fn openai_reasoning_models_get_only_what_they_accept() {
        let sent = json!({"max_tokens": 100, "temperature": 0.2, "top_p": 0.9, "seed": 1,
                          "reasoning_effort": "high"});
        let mut reasoning = body(sent.clone());
        openai(&mut reasoning, true);
        assert_eq!(
            Value::Object(reasoning),
            json!({"max_completion_tokens": 100, "seed": 1, "reasoning_effort": "high"})
        );
        let mut plain = body(sent);
        openai(&mut plain, false);
        assert!(plain.get("reasoning_effort").is_none());
        assert_eq!(plain["temperature"], 0.2);
        assert_eq!(plain["max_tokens"], 100);
    }

    #[test]
    fn anthropic_reasoning_models_think_within_max_tokens() {
        let chat = body(json!({"reasoning_effort": "medium"}));
        let mut r = json!({"max_tokens": 5000, "temperature": 0.2});
        anthropic(&mut r, &chat, true);
        assert_eq!(r["thinking"]["budget_tokens"], 2048);
        assert!(r.get("temperature").is_none());
        let mut small = json!({"max_tokens": 1000, "temperature": 0.2});
        anthropic(&mut small, &chat, true);
        assert!(small.get("thinking").is_none(), "no room to think");
        let mut plain = json!({"max_tokens": 5000});
        anthropic(&mut plain, &chat, false);
        assert!(plain.get("thinking").is_none());
    }
}
