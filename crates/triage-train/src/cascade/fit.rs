//! Learning the acceptor, and choosing what to draft at each λ, by cross-validation.
//!
//! Training has already cut the training prompts into K folds and fitted the routing recipe
//! without each fold; those fold policies give every training prompt an out-of-fold view
//! (predicted qualities, escalation choices), so the acceptor learns how far to trust the
//! routing policy's predictions on prompts it has not seen, which is how it will be used.
//!
//! - **Plans**: the draft models are the cheapest half of the models by mean cost (at most
//!   [`MAX_DRAFT_MODELS`]); each alone and each pair is a plan.
//! - **Heads**: per plan, a logistic head over the draft evidence; its L2 strength by
//!   out-of-fold log-loss over the same folds, giving out-of-fold accept probabilities.
//! - **Settings**: per λ of the grid, every (plan, threshold) and routing directly are scored by
//!   mean out-of-fold utility, quality − λ·cost, every call paid. Among the candidates within
//!   one standard error of the best (paired per-fold differences), the simplest wins: routing
//!   directly, then one draft, then two.
//! - Each plan some λ uses is then refitted on every training prompt.

use ndarray16::Array2;
use rayon::prelude::*;
use triage_policy::acceptor::head_probability;
use triage_policy::{
    Acceptor, BALANCED_QUALITY_DROP, COST_QUALITY_DROP, CascadeSetting, DraftPlan, ModeSettings,
    Policy, PolicyFile,
};

use super::{PlanRow, PromptView, plan_row, views};
use crate::TrainError;
use crate::fit::quality_head_at;
use crate::prepare::Prepared;
use crate::responses::Responses;

/// Thresholds tried on the accept probability (0: always accept the draft).
pub const THRESHOLDS: [f64; 12] = [
    0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98,
];

/// L2 strengths tried for an acceptor head, weakest last.
const ACCEPTOR_ALPHAS: [f64; 3] = [10.0, 1.0, 0.1];

/// At most this many draft models (so at most 6 + 15 plans).
pub const MAX_DRAFT_MODELS: usize = 6;

/// Share of the training prompts a model needs an outcome and a response on to draft.
const DRAFT_COVERAGE: f64 = 0.99;

/// Fewer training prompts with every draft's response than this, and no acceptor is fitted.
pub const MIN_ACCEPTOR_PROMPTS: usize = 100;

/// The acceptor and what cross-validation found.
#[derive(Clone, Debug)]
pub struct AcceptorFit {
    /// What goes into the policy.
    pub acceptor: Acceptor,
    /// Per plan and per λ, for the policy's training metadata.
    pub report: serde_json::Value,
}

/// One plan's out-of-fold fit.
struct PlanFit {
    alpha: f64,
    log_loss: f64,
    /// Accept probability per usable prompt, from a head that did not see it.
    oof: Vec<f64>,
}

/// A candidate at one λ: `None` routes directly.
type Choice = Option<(usize, f64)>;

/// What cross-validation chose at one λ, with its out-of-fold figures.
struct Picked {
    choice: Choice,
    /// Mean out-of-fold utility, quality − λ·cost.
    utility: f64,
    /// Routing directly's.
    direct_utility: f64,
    /// Mean out-of-fold quality and cost of the choice (what the modes are chosen by).
    quality: f64,
    cost: f64,
}

