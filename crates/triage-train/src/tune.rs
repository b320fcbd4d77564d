//! Every choice `triage train` makes, by K-fold cross-validation over the training prompts.
//!
//! One small dev split made every choice before, and on a table it had not seen the policy
//! lost to plain kNN: the split's 313 prompts preferred the heads alone by chance. Now the
//! training prompts (train and any dev split together) are cut into K prompt-disjoint folds by
//! a hash of each prompt's fold key, and every choice is scored on each fold by a policy
//! fitted on the other K − 1:
//!
//! - **Statistical choices, by out-of-fold log-loss**: each model's L2 strength (or the
//!   prompt-blind constant head), its Platt map (fitted on the out-of-fold logits at that
//!   strength), and the shrinkage toward the pooled fit. The per-model fits along the L2 grid
//!   are the bulk of training time, so each fold fits the whole grid once and keeps it.
//! - **The shared classifier's decay and epochs**, by early stopping on an inner 15% of each
//!   fold's own training prompts (nested: the fold it is scored on never stops it). K-fold
//!   over five decays and five members would multiply the slowest step by K again; whether
//!   the classifier is kept at all, and its share, are routing choices below.
//! - **Routing choices, by out-of-fold AIQ** replayed through the serving decision: plain kNN
//!   on the embeddings (the neighbours alone, as `triage eval`'s kNN row), the heads alone,
//!   heads with the shared classifier, heads with a neighbourhood, and all three; with the
//!   neighbourhood size and weight, the share, a similarity temperature and whether the
//!   neighbours' lengths count.
//! - **Simplest within noise**: among candidates whose mean AIQ is within one standard error
//!   of the best (the standard error of their per-fold differences from it, which are paired
//!   on the same prompts), the simplest wins: kNN, then heads, heads + neighbourhood, heads +
//!   classifier, all three; a temperature or length weight counts as more.
//! - **Margins**: the widest that keeps mean out-of-fold quality in BALANCED within 0.01 of
//!   QUALITY mode (COST: 0.05).
//!
//! `train` then refits the chosen recipe on all training prompts. Fold 0's policy, fitted
//! without fold 0, is what the promotion gate judges on fold 0.

use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};
use triage_core::Mode;
use triage_policy::{DecisionParams, LengthHead, LinearHead, ModelHead, PolicyFile};

use crate::TrainError;
use crate::eval::baselines::neighbourhood_sizes;
use crate::fit::{QUALITY_ALPHAS, length_head, logit, platt_map, quality_path, scaled, sigmoid};
use crate::pooled::{ModelRows, ShrinkSetting, shrink_settings, shrunk_heads, total_log_loss};
use crate::prepare::Prepared;
use crate::recipe::{
    Components, DEFAULT_DECISION, HeadRecipe, ModelSet, NeighbourRecipe, Recipe, Routing,
    SharedRecipe, assemble, bare_policy, model_set, standardizer_on, with_shared,
};
use crate::score::{file_aiq, replay_on};
use crate::shared::{SHARES, cells, fit_shared};
use triage_policy::Rule;

/// Folds by default.
pub const DEFAULT_FOLDS: usize = 5;
/// Prompts with outcomes of at least two models needed (over all folds) before routing
/// choices are made by replay: with one outcome per prompt every policy replays the same.
const MIN_INFORMATIVE: usize = 30;
/// Smallest neighbourhood tried (then doubling, see `neighbourhood_sizes`).
pub const SMALLEST_NEIGHBOUR_K: usize = 20;
/// Blend weights of the neighbours' quality tried (1 is plain kNN).
const NEIGHBOUR_WEIGHTS: [f64; 3] = [0.25, 0.5, 0.75];
/// Similarity temperatures tried for the best neighbourhood.
const NEIGHBOUR_TEMPERATURES: [f64; 3] = [0.1, 0.05, 0.02];
/// Margin grid.
const MARGINS: [f64; 13] = [
    0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
];
/// L2 strength used when there are too few prompts to cross-validate.
const FALLBACK_ALPHA: f64 = 1000.0;

/// A stable hash of `key` (salted) modulo `k`.
pub(crate) fn hash_mod(key: &str, salt: &[u8], k: u64) -> u64 {
    let h = Sha256::new()
        .chain_update(salt)
        .chain_update(key.as_bytes())
        .finalize();
    u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]) % k
}

