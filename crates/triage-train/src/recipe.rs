//! A policy's recipe — every choice training makes (L2 strengths, Platt maps, shrinkage, the
//! shared classifier's decay and epochs, which components route and how they blend, margins) —
//! and the fit of a recipe on a set of prompts.
//!
//! `tune` chooses the recipe by cross-validation; `train` then fits it once on all training
//! prompts. Both assemble policies here, so what a fold scores is built exactly as what is
//! written.

use ndarray16::Array2;
use serde::Serialize;
use triage_core::features::FEATURE_SCHEMA;
use triage_policy::{
    DecisionParams, ModelHead, NeighbourSet, POLICY_FORMAT, POLICY_FORMAT_VERSION, PolicyFile,
    SharedClassifier, Standardizer,
};

use crate::TrainError;
use crate::fit::{design, length_head, quality_head_at, scaled, standardizer};
use crate::output::content_hash;
use crate::pooled::{ModelRows, ShrinkSetting, shrunk_heads};
use crate::prepare::Prepared;
use crate::shared::{cells, refit_shared};
use crate::table::Outcome;

/// How one model's quality head is fitted.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct HeadRecipe {
    /// L2 strength (`None`: the prompt-blind constant head).
    pub alpha: Option<f64>,
    /// Platt map `(a, b)` learned on out-of-fold logits.
    pub platt: Option<(f64, f64)>,
}

/// The neighbourhood blended into the heads.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct NeighbourRecipe {
    /// Neighbours averaged.
    pub k: usize,
    /// Blend weight of their quality (1: the neighbours alone).
    pub weight: f64,
    /// Similarity temperature (`None`: a plain mean).
    pub temperature: Option<f64>,
    /// Blend weight of their answer lengths.
    pub length_weight: f64,
}

/// Which components route and how they blend: the per-model heads always, the shared
/// classifier at `share`, the neighbourhood when present.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Routing {
    /// Share of the shared classifier's probability (0: not used).
    pub share: f64,
    /// The neighbourhood, if kept.
    pub neighbours: Option<NeighbourRecipe>,
}

impl Routing {
    /// The per-model heads alone.
    pub const HEADS: Routing = Routing {
        share: 0.0,
        neighbours: None,
    };
}

/// How the shared classifier is trained: weight decay and each member's epochs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SharedRecipe {
    /// Weight decay.
    pub decay: f32,
    /// Epochs per member.
    pub epochs: Vec<usize>,
}

/// Everything a fit needs besides the data.
#[derive(Clone, Debug, Serialize)]
pub struct Recipe {
    /// The policy's models (names in the table) and how each head is fitted.
    pub heads: Vec<(String, HeadRecipe)>,
    /// Shrinkage toward the pooled fit.
    pub shrink: ShrinkSetting,
    /// The shared classifier, when `routing.share > 0`.
    pub shared: Option<SharedRecipe>,
    /// Components and blend.
    pub routing: Routing,
    /// Mode margins.
    pub decision: DecisionParams,
}

/// Margins used before any are chosen.
pub const DEFAULT_DECISION: DecisionParams = DecisionParams {
    balanced_margin: 0.02,
    cost_margin: 0.1,
};

/// One model's outcomes on some prompts, over standardised features.
pub struct ModelSet {
    /// Design matrix.
    pub x: Array2<f64>,
    /// Good answer or not.
    pub y: Vec<bool>,
    /// Fitting weights.
    pub w: Vec<f64>,
    /// Output tokens, where known.
    pub tokens: Vec<Option<f64>>,
    /// Every outcome of this model is logged bandit feedback (see `pooled`).
    pub bandit: bool,
}

impl ModelSet {
    /// The rows as `pooled` takes them.
    pub fn rows(&self) -> ModelRows<'_> {
        ModelRows {
            x: &self.x,
            y: &self.y,
            w: &self.w,
            bandit: self.bandit,
        }
    }
}

/// Model `m`'s (table index) outcomes on `prompts`, standardised with `standardize`.
pub fn model_set(
    prepared: &Prepared,
    m: usize,
    prompts: &[usize],
    standardize: &Standardizer,
    bandit: bool,
) -> ModelSet {
    let o = &prepared.outcomes;
    let feats = &prepared.features.features;
    let with: Vec<(usize, Outcome)> = prompts
        .iter()
        .filter_map(|&p| o.cells[p][m].map(|c| (p, c)))
        .collect();
    let rows: Vec<&[f32]> = with.iter().map(|(p, _)| feats[*p].as_slice()).collect();
    ModelSet {
        x: design(&rows, standardize),
        y: with
            .iter()
            .map(|(_, c)| triage_core::outcome::is_good_answer(c.quality))
            .collect(),
        w: with.iter().map(|(_, c)| c.weight).collect(),
        tokens: with.iter().map(|(_, c)| c.output_tokens).collect(),
        bandit,
    }
}

