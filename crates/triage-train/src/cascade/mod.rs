//! Verify, then escalate, offline: what a cascade of cheap drafts and an acceptor would have
//! cost and scored on an outcome table with responses.
//!
//! A cascade at cost weight λ runs a plan's drafts (one or two cheap models, in parallel), asks
//! the acceptor whether the returned draft is good enough, and otherwise escalates to the model
//! the routing policy picks at λ (no extra call when that model was one of the drafts). Every
//! call is paid. [`fit`] learns the acceptor and chooses, per λ, the plan and threshold by
//! cross-validation over the training prompts; [`eval`] scores cascades beside prompt-only
//! routing and two fixed rules on the evaluated split.
//!
//! [`PromptView`] holds what the router knows about a prompt before any draft: each model's
//! predicted quality and the escalation model per λ, from a policy that did not see the prompt
//! (a fold's policy in training, the evaluated policy in `eval`).

pub mod eval;
pub mod fit;

use triage_core::outcome::is_good_answer;
use triage_policy::acceptor::{evidence_features, returned_draft};
use triage_policy::{Policy, Rule};

use crate::TrainError;
use crate::prepare::Prepared;
use crate::responses::Responses;
use crate::simulate::model_indices;

/// What the router knows about one prompt before drafting.
#[derive(Clone, Debug)]
pub struct PromptView {
    /// Index into the table's prompts.
    pub prompt: usize,
    /// Predicted probability of a good answer per table model (NaN where the policy has none).
    pub predicted: Vec<f64>,
    /// The routing policy's choice at each λ of the grid (a table model index).
    pub escalation: Vec<Option<usize>>,
}

/// `policy`'s view of `prompts` at every λ of `lambdas`.
pub fn views(
    prepared: &Prepared,
    policy: &Policy,
    prompts: Vec<usize>,
    lambdas: &[f64],
) -> Result<Vec<PromptView>, TrainError> {
    let o = &prepared.outcomes;
    let replay = prepared.replay(policy, prompts)?;
    let by_lambda: Vec<Vec<Option<usize>>> = lambdas
        .iter()
        .map(|&l| model_indices(o, &replay.choices(Rule::CostWeight(l))))
        .collect();
    Ok(replay
        .prompts()
        .iter()
        .enumerate()
        .map(|(k, &p)| PromptView {
            prompt: p,
            predicted: o
                .models
                .iter()
                .map(|m| replay.predicted_quality(k, m).unwrap_or(f64::NAN))
                .collect(),
            escalation: by_lambda.iter().map(|c| c[k]).collect(),
        })
        .collect())
}

/// One plan's drafts on one prompt.
#[derive(Clone, Debug)]
pub struct PlanRow {
    /// The drafts' cost together.
    pub drafts_cost: f64,
    /// The model whose draft is returned when accepted.
    pub returned: usize,
    /// That draft's quality.
    pub returned_quality: f64,
    /// The acceptor's input.
    pub features: Vec<f64>,
    /// Whether the returned draft is a good answer: what the acceptor learns.
    pub good: bool,
    /// With two drafts, whether their answers agree; with one, whether it has an answer.
    pub agree: bool,
}

/// `drafts` (table model indices) on the prompt of `view`; `None` where a draft has no outcome
/// or no response.
pub fn plan_row(
    prepared: &Prepared,
    responses: &Responses,
    view: &PromptView,
    drafts: &[usize],
) -> Option<PlanRow> {
    let o = &prepared.outcomes;
    let p = view.prompt;
    let mut evidence = Vec::with_capacity(drafts.len());
    let mut drafts_cost = 0.0;
    for &m in drafts {
        let cell = o.cells[p][m]?;
        drafts_cost += cell.cost_usd;
        let q = view.predicted[m];
        evidence.push(responses.evidence(p, m, if q.is_nan() { 0.5 } else { q })?);
    }
    let r = returned_draft(&evidence);
    let returned = drafts[r];
    let returned_quality = o.cells[p][returned]?.quality;
    let agree = match evidence.as_slice() {
        [a, b] => a.answer.is_some() && a.answer == b.answer,
        [a] => a.answer.is_some(),
        _ => false,
    };
    Some(PlanRow {
        drafts_cost,
        returned,
        returned_quality,
        features: evidence_features(&evidence),
        good: is_good_answer(returned_quality),
        agree,
    })
}

