//! How much of an AIQ difference, and of Triage's cost at parity, is the luck of one test split:
//! a paired bootstrap over its prompts.
//!
//! Each resample draws the evaluated prompts with replacement and re-scores every router on
//! that draw, with the same per-prompt choices the report was built from: every router, the
//! single models and so the AIQ's cost range all see the same draw. So the spread of
//! "Triage − X" shows how much that difference owes to which prompts happened to be in the
//! split, with the policies held fixed (`--folds` shows the other half: refitting on other
//! prompts). The draws come from a fixed seed, so a rerun reproduces the figures.

use serde::Serialize;

use crate::eval::baselines::{by_quality_then_cheapness, point_cost_range};
use crate::eval::curve::{Point, aiq, cost_to_reach, hull};
use crate::table::Outcomes;

/// Per-prompt realised cost and quality of one operating setting (one knob value of one router,
/// or one single model), aligned with the evaluated prompts. `NaN` marks a prompt the setting has
/// no outcome for; it is left out of the setting's means, as single models are scored.
#[derive(Clone, Debug)]
pub struct Setting {
    cost: Vec<f64>,
    quality: Vec<f64>,
}

impl Setting {
    /// A router's setting from its per-prompt choices (model indices). A prompt without a choice
    /// counts as cost 0 and quality 0, as in [`crate::simulate::realised`].
    pub fn from_choices(o: &Outcomes, prompts: &[usize], choices: &[Option<usize>]) -> Self {
        let (cost, quality) = prompts
            .iter()
            .zip(choices)
            .map(|(&p, c)| {
                c.and_then(|m| o.cells[p][m])
                    .map_or((0.0, 0.0), |cell| (cell.cost_usd, cell.quality))
            })
            .unzip();
        Self { cost, quality }
    }

    /// From per-prompt realised costs and qualities (a cascade's, which are not one model's).
    pub fn from_values(cost: Vec<f64>, quality: Vec<f64>) -> Self {
        Self { cost, quality }
    }

    /// Always answering with model `m`.
    pub fn single(o: &Outcomes, prompts: &[usize], m: usize) -> Self {
        let (cost, quality) = prompts
            .iter()
            .map(|&p| {
                o.cells[p][m].map_or((f64::NAN, f64::NAN), |cell| (cell.cost_usd, cell.quality))
            })
            .unzip();
        Self { cost, quality }
    }

    /// Mean cost and quality with prompt `k` counted `weights[k]` times.
    fn point(&self, weights: &[f64]) -> Point {
        let (mut cost, mut quality, mut n) = (0.0, 0.0, 0.0);
        for ((c, q), w) in self.cost.iter().zip(&self.quality).zip(weights) {
            if !c.is_nan() {
                cost += w * c;
                quality += w * q;
                n += w;
            }
        }
        if n == 0.0 {
            return Point {
                cost: f64::NAN,
                quality: f64::NAN,
            };
        }
        Point {
            cost: cost / n,
            quality: quality / n,
        }
    }
}

/// A router as the bootstrap sees it: its name and one setting per knob value.
pub type RouterSettings = (String, Vec<Setting>);

/// Triage against one other router.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// The other router's name, as in the report's rows.
    pub against: String,
    /// Triage's AIQ minus its AIQ on the evaluated split.
    pub aiq_difference: f64,
    /// 2.5th and 97.5th percentile of that difference over the resamples.
    pub difference_95: [f64; 2],
    /// Share of resamples in which Triage's AIQ is strictly higher.
    pub share_triage_ahead: f64,
}

/// What the bootstrap found.
#[derive(Clone, Debug, Serialize)]
pub struct Bootstrap {
    /// Resamples drawn.
    pub resamples: usize,
    /// Seed of the draws.
    pub seed: u64,
    /// Triage's AIQ on the evaluated split, from the settings (equals its row's AIQ).
    pub triage_aiq: f64,
    /// 2.5th and 97.5th percentile of Triage's AIQ over the resamples.
    pub triage_aiq_95: [f64; 2],
    /// Triage's cost at parity on the evaluated split (% of the best single model's cost; `None`
    /// where not reached), from the settings (equals its row's).
    pub triage_cost_at_parity_pct: Option<f64>,
    /// 2.5th and 97.5th percentile of it over the resamples, each resample against its own best
    /// single model; `None` where not reached.
    pub triage_cost_at_parity_95: [Option<f64>; 2],
    /// Share of resamples in which Triage reaches the best single model's quality at all.
    pub share_parity_reached: f64,
    /// Triage against each other router.
    pub comparisons: Vec<Comparison>,
}

