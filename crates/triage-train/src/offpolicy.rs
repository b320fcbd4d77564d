//! Off-policy estimates from the decision log.
//!
//! Logged outcomes are biased by the policy that chose them: only the chosen model's outcome is
//! seen. To estimate how a *different* policy would have done, each logged decision is replayed
//! through the serving decision rule with the same eligible models (which carry every hard
//! constraint it had), and
//! - **IPS** (self-normalised inverse propensity): the outcomes of decisions where the evaluated
//!   policy agrees with the logged choice, each weighted by 1 / the logged propensity;
//! - **DR** (doubly robust, importance weights clipped at 20): a direct model's prediction for the evaluated policy's choice, plus
//!   the propensity-weighted error of the reward model on the logged choice. Unbiased if either
//!   the propensities or the reward model are right, and far less noisy than IPS when policies
//!   disagree often.
//!
//! A policy is summarised the way `triage eval` does it: DR (cost, quality) points over a λ
//! sweep, their convex hull, and the area under it (AIQ) over the cost range both policies span.
//! With exploration off every propensity is 1 and only agreeing decisions carry direct evidence;
//! the estimate then leans on the reward model. Exploration is what makes it trustworthy.

use std::collections::HashMap;

use ndarray16::Array2;
use serde::Serialize;
use triage_core::Catalog;
use triage_log::decode_features;
use triage_policy::{Policy, Prediction, apply_priors, decide};

use crate::eval::baselines::lambda_grid;
use crate::eval::curve::{Point, aiq, hull};
use crate::fit::{design, logit, sigmoid, standardizer};
use crate::logdata::LoggedData;
use crate::pooled::{ModelRows, pooled_heads};
use triage_policy::Rule;

/// Importance weights are clipped here: an exploratory choice made with probability 1% would
/// otherwise count a hundred times and swamp the estimate (bias traded for much lower variance).
const MAX_WEIGHT: f64 = 20.0;

/// Estimated mean quality and cost of one policy at one knob.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct OffPolicyValue {
    /// Self-normalised IPS mean quality (NaN when the policy never agrees with the log).
    pub quality_ips: f64,
    /// Self-normalised IPS mean cost, USD.
    pub cost_ips: f64,
    /// Doubly robust mean quality.
    pub quality_dr: f64,
    /// Doubly robust mean cost, USD.
    pub cost_dr: f64,
    /// Logged decisions used.
    pub decisions: usize,
    /// Of those, how many the evaluated policy decides the same way.
    pub agreeing: usize,
}

/// One policy on the logged traffic.
#[derive(Clone, Debug, Serialize)]
pub struct OffPolicyCurve {
    /// At each decision's own logged knob.
    pub at_logged_knob: OffPolicyValue,
    /// DR points over the λ sweep.
    pub points: Vec<Point>,
    /// Area under their hull over the shared cost range.
    pub aiq: f64,
}

/// A logged decision ready to replay.
struct Usable {
    features: Vec<f32>,
    knob: Rule,
    eligible: Vec<String>,
    input_tokens: u32,
    chosen: String,
    propensity: f64,
    quality: f64,
    cost: f64,
    /// Reward model's (quality, cost) per model.
    expected: HashMap<String, (f64, f64)>,
}

fn predictions<'a>(
    policy: &'a Policy,
    catalog: &'a Catalog,
    features: &[f32],
) -> Option<HashMap<&'a str, Prediction>> {
    let mut p: HashMap<&str, Prediction> = policy.predict(features).ok()?.into_iter().collect();
    apply_priors(catalog, &mut p);
    Some(p)
}

/// The DR direct model, fitted on other decisions than the ones evaluated, and neutral between
/// the policies compared (a policy's own predictions as the direct model would favour it):
/// - **quality**: the pooled fit of [`crate::pooled`] (prompt-difficulty weights shared by all
///   models, one intercept per model) over the logged outcomes, shifted per model to its mean
///   logged quality. A prompt-blind mean would credit the logging policy with what it actually
///   observed on easy and hard prompts while a candidate that chooses differently only gets
///   averages: every candidate would look worse than the policy that logged the data.
/// - **answer length**: each model's mean.
///
/// Means are weighted by inverse propensity, so they are not the serving policy's selection (a
/// strong model sent mostly the hard prompts would otherwise look weak). With too few outcomes
/// for a pooled fit, quality is the prompt-blind mean.
#[derive(Clone, Debug)]
pub struct RewardModel {
    by_model: HashMap<String, ModelMeans>,
    fallback: (f64, f64),
    pooled: Option<PooledQuality>,
}

