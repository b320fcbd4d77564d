//! How familiar a prompt is, and how far the policy trusts its own prompt-specific predictions.
//!
//! A policy fitted on math and code extrapolates on a prompt unlike any of them, and it does so
//! confidently: on a task it never saw it can route worse than the best single model would
//! (the zero router). So every prediction is pulled toward each model's *prompt-blind* quality
//! (its mean over the training prompts) by how unfamiliar the prompt is:
//!
//! ```text
//! familiarity f = mean cosine similarity of the prompt to its `neighbours` nearest training prompts
//! trust       t = sigmoid(slope × (f − center))
//! quality       = t × predicted + (1 − t) × prior[model]
//! ```
//!
//! On a prompt far from everything it was trained on, `t → 0` and every model's quality is its
//! prior: the decision becomes the zero router's. `slope` and `center` are not set by hand:
//! training fits them on held-out predictions (each task left out in turn, plus the ordinary
//! cross-validation folds), so how fast local evidence is trusted is whatever the table's own
//! held-out errors say (`triage_train`'s `familiarity` module). Where shrinking does not beat
//! trusting every prediction beyond noise there is no curve (`curve: None`): familiarity is still
//! measured and reported, and predictions are used as they are.

use serde::{Deserialize, Serialize};

use crate::online::sigmoid;

/// Training prompts whose similarity is averaged into a prompt's familiarity.
pub const FAMILIARITY_NEIGHBOURS: usize = 10;

/// The fitted trust curve and the prompt-blind qualities it shrinks toward.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Familiarity {
    /// Nearest training prompts averaged (the policy's neighbour set holds them).
    pub neighbours: usize,
    /// How trust rises with familiarity; `None`: every prediction is trusted as it is.
    pub curve: Option<TrustCurve>,
    /// Each model's prompt-blind quality, in the policy's model order.
    pub prior: Vec<f64>,
}

/// `trust(f) = sigmoid(slope × (f − center))`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustCurve {
    /// Familiarity at which predictions and priors count the same.
    pub center: f64,
    /// How fast trust rises with familiarity (per unit of cosine similarity).
    pub slope: f64,
}

impl TrustCurve {
    /// Trust in the prompt-specific prediction at familiarity `f`.
    pub fn trust(&self, f: f64) -> f64 {
        sigmoid(self.slope * (f - self.center))
    }
}

impl Familiarity {
    /// Trust in the prompt-specific prediction at familiarity `f` (1 without a curve).
    pub fn trust(&self, f: f64) -> f64 {
        self.curve.map_or(1.0, |c| c.trust(f))
    }

    /// `predicted` pulled toward model `i`'s prior at familiarity `f`.
    pub fn shrink(&self, i: usize, predicted: f64, f: f64) -> f64 {
        let t = self.trust(f);
        t * predicted + (1.0 - t) * self.prior.get(i).copied().unwrap_or(predicted)
    }

    /// Checks the curve against a policy of `models` models.
    pub fn validate(&self, models: usize) -> Result<(), String> {
        if self.neighbours == 0 {
            return Err("familiarity: neighbours must be positive".into());
        }
        if let Some(c) = self.curve
            && !(c.center.is_finite() && c.slope.is_finite() && c.slope >= 0.0)
        {
            return Err("familiarity: center and slope must be finite, slope non-negative".into());
        }
        if self.prior.len() != models || self.prior.iter().any(|p| !(0.0..=1.0).contains(p)) {
            return Err("familiarity: one prior within 0..1 per model".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfamiliar_prompts_fall_back_to_the_prior() {
        let f = Familiarity {
            neighbours: 10,
            curve: Some(TrustCurve {
                center: 0.5,
                slope: 40.0,
            }),
            prior: vec![0.7, 0.4],
        };
        assert!((f.trust(0.5) - 0.5).abs() < 1e-12);
        assert!(f.shrink(0, 0.1, 0.1) > 0.69, "far away: the prior");
        assert!(f.shrink(0, 0.1, 0.9) < 0.11, "familiar: the prediction");
        assert!(f.validate(2).is_ok());
        assert!(f.validate(3).is_err());
        let bad = Familiarity {
            curve: Some(TrustCurve {
                center: 0.5,
                slope: f64::NAN,
            }),
            ..f.clone()
        };
        assert!(bad.validate(2).is_err());
        let flat = Familiarity { curve: None, ..f };
        assert_eq!(
            flat.shrink(0, 0.1, 0.0),
            0.1,
            "no curve: the prediction as it is"
        );
    }
}
