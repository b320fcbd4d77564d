//! A classifier shared by every model: one hidden ReLU layer over the standardised features,
//! then one sigmoid output per model.
//!
//! The per-model logistic heads each learn their own direction from one model's outcomes. The
//! shared layer learns, from all models' outcomes at once, which features of a prompt matter
//! (difficulty, topic, answer format), and each model reads its chance of a good answer off that
//! common representation. Its probability is blended with the model's own head, with a share
//! chosen on dev; a model the layer was not trained for (one known only from logged traffic, or
//! carried over from an older policy) has share 0, so its own head alone speaks for it.

use serde::{Deserialize, Serialize};

use crate::online::sigmoid;

/// The stored classifier. Matrices are row-major.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedClassifier {
    /// Hidden units.
    pub hidden: usize,
    /// `hidden × feature_dim` input weights, over the policy's standardised features.
    pub w1: Vec<f32>,
    /// `hidden` input biases.
    pub b1: Vec<f32>,
    /// `models × hidden` output weights, in the order of the policy's models.
    pub w2: Vec<f32>,
    /// One output bias per model.
    pub b2: Vec<f32>,
    /// Per model, the share of this classifier's probability in the blend with the model's own
    /// head (0: own head only).
    pub share: Vec<f64>,
}

impl SharedClassifier {
    /// Checks the shapes against the policy's feature width and model count.
    pub fn validate(&self, dim: usize, models: usize) -> Result<(), String> {
        let h = self.hidden;
        if h == 0 {
            return Err("shared classifier has no hidden units".into());
        }
        let shapes = [
            ("w1", self.w1.len(), h * dim),
            ("b1", self.b1.len(), h),
            ("w2", self.w2.len(), models * h),
            ("b2", self.b2.len(), models),
            ("share", self.share.len(), models),
        ];
        for (name, got, want) in shapes {
            if got != want {
                return Err(format!(
                    "shared classifier: {name} has {got} entries, expected {want}"
                ));
            }
        }
        let finite = self
            .w1
            .iter()
            .chain(&self.b1)
            .chain(&self.w2)
            .chain(&self.b2)
            .all(|x| x.is_finite());
        if !finite || !self.share.iter().all(|s| (0.0..=1.0).contains(s)) {
            return Err("shared classifier: non-finite weights or a share outside 0..1".into());
        }
        Ok(())
    }

    /// The hidden layer's activations for standardised features `x`.
    pub fn hidden_layer(&self, x: &[f32]) -> Vec<f32> {
        let dim = x.len();
        let mut h = match ndarray::ArrayView2::from_shape((self.hidden, dim), &self.w1) {
            // A vectorised mat-vec: this is most of the classifier's cost.
            Ok(w1) => w1.dot(&ndarray::ArrayView1::from(x)).to_vec(),
            Err(_) => vec![0.0; self.hidden],
        };
        for (v, b) in h.iter_mut().zip(&self.b1) {
            *v = (*v + b).max(0.0);
        }
        h
    }

    /// Probability of a good answer for model `m` (index in the policy) given the hidden layer.
    pub fn probability(&self, hidden: &[f32], m: usize) -> f64 {
        let row = &self.w2[m * self.hidden..(m + 1) * self.hidden];
        let logit: f64 = row
            .iter()
            .zip(hidden)
            .map(|(w, h)| f64::from(w * h))
            .sum::<f64>()
            + f64::from(self.b2[m]);
        sigmoid(logit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> SharedClassifier {
        SharedClassifier {
            hidden: 2,
            w1: vec![1.0, 0.0, 0.0, -1.0],
            b1: vec![0.0, 0.5],
            w2: vec![2.0, 0.0, 0.0, -3.0],
            b2: vec![0.0, 1.0],
            share: vec![0.5, 1.0],
        }
    }

    #[test]
    fn forward_pass_applies_relu_then_each_models_output() {
        let c = tiny();
        c.validate(2, 2).expect("valid");
        let h = c.hidden_layer(&[1.0, 2.0]);
        // Unit 0: 1·1 + 0 = 1; unit 1: −2 + 0.5 = −1.5, cut to 0 by the ReLU.
        assert_eq!(h, vec![1.0, 0.0]);
        let p0 = c.probability(&h, 0);
        assert!((p0 - 1.0 / (1.0 + (-2.0f64).exp())).abs() < 1e-9);
        let p1 = c.probability(&h, 1);
        assert!((p1 - 1.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-9);
    }

    #[test]
    fn mismatched_shapes_and_bad_shares_are_refused() {
        let c = tiny();
        assert!(c.validate(3, 2).is_err_and(|e| e.contains("w1")));
        assert!(c.validate(2, 3).is_err_and(|e| e.contains("w2")));
        let mut bad = tiny();
        bad.share[1] = 1.5;
        assert!(bad.validate(2, 2).is_err());
    }
}