#[derive(Clone, Copy, Debug)]
struct ModelMeans {
    quality: f64,
    tokens: f64,
}

#[derive(Clone, Debug)]
struct PooledQuality {
    standardize: triage_policy::Standardizer,
    /// Per model: the pooled head and the shift from its probabilities to mean quality.
    heads: HashMap<String, (triage_policy::LinearHead, f64)>,
}

/// Outcomes needed before the direct model uses a pooled fit.
const MIN_POOLED_OUTCOMES: usize = 100;
/// L2 strength of the direct model's pooled fit.
const DIRECT_MODEL_ALPHA: f64 = 300.0;

impl RewardModel {
    /// Fits the direct model on `logged`'s outcomes.
    pub fn fit(logged: &LoggedData) -> Self {
        let mut sums: HashMap<String, (f64, f64, f64)> = HashMap::new();
        let (mut q_all, mut t_all, mut n_all) = (0.0, 0.0, 0.0);
        for o in &logged.outcomes {
            let w = o.outcome.weight;
            let tokens = o.outcome.output_tokens.unwrap_or(0.0);
            let e = sums.entry(o.model.clone()).or_default();
            let q = o.outcome.quality;
            *e = (e.0 + w * q, e.1 + w * tokens, e.2 + w);
            (q_all, t_all, n_all) = (q_all + w * q, t_all + w * tokens, n_all + w);
        }
        let n_all = f64::max(n_all, 1.0);
        let by_model: HashMap<String, ModelMeans> = sums
            .into_iter()
            .map(|(m, (q, t, n))| {
                let means = ModelMeans {
                    quality: q / n,
                    tokens: t / n,
                };
                (m, means)
            })
            .collect();
        let pooled = PooledQuality::fit(logged, &by_model);
        Self {
            by_model,
            fallback: (q_all / n_all, t_all / n_all),
            pooled,
        }
    }

    /// A prompt's feature vector standardised for the pooled fit, once for all models (`None`
    /// without a pooled fit or for a vector of another width: then the means answer).
    fn prompt(&self, features: &[f32]) -> Option<Array2<f64>> {
        let pooled = self.pooled.as_ref()?;
        (features.len() == pooled.standardize.mean.len())
            .then(|| design(&[features], &pooled.standardize))
    }

    /// Expected (quality, answer tokens) of `model` on a [`prompt`](Self::prompt).
    fn expect(&self, model: &str, prompt: Option<&Array2<f64>>) -> (f64, f64) {
        let Some(means) = self.by_model.get(model) else {
            return self.fallback;
        };
        let quality = self
            .pooled
            .as_ref()
            .zip(prompt)
            .and_then(|(p, row)| p.quality(model, row))
            .unwrap_or(means.quality);
        (quality, means.tokens)
    }
}

impl PooledQuality {
    fn fit(logged: &LoggedData, means: &HashMap<String, ModelMeans>) -> Option<Self> {
        if logged.outcomes.len() < MIN_POOLED_OUTCOMES {
            return None;
        }
        // One width only: a log spanning an encoder change holds vectors of two widths, and
        // the newest are the ones the policies compared use.
        let decoded: Vec<Option<Vec<f32>>> = logged
            .decisions
            .iter()
            .map(|d| decode_features(&d.features).ok())
            .collect();
        let width = decoded.iter().rev().flatten().next()?.len();
        let features: Vec<Option<Vec<f32>>> = decoded
            .into_iter()
            .map(|f| f.filter(|f| f.len() == width))
            .collect();
        let rows: Vec<&[f32]> = features.iter().flatten().map(Vec::as_slice).collect();
        let standardize = standardizer(&rows);
        let mut models: Vec<&str> = means.keys().map(String::as_str).collect();
        models.sort_unstable();
        let mut per_model = Vec::new();
        for model in &models {
            let (mut x, mut y, mut w) = (Vec::new(), Vec::new(), Vec::new());
            for o in logged.outcomes.iter().filter(|o| o.model == *model) {
                if let Some(Some(f)) = features.get(o.decision) {
                    x.push(f.as_slice());
                    y.push(triage_core::outcome::is_good_answer(o.outcome.quality));
                    w.push(o.outcome.weight);
                }
            }
            per_model.push((design(&x, &standardize), y, w));
        }
        let rows: Vec<ModelRows<'_>> = per_model
            .iter()
            .map(|(x, y, w)| ModelRows {
                x,
                y,
                w,
                bandit: true,
            })
            .collect();
        let heads = pooled_heads(&rows, DIRECT_MODEL_ALPHA).ok()?;
        let heads = models
            .iter()
            .zip(heads)
            .zip(&per_model)
            .map(|((model, head), (x, _, w))| {
                // σ(head) estimates P(quality ≥ 0.5); shift it to the model's mean quality.
                let total: f64 = w.iter().sum();
                let mean_p = (0..x.nrows())
                    .map(|i| w[i] * sigmoid(logit(&head, x.row(i))))
                    .sum::<f64>()
                    / total.max(f64::MIN_POSITIVE);
                let shift = means.get(*model).map_or(0.0, |m| m.quality) - mean_p;
                ((*model).to_owned(), (head, shift))
            })
            .collect();
        Some(Self { standardize, heads })
    }

