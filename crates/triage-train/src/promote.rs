//! The promotion gate: a retrained policy replaces the serving one only if it is not worse.
//!
//! Evidence, in order of preference:
//! 1. **held-out**: the prompts the judged policy was not fitted on (cross-validation's fold 0,
//!    see [`crate::tune`]) of a full-information outcome table (a seed table), replayed
//!    through both policies over the λ grid with the real outcomes and compared by AIQ: exact,
//!    so it goes first;
//! 2. **off-policy**: enough logged decisions on those held-out requests, each replayed through
//!    both policies, estimated with DR (and IPS reported beside it), see [`crate::offpolicy`];
//!    "not worse" allows two bootstrap standard errors, since the estimate is noisy;
//! 3. **none**: there is no current policy to beat.
//!
//! A candidate the evidence lets through is still refused if it would hand a thin model (fewer
//! than [`THIN_OUTCOMES`] outcomes while most models have more) more than
//! [`MAX_THIN_SHARE_STEP`] extra traffic at once (`trust-region`).
//!
//! `--force` skips the gate.

use std::collections::{HashMap, HashSet};

use triage_core::{Catalog, Mode};
use triage_policy::{Policy, PolicyFile, Prediction, apply_priors, decide};

use crate::TrainError;
use crate::logdata::LoggedData;
use crate::offpolicy::{RewardModel, compare};
use crate::prepare::Prepared;
use crate::score::file_aiq;
use crate::tune::informative_prompts;
use triage_policy::Rule;

/// AIQ a candidate may lose and still count as "not worse" (estimation noise).
pub const AIQ_TOLERANCE: f64 = 0.002;
/// Least held-out logged decisions with outcomes (or held-out prompts with several outcomes) before
/// an estimate may decide promotion.
pub const MIN_EVIDENCE: usize = 50;

/// Whether a candidate replaces the serving policy, and on what evidence.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GateVerdict {
    /// Promote (write the candidate) or keep the current policy.
    pub promote: bool,
    /// `none` (no current policy), `off-policy`, `held-out`, `insufficient` or `forced`.
    pub evidence: String,
    /// One sentence a person can act on.
    pub reason: String,
    /// Current policy's estimate, when computed.
    pub current: Option<serde_json::Value>,
    /// Candidate's estimate, when computed.
    pub candidate: Option<serde_json::Value>,
    /// Thin models whose quality heads were pulled toward their catalog prior to stay in the
    /// trust region, with the weight kept on what was learned: apply with
    /// [`pulled_toward_prior`] to the policy that is written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pulled: Vec<(String, f64)>,
}

/// Outcomes below which a model's head counts as thin (its share may only grow gradually).
pub const THIN_OUTCOMES: usize = 200;
/// Most traffic (a share of decisions at any of the compared cost settings) a thin model may
/// gain in one promotion.
pub const MAX_THIN_SHARE_STEP: f64 = 0.2;
/// Halvings of the weight kept on a thin model's learned head (precision 1/64).
const KEPT_BISECTION_STEPS: usize = 6;
/// Prompts the share comparison looks at, at most.
const SHARE_PROMPTS: usize = 2000;

