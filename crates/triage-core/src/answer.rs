//! What a model's answer text says, read by generic means: the final answer it commits to, and
//! whether it refuses or hedges.
//!
//! A cascade accepts a cheap draft when the evidence says it is right, and the strongest evidence
//! is that two independent drafts reach the same final answer. Benchmarks extract that answer
//! with their own rules; a router sees arbitrary traffic, so it looks for the forms answers
//! usually take, most explicit first:
//! 1. the last `\boxed{…}` (mathematics),
//! 2. the last JSON `"answer"` field (structured output, whether or not the JSON parses),
//! 3. a closing "the answer is X" / "Answer: X" line,
//! 4. a final option letter such as `(B)`,
//! 5. the last fenced code block,
//! 6. the last number.
//!
//! The answer is then normalised into a key (numbers canonical, one layer of quotes and
//! surrounding space removed), so two drafts agree exactly when their keys are equal. Training
//! and serving both call [`extract_answer`], so the acceptor sees the same evidence in both.

/// Which form the final answer was found in (the acceptor learns how far to trust each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnswerForm {
    /// `\boxed{…}`.
    Boxed,
    /// A JSON `"answer"` field.
    JsonField,
    /// "The answer is …" or "Answer: …".
    Stated,
    /// A closing option letter.
    Choice,
    /// The last fenced code block.
    Code,
    /// The last number in the text.
    Number,
}

impl AnswerForm {
    /// Every form, in the order they are tried.
    pub const ALL: [AnswerForm; 6] = [
        AnswerForm::Boxed,
        AnswerForm::JsonField,
        AnswerForm::Stated,
        AnswerForm::Choice,
        AnswerForm::Code,
        AnswerForm::Number,
    ];

    /// `boxed`, `json_field`, `stated`, `choice`, `code` or `number` (as logs store it).
    pub fn name(self) -> &'static str {
        match self {
            AnswerForm::Boxed => "boxed",
            AnswerForm::JsonField => "json_field",
            AnswerForm::Stated => "stated",
            AnswerForm::Choice => "choice",
            AnswerForm::Code => "code",
            AnswerForm::Number => "number",
        }
    }

    /// The inverse of [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// A final answer found in a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Where it was found.
    pub form: AnswerForm,
    /// The normalised answer: equal keys mean the same answer.
    pub key: String,
}

/// Longest answer key kept: a key is compared, never shown, and an attacker's megabyte of
/// "answer" should not be copied around.
const MAX_KEY_CHARS: usize = 2_000;

/// The final answer `text` commits to, if one of the usual forms is found.
pub fn extract_answer(text: &str) -> Option<Answer> {
    let found = last_boxed(text)
        .map(|s| (AnswerForm::Boxed, s))
        .or_else(|| json_answer(text).map(|s| (AnswerForm::JsonField, s)))
        .or_else(|| stated_answer(text).map(|s| (AnswerForm::Stated, s)))
        .or_else(|| final_choice(text).map(|s| (AnswerForm::Choice, s)))
        .or_else(|| last_code_block(text).map(|s| (AnswerForm::Code, s)))
        .or_else(|| last_number(text).map(|s| (AnswerForm::Number, s)))?;
    let (form, raw) = found;
    // An answer field may itself box its value or state a number with units.
    let raw = last_boxed(&raw).unwrap_or(raw);
    let key = normalise(&raw);
    (!key.is_empty()).then(|| Answer {
        form,
        key: key.chars().take(MAX_KEY_CHARS).collect(),
    })
}

/// Whether the text declines to answer.
pub fn refuses(text: &str) -> bool {
    const MARKERS: [&str; 8] = [
        "i can't help",
        "i cannot help",
        "i can't assist",
        "i cannot assist",
        "i'm unable to",
        "i am unable to",
        "i cannot provide",
        "i won't",
    ];
    contains_any(text, &MARKERS)
}

/// Whether the text signals doubt about its own answer.
pub fn hedges(text: &str) -> bool {
    const MARKERS: [&str; 9] = [
        "i'm not sure",
        "i am not sure",
        "not certain",
        "i think",
        "probably",
        "might be",
        "it is unclear",
        "cannot be determined",
        "approximately",
    ];
    contains_any(text, &MARKERS)
}