/// The standardisation fitted on `prompts`' features.
pub fn standardizer_on(prepared: &Prepared, prompts: &[usize]) -> Standardizer {
    let feats = &prepared.features.features;
    let rows: Vec<&[f32]> = prompts.iter().map(|&p| feats[p].as_slice()).collect();
    standardizer(&rows)
}

/// What a routing policy is built from, fitted on some prompts: the per-model heads (after
/// shrinkage) and the shared classifier, if trained.
#[derive(Clone, Debug)]
pub struct Components {
    /// Standardisation of the fitted prompts.
    pub standardize: Standardizer,
    /// Heads, in the recipe's model order.
    pub heads: Vec<ModelHead>,
    /// The shared classifier (shares not set yet).
    pub shared: Option<SharedClassifier>,
    /// Which models are known only from logged traffic (no share of the classifier).
    pub bandit: Vec<bool>,
}

/// Fits `recipe`'s heads on `prompts` (the shared classifier is added by [`with_shared`]).
pub fn fit_components(
    prepared: &Prepared,
    recipe: &Recipe,
    prompts: &[usize],
    bandit: &[bool],
) -> Result<Components, TrainError> {
    let o = &prepared.outcomes;
    let standardize = standardizer_on(prepared, prompts);
    let mut sets = Vec::new();
    for ((name, _), b) in recipe.heads.iter().zip(bandit) {
        let m = o
            .model_index(name)
            .ok_or_else(|| TrainError::Data(format!("{name} is not in the table")))?;
        sets.push(model_set(prepared, m, prompts, &standardize, *b));
    }
    let mut own = Vec::new();
    let mut lengths = Vec::new();
    for ((_, head), set) in recipe.heads.iter().zip(&sets) {
        let fitted = quality_head_at(&set.x, &set.y, &set.w, head.alpha)?;
        own.push(match head.platt {
            Some((a, b)) => scaled(&fitted, a, b),
            None => fitted,
        });
        lengths.push(length_head(&set.x, &set.tokens)?);
    }
    let rows: Vec<ModelRows<'_>> = sets.iter().map(ModelSet::rows).collect();
    let quality = shrunk_heads(&own, &rows, &[recipe.shrink])?
        .pop()
        .ok_or_else(|| TrainError::Fit("no shrunk heads".into()))?;
    let heads = recipe
        .heads
        .iter()
        .zip(quality)
        .zip(lengths)
        .map(|(((name, _), quality), output_tokens)| ModelHead {
            name: name.clone(),
            quality,
            output_tokens,
        })
        .collect();
    Ok(Components {
        standardize,
        heads,
        shared: None,
        bandit: bandit.to_vec(),
    })
}

/// `components` with the shared classifier trained on `prompts` as `shared` says.
pub fn with_shared(
    prepared: &Prepared,
    mut components: Components,
    shared: &SharedRecipe,
    prompts: &[usize],
) -> Components {
    let file = bare_policy(&components);
    let all = cells(prepared, &file, prompts, &components.bandit);
    components.shared = Some(refit_shared(&all, shared.decay, &shared.epochs));
    components
}

/// A policy of `components`' heads alone, default margins.
pub fn bare_policy(components: &Components) -> PolicyFile {
    let width = components.standardize.mean.len();
    PolicyFile {
        format: POLICY_FORMAT.into(),
        format_version: POLICY_FORMAT_VERSION,
        version: String::new(),
        feature_schema: FEATURE_SCHEMA.into(),
        embedding_dim: width - triage_core::features::HAND_FEATURE_NAMES.len(),
        standardize: components.standardize.clone(),
        decision: DEFAULT_DECISION,
        models: components.heads.clone(),
        neighbours: None,
        shared: None,
        acceptor: None,
        familiarity: None,
        training: serde_json::Value::Null,
    }
}

