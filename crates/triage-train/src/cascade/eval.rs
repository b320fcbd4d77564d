//! `triage eval --cascade`: cascades beside prompt-only routing on the same prompts.
//!
//! Four routers, each swept over the same λ grid, escalating (or routing) to the evaluated
//! policy's choice at that λ:
//! - the learned cascade: the policy's acceptor, its plan and threshold at λ;
//! - prompt-only routing: the policy alone;
//! - "two cheapest-per-quality drafts agree, else escalate" (ranked on the training prompts);
//! - "one draft (the cheapest per quality), accept if an answer is found".
//!
//! Cost counts every call; each router's curve gets the same metrics as `eval`'s rows, and the
//! paired bootstrap compares the learned cascade with each other row. Latency has no column in
//! the tables, so the critical path is reported as sequential calls and the output tokens along
//! it (drafts run in parallel: the longest draft, then the escalation).

use serde::Serialize;
use triage_core::Catalog;
use triage_policy::acceptor::head_probability;
use triage_policy::{Policy, Rule};

use super::{PromptView, Realised, cascade, cheapest_per_quality, direct, plan_row, views};
use crate::TrainError;
use crate::eval::baselines::{by_quality_then_cheapness, cost_range, lambda_grid, single_models};
use crate::eval::bootstrap::{Bootstrap, RouterSettings, SEED, Setting, paired_bootstrap};
use crate::eval::curve::Point;
use crate::eval::{RouterResult, complete_prompts};
use crate::prepare::{Prepared, training_prompts};
use crate::responses::Responses;
use crate::table::Split;

/// One router's per-λ outcomes on every evaluated prompt.
struct Swept {
    name: String,
    /// `[λ][prompt]`.
    outcomes: Vec<Vec<Realised>>,
}

/// Critical-path figures of one router at one λ.
#[derive(Clone, Debug, Serialize)]
pub struct PathFigures {
    /// λ.
    pub lambda: f64,
    /// Mean cost and quality.
    pub point: Point,
    /// Mean models called per prompt.
    pub calls: f64,
    /// Mean calls one after another.
    pub sequential_calls: f64,
    /// Mean output tokens along the critical path.
    pub critical_tokens: f64,
    /// Mean latency along the critical path, ms, modelled from the catalog's latency figures
    /// (first token + tokens / speed) where the catalog has the model.
    pub critical_ms: f64,
    /// Share of prompts answered by a draft (0 for routing).
    pub accepted: f64,
}

/// The cascade section of the report.
#[derive(Clone, Debug, Serialize)]
pub struct CascadeReport {
    /// Prompts scored.
    pub prompts: usize,
    /// Where final answers came from: `generic` or a column.
    pub answers: String,
    /// Rows: learned cascade first.
    pub routers: Vec<RouterResult>,
    /// Per router, per λ: critical path and acceptance.
    pub paths: Vec<(String, Vec<PathFigures>)>,
    /// The learned cascade against every other row.
    pub bootstrap: Option<Bootstrap>,
    /// The learned cascade's outcome per λ, for `--export-choices`.
    #[serde(skip)]
    pub choices: Vec<CascadeChoices>,
}

/// The learned cascade on every evaluated prompt at one knob setting.
#[derive(Clone, Debug)]
pub struct CascadeChoices {
    /// `lambda=…`.
    pub knob: String,
    /// Prompt ids, in the evaluated order.
    pub prompt_ids: Vec<String>,
    /// The model whose answer is returned, per prompt.
    pub answered_by: Vec<Option<String>>,
    /// Every model called, in order, joined by `;`, per prompt.
    pub called: Vec<String>,
}

