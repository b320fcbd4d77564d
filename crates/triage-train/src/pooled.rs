//! Difficulty shared across models: a pooled quality head, and shrinkage toward it.
//!
//! Much of what makes a prompt hard is hard for every model. A head fitted per model on a few
//! hundred outcomes (a cold start, a new model, a seldom-routed one) cannot learn that from its
//! own rows; one logistic regression over every model's outcomes (shared feature weights plus
//! an intercept column per model) can. Each model's own head is then shrunk toward its pooled
//! form by how much data it has, `t = n / (n + κ)`, with the pooled fit's L2 strength and κ
//! chosen together on dev log-loss summed over all models. On a complete table dev is free to
//! choose κ = 0, which leaves the per-model heads as they were.
//!
//! A model known only from the server's log is held to κ ≥ [`BANDIT_MIN_KAPPA`] whatever dev
//! says. Its outcomes are bandit feedback: one outcome per prompt the router sent it, mostly
//! prompts it was predicted to be good at. Its own head learns that selection as much as the
//! model's skill, and its dev rows come from the same selection, so dev log-loss rewards the
//! head for it. On cold-start logs dev chose κ = 30 and the policies routed worse than with the
//! pooled heads (see `BANDIT_MIN_KAPPA`).

use ndarray16::Array2;
use rayon::prelude::*;
use triage_policy::LinearHead;

use crate::TrainError;
use crate::fit::{log_loss, logistic, match_base_rate};

/// One model's outcomes over standardised features.
pub struct ModelRows<'a> {
    /// Design matrix.
    pub x: &'a Array2<f64>,
    /// Good answer or not.
    pub y: &'a [bool],
    /// Fitting weights.
    pub w: &'a [f64],
    /// Every row is a logged outcome (bandit feedback): κ is at least [`BANDIT_MIN_KAPPA`].
    pub bandit: bool,
}

impl ModelRows<'_> {
    /// The κ this model is shrunk with when dev chose `chosen`.
    pub fn kappa(&self, chosen: f64) -> f64 {
        if self.bandit {
            chosen.max(BANDIT_MIN_KAPPA)
        } else {
            chosen
        }
    }
}

/// Shrinkage constants tried: 0 keeps the own heads, infinity uses the pooled ones.
pub const SHRINK_KAPPAS: [f64; 7] = [0.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, f64::INFINITY];
/// Least κ for a model whose outcomes all come from the log (see the module docs): its own head
/// has half the say only after 1,000 logged outcomes. Chosen on the ZeroEval *dev* split from
/// the final logs of five cold-start replays of its train split: mean dev AIQ 0.7951 with dev's
/// own κ choice, 0.8049 / 0.8059 / 0.8043 with κ = 300 / 3,000 / ∞ for every model (the optimum
/// is flat; 1,000 sits in the middle).
pub const BANDIT_MIN_KAPPA: f64 = 1000.0;
/// L2 strengths tried for the pooled fit.
pub const POOLED_ALPHAS: [f64; 3] = [100.0, 300.0, 1000.0];
/// The pooled fit sees at most this many rows (every k-th of each model's), which bounds its
/// cost on big tables, where the own heads carry the weight anyway. It is fitted once per
/// strength and cross-validation fold (40,000 before folds: ZeroEval's 53 models then spent
/// longer here than on every head together).
const MAX_POOLED_ROWS: usize = 15_000;