/// Learns the acceptor from `fold_policies` (each fold's policy and held prompts), or `None`
/// (with a warning saying why) when there is too little to learn from.
pub fn fit_acceptor(
    prepared: &Prepared,
    responses: &Responses,
    fold_policies: &[(PolicyFile, Vec<usize>)],
    lambdas: &[f64],
) -> Result<Option<AcceptorFit>, TrainError> {
    if fold_policies.len() < 2 {
        tracing::warn!("too few training prompts to cross-validate: no acceptor fitted");
        return Ok(None);
    }
    let mut all_views = Vec::new();
    let mut fold_of = Vec::new();
    for (f, (file, held)) in fold_policies.iter().enumerate() {
        let policy = Policy::new(file.clone()).map_err(|e| TrainError::Fit(e.to_string()))?;
        let v = views(prepared, &policy, held.clone(), lambdas)?;
        fold_of.extend(std::iter::repeat_n(f, v.len()));
        all_views.extend(v);
    }
    let training: Vec<usize> = all_views.iter().map(|v| v.prompt).collect();
    let draft_models = draft_models(prepared, responses, &training);
    let plans = plans_of(&draft_models);
    if plans.is_empty() {
        tracing::warn!(
            "no model has an outcome and a response on 99% of the training prompts: no acceptor fitted"
        );
        return Ok(None);
    }
    let rows: Vec<Vec<Option<PlanRow>>> = plans
        .par_iter()
        .map(|d| {
            all_views
                .iter()
                .map(|v| plan_row(prepared, responses, v, d))
                .collect()
        })
        .collect();
    let usable: Vec<usize> = (0..all_views.len())
        .filter(|&i| rows.iter().all(|r| r[i].is_some()))
        .collect();
    if usable.len() < MIN_ACCEPTOR_PROMPTS {
        tracing::warn!(
            prompts = usable.len(),
            needed = MIN_ACCEPTOR_PROMPTS,
            "too few training prompts have a response from every draft model: no acceptor fitted"
        );
        return Ok(None);
    }
    let rows: Vec<Vec<&PlanRow>> = rows
        .iter()
        .map(|r| usable.iter().filter_map(|&i| r[i].as_ref()).collect())
        .collect();
    let views: Vec<&PromptView> = usable.iter().map(|&i| &all_views[i]).collect();
    let folds: Vec<usize> = usable.iter().map(|&i| fold_of[i]).collect();
    let fits: Vec<PlanFit> = rows
        .par_iter()
        .map(|r| fit_plan(r, &folds, fold_policies.len()))
        .collect::<Result<_, _>>()?;
    let candidates = Plans {
        drafts: &plans,
        rows: &rows,
        fits: &fits,
    };
    let chosen: Vec<Picked> = (0..lambdas.len())
        .into_par_iter()
        .map(|li| {
            let folds = (folds.as_slice(), fold_policies.len());
            choose(prepared, &views, &candidates, folds, (li, lambdas[li]))
        })
        .collect();
    assemble_acceptor(prepared, responses, &plans, &rows, &fits, &chosen, lambdas)
}

/// The cheapest of the models with an outcome and a response on nearly every prompt that has
/// responses, as many as half the table's models (at most [`MAX_DRAFT_MODELS`]): a model
/// without responses cannot draft.
fn draft_models(prepared: &Prepared, responses: &Responses, prompts: &[usize]) -> Vec<usize> {
    let o = &prepared.outcomes;
    // Coverage counts the prompts that have any response: a log mixes drafted requests with
    // routed ones, and only the drafted ones can teach the acceptor.
    let prompts: Vec<usize> = prompts
        .iter()
        .copied()
        .filter(|&p| responses.cells[p].iter().any(Option::is_some))
        .collect();
    let needed = (prompts.len() as f64 * DRAFT_COVERAGE).ceil() as usize;
    let mut by_cost: Vec<(usize, f64)> = (0..o.models.len())
        .filter_map(|m| {
            let costs: Vec<f64> = prompts
                .iter()
                .filter(|&&p| responses.cells[p][m].is_some())
                .filter_map(|&p| o.cells[p][m].map(|c| c.cost_usd))
                .collect();
            (costs.len() >= needed.max(1))
                .then(|| (m, costs.iter().sum::<f64>() / costs.len() as f64))
        })
        .collect();
    by_cost.sort_by(|a, b| a.1.total_cmp(&b.1));
    // Half of the table's models: from a log, only the models that drafted have responses, and
    // all of them can be kept.
    let half = o.models.len().div_ceil(2).min(MAX_DRAFT_MODELS);
    by_cost.into_iter().take(half).map(|(m, _)| m).collect()
}

/// Each draft model alone, then each pair.
fn plans_of(models: &[usize]) -> Vec<Vec<usize>> {
    let mut plans: Vec<Vec<usize>> = models.iter().map(|&m| vec![m]).collect();
    for (i, &a) in models.iter().enumerate() {
        for &b in &models[i + 1..] {
            plans.push(vec![a, b]);
        }
    }
    plans
}

fn design(rows: &[&PlanRow], keep: impl Fn(usize) -> bool) -> (Array2<f64>, Vec<bool>) {
    let picked: Vec<&&PlanRow> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(_, r)| r)
        .collect();
    let width = picked.first().map_or(0, |r| r.features.len());
    let x = Array2::from_shape_fn((picked.len(), width), |(i, j)| picked[i].features[j]);
    (x, picked.iter().map(|r| r.good).collect())
}