/// Scores the cascades on `split` of the table.
pub fn evaluate_cascade(
    prepared: &Prepared,
    policy: &Policy,
    responses: &Responses,
    catalog: &Catalog,
    split: Split,
    resamples: usize,
) -> Result<CascadeReport, TrainError> {
    let o = &prepared.outcomes;
    let acceptor = policy.file().acceptor.as_ref().ok_or_else(|| {
        TrainError::Usage(format!(
            "--cascade: policy {} has no acceptor; train it with --responses FILE",
            policy.version()
        ))
    })?;
    let policy_models: Vec<usize> = policy
        .model_names()
        .filter_map(|m| o.model_index(m))
        .collect();
    let prompts = scored_prompts(prepared, responses, &policy_models, split)?;
    let (first, second) = fixed_rule_models(prepared, &policy_models, split)?;
    let lambdas = lambda_grid();
    let views = views(prepared, policy, prompts.clone(), &lambdas)?;
    let sweep = |name: &str, run: &dyn Fn(&PromptView, usize) -> Realised| Swept {
        name: name.into(),
        outcomes: (0..lambdas.len())
            .map(|li| {
                views
                    .iter()
                    .map(|v| with_latency(prepared, catalog, v.prompt, run(v, li)))
                    .collect()
            })
            .collect(),
    };
    let learned = sweep("cascade (learned acceptor)", &|v, li| {
        let rule = Rule::CostWeight(lambdas[li]);
        learned_cascade(prepared, responses, acceptor, v, li, rule)
    });
    let routing = sweep("routing alone (λ sweep)", &|v, li| {
        direct(prepared, v.prompt, v.escalation[li])
    });
    // The fixed rules accept exactly when the drafts agree (one draft: when it has an answer).
    let fixed = |name: String, drafts: Vec<usize>| {
        sweep(
            &name,
            &|v, li| match plan_row(prepared, responses, v, &drafts) {
                Some(row) => cascade(
                    prepared,
                    v.prompt,
                    &drafts,
                    &row,
                    row.agree,
                    v.escalation[li],
                ),
                None => direct(prepared, v.prompt, v.escalation[li]),
            },
        )
    };
    let (a, b) = (&o.models[first], &o.models[second]);
    let pair = fixed(
        format!("fixed: {a} and {b} agree, else escalate"),
        vec![first, second],
    );
    let single = fixed(
        format!("fixed: {a} alone, accept if an answer is found"),
        vec![first],
    );
    let rows = [learned, routing, pair, single];
    let answers = &responses.answers;
    Ok(report(
        prepared, &prompts, &rows, &lambdas, resamples, answers,
    ))
}

/// The prompts of `split` with an outcome and a response from every policy model, so that every
/// row is scored on the same prompts.
fn scored_prompts(
    prepared: &Prepared,
    responses: &Responses,
    policy_models: &[usize],
    split: Split,
) -> Result<Vec<usize>, TrainError> {
    let o = &prepared.outcomes;
    let prompts: Vec<usize> = complete_prompts(o, o.indices(split))
        .into_iter()
        .filter(|&p| {
            policy_models
                .iter()
                .all(|&m| responses.cells[p][m].is_some())
        })
        .collect();
    if prompts.is_empty() {
        return Err(TrainError::Data(format!(
            "no {} prompt has a response from every model of the policy",
            split.as_str()
        )));
    }
    Ok(prompts)
}

/// The fixed rules' drafts: the two cheapest per unit of quality on the training prompts.
fn fixed_rule_models(
    prepared: &Prepared,
    policy_models: &[usize],
    split: Split,
) -> Result<(usize, usize), TrainError> {
    let o = &prepared.outcomes;
    let training: Vec<usize> = training_prompts(o)
        .into_iter()
        .filter(|&p| o.prompts[p].split != split)
        .collect();
    let ranked: Vec<usize> = cheapest_per_quality(prepared, &training)
        .into_iter()
        .filter(|m| policy_models.contains(m))
        .collect();
    match ranked[..] {
        [first, second, ..] => Ok((first, second)),
        _ => Err(TrainError::Data(
            "the fixed rules need two models with outcomes on every training prompt".into(),
        )),
    }
}

