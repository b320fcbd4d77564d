//! Offline/online parity: does a running gateway decide what `triage eval` says it decides?
//!
//! The gateway's answers (read by `triage eval --live`, which sends each evaluated prompt
//! once per built-in mode and asks for the routing trace) are set beside eval's own decisions
//! from [`Replay`]: the share of prompts where both chose the same model, each mode's quality
//! and cost both ways, and the first disagreements with their inputs side by side (the
//! input-token estimate each side priced with, and the top candidates with their predicted
//! quality and cost), so that a skew points at its cause.
//!
//! Both sides are measured on the table: a served decision's quality and cost are the table's
//! outcome for the model the gateway chose, so any difference between the rows comes from the
//! decisions alone. What the gateway metered (its upstream's reported usage at catalog prices)
//! is shown beside them.

use serde::Serialize;
use triage_core::Mode;
use triage_policy::{Decision, Rule};

use crate::eval::curve::Point;
use crate::prepare::Prepared;
use crate::simulate::{Replay, model_indices, realised_by_index};

/// The modes a parity check compares.
pub const MODES: [Mode; 3] = [Mode::Quality, Mode::Balanced, Mode::Cost];

/// Disagreements listed per mode.
const SHOWN_PER_MODE: usize = 5;

/// Candidates shown per side of a disagreement.
const SHOWN_CANDIDATES: usize = 4;

/// One candidate as a side of the check scored it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scored {
    /// Catalog name.
    pub model: String,
    /// Predicted probability of a good answer.
    pub quality: f64,
    /// Predicted cost of the request, USD.
    pub cost_usd: f64,
}

/// What the gateway decided for one prompt in one mode, from its routing trace.
#[derive(Clone, Debug, PartialEq)]
pub struct ServedDecision {
    /// The model the decision chose.
    pub chosen: String,
    /// The model whose answer came back (another one after a failover).
    pub answered_by: Option<String>,
    /// The input-token estimate the decision priced with.
    pub input_tokens: Option<u32>,
    /// The policy that decided.
    pub policy_version: String,
    /// The eligible candidates, best first.
    pub candidates: Vec<Scored>,
    /// What the gateway metered for the request (USD).
    pub metered_cost_usd: Option<f64>,
    /// Times the gateway shed the request under load (429) before it was decided.
    pub shed: u32,
    /// The gateway explored (`exploration.rate`): a deliberate other choice, not compared.
    pub explored: bool,
}

/// One mode's comparison.
#[derive(Clone, Debug, Serialize)]
pub struct ModeParity {
    /// `quality`, `balanced` or `cost`.
    pub mode: String,
    /// Prompts compared.
    pub prompts: usize,
    /// Prompts where the gateway chose eval's model.
    pub same: usize,
    /// Prompts where the gateway explored instead (`exploration.rate` > 0): deliberate, so
    /// neither same nor different.
    pub explored: usize,
    /// Prompts the gateway gave no decision for (an error, shown in the disagreements).
    pub failed: usize,
    /// Answers that came from another model than the chosen one (failovers).
    pub failovers: usize,
    /// Requests the gateway shed under load (429) at least once before deciding them: load
    /// shedding is no decision, so they were sent again.
    pub shed: usize,
    /// Eval's mean quality and cost.
    pub eval: Point,
    /// The served decisions' mean quality and cost, on the table.
    pub served: Point,
    /// Mean metered cost of the served requests (USD), where the gateway reported one.
    pub metered_cost_usd: Option<f64>,
    /// The largest difference between the two sides' predicted quality of one model on one
    /// prompt (over the candidates the trace shows): float noise where the inputs are the same.
    pub max_quality_gap: f64,
    /// The largest relative difference between their predicted costs.
    pub max_cost_gap: f64,
}

/// One prompt the two sides decided differently, with what each decided from.
#[derive(Clone, Debug, Serialize)]
pub struct Disagreement {
    /// The mode.
    pub mode: String,
    /// `prompt_id`.
    pub prompt_id: String,
    /// The prompt's first characters.
    pub prompt_head: String,
    /// Eval's choice.
    pub eval_model: Option<String>,
    /// The gateway's choice, or `None` with `error`.
    pub served_model: Option<String>,
    /// Why the gateway gave no decision.
    pub error: Option<String>,
    /// Eval's input-token estimate.
    pub eval_input_tokens: Option<u32>,
    /// The gateway's.
    pub served_input_tokens: Option<u32>,
    /// Eval's top candidates.
    pub eval_candidates: Vec<Scored>,
    /// The gateway's top candidates.
    pub served_candidates: Vec<Scored>,
}

