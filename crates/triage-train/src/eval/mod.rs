//! `triage eval`: Triage against baselines on one split of an outcome table.
//!
//! Every router is swept over its cost knob on the evaluated split; the metrics come from
//! [`curve`]. Baselines are fitted on the training prompts (train and dev) with their choices made by the
//! same cross-validation as training's ([`baselines`], [`crate::tune`]);
//! [`ablation`] sweeps the policy again with parts of its blend taken out; [`calibration`] sets
//! predicted against realised quality by how familiar the prompts were.

pub mod ablation;
pub mod baselines;
pub mod bootstrap;
pub mod calibration;
pub mod curve;
pub mod folds;
pub mod parity;
pub mod plot;
pub(crate) mod report;

pub use report::{EvalReport, RouterResult, export_choices, render_table};

use std::path::PathBuf;

use triage_core::Mode;
use triage_policy::Policy;

use crate::TrainError;
use crate::prepare::Prepared;
use crate::simulate::{Replay, model_indices, realised_by_index};
use crate::table::{Outcomes, Split};
use baselines::{
    by_quality_then_cheapness, cost_range, knn_estimates, knn_from, lambda_grid, nearest,
    neighbourhood_sizes, oracle_estimates, random_mix, single_models, sweep, sweep_choices,
};
use bootstrap::{RouterSettings, Setting, paired_bootstrap};
use curve::{Point, aiq, hull, pair_metrics};
use rayon::prelude::*;
use triage_policy::Rule;

/// What to evaluate.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// The split reported on.
    pub split: Split,
    /// Strong and weak model for APGR / CPT.
    pub pair: Option<(String, String)>,
    /// Paired-bootstrap resamples of the evaluated prompts (0: none).
    pub resamples: usize,
}

/// Smallest kNN neighbourhood tried on dev (then doubling, see `neighbourhood_sizes`).
const SMALLEST_KNN_K: usize = 5;

/// The prompts of `prompts` that have an outcome for every model, so that every router and
/// baseline is scored on the same prompts; the others are left out with a warning naming them.
pub(crate) fn complete_prompts(o: &crate::table::Outcomes, prompts: Vec<usize>) -> Vec<usize> {
    let (complete, partial): (Vec<usize>, Vec<usize>) = prompts
        .into_iter()
        .partition(|&p| o.cells[p].iter().all(Option::is_some));
    if !partial.is_empty() {
        const SHOWN: usize = 10;
        let names: Vec<&str> = partial
            .iter()
            .take(SHOWN)
            .map(|&p| o.prompts[p].id.as_str())
            .collect();
        tracing::warn!(
            left_out = partial.len(),
            scored = complete.len(),
            "prompts without an outcome for every model are left out of the evaluation: {}{}",
            names.join(", "),
            if partial.len() > SHOWN { ", ..." } else { "" }
        );
    }
    complete
}

