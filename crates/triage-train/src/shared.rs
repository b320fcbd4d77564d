//! Fitting the classifier shared by all models (`triage_policy::SharedClassifier`).
//!
//! One hidden ReLU layer, one sigmoid output per model, trained on every observed
//! (prompt, model) cell at once with masked, weighted log-loss: a cell without an outcome
//! contributes nothing, and a logged cell weighs what its propensity weight says. Adam on
//! shuffled mini-batches, L2 weight decay, and early stopping on dev log-loss; the L2 strength
//! is chosen on dev too. Five differently seeded members are averaged in logits, which is again
//! one network (their hidden layers side by side), so serving sees a single classifier. The
//! refit on train + dev runs each member for the number of epochs dev chose for it.
//!
//! Everything is seeded, and ndarray's products are single-threaded here, so the same data
//! always gives the same weights.

use ndarray16::{Array1, Array2, Axis};
use triage_policy::{PolicyFile, SharedClassifier};

use crate::TrainError;
use crate::fit::design;
use crate::prepare::Prepared;

/// Hidden units per member: enough to carry topic and difficulty, few enough to fit a few
/// thousand prompts.
pub const HIDDEN: usize = 64;
/// Differently seeded members averaged (in logits): one member stops after a handful of epochs
/// on a few thousand prompts, so its weights are noisy, and averaging five steadies them
/// (5-fold CV on ZeroEval train + dev: AIQ 0.8226 with one member, 0.8252 with five).
pub const MEMBERS: u64 = 5;
/// L2 weight decays tried, chosen by dev log-loss.
pub const DECAYS: [f32; 5] = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1];
/// Epochs without a better dev log-loss before training stops.
const PATIENCE: usize = 8;
/// Upper bound on epochs.
const MAX_EPOCHS: usize = 150;
const BATCH: usize = 64;
const LEARNING_RATE: f32 = 1e-3;
/// Fixed seed: the same table trains the same classifier.
const SEED: u64 = 0x5eed_c1a5;

/// Outcomes of every model on a set of prompts: `good[[i, m]]` is 1 for a good answer, and
/// `weight[[i, m]]` the cell's fitting weight (0 where the model has no outcome on prompt `i`,
/// or is left out of the classifier).
pub struct Cells {
    /// Standardised features, one row per prompt.
    pub x: Array2<f32>,
    /// 1.0 for a good answer, else 0.0.
    pub good: Array2<f32>,
    /// Fitting weight of each cell (0: not observed).
    pub weight: Array2<f32>,
}

/// A fitted classifier and how it was chosen.
pub struct SharedFit {
    /// The weights (shares still to be chosen).
    pub classifier: SharedClassifier,
    /// The chosen L2 weight decay.
    pub decay: f32,
    /// Per member, epochs to its best dev log-loss (what a refit on train + dev runs for).
    pub epochs: Vec<usize>,
    /// That log-loss, per observed dev cell.
    pub dev_log_loss: f64,
}

#[derive(Clone)]
struct Params {
    w1: Array2<f32>,
    b1: Array1<f32>,
    w2: Array2<f32>,
    b2: Array1<f32>,
}

/// Adam's running moments, one per parameter array.
struct Moments {
    m: Params,
    v: Params,
    step: i32,
}

impl Params {
    fn init(dim: usize, models: usize, base_logits: &Array1<f32>, rng: &mut fastrand::Rng) -> Self {
        // He-uniform input weights for the ReLU layer; small output weights, so training starts
        // from each model's base rate.
        let a1 = (6.0 / dim.max(1) as f32).sqrt();
        let a2 = (1.0 / HIDDEN as f32).sqrt() * 0.1;
        let mut uniform = |a: f32| (rng.f32() * 2.0 - 1.0) * a;
        Self {
            w1: Array2::from_shape_fn((HIDDEN, dim), |_| uniform(a1)),
            b1: Array1::zeros(HIDDEN),
            w2: Array2::from_shape_fn((models, HIDDEN), |_| uniform(a2)),
            b2: base_logits.clone(),
        }
    }

    fn zeros_like(&self) -> Self {
        Self {
            w1: Array2::zeros(self.w1.raw_dim()),
            b1: Array1::zeros(self.b1.raw_dim()),
            w2: Array2::zeros(self.w2.raw_dim()),
            b2: Array1::zeros(self.b2.raw_dim()),
        }
    }

