//! all-MiniLM-L6-v2 on ONNX Runtime.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor;
use tokenizers::Tokenizer;
use triage_core::EncoderInput;
use triage_core::features::select_encoder_tokens;

use crate::{Embedder, Embedding, EncoderError};

/// How to build an [`OnnxEmbedder`].
#[derive(Clone, Debug)]
pub struct OnnxOptions {
    /// The ONNX model.
    pub model: PathBuf,
    /// The `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// Token budget including `[CLS]` and `[SEP]`.
    pub max_tokens: usize,
    /// ONNX Runtime intra-op threads.
    pub intra_op_threads: usize,
    /// Whether those threads spin between the parallel sections of a run (they stop spinning
    /// as soon as the last run in progress returns, so an idle encoder burns no CPU).
    pub intra_op_spinning: bool,
    /// Use the CUDA execution provider.
    pub cuda: bool,
}

/// The process-wide ONNX Runtime environment, created once the library is loaded.
static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
/// Serialises library loading, which must happen at most once.
static LOADING: Mutex<()> = Mutex::new(());

/// Loads the ONNX Runtime shared library (once per process). With `None`, `ORT_DYLIB_PATH` or
/// the system's `libonnxruntime.so` is used.
pub fn init_onnxruntime(library: Option<&Path>) -> Result<(), EncoderError> {
    let _loading = LOADING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if ENVIRONMENT.get().is_some() {
        return Ok(());
    }
    let path = library
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("libonnxruntime.so"));
    let runtime_error = |message: String| EncoderError::Runtime {
        path: path.display().to_string(),
        message,
    };
    if library.is_some() && !path.is_file() {
        return Err(runtime_error("file not found".into()));
    }
    // ort's own error type must not be built before the library is loaded (it panics), so the
    // load error is reported through our type.
    let builder = ort::init_from(&path).map_err(|e| runtime_error(e.to_string()))?;
    let environment = builder.build().map_err(|e| runtime_error(e.to_string()))?;
    let _ = ENVIRONMENT.set(environment);
    Ok(())
}

/// The encoder: a tokenizer and one ONNX Runtime session.
pub struct OnnxEmbedder {
    session: Session,
    tokenizer: Tokenizer,
    max_tokens: usize,
    cls: i64,
    sep: i64,
    pad: i64,
    dim: usize,
    wants_token_type_ids: bool,
}

impl OnnxEmbedder {
    /// Loads tokenizer and model; [`init_onnxruntime`] must have succeeded first.
    pub fn load(options: &OnnxOptions) -> Result<Self, EncoderError> {
        let tokenizer_error = |message: String| EncoderError::Tokenizer {
            path: options.tokenizer.display().to_string(),
            message,
        };
        let mut tokenizer =
            Tokenizer::from_file(&options.tokenizer).map_err(|e| tokenizer_error(e.to_string()))?;
        // tokenizer.json pins truncation and padding at 128; we choose tokens ourselves.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| tokenizer_error(e.to_string()))?;
        let special = |token: &str| {
            tokenizer
                .token_to_id(token)
                .map(i64::from)
                .ok_or_else(|| tokenizer_error(format!("has no {token} token")))
        };
        let (cls, sep, pad) = (special("[CLS]")?, special("[SEP]")?, special("[PAD]")?);

        let model_error = |message: String| EncoderError::Model {
            path: options.model.display().to_string(),
            message,
        };
        if !options.model.is_file() {
            return Err(model_error("file not found".into()));
        }
        if options.cuda && !cfg!(feature = "cuda") {
            return Err(EncoderError::CudaNotBuilt);
        }
        let environment = ENVIRONMENT.get().ok_or_else(|| EncoderError::Runtime {
            path: "(not loaded)".into(),
            message: "call init_onnxruntime before loading the encoder".into(),
        })?;
        let session =
            build_session(environment, options).map_err(|e| model_error(e.to_string()))?;
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for required in ["input_ids", "attention_mask"] {
            if !names.contains(&required) {
                return Err(model_error(format!(
                    "model has no `{required}` input (inputs: {names:?})"
                )));
            }
        }
        let wants_token_type_ids = names.contains(&"token_type_ids");
        let mut embedder = Self {
            session,
            tokenizer,
            max_tokens: options.max_tokens,
            cls,
            sep,
            pad,
            dim: 0,
            wants_token_type_ids,
        };
        // One probe run tells the embedding width and proves the model runs at all.
        let probe = EncoderInput {
            primary: "probe".into(),
            context: String::new(),
        };
        let out = embedder
            .embed_batch(&[&probe])
            .map_err(|e| model_error(e.to_string()))?;
        embedder.dim = out.first().map_or(0, |e| e.vector.len());
        if embedder.dim == 0 {
            return Err(model_error("model produced an empty embedding".into()));
        }
        Ok(embedder)
    }

