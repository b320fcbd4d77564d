//! Fitting the per-model heads of a policy.
//!
//! Quality: one L2-regularised logistic regression per model (linfa-logistic) of
//! `quality >= 0.5`, with the regularisation strength chosen per model by dev log-loss, then
//! Platt-scaled on dev (the decision compares probabilities across models).
//! Length: one ridge regression per model of the answer's log length (normal equations solved
//! by linfa-linalg's Cholesky), corrected to a mean, so `exp(w·x + b)` is the expected length
//! that cost depends on.

use linfa::Dataset;
use linfa::traits::Fit;
use linfa_linalg::cholesky::SolveCInplace;
use linfa_logistic::LogisticRegression;
use ndarray16::{Array1, Array2, Axis, ShapeBuilder};
use triage_policy::{LengthHead, LinearHead, Standardizer};

use crate::TrainError;

/// L2 strengths tried for each quality head, chosen by out-of-fold log-loss (`tune`). The grid
/// ran from 30 before; 30 was never chosen on ZeroEval or MMLU-Pro and the weakest fit is the
/// slowest, while a strong end helps small or noisy tables and costs little.
pub const QUALITY_ALPHAS: [f64; 5] = [100.0, 300.0, 1000.0, 3000.0, 10000.0];
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

pub(crate) fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// `head`'s logit on one standardised row.
pub(crate) fn logit(head: &LinearHead, row: ndarray16::ArrayView1<'_, f64>) -> f64 {
    row.iter()
        .zip(&head.weights)
        .map(|(a, w)| a * f64::from(*w))
        .sum::<f64>()
        + f64::from(head.bias)
}

/// Log-loss of `head` on one standardised row.
fn row_log_loss(head: &LinearHead, row: ndarray16::ArrayView1<'_, f64>, good: bool) -> f64 {
    let p = sigmoid(logit(head, row)).clamp(1e-6, 1.0 - 1e-6);
    -if good { p.ln() } else { (1.0 - p).ln() }
}

/// Mean log-loss, weighted by `w`.
pub(crate) fn log_loss(head: &LinearHead, x: &Array2<f64>, y: &[bool], w: &[f64]) -> f64 {
    let total: f64 = y
        .iter()
        .zip(w)
        .enumerate()
        .map(|(i, (good, weight))| weight * row_log_loss(head, x.row(i), *good))
        .sum();
    let weights: f64 = w.iter().sum();
    if weights > 0.0 { total / weights } else { 0.0 }
}

fn constant_head(dim: usize, y: &[bool], w: &[f64]) -> LinearHead {
    // Laplace-smoothed weighted rate, so a model never seen to fail still gets p < 1.
    let total: f64 = w.iter().sum();
    let good: f64 = y.iter().zip(w).filter(|(g, _)| **g).map(|(_, w)| w).sum();
    let unit = total / w.len().max(1) as f64;
    let rate = (good + unit) / (total + 2.0 * unit);
    LinearHead {
        weights: vec![0.0; dim],
        bias: (rate / (1.0 - rate)).ln() as f32,
    }
}

pub(crate) fn logistic(x: &Array2<f64>, y: &[bool], alpha: f64) -> Result<LinearHead, TrainError> {
    logistic_from(x, y, alpha, None)
}

/// [`logistic`] started from `start` instead of zero. The L2 grid runs from the strongest
/// strength to the weakest, and each fit starts where the stronger one ended: the problem is
/// convex, so the optimum is the same, and L-BFGS needs fewer steps (about 10% off MMLU-Pro's
/// head fits; the column-major layout below is the larger gain, about 4x).
pub(crate) fn logistic_from(
    x: &Array2<f64>,
    y: &[bool],
    alpha: f64,
    start: Option<&LinearHead>,
) -> Result<LinearHead, TrainError> {
    let targets = Array1::from_vec(y.to_vec());
    let mut params = LogisticRegression::default()
        .alpha(alpha)
        .max_iterations(200);
    let usable = |h: &&LinearHead| {
        h.weights.len() == x.ncols() && h.weights.iter().chain([&h.bias]).all(|v| v.is_finite())
    };
    if let Some(head) = start.filter(usable) {
        let sign = if linfa_positive_is_good(y) { 1.0 } else { -1.0 };
        let init: Array1<f64> = head
            .weights
            .iter()
            .chain(std::iter::once(&head.bias))
            .map(|v| sign * f64::from(*v))
            .collect();
        params = params.initial_params(init);
    }
    // Column-major rows: linfa's gradient multiplies by `xᵀ`, which is then row-major, and
    // ndarray's matrix–vector product is several times faster along contiguous rows.
    let mut columns = Array2::zeros(x.raw_dim().f());
    columns.assign(x);
    let fitted = params
        .fit(&Dataset::new(columns, targets))
        .map_err(|e| TrainError::Fit(format!("logistic regression: {e}")))?;
    // linfa's positive class is the more frequent label; we always predict P(good).
    let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
    Ok(LinearHead {
        weights: fitted.params().iter().map(|w| (sign * w) as f32).collect(),
        bias: (sign * fitted.intercept()) as f32,
    })
}