    /// Hidden pre-activations and output probabilities for rows `x`.
    fn forward(&self, x: &Array2<f32>) -> (Array2<f32>, Array2<f32>) {
        let z1 = x.dot(&self.w1.t()) + &self.b1;
        let a = z1.mapv(|v| v.max(0.0));
        let p = (a.dot(&self.w2.t()) + &self.b2).mapv(|z| 1.0 / (1.0 + (-z).exp()));
        (z1, p)
    }

    fn into_classifier(self, models: usize) -> SharedClassifier {
        SharedClassifier {
            hidden: self.b1.len(),
            w1: self.w1.into_iter().collect(),
            b1: self.b1.to_vec(),
            w2: self.w2.into_iter().collect(),
            b2: self.b2.to_vec(),
            share: vec![0.0; models],
        }
    }
}

/// Mean weighted log-loss over the observed cells.
fn log_loss(p: &Array2<f32>, cells: &Cells) -> f64 {
    let mut total = 0.0;
    let mut weight = 0.0;
    for ((p, y), w) in p.iter().zip(&cells.good).zip(&cells.weight) {
        if *w > 0.0 {
            let p = f64::from(*p).clamp(1e-6, 1.0 - 1e-6);
            let y = f64::from(*y);
            total -= f64::from(*w) * (y * p.ln() + (1.0 - y) * (1.0 - p).ln());
            weight += f64::from(*w);
        }
    }
    if weight > 0.0 { total / weight } else { 0.0 }
}