fn contains_any(text: &str, markers: &[&str]) -> bool {
    let lower = text.to_lowercase();
    markers.iter().any(|m| lower.contains(m))
}

/// The content of the last `\boxed{…}`, braces balanced.
fn last_boxed(text: &str) -> Option<String> {
    let start = text.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1usize;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(text[start..start + i].to_owned());
                }
            }
            _ => {}
        }
    }
    None
}

/// The value of the last `"answer": …` field: a JSON string (escapes decoded) or a bare value up
/// to the next `,`, `}` or line end. Scanned rather than parsed, because models often wrap the
/// JSON in prose or break it.
fn json_answer(text: &str) -> Option<String> {
    let at = text.rfind("\"answer\"")? + "\"answer\"".len();
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    if let Some(body) = rest.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Some(out),
                '\\' => match chars.next()? {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    other => out.push(other),
                },
                c => out.push(c),
            }
        }
        return None;
    }
    let end = rest.find([',', '}', '\n']).unwrap_or(rest.len());
    Some(rest[..end].trim().to_owned()).filter(|s| !s.is_empty())
}

/// "the answer is X" or a line starting "Answer: X", the last one in the text.
fn stated_answer(text: &str) -> Option<String> {
    let lower = text.to_lowercase();
    let cues = ["the answer is", "final answer:", "answer:"];
    let (at, cue) = cues
        .iter()
        .filter_map(|c| lower.rfind(c).map(|i| (i, *c)))
        .max_by_key(|(i, _)| *i)?;
    // `lower` may differ in byte length from `text` for some scripts; read from it then.
    let source = if lower.len() == text.len() {
        text
    } else {
        &lower
    };
    let rest = source.get(at + cue.len()..)?;
    let line = rest.lines().find(|l| !l.trim().is_empty())?;
    let value = line.trim().trim_end_matches('.').trim();
    Some(value.to_owned()).filter(|s| !s.is_empty())
}

/// A closing option letter: the last `(X)` with X in A–J, in the final line with text.
fn final_choice(text: &str) -> Option<String> {
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let bytes = line.as_bytes();
    (0..bytes.len().saturating_sub(2)).rev().find_map(|i| {
        let letter = bytes[i + 1];
        (bytes[i] == b'(' && bytes[i + 2] == b')' && (b'A'..=b'J').contains(&letter))
            .then(|| (letter as char).to_string())
    })
}

/// The body of the last complete fenced code block.
fn last_code_block(text: &str) -> Option<String> {
    let fences: Vec<usize> = text.match_indices("```").map(|(i, _)| i).collect();
    if fences.len() < 2 {
        return None;
    }
    let pair = fences.len() / 2 * 2;
    let (open, close) = (fences[pair - 2], fences[pair - 1]);
    let body = &text[open + 3..close];
    // Drop the language tag on the opening line.
    let body = body.split_once('\n').map_or(body, |(_, b)| b);
    Some(body.trim().to_owned()).filter(|s| !s.is_empty())
}

/// The last number in the text (thousands separators allowed).
fn last_number(text: &str) -> Option<String> {
    let mut best: Option<(usize, usize)> = None;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = if i > 0 && bytes[i - 1] == b'-' {
                i - 1
            } else {
                i
            };
            let mut end = i;
            while end < bytes.len()
                && (bytes[end].is_ascii_digit()
                    || ((bytes[end] == b'.' || bytes[end] == b',')
                        && bytes.get(end + 1).is_some_and(u8::is_ascii_digit)))
            {
                end += 1;
            }
            best = Some((start, end));
            i = end;
        } else {
            i += 1;
        }
    }
    best.map(|(s, e)| text[s..e].to_owned())
}

/// One key per answer: surrounding space, `$…$`, one layer of matching quotes and a closing
/// period removed, inner space collapsed; a value that reads as a number (units, `$`, `%` and
/// thousands separators aside) becomes `num:` and its canonical form.
fn normalise(raw: &str) -> String {
    let mut s = raw.trim().trim_end_matches('.').trim();
    s = s.trim_matches('$').trim();
    for q in ['"', '\'', '`'] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            s = &s[1..s.len() - 1];
            break;
        }
    }
    // "(B)" and "B" are the same option.
    if let [b'(', letter @ b'A'..=b'J', b')'] = s.as_bytes() {
        return (*letter as char).to_string();
    }
    let collapsed = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match as_number(&collapsed) {
        Some(n) => format!("num:{n}"),
        None => collapsed,
    }
}

