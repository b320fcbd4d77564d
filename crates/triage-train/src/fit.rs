//! Fitting the per-model heads of a policy.
//!
//! Quality: one L2-regularised logistic regression per model (linfa-logistic) of
//! `quality >= 0.5`, with the regularisation strength chosen per model by dev log-loss, then
//! Platt-scaled on dev (the decision compares probabilities across models).
//! Length: one ridge regression per model of the answer's log length (linfa-linear), corrected
//! to a mean, so `exp(w·x + b)` is the expected length that cost depends on.

use linfa::Dataset;
use linfa::traits::Fit;
use linfa_linear::LinearRegression;
use linfa_logistic::LogisticRegression;
use ndarray16::{Array1, Array2};
use triage_policy::{LengthHead, LinearHead, Standardizer};

use crate::TrainError;

/// L2 strengths tried for each quality head, chosen by dev log-loss.
pub const QUALITY_ALPHAS: [f64; 5] = [30.0, 100.0, 300.0, 1000.0, 3000.0];
/// L2 strength of the length heads (in units of squared standardised features).
pub const LENGTH_ALPHA: f64 = 50.0;
/// Answers longer than this are clipped when fitting lengths (runaway generations).
const MAX_TOKENS_FIT: f64 = 4096.0;

/// Column means and standard deviations over `rows`.
pub fn standardizer(rows: &[&[f32]]) -> Standardizer {
    let dim = rows.first().map_or(0, |r| r.len());
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0f64; dim];
    for r in rows {
        for (m, v) in mean.iter_mut().zip(r.iter()) {
            *m += f64::from(*v) / n;
        }
    }
    let mut var = vec![0f64; dim];
    for r in rows {
        for ((s, v), m) in var.iter_mut().zip(r.iter()).zip(&mean) {
            *s += (f64::from(*v) - m).powi(2) / n;
        }
    }
    Standardizer {
        mean: mean.iter().map(|m| *m as f32).collect(),
        // Constant columns get scale 1 so they standardise to 0 instead of dividing by zero.
        scale: var
            .iter()
            .map(|v| if *v > 1e-12 { v.sqrt() as f32 } else { 1.0 })
            .collect(),
    }
}

