//! Fits the policy's trust curve ([`triage_policy::Familiarity`]): how far to trust
//! prompt-specific predictions as a prompt gets less like the training prompts.
//!
//! The curve is fitted on *held-out* predictions, made by the chosen recipe refitted without the
//! prompts it predicts:
//!
//! - **each task left out in turn** (when the table has two or more `task`s): the predictions a
//!   policy makes on a kind of prompt it never saw, which is exactly what the curve must guard
//!   against;
//! - **the cross-validation folds**: predictions on familiar prompts, so the curve does not give
//!   up good predictions where they are good.
//!
//! Each held-out (prompt, model) outcome gives a row: the prompt's familiarity to the prompts the
//! predicting policy was fitted on, its prediction, the model's mean quality on those prompts (the
//! prior the curve shrinks toward), and the observed quality. A grid of slopes × centres (centres
//! at quantiles of the observed familiarities, so nothing is in units of one table) is scored by
//! weighted squared error; the best is kept only if it beats trusting every prediction by more
//! than one standard error of the paired difference — the simpler choice within noise.

use serde_json::json;
use triage_policy::{FAMILIARITY_NEIGHBOURS, Familiarity, Policy, PolicyFile, TrustCurve};

use crate::TrainError;
use crate::prepare::Prepared;
use crate::recipe::{Recipe, assemble, fit_components, neighbour_set, with_shared};

/// Slopes tried, per unit of cosine similarity (a doubling grid: steep enough to switch within
/// a few hundredths of similarity, gentle enough to span the whole range).
const SLOPES: [f64; 7] = [2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0];

/// One held-out prediction.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    /// Familiarity of the prompt to the predicting policy's training prompts.
    pub familiarity: f64,
    /// The policy's (unshrunk) predicted quality.
    pub predicted: f64,
    /// The model's mean quality on the predicting policy's training prompts.
    pub prior: f64,
    /// Observed quality.
    pub observed: f64,
    /// Outcome weight (1 for a table; the importance weight for logged traffic).
    pub weight: f64,
}

/// What fitting found: the curve (or none) and the evidence, for the policy's metadata.
pub struct CurveFit {
    /// The chosen curve; `None` when shrinking did not help beyond noise.
    pub curve: Option<TrustCurve>,
    /// Rows, losses and the choice, as JSON.
    pub report: serde_json::Value,
}

/// Each model's mean observed quality on `prompts`, in `file`'s model order (0.5 where a model
/// has none there).
pub fn priors(prepared: &Prepared, file: &PolicyFile, prompts: &[usize]) -> Vec<f64> {
    let o = &prepared.outcomes;
    file.models
        .iter()
        .map(|head| {
            let Some(m) = o.model_index(&head.name) else {
                return 0.5;
            };
            let (sum, weight) = prompts
                .iter()
                .filter_map(|&p| o.cells[p][m])
                .fold((0.0, 0.0), |(s, w), c| {
                    (s + c.weight * c.quality, w + c.weight)
                });
            if weight > 0.0 { sum / weight } else { 0.5 }
        })
        .collect()
}

/// `file` with a neighbour set over `prompts` if it has none (blended at weight 0: there only to
/// measure familiarity), and the trust `curve` with priors from `prompts`.
pub fn with_familiarity(
    prepared: &Prepared,
    mut file: PolicyFile,
    prompts: &[usize],
    curve: Option<TrustCurve>,
) -> PolicyFile {
    if file.neighbours.is_none() {
        file.neighbours = Some(neighbour_set(
            prepared,
            &file,
            prompts,
            FAMILIARITY_NEIGHBOURS,
            0.0,
        ));
    }
    file.familiarity = Some(Familiarity {
        neighbours: FAMILIARITY_NEIGHBOURS,
        curve,
        prior: priors(prepared, &file, prompts),
    });
    file
}

