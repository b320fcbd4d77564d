//! The policy file: format, validation, prediction.

use std::path::Path;

use serde::{Deserialize, Serialize};
use triage_core::features::{FEATURE_SCHEMA, feature_dim};

use crate::acceptor::Acceptor;
use crate::familiarity::Familiarity;
use crate::neighbours::{NeighbourSet, Neighbours};
use crate::online::sigmoid;
use crate::shared::SharedClassifier;

/// Value of the `format` field.
pub const POLICY_FORMAT: &str = "triage-policy";
/// The format version this build reads and writes.
pub const POLICY_FORMAT_VERSION: u32 = 2;

/// Per-feature affine standardisation applied before every head: `(x - mean) / scale`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Standardizer {
    /// Feature means on the training data.
    pub mean: Vec<f32>,
    /// Feature standard deviations (never zero).
    pub scale: Vec<f32>,
}

/// `sigmoid(weights · x + bias)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearHead {
    /// One weight per standardised feature.
    pub weights: Vec<f32>,
    /// Intercept.
    pub bias: f32,
}

/// `exp(weights · x + bias)` expected output tokens (a log-link GLM), clamped to
/// `[min_tokens, max_tokens]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LengthHead {
    /// One weight per standardised feature.
    pub weights: Vec<f32>,
    /// Intercept (log scale).
    pub bias: f32,
    /// Lower clamp.
    pub min_tokens: f32,
    /// Upper clamp.
    pub max_tokens: f32,
}

/// Everything the policy knows about one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelHead {
    /// Catalog name.
    pub name: String,
    /// Probability of a good answer.
    pub quality: LinearHead,
    /// Expected answer length.
    pub output_tokens: LengthHead,
}

/// Decision parameters chosen at training time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionParams {
    /// BALANCED picks the cheapest model within this much predicted quality of the best.
    pub balanced_margin: f64,
    /// COST picks the cheapest model within this (wider) margin.
    pub cost_margin: f64,
}

/// The on-disk policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Always [`POLICY_FORMAT`].
    pub format: String,
    /// [`POLICY_FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Identifies this policy in responses and logs.
    pub version: String,
    /// `triage_core::features::FEATURE_SCHEMA` at training time.
    pub feature_schema: String,
    /// Encoder embedding width at training time.
    pub embedding_dim: usize,
    /// Input standardisation.
    pub standardize: Standardizer,
    /// Margins.
    pub decision: DecisionParams,
    /// Per-model heads.
    pub models: Vec<ModelHead>,
    /// Neighbourhood evidence blended into the quality heads, if any.
    #[serde(default)]
    pub neighbours: Option<NeighbourSet>,
    /// A classifier over all models blended into the quality heads, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedClassifier>,
    /// When to accept a cheap draft instead of routing directly, if trained with responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptor: Option<Acceptor>,
    /// How far predictions are trusted on unfamiliar prompts, if training could fit it (it
    /// needs the neighbour set's embeddings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub familiarity: Option<Familiarity>,
    /// Free-form training metadata (data hash, rows, metrics).
    #[serde(default)]
    pub training: serde_json::Value,
}

/// Why a policy file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Reading the file failed.
    #[error("cannot read policy {path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Not valid JSON, or fields missing or of the wrong type.
    #[error("policy {path} is not a valid policy file: {message}")]
    Parse {
        /// Path.
        path: String,
        /// serde's message, with line and column.
        message: String,
    },
    /// Structurally valid but unusable.
    #[error("policy {version:?} is unusable: {problem}")]
    Invalid {
        /// The policy's version string.
        version: String,
        /// What is wrong.
        problem: String,
    },
}

/// What a policy predicts for one model and one prompt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prediction {
    /// Probability of a good answer.
    pub quality: f64,
    /// Expected output tokens.
    pub output_tokens: f64,
}