/// Standardised design matrix.
pub fn design(rows: &[&[f32]], s: &Standardizer) -> Array2<f64> {
    let dim = s.mean.len();
    let mut x = Array2::<f64>::zeros((rows.len(), dim));
    for (i, r) in rows.iter().enumerate() {
        for j in 0..dim {
            x[[i, j]] = f64::from((r[j] - s.mean[j]) / s.scale[j]);
        }
    }
    x
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn log_loss(head: &LinearHead, x: &Array2<f64>, y: &[bool]) -> f64 {
    let mut total = 0.0;
    for (i, good) in y.iter().enumerate() {
        let z: f64 = x
            .row(i)
            .iter()
            .zip(&head.weights)
            .map(|(a, w)| a * f64::from(*w))
            .sum::<f64>()
            + f64::from(head.bias);
        let p = sigmoid(z).clamp(1e-6, 1.0 - 1e-6);
        total -= if *good { p.ln() } else { (1.0 - p).ln() };
    }
    total / y.len().max(1) as f64
}

fn constant_head(dim: usize, y: &[bool]) -> LinearHead {
    // Laplace-smoothed rate, so a model never seen to fail still gets p < 1.
    let good = y.iter().filter(|g| **g).count() as f64;
    let rate = (good + 1.0) / (y.len() as f64 + 2.0);
    LinearHead {
        weights: vec![0.0; dim],
        bias: (rate / (1.0 - rate)).ln() as f32,
    }
}

fn logistic(x: &Array2<f64>, y: &[bool], alpha: f64) -> Result<LinearHead, TrainError> {
    let targets = Array1::from_vec(y.to_vec());
    let fitted = LogisticRegression::default()
        .alpha(alpha)
        .max_iterations(200)
        .fit(&Dataset::new(x.clone(), targets))
        .map_err(|e| TrainError::Fit(format!("logistic regression: {e}")))?;
    // linfa's positive class is the more frequent label; we always predict P(good).
    let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
    Ok(LinearHead {
        weights: fitted.params().iter().map(|w| (sign * w) as f32).collect(),
        bias: (sign * fitted.intercept()) as f32,
    })
}

/// A model's quality head and the dev log-loss it reached.
pub struct QualityFit {
    /// The head.
    pub head: LinearHead,
    /// Chosen L2 strength (`None` for a constant head).
    pub alpha: Option<f64>,
    /// Dev log-loss.
    pub dev_log_loss: f64,
}

/// Fits a quality head on train, choosing alpha on dev.
pub fn quality_head(
    train_x: &Array2<f64>,
    train_y: &[bool],
    dev_x: &Array2<f64>,
    dev_y: &[bool],
) -> Result<QualityFit, TrainError> {
    let dim = train_x.ncols();
    let all_same = train_y.iter().all(|g| *g) || train_y.iter().all(|g| !*g);
    let constant = constant_head(dim, train_y);
    if all_same {
        let dev_log_loss = log_loss(&constant, dev_x, dev_y);
        return Ok(QualityFit {
            head: constant,
            alpha: None,
            dev_log_loss,
        });
    }
    let mut best: Option<QualityFit> = None;
    for alpha in QUALITY_ALPHAS {
        let head = logistic(train_x, train_y, alpha)?;
        let loss = if dev_y.is_empty() {
            0.0
        } else {
            log_loss(&head, dev_x, dev_y)
        };
        if best.as_ref().is_none_or(|b| loss < b.dev_log_loss) {
            best = Some(QualityFit {
                head,
                alpha: Some(alpha),
                dev_log_loss: loss,
            });
        }
    }
    let mut best =
        best.ok_or_else(|| TrainError::Fit("no regularisation strength tried".into()))?;
    // With little data (a model seldom routed to) the prompt-blind base rate can beat every
    // regularised fit on dev; it competes too.
    let constant_loss = log_loss(&constant, dev_x, dev_y);
    if !dev_y.is_empty() && constant_loss < best.dev_log_loss {
        return Ok(QualityFit {
            head: constant,
            alpha: None,
            dev_log_loss: constant_loss,
        });
    }
    if dev_y.len() >= MIN_PLATT_ROWS
        && let Some(calibrated) = platt(&best.head, dev_x, dev_y)?
    {
        best.dev_log_loss = log_loss(&calibrated, dev_x, dev_y);
        best.head = calibrated;
    }
    Ok(best)
}

/// Dev rows needed before Platt scaling: on a few dozen rows its slope is noise and can even
/// turn negative, inverting the head.
const MIN_PLATT_ROWS: usize = 100;

/// Platt scaling on dev: refits `sigmoid(a·z + b)` over the head's logits `z` and folds `a`, `b`
/// into the head, so probabilities are comparable across models (the decision compares them).
/// `None` when dev has a single class.
fn platt(head: &LinearHead, x: &Array2<f64>, y: &[bool]) -> Result<Option<LinearHead>, TrainError> {
    if y.iter().all(|g| *g) || y.iter().all(|g| !*g) {
        return Ok(None);
    }
    let logits = Array2::from_shape_fn((y.len(), 1), |(i, _)| {
        x.row(i)
            .iter()
            .zip(&head.weights)
            .map(|(a, w)| a * f64::from(*w))
            .sum::<f64>()
            + f64::from(head.bias)
    });
    let scaler = logistic(&logits, y, 1e-3)?;
    let a = f64::from(scaler.weights[0]);
    let b = f64::from(scaler.bias);
    if a <= 0.0 {
        return Ok(None);
    }
    Ok(Some(LinearHead {
        weights: head
            .weights
            .iter()
            .map(|w| (a * f64::from(*w)) as f32)
            .collect(),
        bias: (a * f64::from(head.bias) + b) as f32,
    }))
}

/// Fits a length head: ridge regression of `ln(1 + tokens)` (least squares on data augmented
/// with `sqrt(alpha)·I` rows, solved by linfa-linear), with the log-normal mean correction
/// `exp(σ²/2)` so `exp(w·x + b)` estimates the mean length that cost depends on. With fewer
/// than ten known lengths, a constant (their mean, or 256 tokens).
pub fn length_head(x: &Array2<f64>, tokens: &[Option<f64>]) -> Result<LengthHead, TrainError> {
    let (n, dim) = x.dim();
    let known: Vec<usize> = (0..n).filter(|&i| tokens[i].is_some()).collect();
    let observed: Vec<f64> = known
        .iter()
        .filter_map(|&i| tokens[i])
        .map(|t| t.clamp(0.0, MAX_TOKENS_FIT))
        .collect();
    let max_seen = observed.iter().copied().fold(1.0, f64::max);
    if known.len() < 10 {
        let guess = if observed.is_empty() {
            256.0
        } else {
            observed.iter().sum::<f64>() / observed.len() as f64
        };
        return Ok(LengthHead {
            weights: vec![0.0; dim],
            bias: guess.max(1.0).ln() as f32,
            min_tokens: 1.0,
            max_tokens: MAX_TOKENS_FIT as f32,
        });
    }
    let rows = known.len();
    let penalty = LENGTH_ALPHA.sqrt();
    let mut design = Array2::<f64>::zeros((rows + dim, dim + 1));
    let mut target = Array1::<f64>::zeros(rows + dim);
    for (r, (&i, t)) in known.iter().zip(&observed).enumerate() {
        for j in 0..dim {
            design[[r, j]] = x[[i, j]];
        }
        design[[r, dim]] = 1.0; // intercept column, left out of the penalty rows
        target[r] = t.ln_1p();
    }
    for j in 0..dim {
        design[[rows + j, j]] = penalty;
    }
    let fitted = LinearRegression::new()
        .with_intercept(false)
        .fit(&Dataset::new(design.clone(), target.clone()))
        .map_err(|e| TrainError::Fit(format!("length model: {e}")))?;
    let params = fitted.params();
    let mut residual_sq = 0.0;
    for r in 0..rows {
        let pred: f64 = design
            .row(r)
            .iter()
            .zip(params.iter())
            .map(|(a, b)| a * b)
            .sum();
        residual_sq += (target[r] - pred).powi(2);
    }
    let sigma2 = residual_sq / rows as f64;
    Ok(LengthHead {
        weights: params.iter().take(dim).map(|w| *w as f32).collect(),
        bias: (params[dim] + sigma2 / 2.0) as f32,
        min_tokens: 1.0,
        max_tokens: max_seen as f32,
    })
}
