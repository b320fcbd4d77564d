//! Prompt → features: the single definition used by both the server and `triage train`.
//!
//! A prompt becomes `[embedding (encoder dim) ‖ hand-made features]`. The embedding sees the
//! tokens chosen by [`select_encoder_tokens`]; the hand features see the whole conversation, so a
//! long prompt's length, code and maths still count after the encoder's truncation.
//!
//! Changing anything here changes what a trained policy means: bump [`FEATURE_SCHEMA`], and
//! policies trained on the old schema are refused at load time instead of silently mis-scoring.

use crate::request::{Conversation, Role};

/// Identifies the feature definition; recorded in and checked against every policy file.
pub const FEATURE_SCHEMA: &str = "minilm-l6-v2-meanpool-l2+hand-v1";

/// Names of the hand-made features, in vector order after the embedding.
pub const HAND_FEATURE_NAMES: [&str; 12] = [
    "ln_input_tokens",
    "ln_last_user_chars",
    "ln_turns",
    "has_system",
    "ln_code_markers",
    "has_code_fence",
    "math_symbol_share",
    "ln_latex_markers",
    "ln_numbers",
    "ln_multistep_markers",
    "ln_questions",
    "ln_lines",
];

/// Share of the encoder's token budget given to the head of an over-long last user turn; the
/// rest goes to its tail. Questions usually state the task first and ask the question last.
pub const HEAD_SHARE: f64 = 0.75;

/// The text the encoder embeds: the last user turn first (it counts most), then earlier turns
/// newest first, to fill whatever token budget the last turn leaves.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderInput {
    /// The last non-blank user turn.
    pub primary: String,
    /// The other turns, newest first, separated by newlines.
    pub context: String,
}

impl EncoderInput {
    /// Splits a conversation into what the encoder should see first and what fills in after.
    pub fn from_conversation(conversation: &Conversation) -> Self {
        let last = conversation.last_user_index();
        let messages = conversation.messages();
        let primary = messages
            .get(last)
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let context = messages
            .iter()
            .enumerate()
            .rev()
            .filter(|(i, m)| *i != last && !m.content.trim().is_empty())
            .map(|(_, m)| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        Self { primary, context }
    }
}

/// The truncation rule. Picks at most `budget` token ids from the last user turn (`primary`) and
/// the earlier turns (`context`), excluding the special tokens the encoder adds around them.
///
/// - If the last user turn fits, all of it is kept and the remaining budget is filled with the
///   head of the context (the most recent earlier turns).
/// - Otherwise the context is dropped and the last turn keeps its head ([`HEAD_SHARE`] of the
///   budget) and its tail (the rest): instructions sit at the start, the actual question at the end.
pub fn select_encoder_tokens(primary: &[u32], context: &[u32], budget: usize) -> Vec<u32> {
    if primary.len() >= budget {
        let head = ((budget as f64) * HEAD_SHARE).ceil() as usize;
        let head = head.min(budget);
        let tail = budget - head;
        let mut out = Vec::with_capacity(budget);
        out.extend_from_slice(&primary[..head]);
        out.extend_from_slice(&primary[primary.len() - tail..]);
        return out;
    }
    let room = budget - primary.len();
    let mut out = Vec::with_capacity(primary.len() + room.min(context.len()));
    out.extend_from_slice(primary);
    out.extend_from_slice(&context[..room.min(context.len())]);
    out
}

/// Whole-conversation statistics behind the hand-made features.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptStats {
    /// Estimated input tokens of the whole conversation (used for cost too).
    pub input_tokens: u32,
    hand: [f32; HAND_FEATURE_NAMES.len()],
}

/// Per-message overhead of chat formats (role markers, separators), in tokens.
const TOKENS_PER_MESSAGE: u32 = 4;

const CODE_MARKERS: [&str; 14] = [
    "def ", "return", "print(", "assert ", "import ", "class ", "function", "=>", "();", "{", "}",
    "==", "for (", "while ",
];
const MULTISTEP_MARKERS: [&str; 14] = [
    "prove",
    "show that",
    "step",
    "derive",
    "calculate",
    "compute",
    "how many",
    "how much",
    "total",
    "each",
    "then",
    "explain",
    "evaluate",
    "determine",
];