/// Seed of the draws: fixed, so a rerun reproduces the report.
pub const SEED: u64 = 20_241_022;

/// One draw's scores: the AIQ of each router under `weights`, over the cost range of the singles
/// under the same weights, and Triage's cost at parity with the best of those singles (% of its
/// cost; infinite where Triage's hull does not reach its quality).
fn scores(singles: &[Setting], routers: &[RouterSettings], weights: &[f64]) -> (Vec<f64>, f64) {
    let single_points: Vec<Point> = singles
        .iter()
        .map(|s| s.point(weights))
        .filter(|p| !p.cost.is_nan())
        .collect();
    let (lo, hi) = point_cost_range(single_points.iter());
    let best = single_points
        .iter()
        .max_by(|a, b| by_quality_then_cheapness(a, b));
    let mut parity = f64::INFINITY;
    let mut aiqs = Vec::with_capacity(routers.len());
    for (r, (_, settings)) in routers.iter().enumerate() {
        let points: Vec<Point> = settings.iter().map(|s| s.point(weights)).collect();
        let h = hull(&points);
        if let (0, Some(best)) = (r, best) {
            parity =
                cost_to_reach(&h, best.quality).map_or(f64::INFINITY, |c| 100.0 * c / best.cost);
        }
        aiqs.push(aiq(&h, lo, hi));
    }
    (aiqs, parity)
}

fn reached(parity: f64) -> Option<f64> {
    parity.is_finite().then_some(parity)
}