/// One fold: the prompts fitted on and the prompts scored.
#[derive(Clone, Debug)]
pub struct Fold {
    /// Fitted on.
    pub fit: Vec<usize>,
    /// Scored on.
    pub held: Vec<usize>,
}

/// `k` prompt-disjoint folds of `prompts` by a hash of each prompt's fold key (salted apart
/// from `eval --folds`, so an outer fold's training prompts still fill every inner fold);
/// empty folds are dropped.
pub fn folds(prepared: &Prepared, prompts: &[usize], k: usize) -> Vec<Fold> {
    let k = k.max(1);
    let mut held = vec![Vec::new(); k];
    for &p in prompts {
        let key = &prepared.outcomes.prompts[p].fold_key;
        // The remainder is below k, so it fits in usize.
        held[hash_mod(key, b"cv", k as u64) as usize].push(p);
    }
    held.into_iter()
        .filter(|h| !h.is_empty())
        .map(|held| {
            let fit = prompts
                .iter()
                .copied()
                .filter(|p| held.binary_search(p).is_err())
                .collect();
            Fold { fit, held }
        })
        .collect()
}

/// The chosen recipe, what was tried, and the gate's view.
pub struct Tuned {
    /// Every choice.
    pub recipe: Recipe,
    /// What cross-validation tried and found, for the policy's training metadata.
    pub report: serde_json::Value,
    /// Fold 0's policy (fitted without fold 0) and fold 0's prompts, for the gate.
    pub validated: Option<(PolicyFile, Vec<usize>)>,
}