/// What happened on one prompt: cost of every call, quality of the answer returned, the model
/// that answered and every model called in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Realised {
    /// USD, every call.
    pub cost: f64,
    /// Quality of the answer returned.
    pub quality: f64,
    /// The model whose answer is returned.
    pub answered_by: Option<usize>,
    /// Every model called, drafts first.
    pub called: Vec<usize>,
    /// Calls one after another (drafts run in parallel): 0, 1 or 2.
    pub sequential_calls: usize,
    /// Output tokens along that critical path (the longest draft, then the escalation).
    pub critical_tokens: f64,
    /// Whether a draft was accepted.
    pub accepted: bool,
    /// Latency along the critical path, ms, where `eval` models it (0 otherwise).
    pub critical_ms: f64,
}

/// Routing straight to `model`.
pub fn direct(prepared: &Prepared, p: usize, model: Option<usize>) -> Realised {
    let cell = model.and_then(|m| prepared.outcomes.cells[p][m]);
    Realised {
        cost: cell.map_or(0.0, |c| c.cost_usd),
        quality: cell.map_or(0.0, |c| c.quality),
        answered_by: model.filter(|_| cell.is_some()),
        called: model.into_iter().collect(),
        sequential_calls: usize::from(model.is_some()),
        critical_tokens: cell.and_then(|c| c.output_tokens).unwrap_or(0.0),
        accepted: false,
        critical_ms: 0.0,
    }
}

/// Running `drafts`, then returning the draft when `accepted`, else escalating to `escalation`
/// (whose answer is already in hand when it was one of the drafts).
pub fn cascade(
    prepared: &Prepared,
    p: usize,
    drafts: &[usize],
    row: &PlanRow,
    accepted: bool,
    escalation: Option<usize>,
) -> Realised {
    let o = &prepared.outcomes;
    let draft_tokens = drafts
        .iter()
        .filter_map(|&m| o.cells[p][m].and_then(|c| c.output_tokens))
        .fold(0.0, f64::max);
    let mut out = Realised {
        cost: row.drafts_cost,
        quality: row.returned_quality,
        answered_by: Some(row.returned),
        called: drafts.to_vec(),
        sequential_calls: 1,
        critical_tokens: draft_tokens,
        accepted,
        critical_ms: 0.0,
    };
    if accepted {
        return out;
    }
    match escalation {
        Some(e) if drafts.contains(&e) => {
            out.quality = o.cells[p][e].map_or(0.0, |c| c.quality);
            out.answered_by = Some(e);
        }
        _ => {
            let then = direct(prepared, p, escalation);
            out.cost += then.cost;
            out.quality = then.quality;
            out.answered_by = then.answered_by;
            out.called.extend(then.called);
            out.sequential_calls += then.sequential_calls;
            out.critical_tokens += then.critical_tokens;
        }
    }
    out
}

/// Models ranked by mean cost per unit of mean quality on `prompts` (cheapest per quality
/// first), over the models with an outcome on every one of them.
pub fn cheapest_per_quality(prepared: &Prepared, prompts: &[usize]) -> Vec<usize> {
    let o = &prepared.outcomes;
    let mut ranked: Vec<(usize, f64)> = (0..o.models.len())
        .filter_map(|m| {
            let cells: Vec<_> = prompts.iter().filter_map(|&p| o.cells[p][m]).collect();
            if cells.len() < prompts.len() || cells.is_empty() {
                return None;
            }
            let cost: f64 = cells.iter().map(|c| c.cost_usd).sum();
            let quality: f64 = cells.iter().map(|c| c.quality).sum();
            Some((m, cost / quality.max(1e-9)))
        })
        .collect();
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1));
    ranked.into_iter().map(|(m, _)| m).collect()
}
