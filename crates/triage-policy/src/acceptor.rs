//! Verify, then escalate: when a cheap draft (or two) can be trusted instead of a dearer model.
//!
//! Routing from the prompt alone has a ceiling; once a cheap model has answered there is more to
//! go on: whether the draft commits to a final answer and in what form, whether it refuses or
//! hedges, how long it is, what the routing policy expected of its model on this prompt, and,
//! with two drafts, whether their answers agree. [`DraftEvidence`] reads that from a draft's text
//! (with `triage_core::answer`), [`evidence_features`] turns it into the one feature vector the
//! acceptor's logistic head sees in training and in serving, and [`Acceptor::plan_for`] says, for
//! a routing rule, which drafts to run and how sure the acceptor must be to return one.
//!
//! A plan of two drafts returns the one whose model the routing policy rates higher; when the
//! acceptor declines, the request escalates to the routing policy's own choice.

use serde::{Deserialize, Serialize};
use triage_core::Mode;
use triage_core::answer::{AnswerForm, extract_answer, hedges, refuses};

use crate::decide::Rule;
use crate::file::LinearHead;
use crate::online::sigmoid;

/// What one draft offers as evidence.
#[derive(Clone, Debug, PartialEq)]
pub struct DraftEvidence {
    /// The routing policy's probability of a good answer from the draft's model on this prompt.
    pub predicted_quality: f64,
    /// The draft's final-answer key, if one was found.
    pub answer: Option<String>,
    /// The form it was found in (`None` when the key came from elsewhere, e.g. a benchmark's own
    /// extraction in training).
    pub form: Option<AnswerForm>,
    /// Length of the draft in characters.
    pub chars: usize,
    /// Whether it declines to answer.
    pub refuses: bool,
    /// Whether it signals doubt.
    pub hedges: bool,
}

impl DraftEvidence {
    /// Reads the evidence in a draft's text.
    pub fn read(text: &str, predicted_quality: f64) -> Self {
        let answer = extract_answer(text);
        Self {
            predicted_quality,
            form: answer.as_ref().map(|a| a.form),
            answer: answer.map(|a| a.key),
            chars: text.chars().count(),
            refuses: refuses(text),
            hedges: hedges(text),
        }
    }
}

/// Features per draft, then per second draft.
const PER_DRAFT: usize = 5 + AnswerForm::ALL.len();
const PER_SECOND: usize = 3;

/// Length of the evidence vector for a plan of `drafts` drafts (1 or 2).
pub fn evidence_len(drafts: usize) -> usize {
    PER_DRAFT + if drafts >= 2 { PER_SECOND } else { 0 }
}

/// Which of a plan's drafts is returned when accepted: the one the routing policy rates higher
/// (the first on a tie).
pub fn returned_draft(drafts: &[DraftEvidence]) -> usize {
    match drafts {
        [a, b, ..] if b.predicted_quality > a.predicted_quality => 1,
        _ => 0,
    }
}

/// The acceptor's input for a plan's drafts (one or two, in the plan's order): the returned
/// draft's evidence, then for two drafts the other's predicted quality, whether it found an
/// answer, and whether the two answers agree.
pub fn evidence_features(drafts: &[DraftEvidence]) -> Vec<f64> {
    let r = returned_draft(drafts);
    let main = &drafts[r];
    let mut f = Vec::with_capacity(evidence_len(drafts.len()));
    f.push(logit(main.predicted_quality));
    f.push(flag(main.answer.is_some()));
    f.push((1.0 + main.chars as f64).ln() / 8.0);
    f.push(flag(main.refuses));
    f.push(flag(main.hedges));
    f.extend(
        AnswerForm::ALL
            .iter()
            .map(|form| flag(main.form == Some(*form))),
    );
    if let Some(other) = drafts.get(1 - r).filter(|_| drafts.len() >= 2) {
        f.push(logit(other.predicted_quality));
        f.push(flag(other.answer.is_some()));
        f.push(flag(main.answer.is_some() && main.answer == other.answer));
    }
    f
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// Log-odds, clamped so that a certain prediction stays finite.
fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-4, 1.0 - 1e-4);
    (p / (1.0 - p)).ln()
}

/// One set of drafts the acceptor can judge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftPlan {
    /// The draft models, one or two, run in parallel.
    pub drafts: Vec<String>,
    /// Logistic head over [`evidence_features`]: the probability that the returned draft is a
    /// good answer.
    pub head: LinearHead,
}