/// Out-of-fold accept probabilities at the L2 strength with the least out-of-fold log-loss.
fn fit_plan(rows: &[&PlanRow], folds: &[usize], k: usize) -> Result<PlanFit, TrainError> {
    let mut best: Option<PlanFit> = None;
    for alpha in ACCEPTOR_ALPHAS {
        let mut oof = vec![0.5; rows.len()];
        for f in 0..k {
            let (x, y) = design(rows, |i| folds[i] != f);
            if y.is_empty() {
                continue;
            }
            let head = quality_head_at(&x, &y, &vec![1.0; y.len()], Some(alpha))?;
            for (i, r) in rows.iter().enumerate().filter(|(i, _)| folds[*i] == f) {
                oof[i] = head_probability(&head, &r.features);
            }
        }
        let log_loss = rows
            .iter()
            .zip(&oof)
            .map(|(r, p)| {
                let p = p.clamp(1e-6, 1.0 - 1e-6);
                -(if r.good { p.ln() } else { (1.0 - p).ln() })
            })
            .sum::<f64>()
            / rows.len().max(1) as f64;
        // Strongest first, so a weaker strength must be strictly better to win.
        if best.as_ref().is_none_or(|b| log_loss < b.log_loss) {
            best = Some(PlanFit {
                alpha,
                log_loss,
                oof,
            });
        }
    }
    best.ok_or_else(|| TrainError::Fit("no acceptor strength was tried".into()))
}

/// The plans with their rows and out-of-fold fits, as every λ's choice sees them.
struct Plans<'a> {
    drafts: &'a [Vec<usize>],
    rows: &'a [Vec<&'a PlanRow>],
    fits: &'a [PlanFit],
}

impl Plans<'_> {
    /// Quality and cost of `choice` on row `i` at λ index `li`.
    fn realise(
        &self,
        prepared: &Prepared,
        view: &PromptView,
        i: usize,
        li: usize,
        choice: Choice,
    ) -> (f64, f64) {
        let escalation = view.escalation[li];
        let r = match choice {
            None => super::direct(prepared, view.prompt, escalation),
            Some((j, t)) => {
                let accepted = self.fits[j].oof[i] >= t;
                let (drafts, row) = (&self.drafts[j], self.rows[j][i]);
                super::cascade(prepared, view.prompt, drafts, row, accepted, escalation)
            }
        };
        (r.cost, r.quality)
    }
}

/// Simplicity rank: routing directly, one draft, two drafts.
fn complexity(plans: &[Vec<usize>], choice: Choice) -> usize {
    choice.map_or(0, |(j, _)| plans[j].len())
}

/// The setting at λ index `li` (value `lambda`): the best mean out-of-fold utility, or the
/// simplest candidate within one standard error of it.
fn choose(
    prepared: &Prepared,
    views: &[&PromptView],
    plans: &Plans<'_>,
    (folds, k): (&[usize], usize),
    (li, lambda): (usize, f64),
) -> Picked {
    let mut candidates: Vec<Choice> = vec![None];
    for j in 0..plans.drafts.len() {
        candidates.extend(THRESHOLDS.iter().map(|&t| Some((j, t))));
    }
    // Per candidate, mean utility per fold.
    let per_fold: Vec<Vec<f64>> = candidates
        .iter()
        .map(|&c| {
            let (mut sum, mut n) = (vec![0.0; k], vec![0usize; k]);
            for (i, view) in views.iter().enumerate() {
                let (cost, quality) = plans.realise(prepared, view, i, li, c);
                sum[folds[i]] += quality - lambda * cost;
                n[folds[i]] += 1;
            }
            sum.iter()
                .zip(&n)
                .filter(|(_, n)| **n > 0)
                .map(|(s, n)| s / *n as f64)
                .collect()
        })
        .collect();
    let mean = |u: &[f64]| u.iter().sum::<f64>() / u.len().max(1) as f64;
    let best = (0..candidates.len())
        .max_by(|&a, &b| mean(&per_fold[a]).total_cmp(&mean(&per_fold[b])))
        .unwrap_or(0);
    let within = |c: usize| {
        let d: Vec<f64> = per_fold[best]
            .iter()
            .zip(&per_fold[c])
            .map(|(b, x)| b - x)
            .collect();
        let m = mean(&d);
        let var = d.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (d.len().max(2) - 1) as f64;
        m <= (var / d.len().max(1) as f64).sqrt()
    };
    let pick = (0..candidates.len())
        .filter(|&c| within(c))
        .min_by(|&a, &b| {
            complexity(plans.drafts, candidates[a])
                .cmp(&complexity(plans.drafts, candidates[b]))
                .then(mean(&per_fold[b]).total_cmp(&mean(&per_fold[a])))
        })
        .unwrap_or(best);
    let (mut quality, mut cost) = (0.0, 0.0);
    for (i, view) in views.iter().enumerate() {
        let (c, q) = plans.realise(prepared, view, i, li, candidates[pick]);
        cost += c;
        quality += q;
    }
    let n = views.len().max(1) as f64;
    Picked {
        choice: candidates[pick],
        utility: mean(&per_fold[pick]),
        direct_utility: mean(&per_fold[0]),
        quality: quality / n,
        cost: cost / n,
    }
}