/// The policy's own cascade on one prompt under `rule`: its plan's drafts, its acceptor, its
/// threshold; routing directly where the plan cannot run.
fn learned_cascade(
    prepared: &Prepared,
    responses: &Responses,
    acceptor: &triage_policy::Acceptor,
    v: &PromptView,
    li: usize,
    rule: Rule,
) -> Realised {
    let o = &prepared.outcomes;
    let Some((plan, threshold)) = acceptor.plan_for(rule) else {
        return direct(prepared, v.prompt, v.escalation[li]);
    };
    let drafts: Option<Vec<usize>> = plan.drafts.iter().map(|n| o.model_index(n)).collect();
    let row = drafts
        .as_ref()
        .and_then(|d| plan_row(prepared, responses, v, d));
    match (drafts, row) {
        (Some(d), Some(row)) => {
            let p = head_probability(&plan.head, &row.features);
            cascade(
                prepared,
                v.prompt,
                &d,
                &row,
                p >= threshold,
                v.escalation[li],
            )
        }
        _ => direct(prepared, v.prompt, v.escalation[li]),
    }
}

/// `r` with its critical-path latency modelled from `catalog`: the slowest draft (drafts run in
/// parallel), then the escalation.
fn with_latency(prepared: &Prepared, catalog: &Catalog, p: usize, mut r: Realised) -> Realised {
    let o = &prepared.outcomes;
    let ms = |m: usize| -> f64 {
        let tokens = o.cells[p][m].and_then(|c| c.output_tokens).unwrap_or(0.0);
        catalog
            .get(&o.models[m])
            .map_or(0.0, |spec| spec.latency_ms(tokens))
    };
    let drafts = r.called.len() - usize::from(r.sequential_calls == 2);
    let first = r.called[..drafts]
        .iter()
        .map(|&m| ms(m))
        .fold(0.0, f64::max);
    let then = r.called[drafts..].iter().map(|&m| ms(m)).sum::<f64>();
    r.critical_ms = first + then;
    r
}

fn setting_of(outcomes: &[Realised]) -> Setting {
    Setting::from_values(
        outcomes.iter().map(|r| r.cost).collect(),
        outcomes.iter().map(|r| r.quality).collect(),
    )
}

fn figures(lambda: f64, outcomes: &[Realised]) -> PathFigures {
    let n = outcomes.len().max(1) as f64;
    let mean = |f: &dyn Fn(&Realised) -> f64| outcomes.iter().map(f).sum::<f64>() / n;
    PathFigures {
        lambda,
        point: Point {
            cost: mean(&|r| r.cost),
            quality: mean(&|r| r.quality),
        },
        calls: mean(&|r| r.called.len() as f64),
        sequential_calls: mean(&|r| r.sequential_calls as f64),
        critical_tokens: mean(&|r| r.critical_tokens),
        critical_ms: mean(&|r| r.critical_ms),
        accepted: mean(&|r| f64::from(u8::from(r.accepted))),
    }
}

fn report(
    prepared: &Prepared,
    prompts: &[usize],
    rows: &[Swept],
    lambdas: &[f64],
    resamples: usize,
    answers: &str,
) -> CascadeReport {
    let o = &prepared.outcomes;
    let singles = single_models(o, prompts);
    let (lo, hi) = cost_range(&singles);
    let best = singles
        .iter()
        .map(|(_, p)| *p)
        .max_by(by_quality_then_cheapness)
        .unwrap_or(Point {
            cost: 0.0,
            quality: 0.0,
        });
    let single_settings: Vec<Setting> = singles
        .iter()
        .filter_map(|(m, _)| o.model_index(m))
        .map(|m| Setting::single(o, prompts, m))
        .collect();
    let mut routers = Vec::new();
    let mut rivals: Vec<RouterSettings> = Vec::new();
    let mut paths = Vec::new();
    for row in rows {
        let per_lambda: Vec<PathFigures> = row
            .outcomes
            .iter()
            .zip(lambdas)
            .map(|(r, &l)| figures(l, r))
            .collect();
        let points = per_lambda.iter().map(|f| f.point).collect();
        routers.push(RouterResult::new(&row.name, points, lo, hi, best));
        rivals.push((
            row.name.clone(),
            row.outcomes.iter().map(|r| setting_of(r)).collect(),
        ));
        paths.push((row.name.clone(), per_lambda));
    }
    rivals.push((
        "zero router (single-model hull)".into(),
        single_settings.clone(),
    ));
    let bootstrap = paired_bootstrap(&single_settings, &rivals, prompts.len(), resamples, SEED);
    let ids: Vec<String> = prompts.iter().map(|&p| o.prompts[p].id.clone()).collect();
    let name = |m: usize| o.models[m].clone();
    let choices = rows[0]
        .outcomes
        .iter()
        .zip(lambdas)
        .map(|(r, &l)| CascadeChoices {
            knob: Rule::CostWeight(l).label(),
            prompt_ids: ids.clone(),
            answered_by: r.iter().map(|x| x.answered_by.map(name)).collect(),
            called: r.iter().map(|x| joined(&x.called, &name)).collect(),
        })
        .collect();
    CascadeReport {
        prompts: prompts.len(),
        answers: answers.into(),
        routers,
        paths,
        bootstrap,
        choices,
    }
}

