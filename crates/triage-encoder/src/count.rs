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

    /// Tokens in `text` (no special tokens); a text the tokenizer fails on is estimated by
    /// [`approx_tokens`].
    pub fn count(&self, text: &str) -> u32 {
        match self.tokenizer.encode(text, false) {
            Ok(e) => u32::try_from(e.len()).unwrap_or(u32::MAX),
            Err(_) => approx_tokens(text.len()),
        }
    }
}

/// The usual rule of thumb where no tokenizer counts: about four bytes of text a token.
pub fn approx_tokens(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(4)).unwrap_or(u32::MAX)
}