/// Decides whether `candidate` replaces `current`: first on evidence that it is not worse,
/// then within a trust region for thin models. A head fitted on a few dozen outcomes can look
/// fine to a noisy estimate and still be badly over-confident; one promotion must not hand
/// such a model a large share of traffic. Exploration keeps feeding it, so it can grow by
/// [`MAX_THIN_SHARE_STEP`] per retrain until it has [`THIN_OUTCOMES`] outcomes.
pub fn gate(
    current: Option<&Policy>,
    candidate: &PolicyFile,
    prepared: &Prepared,
    logged: Option<&LoggedData>,
    catalog: &Catalog,
    held_out: &[usize],
) -> Result<GateVerdict, TrainError> {
    let verdict = evidence(current, candidate, prepared, logged, catalog, held_out)?;
    let Some(current) = current.filter(|_| verdict.promote) else {
        return Ok(verdict);
    };
    let candidate_policy =
        Policy::new(candidate.clone()).map_err(|e| TrainError::Fit(e.to_string()))?;
    let before = knob_shares(current, prepared, catalog);
    let after = knob_shares(&candidate_policy, prepared, catalog);
    let outcomes = |model: &str| {
        prepared.outcomes.model_index(model).map_or(0, |m| {
            prepared
                .outcomes
                .cells
                .iter()
                .filter(|row| row[m].is_some())
                .count()
        })
    };
    // Only a model thin among well-known ones is held back: in a cold start every model is
    // thin and the prior-only policy is the thing to move away from quickly.
    let mut counts: Vec<usize> = candidate.models.iter().map(|m| outcomes(&m.name)).collect();
    counts.sort_unstable();
    if counts
        .get(counts.len() / 2)
        .is_none_or(|median| *median < THIN_OUTCOMES)
    {
        return Ok(verdict);
    }
    let tripping: Vec<(&str, f64, f64, usize)> = candidate
        .models
        .iter()
        .map(|m| {
            let (was, share) = largest_gain(&before, &after, &m.name);
            (m.name.as_str(), was, share, outcomes(&m.name))
        })
        .filter(|(_, was, share, n)| *n < THIN_OUTCOMES && share - was > MAX_THIN_SHARE_STEP)
        .collect();
    let mut adjusted = candidate.clone();
    let mut pulled = Vec::new();
    for (model, was, share, n) in tripping {
        let within = |kept: f64| -> Result<Option<PolicyFile>, TrainError> {
            let Some(trial) = pulled_toward_prior(&adjusted, model, kept, catalog) else {
                return Ok(None);
            };
            let policy = Policy::new(trial.clone()).map_err(|e| TrainError::Fit(e.to_string()))?;
            let (from, to) = largest_gain(&before, &knob_shares(&policy, prepared, catalog), model);
            Ok((to - from <= MAX_THIN_SHARE_STEP).then_some(trial))
        };
        // The least pull toward the prior that keeps the step inside the region: the prior
        // itself must fit, then bisection on the weight kept on what was learned (the whole of
        // it does not fit, or the model would not be tripping). A coarse grid would throw away
        // learning the region allows, down to all of it on a small table.
        let fitted_in = match within(0.0)? {
            None => None,
            Some(prior_only) => {
                let (mut fits, mut lo, mut hi) = (prior_only, 0.0, 1.0);
                for _ in 0..KEPT_BISECTION_STEPS {
                    let mid = 0.5 * (lo + hi);
                    match within(mid)? {
                        Some(trial) => (fits, lo) = (trial, mid),
                        None => hi = mid,
                    }
                }
                Some((fits, lo))
            }
        };
        let Some((trial, kept)) = fitted_in else {
            return Ok(GateVerdict {
                promote: false,
                evidence: "trust-region".into(),
                reason: format!(
                    "{} said not worse, but the candidate would move {model} from {:.0}% to \
                     {:.0}% of traffic at some cost setting on only {n} outcomes, and no pull \
                     toward a catalog prior (prior_from) keeps it within {:.0} points (the most \
                     a thin model may gain per promotion until it has {THIN_OUTCOMES}); \
                     exploration keeps collecting its outcomes, or pass --force",
                    verdict.evidence,
                    100.0 * was,
                    100.0 * share,
                    100.0 * MAX_THIN_SHARE_STEP
                ),
                current: verdict.current,
                candidate: verdict.candidate,
                pulled: Vec::new(),
            });
        };
        adjusted = trial;
        pulled.push((model.to_owned(), kept));
    }
    if pulled.is_empty() {
        return Ok(verdict);
    }
    let note: Vec<String> = pulled
        .iter()
        .map(|(m, kept)| format!("{m} pulled toward its prior ({:.0}% learned)", 100.0 * kept))
        .collect();
    Ok(GateVerdict {
        reason: format!(
            "{}; trust region: {} so that no thin model gains more than {:.0} points of traffic",
            verdict.reason,
            note.join(", "),
            100.0 * MAX_THIN_SHARE_STEP
        ),
        pulled,
        ..verdict
    })
}

