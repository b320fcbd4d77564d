//! Counting tokens with the encoder's own tokenizer, without the model: for token estimates
//! where an upstream reports none (the gateway marks such counts as estimated).

use std::path::Path;

use tokenizers::Tokenizer;

use crate::EncoderError;

/// The encoder's tokenizer, untruncated.
pub struct TokenCounter {
    tokenizer: Tokenizer,
}

impl TokenCounter {
    /// Loads `tokenizer.json`.
    pub fn load(path: &Path) -> Result<Self, EncoderError> {
        let error = |message: String| EncoderError::Tokenizer {
            path: path.display().to_string(),
            message,
        };
        let mut tokenizer = Tokenizer::from_file(path).map_err(|e| error(e.to_string()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| error(e.to_string()))?;
        Ok(Self { tokenizer })
    }

    /// Tokens in `text` (no special tokens); a text the tokenizer fails on counts as one token
    /// per four bytes.
    pub fn count(&self, text: &str) -> u32 {
        let n = self
            .tokenizer
            .encode(text, false)
            .map_or(text.len().div_ceil(4), |e| e.len());
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}