/// `s` as a number when it is one, maybe with a currency sign, percent, thousands separators or
/// a trailing unit word ("11 cups").
fn as_number(s: &str) -> Option<f64> {
    let head = s.split_whitespace().next()?;
    let rest_is_words = s[head.len()..]
        .split_whitespace()
        .all(|w| w.chars().all(char::is_alphabetic));
    if !rest_is_words {
        return None;
    }
    let cleaned: String = head
        .trim_start_matches('$')
        .trim_end_matches('%')
        .chars()
        .filter(|c| *c != ',')
        .collect();
    let n: f64 = cleaned.parse().ok()?;
    // Canonical: 3.50, 3.5 and 7/2 aside, equal values print equally; -0 is 0.
    n.is_finite().then_some(if n == 0.0 { 0.0 } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> Option<String> {
        extract_answer(text).map(|a| a.key)
    }

    #[test]
    fn each_form_is_found_most_explicit_first() {
        let cases = [
            (
                "so x = \\boxed{\\frac{1}{2}} and 3",
                AnswerForm::Boxed,
                "\\frac{1}{2}",
            ),
            (
                "```json\n{\"reasoning\": \"3 + 4\",\n \"answer\": \"7\"\n}\n```",
                AnswerForm::JsonField,
                "num:7",
            ),
            (
                "{\"answer\": 12.50, \"x\": 1}",
                AnswerForm::JsonField,
                "num:12.5",
            ),
            (
                "Work...\nThe answer is 1,250 dollars.",
                AnswerForm::Stated,
                "num:1250",
            ),
            ("Thinking\nAnswer: Paris", AnswerForm::Stated, "Paris"),
            ("I pick\n(C)", AnswerForm::Choice, "C"),
            (
                "Here:\n```python\nprint(1)\n```",
                AnswerForm::Code,
                "print(1)",
            ),
            ("3 apples plus 4 is 7", AnswerForm::Number, "num:7"),
        ];
        for (text, form, expected) in cases {
            let a = extract_answer(text).unwrap_or_else(|| panic!("nothing found in {text:?}"));
            assert_eq!((a.form, a.key.as_str()), (form, expected), "{text:?}");
        }
    }

    #[test]
    fn equal_answers_get_equal_keys() {
        assert_eq!(key("\"answer\": \"11\""), key("The answer is 11 cups."));
        assert_eq!(key("\"answer\": \"'abc'\""), key("\"answer\": \"abc\""));
        assert_eq!(key("\\boxed{3.50}"), key("\"answer\": 3.5"));
        assert_ne!(key("\"answer\": \"ABC\""), key("\"answer\": \"abc\""));
        assert_eq!(key("So the answer is (B)."), key("I pick\n(B)"));
    }

    #[test]
    fn nothing_to_extract_is_none() {
        assert_eq!(key(""), None);
        assert_eq!(key("No idea, sorry."), None);
        assert_eq!(key("\"answer\": \"\""), None);
        assert_eq!(key("\\boxed{unclosed"), None);
    }

    #[test]
    fn hostile_text_is_bounded_and_never_panics() {
        let huge = format!("\"answer\": \"{}\"", "x".repeat(100_000));
        assert_eq!(key(&huge).map(|k| k.chars().count()), Some(MAX_KEY_CHARS));
        for text in [
            "\"answer\"",
            "\"answer\": \"\\",
            "(",
            "```",
            "İ the answer is ß",
            "-",
        ] {
            let _ = extract_answer(text);
        }
    }

    #[test]
    fn refusals_and_hedges_are_flagged() {
        assert!(refuses("I'm unable to help with that."));
        assert!(!refuses("The answer is 4."));
        assert!(hedges("It might be 4, I think."));
        assert!(!hedges("It is 4."));
    }
}