/// Chooses every part of the recipe for `models` (table indices) by `k`-fold cross-validation
/// over `prompts`.
pub fn tune(
    prepared: &Prepared,
    models: &[usize],
    bandit: &[bool],
    prompts: &[usize],
    k: usize,
) -> Result<Tuned, TrainError> {
    let folds = folds(prepared, prompts, k);
    if folds.len() < 2 {
        tracing::warn!(
            prompts = prompts.len(),
            "too few training prompts to cross-validate: heads at a fixed L2 strength, default \
             margins"
        );
        return Ok(untuned(prepared, models));
    }
    let started = std::time::Instant::now();
    let (paths, standardizers) = fit_paths(prepared, models, bandit, &folds)?;
    let heads = choose_heads(&paths)?;
    tracing::info!(
        folds = folds.len(),
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "per-model heads fitted along the L2 grid; strengths chosen by out-of-fold log-loss"
    );
    let names: Vec<String> = models
        .iter()
        .map(|&m| prepared.outcomes.models[m].clone())
        .collect();
    let recipe_heads: Vec<(String, HeadRecipe)> = names
        .iter()
        .cloned()
        .zip(heads.iter().map(|h| h.0))
        .collect();
    let shrink = choose_shrink(
        prepared,
        models,
        bandit,
        &folds,
        &paths,
        &standardizers,
        &heads,
    )?;
    let mut comps = Vec::with_capacity(folds.len());
    let mut shared_recipes = Vec::new();
    for (f, fold) in folds.iter().enumerate() {
        let heads: Vec<ModelHead> = names
            .iter()
            .zip(&shrink.heads[f])
            .zip(&paths[f])
            .map(|((name, quality), path)| ModelHead {
                name: name.clone(),
                quality: quality.clone(),
                output_tokens: path.length.clone(),
            })
            .collect();
        let c = Components {
            standardize: standardizers[f].clone(),
            heads,
            shared: None,
            bandit: bandit.to_vec(),
        };
        let (c, recipe) = fit_fold_shared(prepared, c, fold)?;
        shared_recipes.extend(recipe);
        comps.push(c);
        tracing::info!(
            fold = f + 1,
            of = folds.len(),
            "fold shared classifier fitted"
        );
    }
    tracing::info!(
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "fold components fitted"
    );
    let informative: Vec<Vec<usize>> = folds
        .iter()
        .map(|f| informative_prompts(prepared, &f.held))
        .collect();
    let with_shared = shared_recipes.len() == folds.len();
    let (routing, candidates) =
        if informative.iter().map(Vec::len).sum::<usize>() >= MIN_INFORMATIVE {
            let cv = Cv {
                prepared,
                folds: &folds,
                comps: &comps,
                informative: &informative,
            };
            let candidates = cv.candidates(with_shared)?;
            (select(&candidates).routing, candidates)
        } else {
            tracing::info!(
                informative = informative.iter().map(Vec::len).sum::<usize>(),
                "too few prompts with several outcomes to choose routing by replay: heads alone"
            );
            (Routing::HEADS, Vec::new())
        };
    let decision = if candidates.is_empty() {
        DEFAULT_DECISION
    } else {
        choose_margins(prepared, &folds, &comps, &informative, &routing)?
    };
    let validated = assemble(prepared, &comps[0], &routing, &folds[0].fit, &decision);
    tracing::info!(
        routing = %describe(&routing),
        balanced_margin = decision.balanced_margin,
        cost_margin = decision.cost_margin,
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "routing chosen by cross-validation"
    );
    let report = serde_json::json!({
        "folds": folds.len(),
        "fold_prompts": folds.iter().map(|f| f.held.len()).collect::<Vec<_>>(),
        "heads": names.iter().zip(&heads).map(|(n, (h, loss))| {
            serde_json::json!({"model": n, "alpha": h.alpha, "platt": h.platt, "oof_log_loss": loss})
        }).collect::<Vec<_>>(),
        "shrinkage": {"alpha": shrink.setting.alpha, "kappa": finite(shrink.setting.kappa),
                      "kappa_infinite": shrink.setting.kappa.is_infinite(),
                      "oof_log_loss": shrink.loss, "own_oof_log_loss": shrink.own_loss},
        "shared_per_fold": shared_recipes,
        "candidates": candidates,
        "routing": routing,
        "margins_rule": "balanced: widest margin keeping mean out-of-fold quality within 0.01 \
                         of QUALITY mode; cost: within 0.05",
    });
    Ok(Tuned {
        recipe: Recipe {
            heads: recipe_heads,
            shrink: shrink.setting,
            // The final shared recipe is chosen on all training prompts by `train`.
            shared: None,
            routing,
            decision,
        },
        report,
        validated: Some((validated, folds[0].held.clone())),
    })
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// Too few prompts to cross-validate: every head at [`FALLBACK_ALPHA`], own heads (pooled
/// for bandit-only models), heads alone, default margins.
fn untuned(prepared: &Prepared, models: &[usize]) -> Tuned {
    let heads = models
        .iter()
        .map(|&m| {
            (
                prepared.outcomes.models[m].clone(),
                HeadRecipe {
                    alpha: Some(FALLBACK_ALPHA),
                    platt: None,
                },
            )
        })
        .collect();
    Tuned {
        recipe: Recipe {
            heads,
            shrink: ShrinkSetting {
                alpha: Some(crate::pooled::POOLED_ALPHAS[0]),
                kappa: 0.0,
            },
            shared: None,
            routing: Routing::HEADS,
            decision: DEFAULT_DECISION,
        },
        report: serde_json::json!({"folds": 0, "skipped": "too few training prompts"}),
        validated: None,
    }
}

/// Prompts with outcomes of at least two models: the only ones a replay can tell policies
/// apart on.
pub fn informative_prompts(prepared: &Prepared, prompts: &[usize]) -> Vec<usize> {
    prompts
        .iter()
        .copied()
        .filter(|&p| prepared.outcomes.cells[p].iter().flatten().count() >= 2)
        .collect()
}

/// One model's heads along the L2 grid, fitted on a fold's training prompts, with their logits
/// on the fold's held-out rows.
struct HeadPath {
    /// `(alpha, head)`: the constant head (`None`) first.
    heads: Vec<(Option<f64>, LinearHead)>,
    length: LengthHead,
    /// Held-out logits per head.
    held_z: Vec<Vec<f64>>,
    held_y: Vec<bool>,
    held_w: Vec<f64>,
}

impl HeadPath {
    /// The head at `alpha`, or the constant one where this fold had a single class.
    fn at(&self, alpha: Option<f64>) -> (usize, &LinearHead) {
        let i = self
            .heads
            .iter()
            .position(|(a, _)| *a == alpha)
            .unwrap_or(0);
        (i, &self.heads[i].1)
    }
}

type Paths = Vec<Vec<HeadPath>>;

/// Fits every model's L2 path on each fold (models in parallel).
fn fit_paths(
    prepared: &Prepared,
    models: &[usize],
    bandit: &[bool],
    folds: &[Fold],
) -> Result<(Paths, Vec<triage_policy::Standardizer>), TrainError> {
    let mut paths = Vec::with_capacity(folds.len());
    let mut standardizers = Vec::with_capacity(folds.len());
    for (f, fold) in folds.iter().enumerate() {
        let started = std::time::Instant::now();
        let standardize = standardizer_on(prepared, &fold.fit);
        // Each model's path on the previous fold starts this fold's fits.
        let previous: Option<&Vec<HeadPath>> = paths.last();
        let fold_paths: Result<Vec<HeadPath>, TrainError> = models
            .par_iter()
            .zip(bandit)
            .enumerate()
            .map(|(i, (&m, &b))| {
                let fit = model_set(prepared, m, &fold.fit, &standardize, b);
                let held = model_set(prepared, m, &fold.held, &standardize, b);
                let starts = previous.map(|p| p[i].heads.as_slice());
                head_path(&fit, held, starts)
            })
            .collect();
        paths.push(fold_paths?);
        standardizers.push(standardize);
        tracing::info!(
            fold = f + 1,
            of = folds.len(),
            seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
            "fold heads fitted"
        );
    }
    Ok((paths, standardizers))
}

fn head_path(
    fit: &ModelSet,
    held: ModelSet,
    starts: Option<&[(Option<f64>, LinearHead)]>,
) -> Result<HeadPath, TrainError> {
    let heads = if fit.y.is_empty() {
        // No outcome in this fold's training part: an uninformed head (p = 0.5).
        vec![(
            None,
            LinearHead {
                weights: vec![0.0; fit.x.ncols()],
                bias: 0.0,
            },
        )]
    } else {
        quality_path(&fit.x, &fit.y, &fit.w, starts)?
    };
    let held_z = heads
        .iter()
        .map(|(_, h)| (0..held.y.len()).map(|i| logit(h, held.x.row(i))).collect())
        .collect();
    Ok(HeadPath {
        heads,
        length: length_head(&fit.x, &fit.tokens)?,
        held_z,
        held_y: held.y,
        held_w: held.w,
    })
}

fn logit_loss(z: f64, good: bool) -> f64 {
    let p = sigmoid(z).clamp(1e-6, 1.0 - 1e-6);
    -if good { p.ln() } else { (1.0 - p).ln() }
}

/// Per model: the strength with the least out-of-fold log-loss, and the Platt map fitted on
/// its out-of-fold logits; with that loss.
fn choose_heads(paths: &Paths) -> Result<Vec<(HeadRecipe, f64)>, TrainError> {
    let models = paths.first().map_or(0, Vec::len);
    let grid: Vec<Option<f64>> = std::iter::once(None)
        .chain(QUALITY_ALPHAS.into_iter().rev().map(Some))
        .collect();
    let mut out = Vec::with_capacity(models);
    for m in 0..models {
        let oof = |alpha: Option<f64>| -> (Vec<f64>, Vec<bool>, Vec<f64>) {
            let (mut z, mut y, mut w) = (Vec::new(), Vec::new(), Vec::new());
            for fold in paths {
                let path = &fold[m];
                let (i, _) = path.at(alpha);
                z.extend(&path.held_z[i]);
                y.extend(&path.held_y);
                w.extend(&path.held_w);
            }
            (z, y, w)
        };
        let loss_of = |(z, y, w): &(Vec<f64>, Vec<bool>, Vec<f64>)| -> f64 {
            let total: f64 = w.iter().sum();
            let sum: f64 = z
                .iter()
                .zip(y)
                .zip(w)
                .map(|((z, g), w)| w * logit_loss(*z, *g))
                .sum();
            if total > 0.0 { sum / total } else { 0.0 }
        };
        let mut best: Option<(Option<f64>, f64)> = None;
        for &alpha in &grid {
            let loss = loss_of(&oof(alpha));
            if best.is_none_or(|(_, l)| loss < l) {
                best = Some((alpha, loss));
            }
        }
        let (alpha, loss) = best.ok_or_else(|| TrainError::Fit("no L2 strength tried".into()))?;
        let platt = match alpha {
            Some(_) => {
                let (z, y, w) = oof(alpha);
                platt_map(&z, &y, &w)?
            }
            None => None,
        };
        out.push((HeadRecipe { alpha, platt }, loss));
    }
    Ok(out)
}

/// The chosen shrinkage and each fold's heads under it.
struct ShrinkChoice {
    setting: ShrinkSetting,
    loss: f64,
    own_loss: f64,
    /// Per fold, per model.
    heads: Vec<Vec<LinearHead>>,
}

/// Chooses the shrinkage toward the pooled fit by out-of-fold log-loss over all models.
fn choose_shrink(
    prepared: &Prepared,
    models: &[usize],
    bandit: &[bool],
    folds: &[Fold],
    paths: &Paths,
    standardizers: &[triage_policy::Standardizer],
    heads: &[(HeadRecipe, f64)],
) -> Result<ShrinkChoice, TrainError> {
    let mut per_fold = Vec::with_capacity(folds.len());
    let mut settings = Vec::new();
    let mut losses: Vec<f64> = Vec::new();
    let mut own_loss = 0.0;
    let mut total_weight = 0.0;
    for (f, fold) in folds.iter().enumerate() {
        let standardize = &standardizers[f];
        let sets: Vec<(ModelSet, ModelSet)> = models
            .par_iter()
            .zip(bandit)
            .map(|(&m, &b)| {
                (
                    model_set(prepared, m, &fold.fit, standardize, b),
                    model_set(prepared, m, &fold.held, standardize, b),
                )
            })
            .collect();
        let fit: Vec<ModelRows<'_>> = sets.iter().map(|(a, _)| a.rows()).collect();
        let held: Vec<ModelRows<'_>> = sets.iter().map(|(_, b)| b.rows()).collect();
        let own: Vec<LinearHead> = paths[f]
            .iter()
            .zip(heads)
            .map(|(path, (recipe, _))| {
                let (_, head) = path.at(recipe.alpha);
                match recipe.platt {
                    Some((a, b)) => scaled(head, a, b),
                    None => head.clone(),
                }
            })
            .collect();
        if settings.is_empty() {
            settings = shrink_settings(&fit);
            losses = vec![0.0; settings.len()];
        }
        let weight: f64 = held.iter().map(|r| r.w.iter().sum::<f64>()).sum();
        let shrunk = shrunk_heads(&own, &fit, &settings)?;
        for (loss, heads) in losses.iter_mut().zip(&shrunk) {
            *loss += weight * total_log_loss(heads, &held);
        }
        own_loss += weight * total_log_loss(&own, &held);
        total_weight += weight;
        per_fold.push(shrunk);
        tracing::info!(
            fold = f + 1,
            of = folds.len(),
            "fold shrinkage toward the pooled fit scored"
        );
    }
    let norm = |v: f64| {
        if total_weight > 0.0 {
            v / total_weight
        } else {
            0.0
        }
    };
    let best = losses
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .ok_or_else(|| TrainError::Fit("no shrinkage setting tried".into()))?;
    Ok(ShrinkChoice {
        setting: settings[best],
        loss: norm(losses[best]),
        own_loss: norm(own_loss),
        heads: per_fold
            .into_iter()
            .map(|mut s| s.swap_remove(best))
            .collect(),
    })
}

/// Fits the shared classifier for one fold: decay and epochs by early stopping on an inner 15%
/// of the fold's training prompts, then refitted on all of them for those epochs. `None` when
/// every model is known only from logged traffic or there are no outcomes to fit.
fn fit_fold_shared(
    prepared: &Prepared,
    comps: Components,
    fold: &Fold,
) -> Result<(Components, Option<SharedRecipe>), TrainError> {
    let Some(recipe) = shared_recipe(prepared, &comps, &fold.fit)? else {
        return Ok((comps, None));
    };
    Ok((
        with_shared(prepared, comps, &recipe, &fold.fit),
        Some(recipe),
    ))
}

/// The shared classifier's decay and epochs for `prompts`, by early stopping on an inner 15%
/// of them (`None` when it cannot be fitted).
pub fn shared_recipe(
    prepared: &Prepared,
    comps: &Components,
    prompts: &[usize],
) -> Result<Option<SharedRecipe>, TrainError> {
    if comps.bandit.iter().all(|b| *b) {
        return Ok(None);
    }
    let (inner_dev, inner_fit): (Vec<usize>, Vec<usize>) = prompts
        .iter()
        .partition(|&&p| hash_mod(&prepared.outcomes.prompts[p].fold_key, b"inner", 100) < 15);
    let file = bare_policy(comps);
    let fit = cells(prepared, &file, &inner_fit, &comps.bandit);
    let dev = cells(prepared, &file, &inner_dev, &comps.bandit);
    if fit.x.nrows() == 0 || dev.weight.sum() <= 0.0 {
        return Ok(None);
    }
    let fitted = fit_shared(&fit, &dev)?;
    Ok(Some(SharedRecipe {
        decay: fitted.decay,
        epochs: fitted.epochs,
    }))
}

/// One routing candidate and its AIQ per fold.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    /// What it is.
    pub label: String,
    /// Its routing.
    pub routing: Routing,
    /// Rank in the order of simplicity (lower is simpler).
    pub complexity: u32,
    /// Out-of-fold AIQ per fold.
    pub aiq: Vec<f64>,
}

