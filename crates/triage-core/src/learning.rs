//! Settings for learning from the traffic Triage serves: the LLM judge (`[judge]`) and its
//! shadow answers, and retraining inside `serve` (`[learning]`). They live apart from `config` because they are checked against each other
//! and the catalog, and because every one of them defaults to off: prompts leave the process
//! only where an operator has said so.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// `[judge]`: an LLM that scores answered gateway requests off the request path.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeSettings {
    /// A catalog model with a provider, called as the judge (priced from the catalog).
    #[serde(default)]
    pub model: Option<String>,
    /// Or a `[[providers]]` name with `upstream_model` (priced by the two `*_usd_per_1m`).
    #[serde(default)]
    pub provider: Option<String>,
    /// The provider's name for the judge model.
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// USD per 1M input tokens of a judge given by provider and upstream model.
    #[serde(default)]
    pub input_usd_per_1m: f64,
    /// USD per 1M output tokens of a judge given by provider and upstream model.
    #[serde(default)]
    pub output_usd_per_1m: f64,
    /// Share of answered gateway requests judged (0: the judge is off).
    #[serde(default)]
    pub sample_rate: f64,
    /// Share of judged requests that also get a shadow answer from a model not chosen.
    #[serde(default)]
    pub shadow_rate: f64,
    /// The judge's and shadow answers' spend per UTC day, USD; judging pauses at it.
    #[serde(default = "default_daily_usd")]
    pub daily_usd: f64,
    /// Judge (and shadow) calls in flight at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Answers waiting to be judged; more are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// A rubric template file (with `{prompt}` and `{answer}`); unset: the built-in one.
    #[serde(default)]
    pub rubric: Option<PathBuf>,
    /// API key names whose traffic may be sent to the judge (`"*"`: every key, anonymous
    /// callers included). Prompts leave the process: this is the operator's explicit choice.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Longest one judge or shadow call may take, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Longest judged text (prompt and answer each), bytes; longer ones are cut in the middle.
    #[serde(default = "default_max_text_bytes")]
    pub max_text_bytes: usize,
}

fn default_daily_usd() -> f64 {
    1.0
}

fn default_max_in_flight() -> usize {
    4
}

fn default_queue() -> usize {
    256
}

fn default_timeout_ms() -> u64 {
    60_000
}

fn default_max_text_bytes() -> usize {
    16 * 1024
}

impl Default for JudgeSettings {
    fn default() -> Self {
        Self {
            model: None,
            provider: None,
            upstream_model: None,
            input_usd_per_1m: 0.0,
            output_usd_per_1m: 0.0,
            sample_rate: 0.0,
            shadow_rate: 0.0,
            daily_usd: default_daily_usd(),
            max_in_flight: default_max_in_flight(),
            queue: default_queue(),
            rubric: None,
            keys: Vec::new(),
            timeout_ms: default_timeout_ms(),
            max_text_bytes: default_max_text_bytes(),
        }
    }
}

impl JudgeSettings {
    /// Whether any traffic is judged.
    pub fn enabled(&self) -> bool {
        self.sample_rate > 0.0
    }

    /// Whether traffic of the key named `key` (`None`: anonymous) may be sent to the judge.
    pub fn admits(&self, key: Option<&str>) -> bool {
        self.keys
            .iter()
            .any(|k| k == "*" || Some(k.as_str()) == key)
    }

    /// Ranges and the choices that must go together; the judge model's provider is checked
    /// where providers are built.
    pub fn check(&self) -> Result<(), ConfigError> {
        let out = |problem: String| ConfigError::OutOfRange {
            key: "judge",
            problem,
        };
        for (name, rate) in [
            ("sample_rate", self.sample_rate),
            ("shadow_rate", self.shadow_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(out(format!("{name} = {rate} must be within 0..1")));
            }
        }
        let prices = [
            self.input_usd_per_1m,
            self.output_usd_per_1m,
            self.daily_usd,
        ];
        if prices.iter().any(|p| !p.is_finite() || *p < 0.0) {
            return Err(out(
                "daily_usd and the *_usd_per_1m prices must be finite numbers ≥ 0".into(),
            ));
        }
        if self.max_in_flight == 0
            || self.queue == 0
            || self.timeout_ms == 0
            || self.max_text_bytes == 0
        {
            return Err(out(
                "max_in_flight, queue, timeout_ms and max_text_bytes must be at least 1".into(),
            ));
        }
        if !self.enabled() {
            return Ok(());
        }
        match (&self.model, &self.provider, &self.upstream_model) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            _ => {
                return Err(out(
                    "with sample_rate > 0, set either `model` (a catalog model with a provider) \
                     or both `provider` and `upstream_model`"
                        .into(),
                ));
            }
        }
        if self.keys.is_empty() {
            return Err(out(
                "with sample_rate > 0, list in `keys` the API key names whose prompts may be \
                 sent to the judge (\"*\" for every key)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// `[learning]`: retraining inside `triage serve` from the log it writes (callers' and the
/// judge's scores), through the promotion gate, hot-reloaded. Off unless a trigger is set.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearningSettings {
    /// Retrain once this many new scored reports have been stored (0: no count trigger).
    #[serde(default)]
    pub retrain_every_outcomes: u64,
    /// Retrain this often, seconds, when any new scored report was stored (0: no clock
    /// trigger).
    #[serde(default)]
    pub retrain_every_secs: u64,
    /// An outcome table mixed into every retrain, so the prior is not forgotten (unset: the
    /// log alone).
    #[serde(default)]
    pub seed_table: Option<PathBuf>,
    /// What the judge's scores weigh against callers' (as `triage train --judge-weight`).
    #[serde(default = "default_judge_weight")]
    pub judge_weight: f64,
    /// How often the triggers are checked, seconds.
    #[serde(default = "default_check_secs")]
    pub check_secs: u64,
    /// Embedding cache for the seed table.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
}

fn default_judge_weight() -> f64 {
    1.0
}

fn default_check_secs() -> u64 {
    10
}

fn default_cache_dir() -> PathBuf {
    PathBuf::from(".cache/embeddings")
}

impl Default for LearningSettings {
    fn default() -> Self {
        Self {
            retrain_every_outcomes: 0,
            retrain_every_secs: 0,
            seed_table: None,
            judge_weight: default_judge_weight(),
            check_secs: default_check_secs(),
            cache_dir: default_cache_dir(),
        }
    }
}

impl LearningSettings {
    /// Whether `serve` retrains at all.
    pub fn enabled(&self) -> bool {
        self.retrain_every_outcomes > 0 || self.retrain_every_secs > 0
    }

    /// Ranges.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !self.judge_weight.is_finite() || self.judge_weight < 0.0 || self.check_secs == 0 {
            return Err(ConfigError::OutOfRange {
                key: "learning",
                problem: "judge_weight must be a finite number ≥ 0 and check_secs at least 1"
                    .into(),
            });
        }
        Ok(())
    }
}