impl PromptStats {
    /// Computes the statistics. `text_tokens` is the encoder tokenizer's count over all messages
    /// (before truncation), a stand-in for the provider's tokenizer.
    pub fn new(conversation: &Conversation, text_tokens: u32) -> Self {
        let messages = conversation.messages();
        let turns = messages.len() as u32;
        let input_tokens = text_tokens.saturating_add(TOKENS_PER_MESSAGE.saturating_mul(turns));
        let last = messages
            .get(conversation.last_user_index())
            .map(|m| m.content.as_str())
            .unwrap_or_default();

        let mut code = 0usize;
        let mut fences = 0usize;
        let mut latex = 0usize;
        let mut multistep = 0usize;
        let mut questions = 0usize;
        let mut lines = 0usize;
        let mut numbers = 0usize;
        let mut math_symbols = 0usize;
        let mut chars = 0usize;
        for m in messages {
            let text = m.content.as_str();
            let lower = text.to_lowercase();
            code += CODE_MARKERS
                .iter()
                .map(|k| text.matches(k).count())
                .sum::<usize>();
            fences += text.matches("```").count();
            latex += text.matches('\\').count() + text.matches('$').count();
            multistep += MULTISTEP_MARKERS
                .iter()
                .map(|k| lower.matches(k).count())
                .sum::<usize>();
            questions += text.matches('?').count();
            lines += text.lines().count();
            numbers += count_numbers(text);
            for c in text.chars() {
                chars += 1;
                if c.is_ascii_digit() || "+-*/=^<>%()".contains(c) {
                    math_symbols += 1;
                }
            }
        }
        let ln = |n: usize| (n as f32).ln_1p();
        let has_system = messages.iter().any(|m| m.role == Role::System);
        let hand = [
            (input_tokens as f32).ln_1p(),
            ln(last.chars().count()),
            ln(turns as usize),
            f32::from(u8::from(has_system)),
            ln(code),
            f32::from(u8::from(fences > 0)),
            if chars == 0 {
                0.0
            } else {
                math_symbols as f32 / chars as f32
            },
            ln(latex),
            ln(numbers),
            ln(multistep),
            ln(questions),
            ln(lines),
        ];
        Self { input_tokens, hand }
    }

    /// The hand-made features, named by [`HAND_FEATURE_NAMES`].
    pub fn hand_features(&self) -> &[f32] {
        &self.hand
    }
}

fn count_numbers(text: &str) -> usize {
    let mut count = 0;
    let mut in_number = false;
    for c in text.chars() {
        let digit = c.is_ascii_digit();
        if digit && !in_number {
            count += 1;
        }
        in_number = digit || (in_number && c == '.');
    }
    count
}

/// The feature vector a policy scores: the L2-normalised embedding followed by the hand features.
pub fn features(stats: &PromptStats, embedding: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(embedding.len() + stats.hand.len());
    out.extend_from_slice(embedding);
    out.extend_from_slice(&stats.hand);
    out
}

/// Length of [`features`]' output for an encoder of dimension `embedding_dim`.
pub fn feature_dim(embedding_dim: usize) -> usize {
    embedding_dim + HAND_FEATURE_NAMES.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Message;

    #[test]
    fn short_turn_is_kept_whole_and_context_fills_the_rest() {
        let got = select_encoder_tokens(&[1, 2], &[7, 8, 9], 4);
        assert_eq!(got, vec![1, 2, 7, 8]);
        assert_eq!(select_encoder_tokens(&[1, 2], &[], 4), vec![1, 2]);
    }

    #[test]
    fn long_turn_keeps_head_and_tail_and_drops_context() {
        let primary: Vec<u32> = (0..20).collect();
        let got = select_encoder_tokens(&primary, &[99], 8);
        assert_eq!(got, vec![0, 1, 2, 3, 4, 5, 18, 19]);
    }

    #[test]
    fn encoder_input_puts_last_user_turn_first_then_newest_context() {
        let conv = Conversation::new(vec![
            Message {
                role: Role::System,
                content: "sys".into(),
            },
            Message {
                role: Role::User,
                content: "first".into(),
            },
            Message {
                role: Role::Assistant,
                content: "answer".into(),
            },
            Message {
                role: Role::User,
                content: "second".into(),
            },
        ])
        .expect("valid");
        let input = EncoderInput::from_conversation(&conv);
        assert_eq!(input.primary, "second");
        assert_eq!(input.context, "answer\nfirst\nsys");
    }

    #[test]
    fn hand_features_see_code_maths_and_length() {
        let plain = Conversation::single_user("What is the capital of France?").expect("valid");
        let mathy = Conversation::single_user(
            "Prove that for each n, $\\sum_{k=1}^n k = n(n+1)/2$. Then compute the total for n=100.",
        )
        .expect("valid");
        let p = PromptStats::new(&plain, 8);
        let m = PromptStats::new(&mathy, 40);
        assert_eq!(p.input_tokens, 12);
        let idx = |name| {
            HAND_FEATURE_NAMES
                .iter()
                .position(|n| *n == name)
                .unwrap_or(usize::MAX)
        };
        for name in [
            "ln_latex_markers",
            "ln_multistep_markers",
            "math_symbol_share",
            "ln_numbers",
        ] {
            assert!(
                m.hand_features()[idx(name)] > p.hand_features()[idx(name)],
                "{name}"
            );
        }
        let f = features(&m, &[0.5; 4]);
        assert_eq!(f.len(), feature_dim(4));
        assert!(f.iter().all(|x| x.is_finite()));
    }
}