/// Nearest-rank percentile of sorted `values`.
fn percentile(sorted: &[f64], share: f64) -> f64 {
    let last = sorted.len().saturating_sub(1);
    sorted
        .get((share * last as f64).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Paired bootstrap of `routers[0]` (Triage) against every other router over `prompts` prompts;
/// `None` when there is nothing to resample or no resample is asked for.
pub fn paired_bootstrap(
    singles: &[Setting],
    routers: &[RouterSettings],
    prompts: usize,
    resamples: usize,
    seed: u64,
) -> Option<Bootstrap> {
    if prompts == 0 || resamples == 0 || routers.is_empty() || singles.is_empty() {
        return None;
    }
    let (observed, observed_parity) = scores(singles, routers, &vec![1.0; prompts]);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut draws: Vec<Vec<f64>> = vec![Vec::with_capacity(resamples); routers.len()];
    let mut parities = Vec::with_capacity(resamples);
    let mut weights = vec![0.0; prompts];
    for _ in 0..resamples {
        weights.iter_mut().for_each(|w| *w = 0.0);
        for _ in 0..prompts {
            weights[rng.usize(..prompts)] += 1.0;
        }
        let (aiqs, parity) = scores(singles, routers, &weights);
        for (r, a) in aiqs.into_iter().enumerate() {
            draws[r].push(a);
        }
        parities.push(parity);
    }
    let interval = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        [percentile(&v, 0.025), percentile(&v, 0.975)]
    };
    let comparisons = routers
        .iter()
        .enumerate()
        .skip(1)
        .map(|(r, (name, _))| {
            let diffs: Vec<f64> = draws[0].iter().zip(&draws[r]).map(|(t, x)| t - x).collect();
            let ahead = diffs.iter().filter(|d| **d > 0.0).count();
            Comparison {
                against: name.clone(),
                aiq_difference: observed[0] - observed[r],
                share_triage_ahead: ahead as f64 / resamples as f64,
                difference_95: interval(diffs),
            }
        })
        .collect();
    let share_parity_reached =
        parities.iter().filter(|p| p.is_finite()).count() as f64 / resamples as f64;
    let [parity_lo, parity_hi] = interval(parities);
    Some(Bootstrap {
        resamples,
        seed,
        triage_aiq: observed[0],
        triage_aiq_95: interval(draws[0].clone()),
        triage_cost_at_parity_pct: reached(observed_parity),
        triage_cost_at_parity_95: [reached(parity_lo), reached(parity_hi)],
        share_parity_reached,
        comparisons,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(cost: &[f64], quality: &[f64]) -> Setting {
        Setting {
            cost: cost.to_vec(),
            quality: quality.to_vec(),
        }
    }

    /// Two single models over `n` prompts: a cheap one right on even prompts, a dear one right
    /// on all but every fifth.
    fn singles(n: usize) -> Vec<Setting> {
        let cheap_q: Vec<f64> = (0..n).map(|k| f64::from(u8::from(k % 2 == 0))).collect();
        let dear_q: Vec<f64> = (0..n).map(|k| f64::from(u8::from(k % 5 != 0))).collect();
        vec![
            setting(&vec![1.0; n], &cheap_q),
            setting(&vec![10.0; n], &dear_q),
        ]
    }

    /// A router that, at its one mixed setting, takes the cheap model on even prompts and the
    /// dear one otherwise: never worse than the singles' hull.
    fn mixed(n: usize) -> RouterSettings {
        let s = singles(n);
        let cost: Vec<f64> = (0..n)
            .map(|k| if k % 2 == 0 { 1.0 } else { 10.0 })
            .collect();
        let quality: Vec<f64> = (0..n)
            .map(|k| if k % 2 == 0 { 1.0 } else { s[1].quality[k] })
            .collect();
        (
            "mixed".into(),
            vec![s[0].clone(), setting(&cost, &quality), s[1].clone()],
        )
    }

    #[test]
    fn a_router_against_itself_differs_by_nothing_and_is_never_ahead() {
        let n = 40;
        let routers = vec![mixed(n), mixed(n)];
        let b = paired_bootstrap(&singles(n), &routers, n, 200, SEED).expect("resampled");
        let c = &b.comparisons[0];
        assert_eq!(c.aiq_difference, 0.0);
        assert_eq!(c.difference_95, [0.0, 0.0]);
        assert_eq!(c.share_triage_ahead, 0.0);
    }

    #[test]
    fn a_router_better_on_every_draw_is_ahead_in_every_resample() {
        let n = 40;
        let s = singles(n);
        let zero: RouterSettings = ("zero router".into(), s.clone());
        let b = paired_bootstrap(&s, &[mixed(n), zero], n, 200, SEED).expect("resampled");
        let observed = {
            let (lo, hi) = (1.0, 10.0);
            let pts: Vec<Point> = mixed(n).1.iter().map(|x| x.point(&[1.0; 40])).collect();
            aiq(&hull(&pts), lo, hi)
        };
        assert!((b.triage_aiq - observed).abs() < 1e-12);
        let c = &b.comparisons[0];
        assert!(c.aiq_difference > 0.0);
        assert!(c.difference_95[0] > 0.0, "{c:?}");
        assert_eq!(c.share_triage_ahead, 1.0);
        assert!(b.triage_aiq_95[0] <= b.triage_aiq && b.triage_aiq <= b.triage_aiq_95[1]);
        // Its mixed setting beats the dear model's quality at about half its cost in every draw.
        assert_eq!(b.share_parity_reached, 1.0);
        let [Some(lo), Some(hi)] = b.triage_cost_at_parity_95 else {
            panic!("parity reached in every draw: {b:?}");
        };
        let observed = b.triage_cost_at_parity_pct.expect("reached");
        assert!(lo <= observed && observed <= hi && hi < 100.0, "{b:?}");
    }

    #[test]
    fn more_prompts_narrow_the_interval_and_the_seed_fixes_the_draws() {
        // Noisy per-prompt qualities: a router right on a pseudo-random half of the prompts.
        let noisy = |n: usize| -> (Vec<Setting>, Vec<RouterSettings>) {
            let mut rng = fastrand::Rng::with_seed(7);
            let q: Vec<f64> = (0..n).map(|_| f64::from(u8::from(rng.bool()))).collect();
            let s = singles(n);
            let r = ("noisy".into(), vec![setting(&vec![5.0; n], &q)]);
            (s.clone(), vec![r, ("zero router".into(), s)])
        };
        let width = |n: usize| {
            let (s, r) = noisy(n);
            let b = paired_bootstrap(&s, &r, n, 300, SEED).expect("resampled");
            b.triage_aiq_95[1] - b.triage_aiq_95[0]
        };
        let (small, large) = (width(50), width(2000));
        assert!(large < small / 3.0, "{small} vs {large}");
        let (s, r) = noisy(100);
        let a = paired_bootstrap(&s, &r, 100, 50, SEED).expect("resampled");
        let b = paired_bootstrap(&s, &r, 100, 50, SEED).expect("resampled");
        assert_eq!(a.triage_aiq_95, b.triage_aiq_95);
        // Right on half the prompts, it never reaches the dear model's 80%.
        assert_eq!(a.triage_cost_at_parity_95, [None, None]);
        assert_eq!(a.share_parity_reached, 0.0);
        assert_eq!(
            paired_bootstrap(&s, &r, 100, 0, SEED).map(|b| b.resamples),
            None
        );
    }

    #[test]
    fn missing_outcomes_are_left_out_of_a_single_models_mean() {
        let s = setting(&[1.0, f64::NAN, 3.0], &[1.0, f64::NAN, 0.0]);
        let p = s.point(&[1.0, 5.0, 1.0]);
        assert_eq!((p.cost, p.quality), (2.0, 0.5));
    }
}