fn joined(models: &[usize], name: &dyn Fn(usize) -> String) -> String {
    models
        .iter()
        .map(|&m| name(m))
        .collect::<Vec<_>>()
        .join(";")
}

/// Writes the learned cascade's per-prompt outcome, one row per (prompt, knob setting):
/// `prompt_id`, `knob_setting`, `answered_by` (whose answer is returned) and `called` (every
/// model called, in order, joined by `;`).
pub fn export_cascade_choices(r: &CascadeReport, path: &std::path::Path) -> Result<(), TrainError> {
    use polars::prelude::Column;
    let (mut ids, mut knobs, mut answered, mut called) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for c in &r.choices {
        ids.extend(c.prompt_ids.iter().cloned());
        knobs.extend(std::iter::repeat_n(c.knob.clone(), c.prompt_ids.len()));
        answered.extend(c.answered_by.iter().cloned());
        called.extend(c.called.iter().cloned());
    }
    crate::eval::report::write_columns(
        path,
        vec![
            Column::new("prompt_id".into(), ids),
            Column::new("knob_setting".into(), knobs),
            Column::new("answered_by".into(), answered),
            Column::new("called".into(), called),
        ],
    )
}

/// The cascade section as a table.
pub fn render_cascade(r: &CascadeReport) -> String {
    use std::fmt::Write;
    let pct = |v: Option<f64>| v.map_or("not reached".to_owned(), |v| format!("{v:.1}%"));
    let mut out = format!(
        "\nverify, then escalate ({} prompts; final answers: {}; cost counts every call):\n\
         {:<70} {:>7} {:>12} {:>12} {:>12}\n",
        r.prompts, r.answers, "router", "AIQ", "cost@parity", "cost@95%", "cost@90%"
    );
    for row in &r.routers {
        let _ = writeln!(
            out,
            "{:<70} {:>7.4} {:>12} {:>12} {:>12}",
            row.name,
            row.aiq,
            pct(row.cost_at_parity_pct),
            pct(row.cost_at_95_pct),
            pct(row.cost_at_90_pct)
        );
    }
    if let Some(b) = &r.bootstrap {
        let _ = writeln!(
            out,
            "learned cascade AIQ 95% interval {:.4} to {:.4} ({} paired resamples)",
            b.triage_aiq_95[0], b.triage_aiq_95[1], b.resamples
        );
        for c in &b.comparisons {
            let _ = writeln!(
                out,
                "  minus {:<62} {:+.4} (95% {:+.4} to {:+.4}; ahead in {:.0}%)",
                c.against,
                c.aiq_difference,
                c.difference_95[0],
                c.difference_95[1],
                100.0 * c.share_triage_ahead
            );
        }
    }
    let _ = writeln!(
        out,
        "critical path, learned cascade vs routing alone (latency modelled from the catalog):"
    );
    if let [(_, learned), (_, routing), ..] = r.paths.as_slice() {
        for (c, d) in learned.iter().zip(routing).step_by(12) {
            let _ = writeln!(
                out,
                "  λ={:<10.3} accepted {:>5.1}%  calls {:.2} vs {:.2}  sequential {:.2} vs {:.2}  \
                 tokens {:>4.0} vs {:>4.0}  latency {:>5.0} vs {:>5.0} ms",
                c.lambda,
                100.0 * c.accepted,
                c.calls,
                d.calls,
                c.sequential_calls,
                d.sequential_calls,
                c.critical_tokens,
                d.critical_tokens,
                c.critical_ms,
                d.critical_ms
            );
        }
    }
    out
}