/// A plan head's probability that the returned draft is good, for an evidence vector from
/// [`evidence_features`] (training, `eval` and [`crate::verify`] all score with this).
pub fn head_probability(head: &LinearHead, features: &[f64]) -> f64 {
    let z: f64 = head
        .weights
        .iter()
        .zip(features)
        .map(|(w, x)| f64::from(*w) * x)
        .sum::<f64>()
        + f64::from(head.bias);
    sigmoid(z)
}

/// What to do at one cost weight.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CascadeSetting {
    /// λ, quality points per USD, as in [`Rule::CostWeight`].
    pub cost_weight: f64,
    /// Index into [`Acceptor::plans`]; `None` routes directly, without drafts.
    pub plan: Option<usize>,
    /// Least accept probability at which the draft is returned.
    pub threshold: f64,
}

/// Which settings the built-in modes use (indices into [`Acceptor::settings`]), chosen in
/// training as routing's margins are: QUALITY the setting with the best out-of-fold quality,
/// BALANCED and COST the cheapest within [`crate::decide::BALANCED_QUALITY_DROP`] and
/// [`crate::decide::COST_QUALITY_DROP`] of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeSettings {
    /// QUALITY mode's setting.
    pub quality: usize,
    /// BALANCED mode's setting.
    pub balanced: usize,
    /// COST mode's setting.
    pub cost: usize,
}

/// The verify-then-escalate part of a policy, chosen by cross-validation in training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acceptor {
    /// Draft plans with their heads.
    pub plans: Vec<DraftPlan>,
    /// One setting per cost weight, sorted by it.
    pub settings: Vec<CascadeSetting>,
    /// Where the final-answer keys came from in training (`generic` or a column's name).
    pub answers: String,
    /// The built-in modes' settings (absent in policies trained before modes had their own: the
    /// least, middle and greatest cost weights then stand in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modes: Option<ModeSettings>,
}

impl Acceptor {
    /// The setting for `rule`: for λ the nearest cost weight at or below it (the first above
    /// when none is); for a mode, the setting training chose for it.
    pub fn setting_for(&self, rule: Rule) -> Option<&CascadeSetting> {
        let s = &self.settings;
        let modes = self.modes;
        match rule {
            // Cost weights read back from a policy file are exact (serde_json parses floats
            // with `float_roundtrip`), so the grid training used finds its own settings.
            Rule::CostWeight(lambda) => s
                .iter()
                .rev()
                .find(|x| x.cost_weight <= lambda)
                .or_else(|| s.first()),
            Rule::Mode(Mode::Quality) => modes.map_or(s.first(), |m| s.get(m.quality)),
            Rule::Mode(Mode::Cost) => modes.map_or(s.last(), |m| s.get(m.cost)),
            Rule::Mode(Mode::Balanced) => modes.map_or(s.get(s.len() / 2), |m| s.get(m.balanced)),
        }
    }

    /// The plan and threshold for `rule`, or `None` to route directly.
    pub fn plan_for(&self, rule: Rule) -> Option<(&DraftPlan, f64)> {
        let setting = self.setting_for(rule)?;
        let plan = self.plans.get(setting.plan?)?;
        Some((plan, setting.threshold))
    }