/// Whether linfa-logistic will take "good" as its positive class for `y`: the more frequent
/// label, or on a tie the first one seen. A wrong guess only costs a worse starting point.
fn linfa_positive_is_good(y: &[bool]) -> bool {
    let good = y.iter().filter(|g| **g).count();
    let bad = y.len() - good;
    if good == bad {
        y.first().copied().unwrap_or(true)
    } else {
        good > bad
    }
}

/// Whether `w` holds importance weights (logged outcomes) rather than equal ones.
fn weighted(w: &[f64]) -> bool {
    w.iter().any(|v| (v - 1.0).abs() > 1e-12)
}

/// Shifts `head`'s intercept so that its mean prediction, weighted by `w`, equals the weighted
/// rate of good answers. linfa-logistic fits unweighted; on logged outcomes that fit mostly
/// reflects the prompts the router sent each model, and a strongly regularised head is little
/// more than that biased base rate. Re-centring under inverse-propensity weights removes the
/// bias of the base rate while keeping the prompt-dependent part of the fit.
fn recentre(head: &mut LinearHead, x: &Array2<f64>, y: &[bool], w: &[f64]) {
    if weighted(w) {
        match_base_rate(head, x, y, w);
    }
}

/// Shifts `head`'s intercept so that its mean prediction over `x`, weighted by `w`, equals the
/// weighted rate of good answers in `y`.
pub(crate) fn match_base_rate(head: &mut LinearHead, x: &Array2<f64>, y: &[bool], w: &[f64]) {
    if y.is_empty() {
        return;
    }
    let logits: Vec<f64> = (0..y.len()).map(|i| logit(head, x.row(i))).collect();
    let total: f64 = w.iter().sum();
    let target = y
        .iter()
        .zip(w)
        .filter(|(g, _)| **g)
        .map(|(_, w)| w)
        .sum::<f64>()
        / total;
    let target = target.clamp(1e-3, 1.0 - 1e-3);
    let mean_at = |shift: f64| -> f64 {
        logits
            .iter()
            .zip(w)
            .map(|(z, w)| w * sigmoid(z + shift))
            .sum::<f64>()
            / total
    };
    // The weighted mean prediction increases with the shift: bisection finds it.
    let (mut lo, mut hi) = (-20.0, 20.0);
    for _ in 0..60 {
        let mid = f64::midpoint(lo, hi);
        if mean_at(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    head.bias = (f64::from(head.bias) + f64::midpoint(lo, hi)) as f32;
}

/// Quality heads along the L2 grid: the prompt-blind constant head first (`None`: with little
/// data, a model seldom routed to, it can beat every regularised fit), then
/// [`QUALITY_ALPHAS`] from the strongest to the weakest, each re-centred under the fitting
/// weights. With a single class, the constant alone.
///
/// Each fit starts from `starts`' head at the same strength when given (the same model's path
/// on another cross-validation fold, fitted on mostly the same rows), else where the stronger
/// one ended. The problem is convex, so the optimum is the same; L-BFGS needs fewer steps.
pub fn quality_path(
    x: &Array2<f64>,
    y: &[bool],
    w: &[f64],
    starts: Option<&[(Option<f64>, LinearHead)]>,
) -> Result<Vec<(Option<f64>, LinearHead)>, TrainError> {
    let mut path = vec![(None, constant_head(x.ncols(), y, w))];
    if y.iter().all(|g| *g) || y.iter().all(|g| !*g) {
        return Ok(path);
    }
    let mut previous: Option<LinearHead> = None;
    for alpha in QUALITY_ALPHAS.into_iter().rev() {
        let start = starts
            .and_then(|s| s.iter().find(|(a, _)| *a == Some(alpha)))
            .map(|(_, h)| h)
            .or(previous.as_ref());
        let mut head = logistic_from(x, y, alpha, start)?;
        previous = Some(head.clone());
        recentre(&mut head, x, y, w);
        path.push((Some(alpha), head));
    }
    Ok(path)
}

/// The quality head at one point of [`quality_path`]'s grid (a single class gives the constant
/// head whatever `alpha` says).
pub fn quality_head_at(
    x: &Array2<f64>,
    y: &[bool],
    w: &[f64],
    alpha: Option<f64>,
) -> Result<LinearHead, TrainError> {
    let all_same = y.iter().all(|g| *g) || y.iter().all(|g| !*g);
    match alpha {
        Some(alpha) if !all_same => {
            let mut head = logistic(x, y, alpha)?;
            recentre(&mut head, x, y, w);
            Ok(head)
        }
        _ => Ok(constant_head(x.ncols(), y, w)),
    }
}

/// Held-out rows needed before Platt scaling: on a few dozen rows its slope is noise and can even
/// turn negative, inverting the head.
pub const MIN_PLATT_ROWS: usize = 100;

/// Platt scaling on held-out logits `z` (out-of-fold predictions): fits `sigmoid(a·z + b)`, so
/// probabilities are comparable across models (the decision compares them). `None` with fewer
/// than [`MIN_PLATT_ROWS`] rows, importance-weighted rows (an unweighted refit would undo the
/// re-centring), a single class, or a slope that is not positive.
pub fn platt_map(z: &[f64], y: &[bool], w: &[f64]) -> Result<Option<(f64, f64)>, TrainError> {
    if y.len() < MIN_PLATT_ROWS || weighted(w) || y.iter().all(|g| *g) || y.iter().all(|g| !*g) {
        return Ok(None);
    }
    let logits = Array2::from_shape_fn((y.len(), 1), |(i, _)| z[i]);
    let scaler = logistic(&logits, y, 1e-3)?;
    let a = f64::from(scaler.weights[0]);
    let b = f64::from(scaler.bias);
    Ok((a > 0.0).then_some((a, b)))
}

/// `head` with the Platt map `sigmoid(a·z + b)` folded into its weights.
pub fn scaled(head: &LinearHead, a: f64, b: f64) -> LinearHead {
    LinearHead {
        weights: head
            .weights
            .iter()
            .map(|w| (a * f64::from(*w)) as f32)
            .collect(),
        bias: (a * f64::from(head.bias) + b) as f32,
    }
}

/// Answer length assumed for a model whose outcomes carry no token counts.
pub const UNKNOWN_LENGTH_TOKENS: f64 = 256.0;

/// Fits a length head: ridge regression of `ln(1 + tokens)` (intercept unpenalised), with the
/// log-normal mean correction `exp(σ²/2)` so `exp(w·x + b)` estimates the mean length that cost
/// depends on. With fewer than ten known lengths, a constant (their mean, or
/// [`UNKNOWN_LENGTH_TOKENS`]).
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
            UNKNOWN_LENGTH_TOKENS
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
    // Ridge through the normal equations of the centred rows, (XcᵀXc + αI)·w = Xcᵀ·yc, with
    // the intercept ȳ − x̄·w left unpenalised. One d×d Cholesky solve: a QR of the rows augmented
    // with √α·I (the same solution) took most of MMLU-Pro's training time.
    let xs = x.select(Axis(0), &known);
    let target: Array1<f64> = observed.iter().map(|t| t.ln_1p()).collect();
    let mean_x = xs
        .mean_axis(Axis(0))
        .ok_or_else(|| TrainError::Fit("length model: no rows".into()))?;
    let mean_y = target.mean().unwrap_or(0.0);
    let centred = &xs - &mean_x;
    let mut gram = centred.t().dot(&centred);
    for j in 0..dim {
        gram[[j, j]] += LENGTH_ALPHA;
    }
    let rhs = centred.t().dot(&(&target - mean_y)).insert_axis(Axis(1));
    let weights = gram
        .solvec_into(rhs)
        .map_err(|e| TrainError::Fit(format!("length model: {e}")))?
        .remove_axis(Axis(1));
    let intercept = mean_y - mean_x.dot(&weights);
    let residuals = &target - &xs.dot(&weights) - intercept;
    let sigma2 = residuals.mapv(|r| r * r).mean().unwrap_or(0.0);
    Ok(LengthHead {
        weights: weights.iter().map(|w| *w as f32).collect(),
        bias: (intercept + sigma2 / 2.0) as f32,
        min_tokens: 1.0,
        max_tokens: max_seen as f32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn predict(head: &LinearHead, row: &[f64]) -> f64 {
        sigmoid(logit(head, ndarray16::ArrayView1::from(row)))
    }

    #[test]
    fn recentring_matches_the_weighted_rate_of_good_answers() {
        // The router sent this model mostly easy prompts: 80 good answers at weight 1, and 20
        // bad ones it was explored on, each standing for 10.
        let x = Array2::from_shape_fn((100, 2), |(i, j)| ((i * 7 + j * 3) % 11) as f64 / 11.0);
        let y: Vec<bool> = (0..100).map(|i| i < 80).collect();
        let w: Vec<f64> = (0..100).map(|i| if i < 80 { 1.0 } else { 10.0 }).collect();
        let mut head = logistic(&x, &y, 1000.0).expect("fits");
        let before: f64 = (0..100)
            .map(|i| predict(&head, &[x[[i, 0]], x[[i, 1]]]))
            .sum::<f64>()
            / 100.0;
        assert!(
            before > 0.7,
            "unweighted fit follows the biased sample: {before}"
        );
        recentre(&mut head, &x, &y, &w);
        let weighted_mean: f64 = (0..100)
            .map(|i| w[i] * predict(&head, &[x[[i, 0]], x[[i, 1]]]))
            .sum::<f64>()
            / w.iter().sum::<f64>();
        let rate = 80.0 / 280.0;
        assert!(
            (weighted_mean - rate).abs() < 1e-6,
            "{weighted_mean} vs {rate}"
        );

        // Equal weights leave the head alone.
        let mut same = logistic(&x, &y, 1000.0).expect("fits");
        let bias = same.bias;
        recentre(&mut same, &x, &y, &[1.0; 100]);
        assert_eq!(same.bias, bias);
    }

    #[test]
    fn a_warm_start_reaches_the_cold_optimum_in_either_orientation() {
        let x = Array2::from_shape_fn((300, 4), |(i, j)| {
            (((i * 13 + j * 7) % 17) as f64 / 17.0 - 0.5) * (j + 1) as f64
        });
        let score = |i: usize| x[[i, 0]] - 0.5 * x[[i, 2]] + ((i * 5) % 3) as f64 * 0.3;
        // Mostly good answers (linfa's positive class is "good"), then mostly bad ones (it is
        // "bad", so the start must be flipped into linfa's orientation).
        for threshold in [-0.6, 0.6] {
            let y: Vec<bool> = (0..300).map(|i| score(i) > threshold).collect();
            let strong = logistic(&x, &y, 100.0).expect("fits");
            let cold = logistic(&x, &y, 1.0).expect("fits");
            let warm = logistic_from(&x, &y, 1.0, Some(&strong)).expect("fits");
            assert!(cold.weights.iter().any(|w| w.abs() > 0.1), "{cold:?}");
            for (c, w) in cold.weights.iter().zip(&warm.weights) {
                assert!((c - w).abs() < 1e-2, "{cold:?} vs {warm:?}");
            }
            assert!((cold.bias - warm.bias).abs() < 1e-2, "{cold:?} vs {warm:?}");
        }
    }

    #[test]
    fn the_guessed_orientation_is_linfas() {
        let x = Array2::from_shape_fn((4, 1), |(i, _)| i as f64);
        for y in [
            [true, true, true, false],
            [true, false, false, false],
            [true, false, true, false],
            [false, true, false, true],
        ] {
            let fitted = LogisticRegression::default()
                .fit(&Dataset::new(x.clone(), Array1::from_vec(y.to_vec())))
                .expect("fits");
            assert_eq!(
                fitted.labels().pos.class,
                linfa_positive_is_good(&y),
                "{y:?}"
            );
        }
    }

    #[test]
    fn the_length_head_is_the_ridge_optimum_with_a_free_intercept() {
        let x = Array2::from_shape_fn((200, 3), |(i, j)| ((i * (j + 3) * 7) % 23) as f64 / 23.0);
        let tokens: Vec<Option<f64>> = (0..200)
            .map(|i| {
                let noise = ((i * 11) % 5) as f64 * 0.1;
                (i % 9 != 0).then(|| (3.0 + x[[i, 0]] - 2.0 * x[[i, 1]] + noise).exp() - 1.0)
            })
            .collect();
        let head = length_head(&x, &tokens).expect("fits");
        let known: Vec<usize> = (0..200).filter(|&i| tokens[i].is_some()).collect();
        let residual = |i: usize| {
            let fitted: f64 = (0..3).map(|j| x[[i, j]] * f64::from(head.weights[j])).sum();
            tokens[i].map_or(0.0, f64::ln_1p) - fitted
        };
        let residuals: Vec<f64> = known.iter().map(|&i| residual(i)).collect();
        let n = residuals.len() as f64;
        let mean = residuals.iter().sum::<f64>() / n;
        let sigma2 = residuals.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
        // The bias is the free intercept plus the log-normal correction.
        assert!(
            (f64::from(head.bias) - (mean + sigma2 / 2.0)).abs() < 1e-4,
            "{head:?}"
        );
        // Zero gradient: each weight's penalty balances its feature's correlation with the
        // residuals once the intercept is taken out.
        for j in 0..3 {
            let pull: f64 = known
                .iter()
                .zip(&residuals)
                .map(|(&i, r)| x[[i, j]] * (r - mean))
                .sum();
            let penalty = LENGTH_ALPHA * f64::from(head.weights[j]);
            assert!(
                (pull - penalty).abs() < 1e-3,
                "feature {j}: {pull} vs {penalty}"
            );
        }
        assert!(head.weights[0] > 0.0 && head.weights[1] < 0.0, "{head:?}");
    }
}