impl Candidate {
    /// Mean AIQ over the folds.
    pub fn mean(&self) -> f64 {
        self.aiq.iter().sum::<f64>() / self.aiq.len().max(1) as f64
    }
}

/// How simple a routing is: plain kNN, then the heads, heads + neighbourhood, heads +
/// classifier, all three; a temperature or a length weight adds one step.
fn complexity(routing: &Routing) -> u32 {
    let Some(n) = &routing.neighbours else {
        return if routing.share > 0.0 { 30 } else { 10 };
    };
    let refinements = u32::from(n.temperature.is_some());
    if n.weight >= 1.0 && routing.share == 0.0 {
        // The neighbours alone: kNN (its lengths blended in by construction).
        return refinements;
    }
    let base = if routing.share > 0.0 { 40 } else { 20 };
    base + refinements + u32::from(n.length_weight > 0.0)
}

/// Words for a routing.
pub fn describe(routing: &Routing) -> String {
    let mut parts = Vec::new();
    match &routing.neighbours {
        Some(n) if n.weight >= 1.0 && routing.share == 0.0 => {
            parts.push(format!("kNN k={}", n.k));
        }
        Some(n) => {
            parts.push("heads".to_owned());
            if routing.share > 0.0 {
                parts.push(format!("shared classifier (share {})", routing.share));
            }
            parts.push(format!("neighbours k={} weight {}", n.k, n.weight));
        }
        None if routing.share > 0.0 => {
            parts.push("heads".to_owned());
            parts.push(format!("shared classifier (share {})", routing.share));
        }
        None => parts.push("heads alone".to_owned()),
    }
    if let Some(n) = &routing.neighbours {
        if let Some(t) = n.temperature {
            parts.push(format!("temperature {t}"));
        }
        if n.length_weight > 0.0 && n.weight < 1.0 {
            parts.push(format!("length weight {}", n.length_weight));
        }
    }
    parts.join(" + ")
}