/// `file` with `model`'s heads replaced by `kept × learned + (1 − kept) × prior` (quality in
/// log-odds, length in log tokens), the prior being the catalog's `prior_from` model's heads in
/// the same file, quality shifted by `prior_offset`. All are linear in the same standardised
/// features, so each blend is a head too. `None` when the model has no usable prior.
pub fn pulled_toward_prior(
    file: &PolicyFile,
    model: &str,
    kept: f64,
    catalog: &Catalog,
) -> Option<PolicyFile> {
    let spec = catalog.get(model)?;
    let from = spec.prior_from.as_deref()?;
    let prior = file.models.iter().find(|m| m.name == from)?.clone();
    let position = file.models.iter().position(|m| m.name == model)?;
    let mut out = file.clone();
    let target = &mut out.models[position];
    let mix =
        |learned: f32, borrowed: f64| (kept * f64::from(learned) + (1.0 - kept) * borrowed) as f32;
    let quality = &mut target.quality;
    for (w, p) in quality.weights.iter_mut().zip(&prior.quality.weights) {
        *w = mix(*w, f64::from(*p));
    }
    quality.bias = mix(
        quality.bias,
        f64::from(prior.quality.bias) + spec.prior_offset,
    );
    // The answer length too (the server's prior borrows it unshifted): a length learned from a
    // few logged answers can make a model look far cheaper than it is.
    let length = &mut target.output_tokens;
    for (w, p) in length.weights.iter_mut().zip(&prior.output_tokens.weights) {
        *w = mix(*w, f64::from(*p));
    }
    length.bias = mix(length.bias, f64::from(prior.output_tokens.bias));
    // The shared classifier's say in this model shrinks with what is kept of its learning.
    if let Some(share) = out.shared.as_mut().and_then(|c| c.share.get_mut(position)) {
        *share *= kept;
    }
    out.version = format!("{}-p{}", file.version, (100.0 * kept).round());
    Some(out)
}

/// Knobs at which traffic shares are compared: the modes and cost weights across the range
/// (a cheap thin model tends to take over at high cost weights first).
fn trust_knobs() -> Vec<Rule> {
    [Rule::Mode(Mode::Balanced), Rule::Mode(Mode::Cost)]
        .into_iter()
        .chain([100.0, 300.0, 1e3, 3e3, 1e4].map(Rule::CostWeight))
        .collect()
}

/// Share of each model among `policy`'s choices on the table's prompts at each of
/// [`trust_knobs`], every catalog model allowed and priors applied as the server does.
fn knob_shares(
    policy: &Policy,
    prepared: &Prepared,
    catalog: &Catalog,
) -> Vec<HashMap<String, f64>> {
    let f = &prepared.features;
    let step = f.features.len().div_ceil(SHARE_PROMPTS).max(1);
    let knobs = trust_knobs();
    let mut counts: Vec<HashMap<String, f64>> = vec![HashMap::new(); knobs.len()];
    let mut totals = vec![0.0; knobs.len()];
    for p in (0..f.features.len()).step_by(step) {
        let Ok(scored) = policy.predict(&f.features[p]) else {
            continue;
        };
        let mut predictions: HashMap<&str, Prediction> = scored.into_iter().collect();
        apply_priors(catalog, &mut predictions);
        for (k, knob) in knobs.iter().enumerate() {
            let preferences = knob.preferences(Vec::new());
            let chosen = decide(
                catalog,
                &predictions,
                policy.decision(),
                &preferences,
                f.input_tokens[p],
            );
            if let Ok(d) = chosen {
                *counts[k].entry(d.chosen().model.clone()).or_default() += 1.0;
                totals[k] += 1.0;
            }
        }
    }
    for (shares, total) in counts.iter_mut().zip(totals) {
        if total > 0.0 {
            shares.values_mut().for_each(|c| *c /= total);
        }
    }
    counts
}