/// One Adam step on a mini-batch.
fn step(
    params: &mut Params,
    adam: &mut Moments,
    x: &Array2<f32>,
    y: &Array2<f32>,
    w: &Array2<f32>,
    decay: f32,
) {
    let (z1, p) = params.forward(x);
    let observed = w.sum().max(1.0);
    // d(loss)/d(logit) of a weighted mean log-loss.
    let dz2 = (&p - y) * w / observed;
    let a = z1.mapv(|v| v.max(0.0));
    let g_w2 = dz2.t().dot(&a) + &params.w2 * decay;
    let g_b2 = dz2.sum_axis(Axis(0));
    let mut dz1 = dz2.dot(&params.w2);
    dz1.zip_mut_with(&z1, |d, z| {
        if *z <= 0.0 {
            *d = 0.0;
        }
    });
    let g_w1 = dz1.t().dot(x) + &params.w1 * decay;
    let g_b1 = dz1.sum_axis(Axis(0));

    adam.step += 1;
    let (beta1, beta2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    let correction1 = 1.0 - beta1.powi(adam.step);
    let correction2 = 1.0 - beta2.powi(adam.step);
    let update = |theta: &mut f32, g: f32, m: &mut f32, v: &mut f32| {
        *m = beta1 * *m + (1.0 - beta1) * g;
        *v = beta2 * *v + (1.0 - beta2) * g * g;
        *theta -= LEARNING_RATE * (*m / correction1) / ((*v / correction2).sqrt() + eps);
    };
    macro_rules! apply {
        ($field:ident, $grad:expr) => {
            ndarray16::Zip::from(&mut params.$field)
                .and(&$grad)
                .and(&mut adam.m.$field)
                .and(&mut adam.v.$field)
                .for_each(|t, g, m, v| update(t, *g, m, v));
        };
    }
    apply!(w1, g_w1);
    apply!(b1, g_b1);
    apply!(w2, g_w2);
    apply!(b2, g_b2);
}

fn rows(cells: &Cells, idx: &[usize]) -> (Array2<f32>, Array2<f32>, Array2<f32>) {
    (
        cells.x.select(Axis(0), idx),
        cells.good.select(Axis(0), idx),
        cells.weight.select(Axis(0), idx),
    )
}

/// Each model's weighted base rate as a logit (0 for a model without observed cells).
fn base_logits(cells: &Cells) -> Array1<f32> {
    let good = (&cells.good * &cells.weight).sum_axis(Axis(0));
    let total = cells.weight.sum_axis(Axis(0));
    ndarray16::Zip::from(&good).and(&total).map_collect(|g, t| {
        if *t > 0.0 {
            let r = (g / t).clamp(0.01, 0.99);
            (r / (1.0 - r)).ln()
        } else {
            0.0
        }
    })
}

/// Trains for `epochs` (or, with `dev`, until dev stops improving), returning the parameters
/// with the best dev log-loss, the epochs that took, and that loss.
fn train(
    train: &Cells,
    dev: Option<&Cells>,
    decay: f32,
    epochs: usize,
    seed: u64,
) -> (Params, usize, f64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (n, dim) = train.x.dim();
    let models = train.good.ncols();
    let mut params = Params::init(dim, models, &base_logits(train), &mut rng);
    let mut adam = Moments {
        m: params.zeros_like(),
        v: params.zeros_like(),
        step: 0,
    };
    let mut order: Vec<usize> = (0..n).collect();
    let mut best: Option<(Params, usize, f64)> = None;
    for epoch in 1..=epochs {
        rng.shuffle(&mut order);
        for batch in order.chunks(BATCH) {
            let (x, y, w) = rows(train, batch);
            step(&mut params, &mut adam, &x, &y, &w, decay);
        }
        let Some(dev) = dev else { continue };
        let loss = log_loss(&params.forward(&dev.x).1, dev);
        match &best {
            Some((_, at, l)) if loss >= *l => {
                if epoch - at >= PATIENCE {
                    break;
                }
            }
            _ => best = Some((params.clone(), epoch, loss)),
        }
    }
    best.unwrap_or((params, epochs, f64::NAN))
}

/// Averages the members' logits: one network whose hidden layer is all of theirs side by side,
/// with each member's output weights divided by the member count.
fn combine(members: Vec<Params>) -> Params {
    let n = members.len().max(1) as f32;
    let w1: Vec<_> = members.iter().map(|p| p.w1.view()).collect();
    let w2: Vec<_> = members.iter().map(|p| p.w2.view()).collect();
    let b1: Vec<_> = members.iter().map(|p| p.b1.view()).collect();
    let mut b2 = Array1::zeros(members.first().map_or(0, |p| p.b2.len()));
    for p in &members {
        b2 = b2 + &p.b2 / n;
    }
    Params {
        w1: ndarray16::concatenate(Axis(0), &w1).unwrap_or_default(),
        b1: ndarray16::concatenate(Axis(0), &b1).unwrap_or_default(),
        w2: ndarray16::concatenate(Axis(1), &w2).unwrap_or_default() / n,
        b2,
    }
}

/// Fits the classifier on `train`, choosing the weight decay by dev log-loss; then trains
/// differently seeded members with that decay, each stopped where dev log-loss is best, and
/// averages their logits.
pub fn fit_shared(train_cells: &Cells, dev: &Cells) -> Result<SharedFit, TrainError> {
    if train_cells.x.nrows() == 0 || dev.weight.sum() <= 0.0 {
        return Err(TrainError::Fit(
            "the shared classifier needs train and dev outcomes".into(),
        ));
    }
    // The first member is the run that chose the decay.
    let mut chosen: Option<(f32, f64, Params, usize)> = None;
    for decay in DECAYS {
        let (params, epochs, loss) = train(train_cells, Some(dev), decay, MAX_EPOCHS, SEED);
        tracing::debug!(decay, epochs, dev_log_loss = loss, "shared classifier");
        if chosen.as_ref().is_none_or(|(_, l, _, _)| loss < *l) {
            chosen = Some((decay, loss, params, epochs));
        }
    }
    let (decay, _, first, first_epochs) =
        chosen.ok_or_else(|| TrainError::Fit("no weight decay to try".into()))?;
    let mut members = vec![first];
    let mut epochs = vec![first_epochs];
    for member in 1..MEMBERS {
        let (params, at, _) = train(train_cells, Some(dev), decay, MAX_EPOCHS, SEED + member);
        members.push(params);
        epochs.push(at);
    }
    let combined = combine(members);
    let dev_log_loss = log_loss(&combined.forward(&dev.x).1, dev);
    Ok(SharedFit {
        classifier: combined.into_classifier(train_cells.good.ncols()),
        decay,
        epochs,
        dev_log_loss,
    })
}

/// The same recipe refitted on `all` (train + dev): each member for the epochs dev chose.
pub fn refit_shared(all: &Cells, decay: f32, epochs: &[usize]) -> SharedClassifier {
    let members = epochs
        .iter()
        .zip(0..)
        .map(|(&e, member)| train(all, None, decay, e, SEED + member).0)
        .collect();
    combine(members).into_classifier(all.good.ncols())
}

/// Blend shares tried by cross-validation (0: the per-model heads alone).
pub const SHARES: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

/// The cells of `prompts` for the policy's models, in `file`'s order; models in `excluded`
/// (known only from logged traffic) get weight 0 everywhere. Prompts with no included outcome
/// are skipped.
pub fn cells(
    prepared: &Prepared,
    file: &PolicyFile,
    prompts: &[usize],
    excluded: &[bool],
) -> Cells {
    let o = &prepared.outcomes;
    let feats = &prepared.features.features;
    let index: Vec<Option<usize>> = file.models.iter().map(|m| o.model_index(&m.name)).collect();
    let cell = |p: usize, m: usize| {
        index[m]
            .filter(|_| !excluded.get(m).copied().unwrap_or(true))
            .and_then(|i| o.cells[p][i])
    };
    let kept: Vec<usize> = prompts
        .iter()
        .copied()
        .filter(|&p| (0..index.len()).any(|m| cell(p, m).is_some()))
        .collect();
    let rows: Vec<&[f32]> = kept.iter().map(|&p| feats[p].as_slice()).collect();
    let x = design(&rows, &file.standardize).mapv(|v| v as f32);
    let models = index.len();
    let mut good = Array2::zeros((kept.len(), models));
    let mut weight = Array2::zeros((kept.len(), models));
    for (r, &p) in kept.iter().enumerate() {
        for m in 0..models {
            if let Some(c) = cell(p, m) {
                good[[r, m]] = if triage_core::outcome::is_good_answer(c.quality) {
                    1.0
                } else {
                    0.0
                };
                weight[[r, m]] = c.weight as f32;
            }
        }
    }
    Cells { x, good, weight }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIM: usize = 8;

    /// Two models whose good answers depend on the sign of x0·x1 (opposite ways): no linear
    /// head can see it, one hidden layer can.
    fn xor_cells(rng: &mut fastrand::Rng, n: usize) -> Cells {
        let x = Array2::from_shape_fn((n, DIM), |_| rng.f32() * 2.0 - 1.0);
        let good = Array2::from_shape_fn((n, 2), |(i, m)| {
            let same_sign = x[[i, 0]] * x[[i, 1]] > 0.0;
            f32::from(u8::from(same_sign == (m == 0)))
        });
        Cells {
            x,
            good,
            weight: Array2::ones((n, 2)),
        }
    }

    #[test]
    fn learns_a_shared_interaction_no_linear_head_can_and_is_deterministic() {
        let mut rng = fastrand::Rng::with_seed(3);
        let train = xor_cells(&mut rng, 1500);
        let dev = xor_cells(&mut rng, 400);
        let fit = fit_shared(&train, &dev).expect("fits");
        // A constant (or any linear) predictor is stuck at ln 2 ≈ 0.693 on this data.
        assert!(fit.dev_log_loss < 0.55, "dev log-loss {}", fit.dev_log_loss);
        let again = fit_shared(&train, &dev).expect("fits");
        assert_eq!(fit.classifier, again.classifier);
        assert_eq!((fit.decay, fit.epochs), (again.decay, again.epochs));
    }

    #[test]
    fn cells_without_weight_do_not_move_the_fit() {
        let mut rng = fastrand::Rng::with_seed(5);
        let train = xor_cells(&mut rng, 600);
        let dev = xor_cells(&mut rng, 200);
        let mut masked = Cells {
            x: train.x.clone(),
            good: train.good.clone(),
            weight: train.weight.clone(),
        };
        // Hide model 1 on the first 100 prompts, then scramble its labels there.
        for i in 0..100 {
            masked.weight[[i, 1]] = 0.0;
        }
        let a = fit_shared(&masked, &dev).expect("fits");
        for i in 0..100 {
            masked.good[[i, 1]] = 1.0 - masked.good[[i, 1]];
        }
        let b = fit_shared(&masked, &dev).expect("fits");
        assert_eq!(a.classifier, b.classifier);
    }
}