/// The whole check.
#[derive(Clone, Debug, Serialize)]
pub struct ParityReport {
    /// The policy both sides should have decided with.
    pub policy_version: String,
    /// Per mode, in [`MODES`] order.
    pub modes: Vec<ModeParity>,
    /// The first disagreements of each mode.
    pub disagreements: Vec<Disagreement>,
    /// All disagreements, listed or not.
    pub disagreeing: usize,
}

impl ParityReport {
    /// Every decision agreed.
    pub fn agrees(&self) -> bool {
        self.disagreeing == 0
    }
}

/// The prompts of `split` that eval scores (those with an outcome for every model), in the
/// order [`compare`] expects the gateway's answers.
pub fn prompts(prepared: &Prepared, split: crate::table::Split) -> Vec<usize> {
    let o = &prepared.outcomes;
    crate::eval::complete_prompts(o, o.indices(split))
}

/// Compares `served[m][k]` (mode `MODES[m]`, the `k`-th prompt of `replay`) with eval's
/// decisions.
pub fn compare(
    prepared: &Prepared,
    replay: &Replay<'_>,
    policy_version: &str,
    served: &[Vec<Result<ServedDecision, String>>],
) -> ParityReport {
    let mut modes = Vec::new();
    let mut disagreements = Vec::new();
    let mut disagreeing = 0;
    for (mode, answers) in MODES.iter().zip(served) {
        let (parity, listed, differ) = compare_mode(prepared, replay, *mode, answers);
        modes.push(parity);
        disagreements.extend(listed);
        disagreeing += differ;
    }
    ParityReport {
        policy_version: policy_version.to_owned(),
        modes,
        disagreements,
        disagreeing,
    }
}

/// One mode: its comparison, its first disagreements, and how many decisions differ.
fn compare_mode(
    prepared: &Prepared,
    replay: &Replay<'_>,
    mode: Mode,
    answers: &[Result<ServedDecision, String>],
) -> (ModeParity, Vec<Disagreement>, usize) {
    let o = &prepared.outcomes;
    let prompts = replay.prompts();
    let decisions: Vec<Option<Decision>> = (0..prompts.len())
        .map(|k| replay.decision(k, Rule::Mode(mode)))
        .collect();
    let eval_choice: Vec<Option<String>> = decisions
        .iter()
        .map(|d| d.as_ref().map(|d| d.chosen().model.clone()))
        .collect();
    let served_choice: Vec<Option<String>> = answers
        .iter()
        .map(|a| a.as_ref().ok().map(|s| s.chosen.clone()))
        .collect();
    let (mut same, mut explored, mut listed) = (0, 0, Vec::new());
    for (k, answer) in answers.iter().enumerate() {
        if answer.as_ref().is_ok_and(|s| s.explored) {
            explored += 1;
        } else if served_choice[k].is_some() && served_choice[k] == eval_choice[k] {
            same += 1;
        } else if listed.len() < SHOWN_PER_MODE {
            let side = EvalSide {
                decision: decisions[k].as_ref(),
                input_tokens: replay.input_tokens(k),
            };
            listed.push(disagreement(prepared, prompts[k], mode, side, answer));
        }
    }
    let differ = answers.len() - same - explored;
    let (max_quality_gap, max_cost_gap) = gaps(&decisions, answers);
    let served_ok: Vec<&ServedDecision> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
    let metered: Vec<f64> = served_ok
        .iter()
        .filter_map(|s| s.metered_cost_usd)
        .collect();
    let parity = ModeParity {
        mode: mode.to_string(),
        prompts: prompts.len(),
        same,
        explored,
        failed: answers.iter().filter(|a| a.is_err()).count(),
        failovers: served_ok
            .iter()
            .filter(|s| s.answered_by.as_ref().is_some_and(|a| *a != s.chosen))
            .count(),
        shed: served_ok.iter().filter(|s| s.shed > 0).count(),
        eval: realised_by_index(o, prompts, &model_indices(o, &eval_choice)),
        served: realised_by_index(o, prompts, &model_indices(o, &served_choice)),
        metered_cost_usd: (!metered.is_empty())
            .then(|| metered.iter().sum::<f64>() / metered.len() as f64),
        max_quality_gap,
        max_cost_gap,
    };
    (parity, listed, differ)
}

/// What eval decided a prompt from.
struct EvalSide<'a> {
    decision: Option<&'a Decision>,
    input_tokens: Option<u32>,
}