    fn quality(&self, model: &str, row: &Array2<f64>) -> Option<f64> {
        let (head, shift) = self.heads.get(model)?;
        Some((sigmoid(logit(head, row.row(0))) + shift).clamp(0.0, 1.0))
    }
}

fn usable(reward_model: &RewardModel, catalog: &Catalog, logged: &LoggedData) -> Vec<Usable> {
    let outcome: HashMap<(usize, &str), (f64, f64)> = logged
        .outcomes
        .iter()
        .map(|o| {
            let value = (o.outcome.quality, o.outcome.cost_usd);
            ((o.decision, o.model.as_str()), value)
        })
        .collect();
    let mut out = Vec::new();
    for (i, d) in logged.decisions.iter().enumerate() {
        let Some(&(quality, cost)) = outcome.get(&(i, d.chosen.as_str())) else {
            continue;
        };
        let Ok(features) = decode_features(&d.features) else {
            continue;
        };
        let prompt = reward_model.prompt(&features);
        let expected = catalog
            .models()
            .iter()
            .map(|spec| {
                let (q, tokens) = reward_model.expect(&spec.name, prompt.as_ref());
                let c = spec.cost_usd(f64::from(d.input_tokens), tokens);
                (spec.name.clone(), (q, c))
            })
            .collect::<HashMap<_, _>>();
        if !expected.contains_key(&d.chosen) {
            continue;
        }
        out.push(Usable {
            features,
            knob: Rule::from_logged(&d.knob, d.cost_weight),
            eligible: d
                .candidates
                .iter()
                .filter(|c| c.eligible)
                .map(|c| c.model.clone())
                .collect(),
            input_tokens: d.input_tokens,
            chosen: d.chosen.clone(),
            propensity: d.propensity.max(1e-6),
            quality,
            cost,
            expected,
        });
    }
    out
}

/// Per decision: the evaluated policy's pick and its DR (quality, cost) contribution, or `None`
/// where the decision cannot be replayed.
struct Replayed {
    agrees: bool,
    weight: f64,
    dr: (f64, f64),
}

fn replay(
    policy: &Policy,
    predicted: &[Option<HashMap<&str, Prediction>>],
    catalog: &Catalog,
    decisions: &[Usable],
    knob: Option<Rule>,
) -> Vec<Option<Replayed>> {
    decisions
        .iter()
        .zip(predicted)
        .map(|(u, preds)| {
            let preds = preds.as_ref()?;
            let prefs = knob.unwrap_or(u.knob).preferences(u.eligible.clone());
            let decision =
                decide(catalog, preds, policy.decision(), &prefs, u.input_tokens).ok()?;
            let pick = &decision.chosen().model;
            let (&(q_pick, c_pick), &(q_log, c_log)) =
                (u.expected.get(pick)?, u.expected.get(&u.chosen)?);
            let agrees = *pick == u.chosen;
            let weight = if agrees {
                (1.0 / u.propensity).min(MAX_WEIGHT)
            } else {
                0.0
            };
            // A quality estimate outside 0..1 is noise by definition.
            let dr = (
                (q_pick + weight * (u.quality - q_log)).clamp(0.0, 1.0),
                (c_pick + weight * (u.cost - c_log)).max(0.0),
            );
            Some(Replayed { agrees, weight, dr })
        })
        .collect()
}