    /// Checks the acceptor against the policy's models.
    pub fn validate(&self, models: &[&str]) -> Result<(), String> {
        for (i, plan) in self.plans.iter().enumerate() {
            let n = plan.drafts.len();
            if !(1..=2).contains(&n) {
                return Err(format!("acceptor plan {i} has {n} drafts (1 or 2 allowed)"));
            }
            if n == 2 && plan.drafts[0] == plan.drafts[1] {
                return Err(format!("acceptor plan {i} names one model twice"));
            }
            if let Some(m) = plan.drafts.iter().find(|m| !models.contains(&m.as_str())) {
                return Err(format!(
                    "acceptor plan {i} drafts with {m:?}, which the policy has no head for"
                ));
            }
            let h = &plan.head;
            if h.weights.len() != evidence_len(n)
                || !h.weights.iter().chain([&h.bias]).all(|w| w.is_finite())
            {
                return Err(format!(
                    "acceptor plan {i}: its head needs {} finite weights",
                    evidence_len(n)
                ));
            }
        }
        let mut last = f64::NEG_INFINITY;
        for s in &self.settings {
            if !s.cost_weight.is_finite() || s.cost_weight < last {
                return Err("acceptor settings must have finite, sorted cost weights".into());
            }
            last = s.cost_weight;
            if !(0.0..=1.0).contains(&s.threshold) {
                return Err(format!(
                    "acceptor threshold {} is outside 0..1",
                    s.threshold
                ));
            }
            if s.plan.is_some_and(|p| p >= self.plans.len()) {
                return Err("an acceptor setting names a plan that does not exist".into());
            }
        }
        if let Some(m) = self.modes
            && [m.quality, m.balanced, m.cost]
                .iter()
                .any(|&i| i >= self.settings.len())
        {
            return Err("the acceptor's mode settings name a setting that does not exist".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(q: f64, text: &str) -> DraftEvidence {
        DraftEvidence::read(text, q)
    }

    fn plan(drafts: &[&str], agree_weight: f32) -> DraftPlan {
        let n = evidence_len(drafts.len());
        let mut weights = vec![0.0; n];
        if drafts.len() == 2 {
            weights[n - 1] = agree_weight;
        }
        DraftPlan {
            drafts: drafts.iter().map(|s| s.to_string()).collect(),
            head: LinearHead {
                weights,
                bias: -1.0,
            },
        }
    }

    #[test]
    fn agreement_is_read_from_the_texts() {
        let a = draft(0.6, "\"answer\": \"42\"");
        let b = draft(0.7, "The answer is 42.");
        let c = draft(0.7, "The answer is 41.");
        let f = evidence_features(&[a.clone(), b.clone()]);
        assert_eq!(f.len(), evidence_len(2));
        assert_eq!(f[f.len() - 1], 1.0);
        assert_eq!(evidence_features(&[a.clone(), c])[evidence_len(2) - 1], 0.0);
        // The returned draft comes first: b is rated higher.
        assert_eq!(returned_draft(&[a, b]), 1);
        let p = plan(&["x", "y"], 4.0);
        let accept =
            |drafts: &[DraftEvidence]| head_probability(&p.head, &evidence_features(drafts));
        let agree = accept(&[draft(0.5, "42"), draft(0.5, "42")]);
        let differ = accept(&[draft(0.5, "42"), draft(0.5, "7")]);
        assert!(agree > 0.9 && differ < 0.3, "{agree} {differ}");
    }

    #[test]
    fn settings_follow_the_rule() {
        let acceptor = Acceptor {
            plans: vec![plan(&["x"], 0.0)],
            settings: [0.0, 10.0, 100.0]
                .iter()
                .map(|&w| CascadeSetting {
                    cost_weight: w,
                    plan: (w > 0.0).then_some(0),
                    threshold: 0.5,
                })
                .collect(),
            answers: "generic".into(),
            modes: None,
        };
        assert!(acceptor.validate(&["x"]).is_ok());
        assert!(acceptor.plan_for(Rule::CostWeight(5.0)).is_none());
        assert!(acceptor.plan_for(Rule::CostWeight(50.0)).is_some());
        assert!(acceptor.plan_for(Rule::Mode(Mode::Quality)).is_none());
        assert!(acceptor.plan_for(Rule::Mode(Mode::Cost)).is_some());
        assert!(
            acceptor
                .validate(&["y"])
                .expect_err("unknown model")
                .contains("\"x\"")
        );
        // Modes use the settings training chose for them once the acceptor names them.
        let mut moded = acceptor.clone();
        moded.modes = Some(ModeSettings {
            quality: 1,
            balanced: 2,
            cost: 0,
        });
        assert!(moded.validate(&["x"]).is_ok());
        assert!(moded.plan_for(Rule::Mode(Mode::Quality)).is_some());
        assert!(moded.plan_for(Rule::Mode(Mode::Cost)).is_none());
        moded.modes = Some(ModeSettings {
            quality: 0,
            balanced: 3,
            cost: 0,
        });
        assert!(
            moded.validate(&["x"]).is_err(),
            "a setting that does not exist"
        );
        let mut bad = acceptor.clone();
        bad.settings[0].threshold = 2.0;
        assert!(bad.validate(&["x"]).is_err());
        bad = acceptor;
        bad.plans[0].head.weights.pop();
        assert!(
            bad.validate(&["x"])
                .expect_err("short head")
                .contains("finite weights")
        );
    }
}