/// Pooled heads, one per model, each re-centred on its own model's rows.
pub fn pooled_heads(rows: &[ModelRows<'_>], alpha: f64) -> Result<Vec<LinearHead>, TrainError> {
    let dim = rows.first().map_or(0, |r| r.x.ncols());
    // linfa-logistic takes no sample weights: an outcome of weight w (an inverse propensity)
    // enters round(w) times, so the shared weights are not learned from the serving policy's
    // biased choice of prompts for each model.
    let weighted: Vec<(usize, usize)> = rows
        .iter()
        .enumerate()
        .flat_map(|(m, r)| {
            r.w.iter()
                .enumerate()
                .flat_map(move |(i, w)| std::iter::repeat_n((m, i), (w.round() as usize).max(1)))
        })
        .collect();
    let stride = weighted.len().div_ceil(MAX_POOLED_ROWS).max(1);
    let picked: Vec<(usize, usize)> = weighted.into_iter().step_by(stride).collect();
    let mut x = Array2::<f64>::zeros((picked.len(), dim + rows.len()));
    let mut y = Vec::with_capacity(picked.len());
    for (row, &(m, i)) in picked.iter().enumerate() {
        for (j, v) in rows[m].x.row(i).iter().enumerate() {
            x[[row, j]] = *v;
        }
        x[[row, dim + m]] = 1.0;
        y.push(rows[m].y[i]);
    }
    let shared = if y.iter().all(|g| *g) || y.iter().all(|g| !*g) {
        LinearHead {
            weights: vec![0.0; dim + rows.len()],
            bias: 0.0,
        }
    } else {
        logistic(&x, &y, alpha)?
    };
    Ok(rows
        .iter()
        .enumerate()
        .map(|(m, r)| {
            let mut head = LinearHead {
                weights: shared.weights[..dim].to_vec(),
                bias: shared.bias + shared.weights[dim + m],
            };
            match_base_rate(&mut head, r.x, r.y, r.w);
            head
        })
        .collect())
}

/// `own` shrunk toward `pooled` with `t = n / (n + κ)` (`n`: the model's rows, κ: `chosen`, or
/// more for a bandit-only model), then re-centred on those rows.
pub fn shrunk(
    own: &LinearHead,
    pooled: &LinearHead,
    chosen: f64,
    rows: &ModelRows<'_>,
) -> LinearHead {
    let kappa = rows.kappa(chosen);
    let n = rows.y.len() as f64;
    let t = if kappa.is_infinite() {
        0.0
    } else {
        n / (n + kappa)
    };
    if t >= 1.0 {
        return own.clone();
    }
    let mix = |a: f32, b: f32| (t * f64::from(a) + (1.0 - t) * f64::from(b)) as f32;
    let mut head = LinearHead {
        weights: own
            .weights
            .iter()
            .zip(&pooled.weights)
            .map(|(a, b)| mix(*a, *b))
            .collect(),
        bias: mix(own.bias, pooled.bias),
    };
    match_base_rate(&mut head, rows.x, rows.y, rows.w);
    head
}

/// Log-loss over all models, each row weighted by its fitting weight.
pub fn total_log_loss(heads: &[LinearHead], held: &[ModelRows<'_>]) -> f64 {
    let (mut loss, mut weight) = (0.0, 0.0);
    for (head, d) in heads.iter().zip(held) {
        let w: f64 = d.w.iter().sum();
        loss += w * log_loss(head, d.x, d.y, d.w);
        weight += w;
    }
    if weight > 0.0 { loss / weight } else { 0.0 }
}

/// One shrinkage setting: the pooled fit's L2 strength (`None`: the own heads, no pooled fit)
/// and κ (written as `null` when infinite).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ShrinkSetting {
    /// L2 strength of the pooled fit.
    pub alpha: Option<f64>,
    /// κ of `t = n / (n + κ)`.
    pub kappa: f64,
}

/// The settings worth trying on `train`: the own heads (only when no model is bandit-only, as
/// those must be shrunk whatever the data says), then each pooled strength with each κ that
/// changes something (κ values that give every model the same effective κ as the one before
/// would only repeat the same heads).
pub fn shrink_settings(train: &[ModelRows<'_>]) -> Vec<ShrinkSetting> {
    let any_bandit = train.iter().any(|r| r.bandit);
    let effective = |kappa: f64| -> Vec<f64> { train.iter().map(|r| r.kappa(kappa)).collect() };
    let mut kappas: Vec<f64> = Vec::new();
    for kappa in SHRINK_KAPPAS.into_iter().filter(|k| *k > 0.0 || any_bandit) {
        if kappas
            .last()
            .is_none_or(|&last| effective(last) != effective(kappa))
        {
            kappas.push(kappa);
        }
    }
    let own = (!any_bandit).then_some(ShrinkSetting {
        alpha: None,
        kappa: 0.0,
    });
    own.into_iter()
        .chain(POOLED_ALPHAS.into_iter().flat_map(|alpha| {
            kappas.iter().map(move |&kappa| ShrinkSetting {
                alpha: Some(alpha),
                kappa,
            })
        }))
        .collect()
}

/// The heads under each of `settings` (one pooled fit per strength), in the same order.
pub fn shrunk_heads(
    own: &[LinearHead],
    train: &[ModelRows<'_>],
    settings: &[ShrinkSetting],
) -> Result<Vec<Vec<LinearHead>>, TrainError> {
    // One pooled fit per distinct strength, in parallel (each is a single-threaded L-BFGS).
    let mut alphas: Vec<f64> = settings.iter().filter_map(|s| s.alpha).collect();
    alphas.sort_by(f64::total_cmp);
    alphas.dedup();
    let pooled: Vec<(f64, Vec<LinearHead>)> = alphas
        .par_iter()
        .map(|&alpha| pooled_heads(train, alpha).map(|heads| (alpha, heads)))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(settings.len());
    for setting in settings {
        let Some(alpha) = setting.alpha else {
            out.push(own.to_vec());
            continue;
        };
        let fit = pooled
            .iter()
            .find(|(a, _)| *a == alpha)
            .map(|(_, heads)| heads)
            .ok_or_else(|| TrainError::Fit("pooled fit missing".into()))?;
        out.push(
            own.iter()
                .zip(fit)
                .zip(train)
                .map(|((o, p), rows)| shrunk(o, p, setting.kappa, rows))
                .collect(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What dev chose.
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Shrinkage {
        /// L2 strength of the pooled fit (`None`: the own heads were kept and no pooled fit was
        /// chosen, so there is no strength to report).
        alpha: Option<f64>,
        /// κ of `t = n / (n + κ)`.
        kappa: f64,
        /// Dev log-loss of the own heads.
        own_dev_log_loss: f64,
        /// Dev log-loss after shrinkage.
        dev_log_loss: f64,
    }

    /// The shrinkage with the least log-loss on one held-out set, and the shrunk heads: the
    /// arithmetic `tune` runs on every cross-validation fold, on one split, so that its
    /// properties can be checked on synthetic data.
    fn choose_shrinkage(
        own: &[LinearHead],
        train: &[ModelRows<'_>],
        dev: &[ModelRows<'_>],
    ) -> Result<(Shrinkage, Vec<LinearHead>), TrainError> {
        let own_loss = total_log_loss(own, dev);
        let settings = shrink_settings(train);
        let heads = shrunk_heads(own, train, &settings)?;
        let mut best: Option<(Shrinkage, Vec<LinearHead>)> = None;
        for (setting, heads) in settings.into_iter().zip(heads) {
            let loss = total_log_loss(&heads, dev);
            if best.as_ref().is_none_or(|b| loss < b.0.dev_log_loss) {
                let shrinkage = Shrinkage {
                    alpha: setting.alpha,
                    kappa: setting.kappa,
                    own_dev_log_loss: own_loss,
                    dev_log_loss: loss,
                };
                best = Some((shrinkage, heads));
            }
        }
        best.ok_or_else(|| TrainError::Fit("no pooled strength tried".into()))
    }

    const DIM: usize = 20;

    /// `n` prompts of a model with `skill`; difficulty lies along the first two features.
    fn synthetic(rng: &mut fastrand::Rng, n: usize, skill: f64) -> (Array2<f64>, Vec<bool>) {
        let x = Array2::from_shape_fn((n, DIM), |_| rng.f64() * 2.0 - 1.0);
        let y: Vec<bool> = (0..n)
            .map(|i| {
                let z = skill - 3.0 * x[[i, 0]] + 1.5 * x[[i, 1]];
                rng.f64() < 1.0 / (1.0 + (-z).exp())
            })
            .collect();
        (x, y)
    }

    fn view<'a>(
        sets: &'a [(Array2<f64>, Vec<bool>)],
        ones: &'a [f64],
        bandit: &[bool],
    ) -> Vec<ModelRows<'a>> {
        sets.iter()
            .zip(bandit)
            .map(|((x, y), bandit)| ModelRows {
                x,
                y,
                w: &ones[..y.len()],
                bandit: *bandit,
            })
            .collect()
    }

    /// Twelve "models" share one difficulty direction; each has only a few rows. Shrinking toward
    /// the pooled head must beat the own heads on fresh data, and κ = 0 must change nothing.
    #[test]
    fn pooling_recovers_shared_difficulty_from_thin_models() {
        let mut rng = fastrand::Rng::with_seed(7);
        let skills: Vec<f64> = (0..12).map(|m| -1.0 + m as f64 * 0.2).collect();
        let train: Vec<_> = skills.iter().map(|s| synthetic(&mut rng, 40, *s)).collect();
        let dev: Vec<_> = skills.iter().map(|s| synthetic(&mut rng, 40, *s)).collect();
        let fresh: Vec<_> = skills
            .iter()
            .map(|s| synthetic(&mut rng, 400, *s))
            .collect();
        let ones = vec![1.0; 400];
        let (train_rows, dev_rows, fresh_rows) = (
            view(&train, &ones, &[false; 12]),
            view(&dev, &ones, &[false; 12]),
            view(&fresh, &ones, &[false; 12]),
        );
        let own: Vec<LinearHead> = train_rows
            .iter()
            .map(|r| logistic(r.x, r.y, 30.0).expect("fits"))
            .collect();
        let (choice, heads) = choose_shrinkage(&own, &train_rows, &dev_rows).expect("chooses");
        assert!(choice.kappa > 0.0, "{choice:?}");
        assert!(choice.dev_log_loss < choice.own_dev_log_loss, "{choice:?}");
        let before = total_log_loss(&own, &fresh_rows);
        let after = total_log_loss(&heads, &fresh_rows);
        assert!(
            after < before - 0.02,
            "fresh log-loss {before:.4} → {after:.4}"
        );

        let pooled = pooled_heads(&train_rows, 100.0).expect("fits");
        assert_eq!(shrunk(&own[0], &pooled[0], 0.0, &train_rows[0]), own[0]);
    }

    /// A bandit-only model is shrunk with κ ≥ BANDIT_MIN_KAPPA even when dev prefers the own
    /// heads (here dev is the train rows themselves, which the own heads fit best); the other
    /// model keeps dev's choice.
    #[test]
    fn bandit_only_models_are_shrunk_whatever_dev_says() {
        let mut rng = fastrand::Rng::with_seed(3);
        let train: Vec<_> = [0.0, 0.5]
            .iter()
            .map(|s| synthetic(&mut rng, 300, *s))
            .collect();
        let ones = vec![1.0; 300];
        let rows = view(&train, &ones, &[true, false]);
        let own: Vec<LinearHead> = rows
            .iter()
            .map(|r| logistic(r.x, r.y, 1.0).expect("fits"))
            .collect();
        let (choice, heads) = choose_shrinkage(&own, &rows, &rows).expect("chooses");
        assert_eq!(choice.kappa, 0.0, "{choice:?}");
        assert_eq!(rows[0].kappa(choice.kappa), BANDIT_MIN_KAPPA);
        let pooled = pooled_heads(&rows, choice.alpha.expect("a bandit-only model is shrunk"))
            .expect("fits");
        assert_eq!(
            heads[0],
            shrunk(&own[0], &pooled[0], BANDIT_MIN_KAPPA, &rows[0])
        );
        assert_ne!(heads[0], own[0]);
        assert_eq!(heads[1], own[1]);

        // Without a bandit-only model, dev's preference for the own heads keeps them, and no
        // pooled strength is reported (it used to be NaN in the log).
        let plain = view(&train, &ones, &[false, false]);
        let (kept, kept_heads) = choose_shrinkage(&own, &plain, &plain).expect("chooses");
        assert_eq!((kept.alpha, kept.kappa), (None, 0.0), "{kept:?}");
        assert_eq!(kept_heads, own);
    }
}
