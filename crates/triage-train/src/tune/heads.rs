//! The statistical choices: each model's L2 strength and Platt map, and the shrinkage toward
//! the pooled fit, by out-of-fold log-loss; the shared classifier's decay and epochs by early
//! stopping on an inner holdout of each fold's training prompts.

use rayon::prelude::*;
use triage_policy::{LengthHead, LinearHead, ModelHead, Standardizer};

use super::{Fold, hash_mod};
use crate::TrainError;
use crate::fit::{QUALITY_ALPHAS, length_head, logit, platt_map, quality_path, scaled, sigmoid};
use crate::pooled::{ModelRows, ShrinkSetting, shrink_settings, shrunk_heads, total_log_loss};
use crate::prepare::Prepared;
use crate::recipe::{
    Components, HeadRecipe, ModelSet, SharedRecipe, bare_policy, model_set, standardizer_on,
    with_shared,
};
use crate::shared::{cells, fit_shared};

/// One model's heads along the L2 grid, fitted on a fold's training prompts, with their logits
/// on the fold's held-out rows.
pub(super) struct HeadPath {
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

pub(super) type Paths = Vec<Vec<HeadPath>>;

/// Fits every model's L2 path on each fold (models in parallel).
pub(super) fn fit_paths(
    prepared: &Prepared,
    models: &[usize],
    bandit: &[bool],
    folds: &[Fold],
) -> Result<(Paths, Vec<Standardizer>), TrainError> {
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
pub(super) fn choose_heads(paths: &Paths) -> Result<Vec<(HeadRecipe, f64)>, TrainError> {
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
pub(super) struct ShrinkChoice {
    pub(super) setting: ShrinkSetting,
    pub(super) loss: f64,
    pub(super) own_loss: f64,
    /// Per fold, per model.
    pub(super) heads: Vec<Vec<LinearHead>>,
}

/// Chooses the shrinkage toward the pooled fit by out-of-fold log-loss over all models.
pub(super) fn choose_shrink(
    prepared: &Prepared,
    models: &[usize],
    bandit: &[bool],
    folds: &[Fold],
    paths: &Paths,
    standardizers: &[Standardizer],
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

/// Each fold's components: its heads under the chosen shrinkage and lengths, and its shared
/// classifier; with the classifier's recipe per fold where one was fitted.
pub(super) fn fold_components(
    prepared: &Prepared,
    names: &[String],
    bandit: &[bool],
    folds: &[Fold],
    paths: &Paths,
    standardizers: &[Standardizer],
    shrink: &ShrinkChoice,
) -> Result<(Vec<Components>, Vec<SharedRecipe>), TrainError> {
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
    Ok((comps, shared_recipes))
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