/// The policy `routing` makes of `components`, its neighbourhood drawn from `prompts`.
pub fn assemble(
    prepared: &Prepared,
    components: &Components,
    routing: &Routing,
    prompts: &[usize],
    decision: &DecisionParams,
) -> PolicyFile {
    let mut file = bare_policy(components);
    file.decision = decision.clone();
    if routing.share > 0.0
        && let Some(shared) = &components.shared
    {
        let mut c = shared.clone();
        c.share = components
            .bandit
            .iter()
            .map(|b| if *b { 0.0 } else { routing.share })
            .collect();
        file.shared = Some(c);
    }
    if let Some(n) = &routing.neighbours {
        file.neighbours = Some(NeighbourSet {
            temperature: n.temperature,
            length_weight: n.length_weight,
            ..neighbour_set(prepared, &file, prompts, n.k, n.weight)
        });
    }
    file
}

/// Whether every outcome of each of `models` (table indices) on `prompts` is logged bandit
/// feedback.
pub fn bandit_flags(prepared: &Prepared, models: &[usize], prompts: &[usize]) -> Vec<bool> {
    let o = &prepared.outcomes;
    models
        .iter()
        .map(|&m| {
            prompts
                .iter()
                .filter_map(|&p| o.cells[p][m])
                .all(|c| c.logged)
        })
        .collect()
}

/// The neighbourhood of `prompts` (their embeddings and each outcome of `file`'s models on
/// them), averaging `k` neighbours blended in at `weight`.
pub fn neighbour_set(
    prepared: &Prepared,
    file: &PolicyFile,
    prompts: &[usize],
    k: usize,
    weight: f64,
) -> NeighbourSet {
    let o = &prepared.outcomes;
    let feats = &prepared.features.features;
    let embeddings: Vec<&[f32]> = prompts
        .iter()
        .map(|&p| &feats[p][..file.embedding_dim])
        .collect();
    // One row per policy model, one value per prompt; -1 where unknown.
    let column = |value: fn(&Outcome) -> Option<f64>| -> Vec<Vec<f32>> {
        let per_model = |name: &str| -> Vec<f32> {
            let m = o.model_index(name);
            let cell = |p: usize| m.and_then(|m| o.cells[p][m]);
            prompts
                .iter()
                .map(|&p| cell(p).and_then(|c| value(&c)).map_or(-1.0, |v| v as f32))
                .collect()
        };
        file.models
            .iter()
            .map(|head| per_model(&head.name))
            .collect()
    };
    NeighbourSet::new(
        k,
        weight,
        &embeddings,
        column(|c| Some(c.quality)),
        column(|c| c.output_tokens),
    )
}

/// A policy that knows nothing about prompts: every model predicts `quality` and
/// `output_tokens` whatever the prompt (the cold-start prior; exploration and feedback replace
/// it with learned heads).
pub fn prior_policy(models: &[String], quality: f64, output_tokens: f64) -> PolicyFile {
    let width = triage_core::features::feature_dim(EMBEDDING_DIM);
    let logit = (quality.clamp(1e-3, 1.0 - 1e-3) / (1.0 - quality.clamp(1e-3, 1.0 - 1e-3))).ln();
    let mut file = PolicyFile {
        format: POLICY_FORMAT.into(),
        format_version: POLICY_FORMAT_VERSION,
        version: String::new(),
        feature_schema: FEATURE_SCHEMA.into(),
        embedding_dim: EMBEDDING_DIM,
        standardize: triage_policy::Standardizer {
            mean: vec![0.0; width],
            scale: vec![1.0; width],
        },
        decision: DecisionParams {
            balanced_margin: 0.02,
            cost_margin: 0.1,
        },
        models: models
            .iter()
            .map(|name| ModelHead {
                name: name.clone(),
                quality: triage_policy::LinearHead {
                    weights: vec![0.0; width],
                    bias: logit as f32,
                },
                output_tokens: triage_policy::LengthHead {
                    weights: vec![0.0; width],
                    bias: output_tokens.max(1.0).ln() as f32,
                    min_tokens: 1.0,
                    max_tokens: 100_000.0,
                },
            })
            .collect(),
        neighbours: None,
        shared: None,
        acceptor: None,
        familiarity: None,
        training: serde_json::json!({"prior_only": {"quality": quality, "output_tokens": output_tokens}}),
    };
    file.version = format!("prior-{}", &content_hash(&file)[..10]);
    file
}

/// Width of the serving encoder's embeddings (all-MiniLM-L6-v2).
const EMBEDDING_DIM: usize = 384;
