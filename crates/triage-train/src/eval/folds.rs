//! `--folds K`: K prompt-disjoint train/eval repetitions, because one small test split is noisy;
//! `--leave-one-task-out`: one repetition per task, testing on a task no policy saw, as traffic
//! that drifts to a new kind of prompt would.
//!
//! Fold `f` tests on the prompts whose id hashes to `f` modulo K (or on the `f`-th task); the
//! rest are training prompts. A fresh policy is fitted per fold exactly as `triage train` fits
//! one (its own choices by cross-validation inside those training prompts, folds salted apart
//! from these), then evaluated like `triage eval`.

use serde::Serialize;

use crate::TrainError;
use crate::eval::{EvalOptions, EvalReport, RouterResult, evaluate};
use crate::prepare::Prepared;
use crate::table::{Prompt, Split};
use crate::train::fit_policy;
use crate::tune::hash_mod;

/// Mean and spread of one router's metrics over the folds.
#[derive(Clone, Debug, Serialize)]
pub struct FoldSummary {
    /// Router name (kNN's tuned k may differ per fold; the first fold's name is kept).
    pub name: String,
    /// AIQ per fold.
    pub aiq: Vec<f64>,
    /// Cost at parity (% of the best single model's cost) per fold; `None` where not reached.
    pub cost_at_parity_pct: Vec<Option<f64>>,
}

/// Checks that `k` folds can be run on `prepared`: at least two, and none without prompts. Cheap,
/// so a caller can check before its other work.
pub fn check_folds(prepared: &Prepared, k: usize) -> Result<(), TrainError> {
    if k < 2 {
        return Err(TrainError::Usage("--folds needs at least 2 folds".into()));
    }
    let prompts = &prepared.outcomes.prompts;
    if k > prompts.len() {
        return Err(TrainError::Usage(format!(
            "--folds {k}: the table has only {} prompts; use fewer folds",
            prompts.len()
        )));
    }
    let mut sizes = vec![0usize; k];
    for p in prompts {
        sizes[fold_of(&p.id, k)] += 1;
    }
    if let Some(empty) = sizes.iter().position(|&n| n == 0) {
        return Err(TrainError::Usage(format!(
            "--folds {k}: fold {empty} gets none of the table's {} prompts; use fewer folds",
            prompts.len()
        )));
    }
    Ok(())
}

fn fold_of(id: &str, k: usize) -> usize {
    // k fits in u64 and the remainder is below k, so both conversions are lossless.
    hash_mod(id, b"fold", k as u64) as usize
}

/// Runs `k` folds, each refit making its choices by `cv_folds`-fold cross-validation; returns
/// each fold's report and a per-router summary.
pub fn cross_validate(
    prepared: &Prepared,
    k: usize,
    cv_folds: usize,
) -> Result<(Vec<EvalReport>, Vec<FoldSummary>), TrainError> {
    check_folds(prepared, k)?;
    run_folds(prepared, k, cv_folds, |p| fold_of(&p.id, k))
}

/// Refits tested on one task each.
pub struct ByTask {
    /// The tasks, in fold order.
    pub tasks: Vec<String>,
    /// Each fold's report.
    pub reports: Vec<EvalReport>,
    /// Per router, its metrics per task.
    pub summary: Vec<FoldSummary>,
}

/// One fold per task (the table's `task` column): trains on every other task and tests on it.
/// Each refit makes its own choices by `cv_folds`-fold cross-validation.
pub fn leave_one_task_out(prepared: &Prepared, cv_folds: usize) -> Result<ByTask, TrainError> {
    let prompts = &prepared.outcomes.prompts;
    let untagged = prompts.iter().filter(|p| p.task.is_none()).count();
    if untagged > 0 {
        return Err(TrainError::Usage(format!(
            "--leave-one-task-out needs a `task` for every prompt; {untagged} of {} have none",
            prompts.len()
        )));
    }
    let mut tasks: Vec<String> = prompts.iter().filter_map(|p| p.task.clone()).collect();
    tasks.sort();
    tasks.dedup();
    if tasks.len() < 2 {
        return Err(TrainError::Usage(format!(
            "--leave-one-task-out needs at least two tasks; the table has {}",
            tasks.len()
        )));
    }
    let index = |p: &Prompt| {
        p.task
            .as_ref()
            .and_then(|t| tasks.iter().position(|x| x == t))
            .unwrap_or(0)
    };
    let (reports, summary) = run_folds(prepared, tasks.len(), cv_folds, index)?;
    Ok(ByTask {
        tasks,
        reports,
        summary,
    })
}

/// Fits and evaluates one policy per fold, testing on the prompts `fold_of` puts in it.
fn run_folds(
    prepared: &Prepared,
    k: usize,
    cv_folds: usize,
    fold_of: impl Fn(&Prompt) -> usize,
) -> Result<(Vec<EvalReport>, Vec<FoldSummary>), TrainError> {
    let mut reports = Vec::with_capacity(k);
    for fold in 0..k {
        let mut outcomes = prepared.outcomes.clone();
        for p in &mut outcomes.prompts {
            p.split = if fold_of(p) == fold {
                Split::Test
            } else {
                Split::Train
            };
        }
        let fold_data = Prepared {
            outcomes,
            features: prepared.features.clone(),
        };
        let file = fit_policy(&fold_data, cv_folds)?.deployed;
        let policy =
            triage_policy::Policy::new(file).map_err(|e| TrainError::Fit(e.to_string()))?;
        let report = evaluate(
            &fold_data,
            &policy,
            &EvalOptions {
                split: Split::Test,
                pair: None,
                // The folds show the spread over refits; the bootstrap is for one split.
                resamples: 0,
            },
        )?;
        tracing::info!(fold, triage_aiq = report.routers[0].aiq, "fold done");
        reports.push(report);
    }
    // Every fold reports the same routers and ablations in the same order.
    let per_fold: Vec<Vec<&RouterResult>> = reports
        .iter()
        .map(|r| r.routers.iter().chain(&r.ablations).collect())
        .collect();
    let mut summary: Vec<FoldSummary> = Vec::new();
    for (i, router) in per_fold[0].iter().enumerate() {
        summary.push(FoldSummary {
            name: router.name.clone(),
            aiq: per_fold.iter().map(|r| r[i].aiq).collect(),
            cost_at_parity_pct: per_fold.iter().map(|r| r[i].cost_at_parity_pct).collect(),
        });
    }
    Ok((reports, summary))
}

/// Mean ± standard deviation, as text.
pub fn mean_sd(values: &[f64]) -> String {
    if values.is_empty() {
        return "n/a".into();
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
    format!("{mean:.4} ± {sd:.4}")
}
