//! Learning between retrains: priors for new models, exploration, and per-model corrections.
//!
//! - **Priors.** A catalog model the policy has never seen can borrow another model's
//!   predictions (`prior_from`), shifted by `prior_offset` in log-odds, so it competes from the
//!   first request instead of being excluded until the next retrain.
//! - **Exploration.** With probability `rate` a request goes to a random *eligible* model (so no
//!   hard constraint or budget is ever broken), drawing unproven models (fewer than
//!   `confident_after` feedback reports) `new_model_boost` times more often. The exact probability
//!   of the returned model is reported as its propensity, so logged data can be reweighted
//!   (inverse-propensity) without bias.
//! - **Corrections.** Each feedback report nudges a per-model log-odds offset by
//!   `learning_rate × (observed − predicted)`: an online logistic regression of each model's
//!   intercept. It tracks drift (a model getting worse) and refines priors until the next retrain
//!   folds the logged outcomes into the policy, at which point the offsets start again from 0.
//!   The server rebuilds this state from its log at start-up (decisions carry the uncorrected
//!   predictions), so a restart forgets neither corrections nor feedback counts.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use triage_core::catalog::Catalog;
use triage_core::config::ExplorationSettings;

use crate::decide::Decision;
use crate::file::Prediction;

/// Largest magnitude of a learned offset (log-odds): a runaway correction cannot pin a model at
/// 0 or 1 for good.
const MAX_OFFSET: f64 = 6.0;

fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