/// The one-standard-error rule: among candidates whose mean is within one standard error of
/// the best's (the standard error of the per-fold differences), the simplest; ties to the
/// higher mean.
pub fn select(candidates: &[Candidate]) -> &Candidate {
    let best = candidates
        .iter()
        .max_by(|a, b| a.mean().total_cmp(&b.mean()))
        .unwrap_or(&candidates[0]);
    candidates
        .iter()
        .filter(|c| {
            let diffs: Vec<f64> = best.aiq.iter().zip(&c.aiq).map(|(b, c)| b - c).collect();
            let n = diffs.len() as f64;
            let mean = diffs.iter().sum::<f64>() / n;
            let var = diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
            mean <= (var / n).sqrt()
        })
        .min_by(|a, b| {
            a.complexity
                .cmp(&b.complexity)
                .then(b.mean().total_cmp(&a.mean()))
        })
        .unwrap_or(best)
}

/// Scores routings over the folds.
struct Cv<'a> {
    prepared: &'a Prepared,
    folds: &'a [Fold],
    comps: &'a [Components],
    informative: &'a [Vec<usize>],
}

impl Cv<'_> {
    fn score(&self, label: String, routing: Routing) -> Result<Candidate, TrainError> {
        let aiq: Result<Vec<f64>, TrainError> = (0..self.folds.len())
            .into_par_iter()
            .map(|f| {
                let file = assemble(
                    self.prepared,
                    &self.comps[f],
                    &routing,
                    &self.folds[f].fit,
                    &DEFAULT_DECISION,
                );
                file_aiq(self.prepared, &file, &self.informative[f])
            })
            .collect();
        let c = Candidate {
            complexity: complexity(&routing),
            label,
            routing,
            aiq: aiq?,
        };
        tracing::info!(
            label = %c.label,
            mean_aiq = format!("{:.4}", c.mean()),
            "routing candidate scored over the folds"
        );
        Ok(c)
    }

    /// Plain kNN (each size), the heads, heads + classifier (each share), heads + neighbourhood
    /// on top of the best share (each size at an even blend, then each weight at the best size;
    /// and the best blend without the classifier), then a temperature and the lengths for the
    /// best neighbourhood.
    fn candidates(&self, with_shared: bool) -> Result<Vec<Candidate>, TrainError> {
        let mut out = vec![self.score("heads alone".into(), Routing::HEADS)?];
        let smallest_fit = self.folds.iter().map(|f| f.fit.len()).min().unwrap_or(0);
        let sizes = neighbourhood_sizes(SMALLEST_NEIGHBOUR_K, smallest_fit);
        for &k in &sizes {
            let routing = Routing {
                share: 0.0,
                neighbours: Some(NeighbourRecipe {
                    k,
                    weight: 1.0,
                    temperature: None,
                    length_weight: 1.0,
                }),
            };
            out.push(self.score(describe(&routing), routing)?);
        }
        let mut share = 0.0;
        if with_shared {
            let mut best = out[0].mean();
            for s in SHARES.into_iter().filter(|s| *s > 0.0) {
                let routing = Routing {
                    share: s,
                    neighbours: None,
                };
                let c = self.score(describe(&routing), routing)?;
                if c.mean() > best {
                    (best, share) = (c.mean(), s);
                }
                out.push(c);
            }
        }
        // The neighbourhood size at an even blend, then the weight at the best size.
        let first_blend = out.len();
        let blend_at = |k: usize, weight: f64| Routing {
            share,
            neighbours: Some(NeighbourRecipe {
                k,
                weight,
                temperature: None,
                length_weight: 0.0,
            }),
        };
        for &k in &sizes {
            let routing = blend_at(k, 0.5);
            out.push(self.score(describe(&routing), routing)?);
        }
        let best_k = out[first_blend..]
            .iter()
            .max_by(|a, b| a.mean().total_cmp(&b.mean()))
            .and_then(|c| c.routing.neighbours.map(|n| n.k));
        if let Some(k) = best_k {
            for weight in NEIGHBOUR_WEIGHTS.into_iter().filter(|w| *w != 0.5) {
                let routing = blend_at(k, weight);
                out.push(self.score(describe(&routing), routing)?);
            }
        }
        let Some(blend) = out[first_blend..]
            .iter()
            .max_by(|a, b| a.mean().total_cmp(&b.mean()))
            .map(|c| c.routing)
        else {
            return Ok(out);
        };
        if share > 0.0 {
            let without = Routing {
                share: 0.0,
                ..blend
            };
            out.push(self.score(describe(&without), without)?);
        }
        let mut best = out
            .iter()
            .filter(|c| c.routing.neighbours.is_some_and(|n| n.weight < 1.0))
            .max_by(|a, b| a.mean().total_cmp(&b.mean()))
            .map(|c| (c.routing, c.mean()))
            .unwrap_or((blend, f64::MIN));
        for temperature in NEIGHBOUR_TEMPERATURES {
            let mut routing = best.0;
            if let Some(n) = &mut routing.neighbours {
                n.temperature = Some(temperature);
            }
            let c = self.score(describe(&routing), routing)?;
            if c.mean() > best.1 {
                best = (c.routing, c.mean());
            }
            out.push(c);
        }
        let mut routing = best.0;
        if let Some(n) = &mut routing.neighbours {
            n.length_weight = n.weight;
        }
        out.push(self.score(describe(&routing), routing)?);
        Ok(out)
    }
}

