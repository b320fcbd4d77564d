//! The start shared by `train` and `eval`: what to train on ([`TrainOptions`]), and the table
//! loaded with every prompt embedded into the features serving uses ([`Prepared`]).

use std::path::PathBuf;

use triage_core::Settings;
use triage_encoder::{Embedder, OnnxEmbedder, OnnxOptions, init_onnxruntime};
use triage_policy::Policy;

use crate::TrainError;
use crate::embed::{EmbeddingCache, PromptFeatures, prompt_features};
use crate::simulate::Replay;
use crate::table::{Outcomes, Split};

/// What a judge's score weighs against a caller's unless `--judge-weight` says otherwise.
pub const DEFAULT_JUDGE_WEIGHT: f64 = 1.0;

/// What to train on and where to write.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Outcome table (a seed dataset; optional when training from the log).
    pub data: Option<PathBuf>,
    /// The server's decision and feedback log (a directory or a database), to learn from usage.
    pub from_log: Option<crate::logdata::LogSource>,
    /// Replace the policy at `out` even if the gate says the new one is worse.
    pub force: bool,
    /// Refuse an outcome table with holes (an empty or NaN quality or cost) instead of leaving
    /// those rows out.
    pub strict: bool,
    /// Restrict to these models.
    pub models: Option<Vec<String>>,
    /// Policy destination.
    pub out: PathBuf,
    /// Encoder and catalog settings.
    pub settings: Settings,
    /// Base for relative paths in `settings`.
    pub base: PathBuf,
    /// Embedding cache directory.
    pub cache_dir: PathBuf,
    /// Show a progress bar.
    pub progress: bool,
    /// Cross-validation folds every training choice is made over (see `tune`).
    pub folds: usize,
    /// Each model's answer texts, to learn a cascade's acceptor from (see `cascade`).
    pub responses: Option<crate::responses::ResponsesSource>,
    /// Only the table's prompts of these tasks (the log is not filtered).
    pub tasks: Option<Vec<String>>,
    /// What a judge's score on a logged outcome weighs against a caller's (1: the same; 0:
    /// leave the judge's out).
    pub judge_weight: f64,
}

/// Loaded table plus its features: the shared start of `train` and `eval`.
pub struct Prepared {
    /// The table.
    pub outcomes: Outcomes,
    /// Features and token estimates per prompt of the table.
    pub features: PromptFeatures,
}

impl Prepared {
    /// `policy`'s predictions on `prompts` of this table, ready to replay under any knob.
    pub fn replay(&self, policy: &Policy, prompts: Vec<usize>) -> Result<Replay<'_>, TrainError> {
        let f = &self.features;
        Replay::new(
            &self.outcomes,
            policy,
            &f.features,
            &f.input_tokens,
            prompts,
        )
    }
}

impl TrainOptions {
    /// The catalog of the settings (prices of models the table does not price).
    pub(crate) fn catalog(&self) -> Result<triage_core::Catalog, TrainError> {
        self.settings
            .catalog()
            .map_err(|e| TrainError::Data(e.to_string()))
    }
}

/// Loads the table and embeds its prompts.
pub fn prepare(options: &TrainOptions) -> Result<Prepared, TrainError> {
    let catalog = options.catalog()?;
    let data = options
        .data
        .as_deref()
        .ok_or_else(|| TrainError::Usage("an outcome table (--data FILE) is needed".into()))?;
    embed_table(options, load_table(data, &catalog, options)?)
}

/// Reads the outcome table at `data` as `options` asks (its models, its tasks, strictness).
pub(crate) fn load_table(
    data: &std::path::Path,
    catalog: &triage_core::Catalog,
    options: &TrainOptions,
) -> Result<Outcomes, TrainError> {
    let outcomes = Outcomes::load(data, catalog, options.models.as_deref(), options.strict)?;
    match &options.tasks {
        Some(tasks) => outcomes.only_tasks(tasks),
        None => Ok(outcomes),
    }
}

/// Embeds every distinct prompt of `outcomes` (through the cache) into the features serving uses.
pub(crate) fn embed_table(
    options: &TrainOptions,
    outcomes: Outcomes,
) -> Result<Prepared, TrainError> {
    let enc = &options.settings.encoder;
    let library = enc.onnxruntime.as_ref().map(|p| options.base.join(p));
    init_onnxruntime(library.as_deref()).map_err(|e| TrainError::Encoder(e.to_string()))?;
    let mut onnx = OnnxOptions::from_settings(enc, &options.base);
    onnx.intra_op_threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut embedder = OnnxEmbedder::load(&onnx).map_err(|e| TrainError::Encoder(e.to_string()))?;
    let mut cache = EmbeddingCache::open(
        &options.cache_dir,
        &onnx.model,
        onnx.max_tokens,
        embedder.dim(),
    )?;
    let texts: Vec<&str> = outcomes.prompts.iter().map(|p| p.text.as_str()).collect();
    let features = prompt_features(&texts, &mut embedder, &mut cache, options.progress)?;
    Ok(Prepared { outcomes, features })
}

/// Refuses a `--models` entry the data lacks, rather than training without it.
pub(crate) fn check_requested_models(
    outcomes: &Outcomes,
    options: &TrainOptions,
) -> Result<(), TrainError> {
    let Some(wanted) = &options.models else {
        return Ok(());
    };
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|m| outcomes.model_index(m).is_none())
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(TrainError::Usage(format!(
        "--models: {} not in the data, which has: {}",
        missing.join(", "),
        outcomes.models.join(", ")
    )))
}

pub(crate) fn checked(prepared: Prepared, options: &TrainOptions) -> Result<Prepared, TrainError> {
    check_requested_models(&prepared.outcomes, options)?;
    Ok(prepared)
}

/// The training prompts: train and dev (a dev split adds to what cross-validation cuts).
pub fn training_prompts(o: &Outcomes) -> Vec<usize> {
    (0..o.prompts.len())
        .filter(|&i| o.prompts[i].split != Split::Test)
        .collect()
}