/// Evaluates `policy` and the baselines on `options.split` of a prepared table.
pub fn evaluate(
    prepared: &Prepared,
    policy: &Policy,
    options: &EvalOptions,
) -> Result<EvalReport, TrainError> {
    let o = &prepared.outcomes;
    let feats = &prepared.features;
    let prompts = complete_prompts(o, o.indices(options.split));
    if prompts.is_empty() {
        return Err(TrainError::Data(format!(
            "the table has no {} prompts",
            options.split.as_str()
        )));
    }
    // kNN's neighbours: every training prompt outside the evaluated split.
    let training: Vec<usize> = crate::prepare::training_prompts(o)
        .into_iter()
        .filter(|&p| o.prompts[p].split != options.split)
        .collect();
    let models: Vec<usize> = policy
        .model_names()
        .filter_map(|m| o.model_index(m))
        .collect();
    if models.is_empty() {
        return Err(TrainError::Data(
            "none of the policy's models appear in the table".into(),
        ));
    }
    let singles: Vec<(String, Point)> = single_models(o, &prompts)
        .into_iter()
        .filter(|(m, _)| models.iter().any(|&i| o.models[i] == *m))
        .collect();
    if singles.is_empty() {
        return Err(TrainError::Data(
            "no policy model has an outcome on every evaluated prompt".into(),
        ));
    }
    let (lo, hi) = cost_range(&singles);
    let lambdas = lambda_grid();

    let replay = prepared.replay(policy, prompts.clone())?;
    let mut choices = Vec::new();
    let mut triage_points = Vec::new();
    let knobs: Vec<Rule> = [Mode::Quality, Mode::Balanced, Mode::Cost]
        .into_iter()
        .map(Rule::Mode)
        .chain(lambdas.iter().map(|&l| Rule::CostWeight(l)))
        .collect();
    let mut mode_points = Vec::new();
    let mut triage_settings = Vec::new();
    let mut calibration = None;
    for knob in &knobs {
        let chosen = replay.choices(*knob);
        if *knob == Rule::Mode(Mode::Balanced) {
            calibration = calibration::by_familiarity(o, &replay, &chosen);
        }
        let by_index = model_indices(o, &chosen);
        let point = realised_by_index(o, &prompts, &by_index);
        if let Rule::Mode(m) = knob {
            mode_points.push((m.to_string(), point));
        }
        triage_points.push(point);
        triage_settings.push(Setting::from_choices(o, &prompts, &by_index));
        choices.push((knob.label(), chosen));
    }

    let dim = policy.file().embedding_dim;
    let best_k = tune_knn(prepared, &training, &models, dim, &lambdas);
    let knn_choices = sweep_choices(
        o,
        &prompts,
        &knn_estimates(o, &feats.features, dim, &training, &prompts, best_k),
        &models,
        &lambdas,
    );
    let knn_points = knn_choices
        .iter()
        .map(|c| realised_by_index(o, &prompts, c))
        .collect();
    let oracle_points = sweep(
        o,
        &prompts,
        &oracle_estimates(o, &prompts),
        &models,
        &lambdas,
    );
    let single_points: Vec<Point> = singles.iter().map(|(_, p)| *p).collect();

    let best = singles
        .iter()
        .max_by(|a, b| by_quality_then_cheapness(&a.1, &b.1))
        .cloned()
        .ok_or_else(|| TrainError::Data("no single models".into()))?;
    let cheapest = singles
        .iter()
        .min_by(|a, b| a.1.cost.total_cmp(&b.1.cost))
        .cloned()
        .ok_or_else(|| TrainError::Data("no single models".into()))?;
    let result = |name: &str, points: Vec<Point>| RouterResult::new(name, points, lo, hi, best.1);
    // The modes are routable settings, so they count in Triage's hull; the λ sweep alone is
    // what training's dev choices, the promotion gate and `simulate` measure, shown beside it.
    let lambda_points = triage_points[mode_points.len()..].to_vec();
    // What the bootstrap compares Triage with: every row but its own λ sweep, the random mix
    // (one expected point) and the oracle (an upper bound, not a rival).
    let single_settings: Vec<Setting> = singles
        .iter()
        .filter_map(|(m, _)| o.model_index(m))
        .map(|m| Setting::single(o, &prompts, m))
        .collect();
    let zero_name = "zero router (single-model hull)";
    let knn_name = format!("kNN (k={best_k}, by cross-validation)");
    let mut rivals: Vec<RouterSettings> = vec![
        ("triage".into(), triage_settings),
        (zero_name.into(), single_settings.clone()),
        (knn_name.clone(), settings_of(o, &prompts, &knn_choices)),
    ];
    let mut ablations = Vec::new();
    for (name, file) in ablation::variants(policy.file()) {
        let ablated = Policy::new(file).map_err(|e| TrainError::Fit(e.to_string()))?;
        let replay = prepared.replay(&ablated, prompts.clone())?;
        let chosen: Vec<Vec<Option<usize>>> = lambdas
            .iter()
            .map(|&l| model_indices(o, &replay.choices(Rule::CostWeight(l))))
            .collect();
        let points = chosen
            .iter()
            .map(|c| realised_by_index(o, &prompts, c))
            .collect();
        ablations.push(result(name, points));
        rivals.push((name.into(), settings_of(o, &prompts, &chosen)));
    }
    let bootstrap = paired_bootstrap(
        &single_settings,
        &rivals,
        prompts.len(),
        options.resamples,
        bootstrap::SEED,
    );
    let routers = vec![
        result("triage", triage_points),
        result("triage, λ sweep only", lambda_points),
        result(zero_name, single_points),
        result("random mix", vec![random_mix(&singles)]),
        result(&knn_name, knn_points),
        result("oracle (upper bound)", oracle_points),
    ];

    let pair = match &options.pair {
        Some((strong, weak)) => Some(pair_report(
            prepared, &replay, dim, strong, weak, best_k, &lambdas,
        )?),
        None => None,
    };
    Ok(EvalReport {
        split: options.split.as_str().into(),
        prompts: prompts.len(),
        policy_version: policy.version().into(),
        best_single: (best.0.clone(), best.1),
        cheapest_single: (cheapest.0.clone(), cheapest.1),
        singles,
        modes: mode_points,
        routers,
        ablations,
        bootstrap,
        pair,
        calibration,
        choices: choices
            .into_iter()
            .map(|(label, chosen)| {
                let ids = prompts.iter().map(|&p| o.prompts[p].id.clone()).collect();
                (label, ids, chosen)
            })
            .collect(),
    })
}

fn settings_of(o: &Outcomes, prompts: &[usize], choices: &[Vec<Option<usize>>]) -> Vec<Setting> {
    choices
        .iter()
        .map(|c| Setting::from_choices(o, prompts, c))
        .collect()
}