/// A validated policy, ready to score feature vectors.
#[derive(Clone, Debug)]
pub struct Policy {
    file: PolicyFile,
    neighbours: Option<Neighbours>,
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: display.clone(),
            source,
        })?;
        let file: PolicyFile = serde_json::from_str(&text).map_err(|e| PolicyError::Parse {
            path: display,
            message: e.to_string(),
        })?;
        Self::new(file)
    }

    /// Validates an in-memory policy.
    pub fn new(file: PolicyFile) -> Result<Self, PolicyError> {
        let invalid = |problem: String| PolicyError::Invalid {
            version: file.version.clone(),
            problem,
        };
        if file.format != POLICY_FORMAT {
            return Err(invalid(format!(
                "format is {:?}, expected {POLICY_FORMAT:?}",
                file.format
            )));
        }
        if file.format_version != POLICY_FORMAT_VERSION {
            return Err(invalid(format!(
                "format_version {} is not supported (this build reads {POLICY_FORMAT_VERSION}); \
                 retrain with this build's `triage train`",
                file.format_version
            )));
        }
        if file.feature_schema != FEATURE_SCHEMA {
            return Err(invalid(format!(
                "trained on feature schema {:?} but this build computes {FEATURE_SCHEMA:?}; \
                 retrain with this build's `triage train`",
                file.feature_schema
            )));
        }
        let dim = feature_dim(file.embedding_dim);
        let s = &file.standardize;
        if s.mean.len() != dim || s.scale.len() != dim {
            return Err(invalid(format!(
                "standardize vectors must have {dim} entries"
            )));
        }
        if !s.mean.iter().chain(&s.scale).all(|x| x.is_finite())
            || s.scale.iter().any(|x| *x <= 0.0)
        {
            return Err(invalid(
                "standardize holds a non-finite or non-positive scale".into(),
            ));
        }
        let d = &file.decision;
        if !(d.balanced_margin.is_finite() && d.cost_margin.is_finite())
            || d.balanced_margin < 0.0
            || d.cost_margin < d.balanced_margin
        {
            return Err(invalid(
                "decision margins must be finite with 0 <= balanced <= cost".into(),
            ));
        }
        if file.models.is_empty() {
            return Err(invalid("it has no models".into()));
        }
        let mut names = std::collections::HashSet::new();
        for m in &file.models {
            if !names.insert(m.name.as_str()) {
                return Err(invalid(format!("model {:?} appears twice", m.name)));
            }
            let q = &m.quality;
            let l = &m.output_tokens;
            if q.weights.len() != dim || l.weights.len() != dim {
                return Err(invalid(format!(
                    "model {:?}: heads must have {dim} weights",
                    m.name
                )));
            }
            let finite = q.weights.iter().chain(&l.weights).all(|x| x.is_finite())
                && [q.bias, l.bias, l.min_tokens, l.max_tokens]
                    .iter()
                    .all(|x| x.is_finite());
            if !finite || l.min_tokens < 0.0 || l.max_tokens < l.min_tokens {
                return Err(invalid(format!(
                    "model {:?}: non-finite weights or bad clamps",
                    m.name
                )));
            }
        }
        if let Some(shared) = &file.shared {
            shared.validate(dim, file.models.len()).map_err(invalid)?;
        }
        if let Some(acceptor) = &file.acceptor {
            let names: Vec<&str> = file.models.iter().map(|m| m.name.as_str()).collect();
            acceptor.validate(&names).map_err(invalid)?;
        }
        if let Some(familiarity) = &file.familiarity {
            if file.neighbours.is_none() {
                return Err(invalid(
                    "familiarity needs the neighbour set's embeddings, and there is none".into(),
                ));
            }
            familiarity.validate(file.models.len()).map_err(invalid)?;
        }
        let neighbours = match &file.neighbours {
            Some(set) => Some(
                set.decode(file.embedding_dim, file.models.len())
                    .map_err(invalid)?,
            ),
            None => None,
        };
        Ok(Self { file, neighbours })
    }

    /// The version string responses report.
    pub fn version(&self) -> &str {
        &self.file.version
    }

    /// The raw file (for saving, inspection).
    pub fn file(&self) -> &PolicyFile {
        &self.file
    }

    /// Length of the feature vectors this policy scores.
    pub fn feature_dim(&self) -> usize {
        feature_dim(self.file.embedding_dim)
    }

    /// Models with heads, in file order.
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.file.models.iter().map(|m| m.name.as_str())
    }

    /// Margins.
    pub fn decision(&self) -> &DecisionParams {
        &self.file.decision
    }

    /// Predictions for every model, in file order. `features.len()` must be [`Self::feature_dim`].
    pub fn predict(&self, features: &[f32]) -> Result<Vec<(&str, Prediction)>, PolicyError> {
        Ok(self.score(features)?.predictions)
    }

    /// Predictions for every model, in file order, and how familiar the prompt is (`None`:
    /// the policy has no trust curve). `features.len()` must be [`Self::feature_dim`].
    pub fn score(&self, features: &[f32]) -> Result<Scores<'_>, PolicyError> {
        if features.len() != self.feature_dim() {
            return Err(PolicyError::Invalid {
                version: self.file.version.clone(),
                problem: format!(
                    "got {} features, expected {} (encoder and policy disagree on the embedding width)",
                    features.len(),
                    self.feature_dim()
                ),
            });
        }
        let s = &self.file.standardize;
        let x: Vec<f32> = features
            .iter()
            .zip(s.mean.iter().zip(&s.scale))
            .map(|(v, (m, sd))| (v - m) / sd)
            .collect();
        let dot = |w: &[f32]| -> f64 { w.iter().zip(&x).map(|(a, b)| f64::from(a * b)).sum() };
        let trust = self.file.familiarity.as_ref();
        let scanned = self
            .neighbours
            .as_ref()
            .map(|n| n.scan(features, trust.map_or(1, |t| t.neighbours)));
        let familiarity = trust.and(scanned.as_ref().map(|(_, f)| *f));
        let local = scanned.map(|(estimates, _)| estimates);
        let shared = self.file.shared.as_ref().map(|c| (c, c.hidden_layer(&x)));
        let (weight, length_weight) = self
            .neighbours
            .as_ref()
            .map_or((0.0, 0.0), |n| (n.weight(), n.length_weight()));
        let blend =
            |own: f64, near: Option<f64>, w: f64| near.map_or(own, |v| (1.0 - w) * own + w * v);
        let predictions = self
            .file
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let near = local.as_ref().map(|estimates| estimates[i]);
                let logit = dot(&m.quality.weights) + f64::from(m.quality.bias);
                let own = sigmoid(logit);
                let head = shared.as_ref().map_or(own, |(c, hidden)| {
                    let share = c.share[i];
                    (1.0 - share) * own + share * c.probability(hidden, i)
                });
                let support = near.map_or(0.0, |l| l.support);
                let quality = blend(head, near.and_then(|l| l.quality), weight * support);
                let quality = match (trust, familiarity) {
                    (Some(t), Some(f)) => t.shrink(i, quality, f),
                    _ => quality,
                };
                let l = &m.output_tokens;
                let tokens = (dot(&l.weights) + f64::from(l.bias)).exp();
                let tokens = blend(
                    tokens,
                    near.and_then(|l| l.output_tokens),
                    length_weight * support,
                );
                let output_tokens = tokens.clamp(f64::from(l.min_tokens), f64::from(l.max_tokens));
                (
                    m.name.as_str(),
                    Prediction {
                        quality,
                        output_tokens,
                    },
                )
            })
            .collect();
        Ok(Scores {
            predictions,
            familiarity,
        })
    }

    /// The trust curve, if the policy has one.
    pub fn familiarity(&self) -> Option<&Familiarity> {
        self.file.familiarity.as_ref()
    }

    /// The decoded neighbour set, if the policy has one.
    pub fn neighbours(&self) -> Option<&Neighbours> {
        self.neighbours.as_ref()
    }
}

/// What a policy says about one prompt.
#[derive(Clone, Debug)]
pub struct Scores<'a> {
    /// Per model, in file order.
    pub predictions: Vec<(&'a str, Prediction)>,
    /// Mean similarity to the nearest training prompts (`None`: no trust curve).
    pub familiarity: Option<f64>,
}