pub(crate) fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Adds predictions for catalog models with a `prior_from` the policy does not score.
pub fn apply_priors<'a>(catalog: &'a Catalog, predictions: &mut HashMap<&'a str, Prediction>) {
    for spec in catalog.models() {
        let Some(from) = &spec.prior_from else {
            continue;
        };
        if predictions.contains_key(spec.name.as_str()) {
            continue;
        }
        if let Some(source) = predictions.get(from.as_str()).copied() {
            predictions.insert(
                spec.name.as_str(),
                Prediction {
                    quality: sigmoid(logit(source.quality) + spec.prior_offset),
                    output_tokens: source.output_tokens,
                },
            );
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct ModelState {
    offset: f64,
    feedback: u32,
}

/// How a decision was finally made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Draw {
    /// Probability with which the returned model was chosen.
    pub propensity: f64,
    /// Whether the exploration branch was taken.
    pub explored: bool,
}

/// Per-model state learned from feedback since the policy was loaded.
#[derive(Debug)]
pub struct OnlineLearner {
    settings: ExplorationSettings,
    state: Mutex<HashMap<String, ModelState>>,
    rng: Mutex<fastrand::Rng>,
}

impl OnlineLearner {
    /// A learner with no feedback yet.
    pub fn new(settings: ExplorationSettings) -> Self {
        let rng = settings
            .seed
            .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        Self {
            settings,
            state: Mutex::new(HashMap::new()),
            rng: Mutex::new(rng),
        }
    }

    /// Two independent uniform draws for [`explore`](Self::explore), from the learner's own
    /// generator (seeded by `exploration.seed` when set).
    pub fn draw(&self) -> (f64, f64) {
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        (rng.f64(), rng.f64())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ModelState>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets corrections (a retrained policy already reflects the feedback they came from),
    /// keeping feedback counts so that proven models stay proven.
    pub fn reset_corrections(&self) {
        for s in self.lock().values_mut() {
            s.offset = 0.0;
        }
    }

    /// Applies the learned offsets to `predictions`.
    pub fn correct(&self, predictions: &mut HashMap<&str, Prediction>) {
        let state = self.lock();
        for (model, p) in predictions.iter_mut() {
            if let Some(s) = state.get(*model).filter(|s| s.offset != 0.0) {
                p.quality = sigmoid(logit(p.quality) + s.offset);
            }
        }
    }

    /// Learns from one report: `predicted` is the policy's uncorrected quality for this request
    /// and model, `observed` the reported quality (`None`: the report only counts).
    pub fn observe(&self, model: &str, predicted: Option<f64>, observed: Option<f64>) {
        {
            let mut state = self.lock();
            let s = state.entry(model.to_owned()).or_default();
            s.feedback = s.feedback.saturating_add(1);
        }
        self.observe_score(model, predicted, observed);
    }

    /// Learns from a quality score without counting a report (the report was counted when
    /// its call was recorded).
    pub fn observe_score(&self, model: &str, predicted: Option<f64>, observed: Option<f64>) {
        let mut state = self.lock();
        let s = state.entry(model.to_owned()).or_default();
        if let (Some(p), Some(y)) = (predicted, observed) {
            let current = sigmoid(logit(p) + s.offset);
            s.offset = (s.offset + self.settings.learning_rate * (y - current))
                .clamp(-MAX_OFFSET, MAX_OFFSET);
        }
    }

    /// The current log-odds correction of `model`.
    pub fn offset(&self, model: &str) -> f64 {
        self.lock().get(model).map_or(0.0, |s| s.offset)
    }

    /// Feedback reports seen for `model`.
    pub fn feedback_count(&self, model: &str) -> u32 {
        self.lock().get(model).map_or(0, |s| s.feedback)
    }

    /// The exploration rate where the policy trusts its prompt-specific predictions this much:
    /// `rate` at full trust, rising to `unfamiliar_rate` on a prompt it knows nothing like.
    pub fn rate_at(&self, trust: f64) -> f64 {
        let s = &self.settings;
        let t = trust.clamp(0.0, 1.0);
        t * s.rate + (1.0 - t) * s.unfamiliar_rate.max(s.rate)
    }

    /// Possibly swaps the winner for an exploratory pick. `u` and `v` are independent uniform
    /// draws in `[0, 1)` (passed in so that tests and replays are deterministic); `trust` is how
    /// far the policy trusted its predictions for this prompt (see [`Self::rate_at`]).
    pub fn explore(&self, decision: &mut Decision, u: f64, v: f64, trust: f64) -> Draw {
        let eligible = decision
            .candidates
            .iter()
            .take_while(|c| c.exclusion.is_none())
            .count();
        let rate = self.rate_at(trust);
        if rate <= 0.0 || eligible < 2 {
            return Draw {
                propensity: 1.0,
                explored: false,
            };
        }
        let weights: Vec<f64> = {
            let state = self.lock();
            decision.candidates[..eligible]
                .iter()
                .map(|c| {
                    let proven = state
                        .get(&c.model)
                        .is_some_and(|s| s.feedback >= self.settings.confident_after);
                    if proven {
                        1.0
                    } else {
                        self.settings.new_model_boost
                    }
                })
                .collect()
        };
        let total: f64 = weights.iter().sum();
        let explored = u < rate;
        let pick = if explored {
            let mut target = v * total;
            let mut pick = eligible - 1;
            for (i, w) in weights.iter().enumerate() {
                if target < *w {
                    pick = i;
                    break;
                }
                target -= w;
            }
            pick
        } else {
            0
        };
        let propensity =
            (1.0 - rate) * f64::from(u8::from(pick == 0)) + rate * weights[pick] / total;
        if pick != 0 {
            let chosen = decision.candidates.remove(pick);
            decision.candidates.insert(0, chosen);
        }
        if explored {
            decision.explanation = format!(
                "exploring (rate {rate}): drew {} among {eligible} eligible models; the policy's \
                 choice was {}",
                decision.candidates[0].model,
                decision.candidates[usize::from(pick != 0)].model
            );
        }
        Draw {
            propensity,
            explored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Candidate, Rule};
    use triage_core::request::Mode;

    fn decision(models: &[&str]) -> Decision {
        Decision {
            candidates: models
                .iter()
                .map(|m| Candidate {
                    model: (*m).into(),
                    quality: 0.5,
                    cost_usd: 0.0,
                    output_tokens: 1.0,
                    latency_ms: 1.0,
                    exclusion: None,
                })
                .collect(),
            rule: Rule::Mode(Mode::Balanced),
            explanation: String::new(),
        }
    }

    fn learner(rate: f64) -> OnlineLearner {
        OnlineLearner::new(ExplorationSettings {
            rate,
            unfamiliar_rate: 0.0,
            confident_after: 2,
            new_model_boost: 3.0,
            learning_rate: 0.5,
            seed: Some(1),
        })
    }

    #[test]
    fn propensities_are_exact_and_sum_to_one() {
        let l = learner(0.2);
        // "a" is proven, "b" and "c" are not: weights 1, 3, 3.
        l.observe("a", None, None);
        l.observe("a", None, None);
        let mut total = 0.0;
        for (v, expected_model) in [(0.05, "a"), (0.3, "b"), (0.9, "c")] {
            let mut d = decision(&["a", "b", "c"]);
            let draw = l.explore(&mut d, 0.1, v, 1.0);
            assert!(draw.explored);
            assert_eq!(d.candidates[0].model, expected_model);
            total += if expected_model == "a" {
                0.0
            } else {
                draw.propensity
            };
        }
        let mut d = decision(&["a", "b", "c"]);
        let greedy = l.explore(&mut d, 0.5, 0.0, 1.0);
        assert!(!greedy.explored);
        assert!((greedy.propensity - (0.8 + 0.2 / 7.0)).abs() < 1e-12);
        total += greedy.propensity;
        assert!((total - 1.0).abs() < 1e-12, "{total}");
    }

    #[test]
    fn no_exploration_without_rate_or_choice() {
        let mut d = decision(&["a", "b"]);
        assert_eq!(
            learner(0.0).explore(&mut d, 0.0, 0.9, 1.0),
            Draw {
                propensity: 1.0,
                explored: false
            }
        );
        let mut single = decision(&["a"]);
        assert_eq!(
            learner(0.5).explore(&mut single, 0.0, 0.9, 1.0).propensity,
            1.0
        );
    }

    #[test]
    fn exploration_rises_where_the_policy_distrusts_itself() {
        let l = OnlineLearner::new(ExplorationSettings {
            rate: 0.02,
            unfamiliar_rate: 0.3,
            ..ExplorationSettings::default()
        });
        assert!((l.rate_at(1.0) - 0.02).abs() < 1e-12);
        assert!((l.rate_at(0.0) - 0.3).abs() < 1e-12);
        assert!((l.rate_at(0.5) - 0.16).abs() < 1e-12);
        // u = 0.1 explores at trust 0 (rate 0.3) but not at full trust (rate 0.02).
        let mut d = decision(&["a", "b"]);
        assert!(l.explore(&mut d, 0.1, 0.9, 0.0).explored);
        let mut d = decision(&["a", "b"]);
        let greedy = l.explore(&mut d, 0.1, 0.9, 1.0);
        assert!(!greedy.explored);
        assert!((greedy.propensity - (0.98 + 0.02 / 2.0)).abs() < 1e-12);
    }

    #[test]
    fn corrections_follow_feedback_and_reset() {
        let l = learner(0.0);
        for _ in 0..40 {
            l.observe("a", Some(0.8), Some(0.0));
        }
        let mut p = HashMap::from([(
            "a",
            Prediction {
                quality: 0.8,
                output_tokens: 10.0,
            },
        )]);
        l.correct(&mut p);
        assert!(p["a"].quality < 0.2, "{}", p["a"].quality);
        l.reset_corrections();
        assert_eq!(l.offset("a"), 0.0);
        assert_eq!(l.feedback_count("a"), 40);
    }
}
