//! The sentence encoder, and the machinery that keeps it off the async runtime.
//!
//! - [`Embedder`] is the small trait an inference engine implements: token selection, model run,
//!   pooling, all synchronous. [`OnnxEmbedder`] implements it with ONNX Runtime (`ort`, loaded
//!   dynamically from a shared library) and a Hugging Face `tokenizers` tokenizer, for
//!   all-MiniLM-L6-v2: mean pooling over the attention mask, then L2 normalisation.
//! - [`EncoderPool`] runs embedders on dedicated OS threads fed by one bounded channel. A request
//!   that finds the channel full fails at once with [`EncodeError::QueueFull`] rather than
//!   queueing without limit, which the server maps to `RESOURCE_EXHAUSTED`. Workers batch
//!   whatever is waiting, and skip requests whose caller has gone away.
//!
//! Training uses [`OnnxEmbedder`] directly (it is already off any runtime) with large batches.

mod count;
mod onnx;
mod pool;

pub use count::{TokenCounter, approx_tokens};
pub use onnx::{OnnxEmbedder, OnnxOptions, init_onnxruntime};
pub use pool::{EncodeError, EncoderPool, PoolOptions};

use triage_core::EncoderInput;

/// One embedded prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding {
    /// Unit-length sentence embedding.
    pub vector: Vec<f32>,
    /// Tokens in the whole input before truncation (all turns), a proxy for billed input tokens.
    pub text_tokens: u32,
    /// Tokens the model actually saw, special tokens included.
    pub encoded_tokens: u32,
}

/// Why the encoder could not be built or could not embed.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// The ONNX Runtime library could not be loaded.
    #[error("cannot load the ONNX Runtime library {path}: {message} (run scripts/setup.sh)")]
    Runtime {
        /// The library path tried.
        path: String,
        /// ONNX Runtime's message.
        message: String,
    },
    /// The model file could not be loaded or is not the expected encoder.
    #[error("cannot load the encoder model {path}: {message} (run scripts/setup.sh)")]
    Model {
        /// The model path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The tokenizer file could not be loaded.
    #[error("cannot load the tokenizer {path}: {message} (run scripts/setup.sh)")]
    Tokenizer {
        /// The tokenizer path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// CUDA was asked for but this build has no CUDA support.
    #[error("encoder.cuda = true, but this binary was built without the `cuda` feature")]
    CudaNotBuilt,
    /// Tokenising an input failed.
    #[error("tokenisation failed: {0}")]
    Tokenize(String),
    /// Running the model failed.
    #[error("encoder inference failed: {0}")]
    Inference(String),
}

/// An inference engine that turns prompts into embeddings, synchronously.
pub trait Embedder: Send {
    /// Embedding dimension.
    fn dim(&self) -> usize;
    /// Embeds a batch, one result per input, in order.
    fn embed_batch(&mut self, inputs: &[&EncoderInput]) -> Result<Vec<Embedding>, EncoderError>;
}
