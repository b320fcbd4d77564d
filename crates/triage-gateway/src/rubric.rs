//! The judge's rubric: the prompt that asks a model to score an answer, and the reading of its
//! verdict.
//!
//! The built-in rubric scores general answers on a fixed 1–10 scale and asks for a short JSON
//! verdict. An operator may replace it with a template file holding `{prompt}` and `{answer}`;
//! the verdict must still be `{"score": 1..10}`. Every record names the rubric by a hash of its
//! text, so scores from two rubrics are never mistaken for one scale.

use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The built-in rubric.
pub const DEFAULT_RUBRIC: &str = "You are grading an AI assistant's answer to a user's \
request. Judge only whether the answer is correct, complete and useful for what was asked; \
ignore length and style unless they get in the way. A wrong final answer scores at most 3.

[Request]
{prompt}

[Answer]
{answer}

Reply with only a JSON object, no other text: {\"score\": <integer 1-10>, \"reason\": \"<one \
short sentence>\"}";

/// The lowest and highest score a verdict may give.
const SCALE: (f64, f64) = (1.0, 10.0);

/// Why a rubric file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RubricError {
    /// The file could not be read.
    #[error("judge.rubric {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The template lacks a placeholder.
    #[error("judge.rubric {path}: the template must contain {{prompt}} and {{answer}}")]
    Placeholders {
        /// The file.
        path: String,
    },
}

/// A rubric template and its hash.
#[derive(Clone, Debug)]
pub struct Rubric {
    template: String,
    /// The first 16 hex digits of the template's SHA-256.
    pub hash: String,
}

impl Rubric {
    /// The built-in rubric, or the template at `path`.
    pub fn load(path: Option<&Path>) -> Result<Self, RubricError> {
        let Some(path) = path else {
            return Ok(Self::new(DEFAULT_RUBRIC.to_owned()));
        };
        let shown = path.display().to_string();
        let template = std::fs::read_to_string(path).map_err(|source| RubricError::Read {
            path: shown.clone(),
            source,
        })?;
        if !(template.contains("{prompt}") && template.contains("{answer}")) {
            return Err(RubricError::Placeholders { path: shown });
        }
        Ok(Self::new(template))
    }

    fn new(template: String) -> Self {
        let digest = Sha256::digest(template.as_bytes());
        let hash = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Self { template, hash }
    }

    /// The chat-completions body that asks the judge about `answer` to `prompt` (each cut to
    /// `max_bytes`, keeping its start and end).
    pub fn request(&self, prompt: &str, answer: &str, max_bytes: usize) -> Value {
        // One pass, so that a prompt containing "{answer}" is not filled in again.
        let mut text = String::with_capacity(self.template.len() + prompt.len() + answer.len());
        let mut rest = self.template.as_str();
        while let Some(at) = rest.find('{') {
            text.push_str(&rest[..at]);
            let tail = &rest[at..];
            if let Some(after) = tail.strip_prefix("{prompt}") {
                text.push_str(&cut(prompt, max_bytes));
                rest = after;
            } else if let Some(after) = tail.strip_prefix("{answer}") {
                text.push_str(&cut(answer, max_bytes));
                rest = after;
            } else {
                text.push('{');
                rest = &tail[1..];
            }
        }
        text.push_str(rest);
        json!({
            "messages": [{"role": "user", "content": text}],
            "temperature": 0,
            "max_tokens": 200,
        })
    }
}

/// `text` within `max` bytes: its start and end around a marker (on character boundaries).
fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let half = max / 2;
    let mut head = half;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - half;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{} […] {}", &text[..head], &text[tail..]).into()
}

/// The quality (0..1) a judge's answer gives: the `score` of the first JSON object in it that
/// has one, on the 1–10 scale. `None` for anything else (no object, no score, off the scale):
/// an answer that cannot be read is never a score.
pub fn verdict(answer: &str) -> Option<f64> {
    let mut from = 0;
    while let Some(start) = answer[from..].find('{').map(|i| from + i) {
        let mut objects = serde_json::Deserializer::from_str(&answer[start..]).into_iter::<Value>();
        if let Some(Ok(Value::Object(fields))) = objects.next() {
            let score = fields.get("score").and_then(|s| match s {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            });
            return score
                .filter(|s| (SCALE.0..=SCALE.1).contains(s))
                .map(|s| (s - SCALE.0) / (SCALE.1 - SCALE.0));
        }
        from = start + 1;
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_read_from_json_and_nothing_else() {
        assert_eq!(verdict(r#"{"score": 10, "reason": "right"}"#), Some(1.0));
        assert_eq!(verdict(r#"Sure. {"score": 1}"#), Some(0.0));
        assert_eq!(verdict("```json\n{\"score\": \"4\"}\n```"), Some(3.0 / 9.0));
        for garbage in [
            "",
            "The answer is good: 9/10",
            r#"{"score": 11}"#,
            r#"{"score": 0}"#,
            r#"{"rating": 7}"#,
            "{not json",
        ] {
            assert_eq!(verdict(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn the_template_is_filled_once_and_cut_to_size() {
        let rubric = Rubric::new("Q: {prompt} A: {answer} {other}".into());
        let body = rubric.request("say {answer}", "ok", 100);
        let text = body["messages"][0]["content"].as_str().unwrap_or_default();
        assert_eq!(text, "Q: say {answer} A: ok {other}");
        let long = "é".repeat(100);
        let body = rubric.request(&long, "ok", 21);
        let text = body["messages"][0]["content"].as_str().unwrap_or_default();
        assert!(text.len() < 60 && text.contains("[…]"), "{text}");
        assert_ne!(
            rubric.hash,
            Rubric::load(None).map(|r| r.hash).unwrap_or_default()
        );
    }

    #[test]
    fn a_template_without_its_placeholders_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rubric.txt");
        std::fs::write(&path, "Rate this: {prompt}").unwrap();
        let err = Rubric::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("{prompt} and {answer}"), "{err}");
    }
}