/// The widest margins whose mean out-of-fold quality in BALANCED (COST) mode stays within 0.01
/// (0.05) of QUALITY mode's.
fn choose_margins(
    prepared: &Prepared,
    folds: &[Fold],
    comps: &[Components],
    informative: &[Vec<usize>],
    routing: &Routing,
) -> Result<DecisionParams, TrainError> {
    // Per fold: QUALITY mode's quality, then BALANCED's at each margin.
    let per_fold: Result<Vec<(f64, Vec<f64>)>, TrainError> = (0..folds.len())
        .into_par_iter()
        .map(|f| {
            let file = assemble(
                prepared,
                &comps[f],
                routing,
                &folds[f].fit,
                &DEFAULT_DECISION,
            );
            let mut replay = replay_on(prepared, &file, &informative[f])?;
            let top = replay.point(Rule::Mode(Mode::Quality)).quality;
            let at = MARGINS
                .iter()
                .map(|&m| {
                    replay.set_params(DecisionParams {
                        balanced_margin: m,
                        cost_margin: m,
                    });
                    replay.point(Rule::Mode(Mode::Balanced)).quality
                })
                .collect();
            Ok((top, at))
        })
        .collect();
    let per_fold = per_fold?;
    let n = per_fold.len().max(1) as f64;
    let (mut balanced, mut cost) = (0.0, 0.0);
    for (i, &m) in MARGINS.iter().enumerate() {
        let drop = per_fold.iter().map(|(top, at)| top - at[i]).sum::<f64>() / n;
        if drop <= 0.01 {
            balanced = m;
        }
        if drop <= 0.05 {
            cost = m;
        }
    }
    Ok(DecisionParams {
        balanced_margin: balanced,
        cost_margin: f64::max(cost, balanced),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(label: &str, routing: Routing, aiq: &[f64]) -> Candidate {
        Candidate {
            label: label.into(),
            complexity: complexity(&routing),
            routing,
            aiq: aiq.to_vec(),
        }
    }

    fn knn(k: usize) -> Routing {
        Routing {
            share: 0.0,
            neighbours: Some(NeighbourRecipe {
                k,
                weight: 1.0,
                temperature: None,
                length_weight: 1.0,
            }),
        }
    }

    fn blend(share: f64) -> Routing {
        Routing {
            share,
            neighbours: Some(NeighbourRecipe {
                k: 40,
                weight: 0.5,
                temperature: None,
                length_weight: 0.0,
            }),
        }
    }

    #[test]
    fn the_simplest_candidate_within_one_standard_error_wins() {
        // The full blend is best on average, but kNN trails it by a noisy margin (per-fold
        // differences 0.004, -0.002, 0.006, 0.000, -0.003: mean 0.001, standard error 0.0017).
        let full = candidate("all", blend(0.5), &[0.80, 0.81, 0.79, 0.82, 0.80]);
        let near = candidate("knn", knn(80), &[0.796, 0.812, 0.784, 0.82, 0.803]);
        let heads = candidate("heads", Routing::HEADS, &[0.70, 0.71, 0.69, 0.72, 0.70]);
        let all = [heads, full.clone(), near];
        assert_eq!(select(&all).label, "knn");

        // A gap well beyond the noise keeps the better candidate.
        let behind = candidate("knn", knn(80), &[0.78, 0.79, 0.77, 0.80, 0.78]);
        assert_eq!(select(&[full, behind]).label, "all");
    }

    #[test]
    fn simplicity_orders_knn_heads_neighbours_classifier() {
        let order = [
            complexity(&knn(20)),
            complexity(&Routing::HEADS),
            complexity(&blend(0.0)),
            complexity(&Routing {
                share: 0.5,
                neighbours: None,
            }),
            complexity(&blend(0.5)),
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    }
}