/// Held-out rows of `file` (fitted on `fit`) on the `held` prompts.
pub fn held_out_rows(
    prepared: &Prepared,
    file: PolicyFile,
    fit: &[usize],
    held: &[usize],
) -> Result<Vec<Row>, TrainError> {
    let o = &prepared.outcomes;
    let mut file = with_familiarity(prepared, file, fit, None);
    let prior = file.familiarity.take().map(|f| f.prior).unwrap_or_default();
    let policy = Policy::new(file).map_err(|e| TrainError::Fit(e.to_string()))?;
    let Some(neighbours) = policy.neighbours() else {
        return Ok(Vec::new());
    };
    let mut rows = Vec::new();
    for &p in held {
        let features = &prepared.features.features[p];
        let familiarity = neighbours.familiarity(features, FAMILIARITY_NEIGHBOURS);
        let predictions = policy
            .predict(features)
            .map_err(|e| TrainError::Fit(e.to_string()))?;
        for ((name, prediction), prior) in predictions.iter().zip(&prior) {
            let Some(cell) = o.model_index(name).and_then(|m| o.cells[p][m]) else {
                continue;
            };
            rows.push(Row {
                familiarity,
                predicted: prediction.quality,
                prior: *prior,
                observed: cell.quality,
                weight: cell.weight,
            });
        }
    }
    Ok(rows)
}

/// Rows from refitting `recipe` with each task of `training` left out in turn (none when the
/// prompts carry fewer than two tasks).
pub fn leave_task_out_rows(
    prepared: &Prepared,
    recipe: &Recipe,
    bandit: &[bool],
    training: &[usize],
) -> Result<Vec<Row>, TrainError> {
    // Prompts without a task (logged traffic, a table without the column) are not a task of
    // their own: they are never left out, only fitted on.
    let task = |p: usize| prepared.outcomes.prompts[p].task.as_deref();
    let mut tasks: Vec<&str> = training.iter().filter_map(|&p| task(p)).collect();
    tasks.sort_unstable();
    tasks.dedup();
    if tasks.len() < 2 {
        return Ok(Vec::new());
    }
    let mut rows = Vec::new();
    for left_out in tasks {
        let (held, fit): (Vec<usize>, Vec<usize>) =
            training.iter().partition(|&&p| task(p) == Some(left_out));
        let (recipe, bandit) = seen_in(prepared, recipe, bandit, &fit);
        let mut comps = fit_components(prepared, &recipe, &fit, &bandit)?;
        if let Some(shared) = &recipe.shared {
            comps = with_shared(prepared, comps, shared, &fit);
        }
        let file = assemble(prepared, &comps, &recipe.routing, &fit, &recipe.decision);
        match held_out_rows(prepared, file, &fit, &held) {
            Ok(held_rows) => rows.extend(held_rows),
            // A refit on a fraction of the table can fail where the full one does not; the
            // curve is then fitted on the other tasks' rows, and the log says which.
            Err(e) => tracing::warn!(task = left_out, error = %e, "left-out-task refit unusable"),
        }
    }
    Ok(rows)
}

/// `recipe` (and its `bandit` flags) restricted to the models with an outcome on `prompts`.
fn seen_in(
    prepared: &Prepared,
    recipe: &Recipe,
    bandit: &[bool],
    prompts: &[usize],
) -> (Recipe, Vec<bool>) {
    let o = &prepared.outcomes;
    let seen = |name: &str| {
        o.model_index(name)
            .is_some_and(|m| prompts.iter().any(|&p| o.cells[p][m].is_some()))
    };
    let (heads, bandit): (Vec<_>, Vec<bool>) = recipe
        .heads
        .iter()
        .zip(bandit)
        .filter(|((name, _), _)| seen(name))
        .map(|(h, b)| (h.clone(), *b))
        .unzip();
    (
        Recipe {
            heads,
            ..recipe.clone()
        },
        bandit,
    )
}