/// IPS and DR means over `replayed`.
fn value(replayed: &[Option<Replayed>], decisions: &[Usable]) -> OffPolicyValue {
    let (mut w_sum, mut wq, mut wc, mut dr_q, mut dr_c) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut n, mut agreeing) = (0usize, 0usize);
    for (r, u) in replayed.iter().zip(decisions) {
        let Some(r) = r else { continue };
        n += 1;
        agreeing += usize::from(r.agrees);
        w_sum += r.weight;
        wq += r.weight * u.quality;
        wc += r.weight * u.cost;
        dr_q += r.dr.0;
        dr_c += r.dr.1;
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    OffPolicyValue {
        quality_ips: ratio(wq, w_sum),
        cost_ips: ratio(wc, w_sum),
        quality_dr: ratio(dr_q, n as f64),
        cost_dr: ratio(dr_c, n as f64),
        decisions: n,
        agreeing,
    }
}

/// DR points of one policy over the λ sweep, from the decisions picked by `sample` (indices,
/// repeats allowed).
fn points(sweep: &[Vec<Option<Replayed>>], sample: &[usize]) -> Vec<Point> {
    sweep
        .iter()
        .map(|replayed| {
            let (mut q, mut c, mut n) = (0.0, 0.0, 0.0);
            for &i in sample {
                if let Some(r) = &replayed[i] {
                    q += r.dr.0;
                    c += r.dr.1;
                    n += 1.0;
                }
            }
            Point {
                cost: c / f64::max(n, 1.0),
                quality: q / f64::max(n, 1.0),
            }
        })
        .collect()
}

/// Bootstrap resamples of the decisions used for the standard error of the AIQ difference.
const BOOTSTRAP: usize = 200;

/// Two policies compared on the same logged decisions.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// The serving policy.
    pub current: OffPolicyCurve,
    /// The retrained one.
    pub candidate: OffPolicyCurve,
    /// Bootstrap standard error of `candidate.aiq − current.aiq`.
    pub difference_se: f64,
}