/// `(share before, share after)` of `model` at the knob where it gains most.
fn largest_gain(
    before: &[HashMap<String, f64>],
    after: &[HashMap<String, f64>],
    model: &str,
) -> (f64, f64) {
    let share = |m: &HashMap<String, f64>| m.get(model).copied().unwrap_or(0.0);
    before
        .iter()
        .zip(after)
        .map(|(b, a)| (share(b), share(a)))
        .max_by(|x, y| (x.1 - x.0).total_cmp(&(y.1 - y.0)))
        .unwrap_or((0.0, 0.0))
}

/// The evidence part of the gate: held-out, off-policy, or none.
fn evidence(
    current: Option<&Policy>,
    candidate: &PolicyFile,
    prepared: &Prepared,
    logged: Option<&LoggedData>,
    catalog: &Catalog,
    held_out: &[usize],
) -> Result<GateVerdict, TrainError> {
    let Some(current) = current else {
        return Ok(GateVerdict {
            promote: true,
            evidence: "none".into(),
            reason: "no current policy at the destination: nothing to beat".into(),
            current: None,
            candidate: None,
            pulled: Vec::new(),
        });
    };
    let candidate_policy =
        Policy::new(candidate.clone()).map_err(|e| TrainError::Fit(e.to_string()))?;
    let full_information = informative_prompts(prepared, held_out);
    // A model learned only from the log has no outcomes in the seed table: a held-out replay
    // cannot see what it adds, so the log's off-policy evidence decides instead.
    let blind_to: Vec<&str> = candidate
        .models
        .iter()
        .map(|m| m.name.as_str())
        .filter(|name| {
            prepared.outcomes.model_index(name).is_none_or(|m| {
                full_information
                    .iter()
                    .all(|&p| prepared.outcomes.cells[p][m].is_none())
            })
        })
        .collect();
    if !blind_to.is_empty() {
        tracing::info!(models = ?blind_to, "held-out data has no outcomes for these models");
    }
    if full_information.len() >= MIN_EVIDENCE && (blind_to.is_empty() || logged.is_none()) {
        let old = file_aiq(prepared, current.file(), &full_information)?;
        let new = file_aiq(prepared, candidate, &full_information)?;
        let promote = new >= old - AIQ_TOLERANCE;
        return Ok(GateVerdict {
            promote,
            evidence: "held-out".into(),
            reason: format!(
                "held-out AIQ over {} prompts with several outcomes: candidate {new:.4} vs current \
                 {old:.4} ({})",
                full_information.len(),
                if promote {
                    "not worse"
                } else {
                    "worse by more than the tolerance"
                }
            ),
            current: Some(serde_json::json!({ "held_out_aiq": old })),
            candidate: Some(serde_json::json!({ "held_out_aiq": new })),
            pulled: Vec::new(),
        });
    }
    if let Some(logged) = logged {
        // Only requests the candidate did not train on.
        let dev_ids: HashSet<&str> = held_out
            .iter()
            .map(|&p| prepared.outcomes.prompts[p].id.as_str())
            .collect();
        let held_out = logged.restricted_to(&dev_ids);
        let fitted_on = logged.excluding(&dev_ids);
        let reward = RewardModel::fit(&fitted_on);
        if let Some(c) = compare(
            current,
            &candidate_policy,
            catalog,
            &held_out,
            &reward,
            MIN_EVIDENCE,
        ) {
            // "Not worse" = not significantly worse: within the tolerance or two standard
            // errors of the estimated difference, whichever is larger.
            let allowed = AIQ_TOLERANCE.max(2.0 * c.difference_se);
            let difference = c.candidate.aiq - c.current.aiq;
            let promote = difference >= -allowed;
            return Ok(GateVerdict {
                promote,
                evidence: "off-policy".into(),
                reason: format!(
                    "doubly robust AIQ on {} held-out logged decisions: candidate {:.4} vs \
                     current {:.4}, difference {difference:+.4} (standard error {:.4}): {}",
                    c.candidate.at_logged_knob.decisions,
                    c.candidate.aiq,
                    c.current.aiq,
                    c.difference_se,
                    if promote {
                        "not worse"
                    } else {
                        "worse by more than two standard errors"
                    },
                ),
                current: serde_json::to_value(&c.current).ok(),
                candidate: serde_json::to_value(&c.candidate).ok(),
                pulled: Vec::new(),
            });
        }
        tracing::info!(
            needed = MIN_EVIDENCE,
            "too few held-out logged decisions for an off-policy estimate"
        );
    }

    Ok(GateVerdict {
        promote: false,
        evidence: "insufficient".into(),
        reason: format!(
            "neither {MIN_EVIDENCE} held-out logged decisions with outcomes nor \
             {MIN_EVIDENCE} held-out prompts with several outcomes: not enough evidence \
             that the candidate is not worse (collect more feedback, add a seed table with \
             --data, or pass --force)"
        ),
        current: None,
        candidate: None,
        pulled: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::prior_policy;

    #[test]
    fn pulling_toward_the_prior_blends_the_heads_in_log_odds() {
        let models = ["known".to_owned(), "new".to_owned()];
        let mut file = prior_policy(&models, 0.5, 100.0);
        let width = file.standardize.mean.len();
        file.models[0].quality.weights = vec![0.2; width];
        file.models[0].quality.bias = 1.0;
        file.models[1].quality.weights = vec![-0.4; width];
        file.models[1].quality.bias = 3.0;
        file.models[1].output_tokens.bias = 2.0;
        file.shared = Some(triage_policy::SharedClassifier {
            hidden: 1,
            w1: vec![0.0; width],
            b1: vec![0.0],
            w2: vec![0.0, 0.0],
            b2: vec![0.0, 0.0],
            share: vec![0.5, 0.5],
        });
        let mut settings = triage_core::Settings::load(None).expect("defaults");
        let mut spec = settings.models[0].clone();
        spec.name = "new".into();
        spec.prior_from = Some("known".into());
        spec.prior_offset = -0.5;
        let mut known = settings.models[0].clone();
        known.name = "known".into();
        settings.models = vec![known, spec];
        let catalog = settings.catalog().expect("catalog");

        let same = pulled_toward_prior(&file, "new", 1.0, &catalog).expect("has a prior");
        assert_eq!(same.models[1].quality, file.models[1].quality);
        let half = pulled_toward_prior(&file, "new", 0.5, &catalog).expect("has a prior");
        let head = &half.models[1].quality;
        assert!(head.weights.iter().all(|w| (w + 0.1).abs() < 1e-6));
        assert!((head.bias - 1.75).abs() < 1e-6, "{}", head.bias);
        assert_eq!(
            half.models[0], file.models[0],
            "the prior's own head is untouched"
        );
        let none = pulled_toward_prior(&file, "new", 0.0, &catalog).expect("has a prior");
        assert_eq!(
            none.models[1].output_tokens.bias,
            file.models[0].output_tokens.bias
        );
        assert_ne!(half.version, file.version);
        // The shared classifier's say in the pulled model shrinks with it, and only there.
        let share = |f: &PolicyFile| f.shared.as_ref().map(|c| c.share.clone());
        assert_eq!(share(&half), Some(vec![0.5, 0.25]));
        assert_eq!(share(&none), Some(vec![0.5, 0.0]));
        // A model without prior_from cannot be pulled.
        assert!(pulled_toward_prior(&file, "known", 0.5, &catalog).is_none());
    }
}