    fn token_ids(&self, text: &str) -> Result<Vec<u32>, EncoderError> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| EncoderError::Tokenize(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }
}

fn build_session(environment: &Environment, options: &OnnxOptions) -> ort::Result<Session> {
    let mut builder = Session::builder(environment)?
        .with_intra_threads(options.intra_op_threads)?
        .with_inter_threads(1)?
        .with_intra_op_spinning(options.intra_op_spinning)?
        // Spin only while there is work: without this, spinning threads keep a core busy for a
        // while after every run, which costs idle CPU and, on 2 cores, the async runtime's
        // threads their time slices.
        .with_config_entry("session.force_spinning_stop", "1")?;
    #[cfg(feature = "cuda")]
    if options.cuda {
        builder = builder
            .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])?;
    }
    builder.commit_from_file(&options.model)
}

impl Embedder for OnnxEmbedder {
    fn dim(&self) -> usize {
        self.dim
    }

    fn embed_batch(&mut self, inputs: &[&EncoderInput]) -> Result<Vec<Embedding>, EncoderError> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let budget = self.max_tokens.saturating_sub(2);
        let mut rows: Vec<Vec<i64>> = Vec::with_capacity(inputs.len());
        let mut text_tokens = Vec::with_capacity(inputs.len());
        for input in inputs {
            let primary = self.token_ids(&input.primary)?;
            let context = self.token_ids(&input.context)?;
            text_tokens.push(u32::try_from(primary.len() + context.len()).unwrap_or(u32::MAX));
            let chosen = select_encoder_tokens(&primary, &context, budget);
            let mut row = Vec::with_capacity(chosen.len() + 2);
            row.push(self.cls);
            row.extend(chosen.into_iter().map(i64::from));
            row.push(self.sep);
            rows.push(row);
        }
        let batch = rows.len();
        let width = rows.iter().map(Vec::len).max().unwrap_or(2);
        let mut ids = vec![self.pad; batch * width];
        let mut mask = vec![0i64; batch * width];
        for (r, row) in rows.iter().enumerate() {
            ids[r * width..r * width + row.len()].copy_from_slice(row);
            mask[r * width..r * width + row.len()].fill(1);
        }
        let shape = [batch, width];
        let inference = |e: ort::Error| EncoderError::Inference(e.to_string());
        let ids_t = Tensor::from_array((shape, ids)).map_err(inference)?;
        let mask_t = Tensor::from_array((shape, mask.clone())).map_err(inference)?;
        let outputs = if self.wants_token_type_ids {
            let types_t =
                Tensor::from_array((shape, vec![0i64; batch * width])).map_err(inference)?;
            self.session.run(ort::inputs![
                "input_ids" => ids_t,
                "attention_mask" => mask_t,
                "token_type_ids" => types_t,
            ])
        } else {
            self.session
                .run(ort::inputs!["input_ids" => ids_t, "attention_mask" => mask_t])
        }
        .map_err(inference)?;
        let (out_shape, hidden) = outputs[0].try_extract_tensor::<f32>().map_err(inference)?;
        let dims: Vec<usize> = out_shape
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(0))
            .collect();
        let [b, t, dim] = dims[..] else {
            return Err(EncoderError::Inference(format!(
                "unexpected output shape {dims:?}"
            )));
        };
        if b != batch || t != width || dim == 0 {
            return Err(EncoderError::Inference(format!(
                "output shape {dims:?} does not match input [{batch}, {width}]"
            )));
        }
        let mut result = Vec::with_capacity(batch);
        for (r, row) in rows.iter().enumerate() {
            let mut pooled = vec![0f32; dim];
            for tok in 0..row.len() {
                let start = (r * width + tok) * dim;
                for (p, h) in pooled.iter_mut().zip(&hidden[start..start + dim]) {
                    *p += h;
                }
            }
            let norm = pooled.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            pooled.iter_mut().for_each(|x| *x /= norm);
            result.push(Embedding {
                vector: pooled,
                text_tokens: text_tokens[r],
                encoded_tokens: u32::try_from(row.len()).unwrap_or(u32::MAX),
            });
        }
        Ok(result)
    }
}

impl OnnxOptions {
    /// Options from the `[encoder]` settings, with relative paths resolved against `base`.
    pub fn from_settings(settings: &triage_core::config::EncoderSettings, base: &Path) -> Self {
        Self {
            model: base.join(&settings.model),
            tokenizer: base.join(&settings.tokenizer),
            max_tokens: settings.max_tokens,
            intra_op_threads: settings.intra_op_threads,
            intra_op_spinning: settings.intra_op_spinning,
            cuda: settings.cuda,
        }
    }
}