/// Weighted squared error of each row under `trust`.
fn losses(rows: &[Row], trust: impl Fn(f64) -> f64) -> Vec<f64> {
    rows.iter()
        .map(|r| {
            let t = trust(r.familiarity);
            let q = t * r.predicted + (1.0 - t) * r.prior;
            r.weight * (q - r.observed).powi(2)
        })
        .collect()
}

/// Mean and standard error of `xs` (weights already inside them).
fn mean_se(xs: &[f64], total_weight: f64) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / total_weight;
    let per_row = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - per_row).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, (var / n).sqrt() * n / total_weight)
}

/// Chooses the trust curve from held-out `rows` (see the module docs).
pub fn fit_curve(rows: &[Row]) -> CurveFit {
    let total_weight: f64 = rows.iter().map(|r| r.weight).sum();
    if rows.len() < 2 || total_weight <= 0.0 {
        return CurveFit {
            curve: None,
            report: json!({"rows": rows.len(), "chosen": "none: too few held-out predictions"}),
        };
    }
    let mut sorted: Vec<f64> = rows.iter().map(|r| r.familiarity).collect();
    sorted.sort_by(f64::total_cmp);
    let quantile = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let trusting = losses(rows, |_| 1.0);
    let (trust_loss, _) = mean_se(&trusting, total_weight);
    let mut best: Option<(TrustCurve, f64, f64)> = None;
    for slope in SLOPES {
        for step in 1..20 {
            let curve = TrustCurve {
                center: quantile(f64::from(step) * 0.05),
                slope,
            };
            let shrunk = losses(rows, |f| curve.trust(f));
            let gain: Vec<f64> = trusting.iter().zip(&shrunk).map(|(a, b)| a - b).collect();
            let (gain, se) = mean_se(&gain, total_weight);
            if best.is_none_or(|(_, g, _)| gain > g) {
                best = Some((curve, gain, se));
            }
        }
    }
    let Some((curve, gain, se)) = best else {
        return CurveFit {
            curve: None,
            report: json!({"rows": rows.len(), "chosen": "none"}),
        };
    };
    let helps = gain > se;
    let report = json!({
        "rows": rows.len(),
        "familiarity_quantiles": {"p5": quantile(0.05), "p50": quantile(0.5), "p95": quantile(0.95)},
        "trust_all_squared_error": trust_loss,
        "best_curve": {"center": curve.center, "slope": curve.slope},
        "best_gain": gain,
        "best_gain_se": se,
        "chosen": if helps { "curve: its gain over trusting every prediction exceeds one standard error" } else { "none: the best curve's gain is within one standard error" },
    });
    CurveFit {
        curve: helps.then_some(curve),
        report,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(familiarity: f64, predicted: f64, observed: f64) -> Row {
        Row {
            familiarity,
            predicted,
            prior: 0.5,
            observed,
            weight: 1.0,
        }
    }

    #[test]
    fn shrinks_where_far_predictions_are_wrong() {
        // Familiar prompts: predictions right. Unfamiliar ones: confidently wrong, prior right.
        let mut rows = Vec::new();
        for i in 0..200 {
            let f = 0.8 + f64::from(i % 10) * 0.01;
            rows.push(row(f, 0.9, 0.9));
            rows.push(row(0.2 + f64::from(i % 10) * 0.01, 0.95, 0.5));
        }
        let fit = fit_curve(&rows);
        let curve = fit.curve.expect("a curve");
        assert!(curve.trust(0.85) > 0.9, "{curve:?}");
        assert!(curve.trust(0.25) < 0.1, "{curve:?}");
    }

    #[test]
    fn keeps_predictions_where_they_hold_everywhere() {
        let rows: Vec<Row> = (0..400)
            .map(|i| {
                let f = f64::from(i % 40) / 40.0;
                let q = if i % 2 == 0 { 0.9 } else { 0.1 };
                row(f, q, q)
            })
            .collect();
        assert!(fit_curve(&rows).curve.is_none());
    }
}