/// The settings the built-in modes use: QUALITY the best out-of-fold quality (the cheaper on a
/// tie), BALANCED and COST the cheapest within their quality drop of it, as routing's margins.
fn mode_settings(chosen: &[Picked]) -> ModeSettings {
    let top = (0..chosen.len())
        .max_by(|&a, &b| {
            chosen[a]
                .quality
                .total_cmp(&chosen[b].quality)
                .then(chosen[b].cost.total_cmp(&chosen[a].cost))
        })
        .unwrap_or(0);
    let cheapest_within = |drop: f64| {
        let floor = chosen.get(top).map_or(0.0, |p| p.quality) - drop;
        (0..chosen.len())
            .filter(|&i| chosen[i].quality >= floor)
            .min_by(|&a, &b| {
                chosen[a]
                    .cost
                    .total_cmp(&chosen[b].cost)
                    .then(chosen[b].quality.total_cmp(&chosen[a].quality))
            })
            .unwrap_or(top)
    };
    ModeSettings {
        quality: top,
        balanced: cheapest_within(BALANCED_QUALITY_DROP),
        cost: cheapest_within(COST_QUALITY_DROP),
    }
}

/// The acceptor from the per-λ choices: every plan some λ uses, refitted on all prompts.
fn assemble_acceptor(
    prepared: &Prepared,
    responses: &Responses,
    plans: &[Vec<usize>],
    rows: &[Vec<&PlanRow>],
    fits: &[PlanFit],
    chosen: &[Picked],
    lambdas: &[f64],
) -> Result<Option<AcceptorFit>, TrainError> {
    let o = &prepared.outcomes;
    let names = |d: &[usize]| -> Vec<String> { d.iter().map(|&m| o.models[m].clone()).collect() };
    let mut used: Vec<usize> = chosen
        .iter()
        .filter_map(|p| p.choice.map(|(j, _)| j))
        .collect();
    used.sort_unstable();
    used.dedup();
    let mut out_plans = Vec::with_capacity(used.len());
    for &j in &used {
        let (x, y) = design(&rows[j], |_| true);
        let head = quality_head_at(&x, &y, &vec![1.0; y.len()], Some(fits[j].alpha))?;
        out_plans.push(DraftPlan {
            drafts: names(&plans[j]),
            head,
        });
    }
    let settings: Vec<CascadeSetting> = chosen
        .iter()
        .zip(lambdas)
        .map(|(p, &cost_weight)| CascadeSetting {
            cost_weight,
            plan: p
                .choice
                .and_then(|(j, _)| used.iter().position(|&u| u == j)),
            threshold: p.choice.map_or(1.0, |(_, t)| t),
        })
        .collect();
    let modes = mode_settings(chosen);
    let report = serde_json::json!({
        "answers": responses.answers,
        "prompts": rows.first().map_or(0, Vec::len),
        "plans": plans.iter().zip(fits).map(|(d, f)| serde_json::json!({
            "drafts": names(d), "alpha": f.alpha, "oof_log_loss": f.log_loss,
        })).collect::<Vec<_>>(),
        "settings": chosen.iter().zip(lambdas).map(|(p, l)| serde_json::json!({
            "lambda": l,
            "drafts": p.choice.map(|(j, _)| names(&plans[j])),
            "threshold": p.choice.map(|(_, t)| t),
            "oof_utility": p.utility,
            "direct_oof_utility": p.direct_utility,
            "oof_quality": p.quality,
            "oof_cost_usd": p.cost,
        })).collect::<Vec<_>>(),
        "modes": {
            "quality": lambdas.get(modes.quality),
            "balanced": lambdas.get(modes.balanced),
            "cost": lambdas.get(modes.cost),
        },
        "rule": "per λ the best mean out-of-fold quality − λ·cost; the simplest within one \
                 standard error (direct < one draft < two)",
    });
    tracing::info!(
        plans = out_plans.len(),
        cascading_settings = settings.iter().filter(|s| s.plan.is_some()).count(),
        settings = settings.len(),
        "acceptor fitted; plans and thresholds chosen by cross-validation"
    );
    Ok(Some(AcceptorFit {
        acceptor: Acceptor {
            plans: out_plans,
            settings,
            answers: responses.answers.clone(),
            modes: Some(modes),
        },
        report,
    }))
}