/// kNN's k by the same cross-validation as training's choices: the best mean AIQ over the
/// folds of the training prompts, each fold's neighbours drawn from the other folds.
fn tune_knn(
    prepared: &Prepared,
    training: &[usize],
    models: &[usize],
    dim: usize,
    lambdas: &[f64],
) -> usize {
    let o = &prepared.outcomes;
    let folds = crate::tune::folds(prepared, training, crate::tune::DEFAULT_FOLDS);
    let smallest_fit = folds.iter().map(|f| f.fit.len()).min().unwrap_or(0);
    let sizes = neighbourhood_sizes(SMALLEST_KNN_K, smallest_fit);
    let largest = sizes.last().copied().unwrap_or(SMALLEST_KNN_K);
    // Per fold: held-out prompts, their neighbours up to the largest k, the cost range.
    type HeldNeighbours = (Vec<usize>, Vec<Vec<usize>>, (f64, f64));
    let per_fold: Vec<HeldNeighbours> = folds
        .par_iter()
        .map(|fold| {
            let held = crate::tune::informative_prompts(prepared, &fold.held);
            let near = nearest(&prepared.features.features, dim, &fold.fit, &held, largest);
            let range = cost_range(&single_models(o, &held));
            (held, near, range)
        })
        .collect();
    let mut best = (SMALLEST_KNN_K, f64::MIN);
    for k in sizes {
        let scores: Vec<f64> = per_fold
            .iter()
            .map(|(held, near, (lo, hi))| {
                let est = knn_from(o, near, k);
                aiq(&hull(&sweep(o, held, &est, models, lambdas)), *lo, *hi)
            })
            .collect();
        let score = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
        if score > best.1 {
            best = (k, score);
        }
    }
    best.0
}

fn pair_report(
    prepared: &Prepared,
    replay: &Replay<'_>,
    dim: usize,
    strong: &str,
    weak: &str,
    k: usize,
    lambdas: &[f64],
) -> Result<report::PairReport, TrainError> {
    let o = &prepared.outcomes;
    let prompts = replay.prompts();
    let (Some(si), Some(wi)) = (o.model_index(strong), o.model_index(weak)) else {
        return Err(TrainError::Usage(format!(
            "--pair {strong},{weak}: both models must be in the table"
        )));
    };
    let singles = single_models(o, prompts);
    let quality_of = |m: &str| singles.iter().find(|(n, _)| n == m).map(|(_, p)| p.quality);
    let (Some(sq), Some(wq)) = (quality_of(strong), quality_of(weak)) else {
        return Err(TrainError::Data(
            "both models of the pair need outcomes on at least 99% of the evaluated prompts".into(),
        ));
    };
    let share = |chosen: &[Option<usize>]| -> Point {
        let n = prompts.len().max(1) as f64;
        let strong_calls = chosen.iter().filter(|c| **c == Some(si)).count() as f64;
        let quality: f64 = prompts
            .iter()
            .zip(chosen)
            .filter_map(|(&p, c)| c.and_then(|m| o.cells[p][m]).map(|cell| cell.quality))
            .sum();
        Point {
            cost: strong_calls / n,
            quality: quality / n,
        }
    };
    let allowed = vec![strong.to_owned(), weak.to_owned()];
    let triage: Vec<Point> = lambdas
        .iter()
        .map(|&l| {
            let chosen: Vec<Option<usize>> = replay
                .choices_with(Rule::CostWeight(l), &allowed)
                .iter()
                .map(|c| c.as_deref().and_then(|m| o.model_index(m)))
                .collect();
            share(&chosen)
        })
        .collect();
    let training = crate::prepare::training_prompts(o);
    let est = knn_estimates(o, &prepared.features.features, dim, &training, prompts, k);
    let knn: Vec<Point> = lambdas
        .iter()
        .map(|&l| {
            let chosen: Vec<Option<usize>> = est
                .iter()
                .map(|(q, c)| {
                    Some(if q[si] - l * c[si] > q[wi] - l * c[wi] {
                        si
                    } else {
                        wi
                    })
                })
                .collect();
            share(&chosen)
        })
        .collect();
    Ok(report::PairReport {
        strong: strong.into(),
        weak: weak.into(),
        strong_quality: sq,
        weak_quality: wq,
        triage: pair_metrics(&triage, wq, sq),
        knn: pair_metrics(&knn, wq, sq),
        random: pair_metrics(&[], wq, sq),
    })
}

/// Output files requested on the command line.
#[derive(Clone, Debug, Default)]
pub struct EvalOutputs {
    /// JSON report.
    pub json: Option<PathBuf>,
    /// SVG plot.
    pub plot: Option<PathBuf>,
    /// Per-prompt choices (CSV or Parquet by extension).
    pub export_choices: Option<PathBuf>,
}