/// Estimates `current` and `candidate` on the `logged` decisions, with `reward_model` as the DR
/// direct model for both. Returns `None` for fewer than `min_decisions` usable decisions.
pub fn compare(
    current: &Policy,
    candidate: &Policy,
    catalog: &Catalog,
    logged: &LoggedData,
    reward_model: &RewardModel,
    min_decisions: usize,
) -> Option<Comparison> {
    let decisions = usable(reward_model, catalog, logged);
    if decisions.len() < min_decisions {
        return None;
    }
    // A coarser λ grid than `triage eval`'s: every third value is plenty for a gate.
    let grid: Vec<f64> = lambda_grid().into_iter().step_by(3).collect();
    let sweep = |policy: &Policy| {
        let predicted: Vec<_> = decisions
            .iter()
            .map(|u| predictions(policy, catalog, &u.features))
            .collect();
        let at_logged_knob = value(
            &replay(policy, &predicted, catalog, &decisions, None),
            &decisions,
        );
        let by_lambda: Vec<Vec<Option<Replayed>>> = grid
            .iter()
            .map(|&l| {
                replay(
                    policy,
                    &predicted,
                    catalog,
                    &decisions,
                    Some(Rule::CostWeight(l)),
                )
            })
            .collect();
        (at_logged_knob, by_lambda)
    };
    let (old_value, old_sweep) = sweep(current);
    let (new_value, new_sweep) = sweep(candidate);
    let all: Vec<usize> = (0..decisions.len()).collect();
    let (old_points, new_points) = (points(&old_sweep, &all), points(&new_sweep, &all));
    let costs = old_points.iter().chain(&new_points).map(|p| p.cost);
    let lo = costs.clone().fold(f64::INFINITY, f64::min);
    let hi = costs.fold(f64::NEG_INFINITY, f64::max);
    let area = |pts: &[Point]| aiq(&hull(pts), lo, hi);

    let mut rng = fastrand::Rng::with_seed(0x7e1a6e);
    let differences: Vec<f64> = (0..BOOTSTRAP)
        .map(|_| {
            let sample: Vec<usize> = (0..decisions.len())
                .map(|_| rng.usize(..decisions.len()))
                .collect();
            area(&points(&new_sweep, &sample)) - area(&points(&old_sweep, &sample))
        })
        .collect();
    let mean = differences.iter().sum::<f64>() / BOOTSTRAP as f64;
    let variance =
        differences.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (BOOTSTRAP - 1) as f64;
    let curve = |at_logged_knob, points: Vec<Point>| OffPolicyCurve {
        at_logged_knob,
        aiq: area(&points),
        points,
    };
    Some(Comparison {
        current: curve(old_value, old_points),
        candidate: curve(new_value, new_points),
        difference_se: variance.sqrt(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logdata::{LogCounts, LoggedOutcome};
    use crate::table::Outcome;

    /// A cheap model the serving policy sends the easy prompts (all good, propensity 1) and, by
    /// exploration only, one hard prompt in ten (bad, propensity 0.1). Over all prompts it is good
    /// about half the time; its plain logged mean says 0.9.
    #[test]
    fn the_direct_model_undoes_the_serving_policys_selection() {
        let outcome = |quality: f64, weight: f64| LoggedOutcome {
            decision: 0,
            model: "small".into(),
            outcome: Outcome {
                quality,
                cost_usd: 0.0,
                output_tokens: Some(100.0),
                weight,
                logged: true,
            },
            source: Default::default(),
        };
        let mut outcomes: Vec<LoggedOutcome> = (0..9).map(|_| outcome(1.0, 1.0)).collect();
        outcomes.push(outcome(0.0, 10.0));
        let logged = LoggedData {
            verifications: Vec::new(),
            decisions: Vec::new(),
            counts: LogCounts {
                decisions: 0,
                feedback: outcomes.len(),
                outcomes: outcomes.len(),
                verifications: 0,
            },
            outcomes,
            sha256: String::new(),
        };
        let (quality, tokens) = RewardModel::fit(&logged).expect("small", None);
        assert!((quality - 9.0 / 19.0).abs() < 1e-12, "{quality}");
        assert!((tokens - 100.0).abs() < 1e-9);
    }

    /// A log spanning an encoder change holds feature vectors of two widths: the pooled fit
    /// uses the newest width and answers for it, and nothing panics.
    #[test]
    fn a_log_with_two_feature_widths_fits_on_the_newest() {
        let decision = |i: usize, width: usize| triage_log::DecisionRecord {
            request_id: format!("r{i}"),
            time_ms: 0,
            policy_version: "p".into(),
            features: triage_log::encode_features(
                &(0..width)
                    .map(|j| ((i * 7 + j) % 5) as f32)
                    .collect::<Vec<_>>(),
            ),
            input_tokens: 10,
            knob: "balanced".into(),
            cost_weight: None,
            candidates: Vec::new(),
            chosen: "m".into(),
            propensity: 1.0,
            explored: false,
            session_id: String::new(),
            prompt: None,
            api_key: None,
            draft_plan: None,
            familiarity: None,
            held_usd: None,
        };
        let decisions: Vec<_> = (0..300)
            .map(|i| decision(i, if i < 100 { 3 } else { 4 }))
            .collect();
        let outcomes: Vec<LoggedOutcome> = (0..300)
            .map(|i| LoggedOutcome {
                decision: i,
                model: if i % 2 == 0 { "a" } else { "b" }.into(),
                outcome: Outcome {
                    quality: if i % 3 == 0 { 0.0 } else { 1.0 },
                    cost_usd: 0.0,
                    output_tokens: None,
                    weight: 1.0,
                    logged: true,
                },
                source: Default::default(),
            })
            .collect();
        let logged = LoggedData {
            verifications: Vec::new(),
            decisions,
            counts: LogCounts {
                decisions: 300,
                feedback: 300,
                outcomes: 300,
                verifications: 0,
            },
            outcomes,
            sha256: String::new(),
        };
        let model = RewardModel::fit(&logged);
        assert!(model.pooled.is_some(), "pooled direct model fitted");
        let newest = model.prompt(&[1.0, 2.0, 0.0, 4.0]);
        let (q, _) = model.expect("a", newest.as_ref());
        assert!((0.0..=1.0).contains(&q), "{q}");
        // A vector of the old width falls back to the model's mean.
        let (old, _) = model.expect("a", model.prompt(&[1.0, 2.0, 0.0]).as_ref());
        assert!((old - model.by_model["a"].quality).abs() < 1e-12);
    }
}