/// Prompt `p`'s disagreement in `mode`, both sides' inputs beside each other.
fn disagreement(
    prepared: &Prepared,
    p: usize,
    mode: Mode,
    eval: EvalSide<'_>,
    answer: &Result<ServedDecision, String>,
) -> Disagreement {
    let prompt = &prepared.outcomes.prompts[p];
    let served = answer.as_ref().ok();
    Disagreement {
        mode: mode.to_string(),
        prompt_id: prompt.id.clone(),
        prompt_head: prompt.text.chars().take(80).collect(),
        eval_model: eval.decision.map(|d| d.chosen().model.clone()),
        served_model: served.map(|s| s.chosen.clone()),
        error: answer.as_ref().err().cloned(),
        eval_input_tokens: eval.input_tokens,
        served_input_tokens: served.and_then(|s| s.input_tokens),
        eval_candidates: eval.decision.map(top).unwrap_or_default(),
        served_candidates: served
            .map(|s| {
                s.candidates
                    .iter()
                    .take(SHOWN_CANDIDATES)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The largest absolute quality and relative cost differences between eval's candidates and
/// the served ones, model by model.
fn gaps(decisions: &[Option<Decision>], answers: &[Result<ServedDecision, String>]) -> (f64, f64) {
    let (mut quality, mut cost) = (0.0f64, 0.0f64);
    for (decision, answer) in decisions.iter().zip(answers) {
        let (Some(decision), Ok(served)) = (decision, answer) else {
            continue;
        };
        for s in &served.candidates {
            if let Some(c) = decision.candidates.iter().find(|c| c.model == s.model) {
                quality = quality.max((c.quality - s.quality).abs());
                let scale = c.cost_usd.abs().max(s.cost_usd.abs()).max(1e-12);
                cost = cost.max((c.cost_usd - s.cost_usd).abs() / scale);
            }
        }
    }
    (quality, cost)
}

fn top(decision: &Decision) -> Vec<Scored> {
    decision
        .candidates
        .iter()
        .filter(|c| c.exclusion.is_none())
        .take(SHOWN_CANDIDATES)
        .map(|c| Scored {
            model: c.model.clone(),
            quality: c.quality,
            cost_usd: c.cost_usd,
        })
        .collect()
}

/// The report as text: one row per mode, then the disagreements side by side.
pub fn render_parity(report: &ParityReport) -> String {
    let mut out = format!(
        "\nparity with the live gateway (policy {}; quality and cost of both sides' choices on \
         the table):\n{:<9} {:>8} {:>13} {:>17} {:>17} {:>14}\n",
        report.policy_version, "mode", "same", "share", "eval q / $", "served q / $", "metered $"
    );
    for m in &report.modes {
        let share = m.same as f64 / m.prompts.max(1) as f64;
        out.push_str(&format!(
            "{:<9} {:>4}/{:<4} {:>12.2}% {:>7.4} {:>9.6} {:>7.4} {:>9.6} {:>14}\n",
            m.mode,
            m.same,
            m.prompts,
            100.0 * share,
            m.eval.quality,
            m.eval.cost,
            m.served.quality,
            m.served.cost,
            m.metered_cost_usd
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.6}")),
        ));
        out.push_str(&format!(
            "          predictions differ by at most {:.1e} in quality and {:.1e} (relative) in cost\n",
            m.max_quality_gap, m.max_cost_gap
        ));
        if m.failed > 0 || m.failovers > 0 || m.shed > 0 || m.explored > 0 {
            out.push_str(&format!(
                "          ({} without a decision, {} explored (not compared), {} answered after a \
                 failover, {} shed under load and sent again)\n",
                m.failed, m.explored, m.failovers, m.shed
            ));
        }
    }
    if report.agrees() {
        out.push_str("every decision agrees\n");
        return out;
    }
    out.push_str(&format!(
        "{} decisions differ; the first of each mode:\n",
        report.disagreeing
    ));
    for d in &report.disagreements {
        out.push_str(&format!(
            "- [{}] {} {:?}\n    eval:   {} (input tokens {})  {}\n    served: {} (input tokens {})  {}\n",
            d.mode,
            d.prompt_id,
            d.prompt_head,
            d.eval_model.as_deref().unwrap_or("-"),
            d.eval_input_tokens.map_or("-".to_owned(), |t| t.to_string()),
            candidates(&d.eval_candidates),
            d.served_model
                .as_deref()
                .or(d.error.as_deref())
                .unwrap_or("-"),
            d.served_input_tokens
                .map_or("-".to_owned(), |t| t.to_string()),
            candidates(&d.served_candidates),
        ));
    }
    out
}

fn candidates(list: &[Scored]) -> String {
    list.iter()
        .map(|c| format!("{} q={:.4} ${:.6}", c.model, c.quality, c.cost_usd))
        .collect::<Vec<_>>()
        .join(", ")
}
