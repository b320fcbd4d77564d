//! Reference routers evaluated beside Triage on the same split: single models, the zero router
//! (their hull), a uniform random mix, kNN on the same embeddings, and the oracle.

use crate::eval::curve::Point;
use crate::simulate::realised_by_index;
use crate::table::Outcomes;

/// The cost-weight grid every λ-swept router is evaluated on (quality points per USD).
pub fn lambda_grid() -> Vec<f64> {
    let mut grid = vec![0.0];
    grid.extend((0..=84).map(|i| 10f64.powf(-1.0 + f64::from(i) / 12.0)));
    grid
}

/// Neighbourhood sizes worth trying on `train_prompts` prompts: doubling from `smallest` up to a
/// quarter of them, so a bigger table gets bigger neighbourhoods tried; a quarter keeps every
/// neighbourhood local. (A fixed list ending at 160 left open whether MMLU-Pro's 8,446 train
/// prompts wanted more: its dev AIQ turned out flat beyond 160.)
pub fn neighbourhood_sizes(smallest: usize, train_prompts: usize) -> Vec<usize> {
    let largest = (train_prompts / 4).max(smallest.max(1));
    std::iter::successors(Some(smallest.max(1)), |k| Some(k * 2))
        .take_while(|k| *k <= largest)
        .collect()
}

/// Share of prompts a model must have outcomes on to count as a single-model baseline.
const MIN_COVERAGE: f64 = 0.99;

/// (model, point) for every model with outcomes on at least 99% of `prompts` (tables can miss
/// a few cells), averaged over the prompts it has.
pub fn single_models(o: &Outcomes, prompts: &[usize]) -> Vec<(String, Point)> {
    let mut out = Vec::new();
    for (m, name) in o.models.iter().enumerate() {
        let cells: Vec<_> = prompts.iter().filter_map(|&p| o.cells[p][m]).collect();
        if cells.is_empty() || (cells.len() as f64) < MIN_COVERAGE * prompts.len() as f64 {
            continue;
        }
        let n = cells.len() as f64;
        out.push((
            name.clone(),
            Point {
                cost: cells.iter().map(|c| c.cost_usd).sum::<f64>() / n,
                quality: cells.iter().map(|c| c.quality).sum::<f64>() / n,
            },
        ));
    }
    out
}

/// The cheapest and dearest single model's mean cost: the range AIQ is measured over.
pub fn cost_range(singles: &[(String, Point)]) -> (f64, f64) {
    point_cost_range(singles.iter().map(|(_, p)| p))
}

/// [`cost_range`] of bare points.
pub fn point_cost_range<'a>(points: impl Iterator<Item = &'a Point> + Clone) -> (f64, f64) {
    let lo = points.clone().map(|p| p.cost).fold(f64::MAX, f64::min);
    let hi = points.map(|p| p.cost).fold(f64::MIN, f64::max);
    (lo, hi)
}

/// Orders single models' points so that the greatest is the best single model: the highest
/// quality, then the cheaper.
pub fn by_quality_then_cheapness(a: &Point, b: &Point) -> std::cmp::Ordering {
    a.quality
        .total_cmp(&b.quality)
        .then(b.cost.total_cmp(&a.cost))
}

/// Expected point of choosing uniformly at random among `singles`.
pub fn random_mix(singles: &[(String, Point)]) -> Point {
    let n = singles.len().max(1) as f64;
    Point {
        cost: singles.iter().map(|(_, p)| p.cost).sum::<f64>() / n,
        quality: singles.iter().map(|(_, p)| p.quality).sum::<f64>() / n,
    }
}

/// Per-prompt choice by maximising `q - λ c` over `models` (ties: cheaper, then first).
fn argmax_utility(q: &[f64], c: &[f64], models: &[usize], lambda: f64) -> Option<usize> {
    models.iter().copied().max_by(|&a, &b| {
        let ua = q[a] - lambda * c[a];
        let ub = q[b] - lambda * c[b];
        ua.total_cmp(&ub)
            .then(c[b].total_cmp(&c[a]))
            .then(b.cmp(&a))
    })
}

/// Per λ, the model chosen for each prompt by maximising `q̂ - λ ĉ` over `models` that have an
/// outcome for it, with per-prompt estimates `(q̂, ĉ)` (indexed by model).
pub fn sweep_choices(
    o: &Outcomes,
    prompts: &[usize],
    estimates: &[(Vec<f64>, Vec<f64>)],
    models: &[usize],
    lambdas: &[f64],
) -> Vec<Vec<Option<usize>>> {
    lambdas
        .iter()
        .map(|&lambda| {
            prompts
                .iter()
                .zip(estimates)
                .map(|(&p, (q, c))| {
                    let available: Vec<usize> = models
                        .iter()
                        .copied()
                        .filter(|&m| o.cells[p][m].is_some())
                        .collect();
                    argmax_utility(q, c, &available, lambda)
                })
                .collect()
        })
        .collect()
}

/// Sweeps λ with per-prompt estimates `(q̂, ĉ)` (indexed by model) and realised outcomes.
pub fn sweep(
    o: &Outcomes,
    prompts: &[usize],
    estimates: &[(Vec<f64>, Vec<f64>)],
    models: &[usize],
    lambdas: &[f64],
) -> Vec<Point> {
    sweep_choices(o, prompts, estimates, models, lambdas)
        .iter()
        .map(|chosen| realised_by_index(o, prompts, chosen))
        .collect()
}

/// The oracle: true per-prompt quality and cost.
pub fn oracle_estimates(o: &Outcomes, prompts: &[usize]) -> Vec<(Vec<f64>, Vec<f64>)> {
    prompts
        .iter()
        .map(|&p| {
            let q = o.cells[p]
                .iter()
                .map(|c| c.map_or(0.0, |c| c.quality))
                .collect();
            let c = o.cells[p]
                .iter()
                .map(|c| c.map_or(f64::MAX, |c| c.cost_usd))
                .collect();
            (q, c)
        })
        .collect()
}

/// For each of `prompts`, the `k` most similar `train` prompts, most similar first (cosine
/// similarity of the unit-length embeddings, the first `dim` features). One vectorised
/// matrix–vector product per prompt; callers trying several k compute this once for the
/// largest and take prefixes.
pub fn nearest(
    features: &[Vec<f32>],
    dim: usize,
    train: &[usize],
    prompts: &[usize],
    k: usize,
) -> Vec<Vec<usize>> {
    let mut matrix = ndarray16::Array2::<f32>::zeros((train.len(), dim));
    for (r, &t) in train.iter().enumerate() {
        for (j, v) in features[t][..dim].iter().enumerate() {
            matrix[[r, j]] = *v;
        }
    }
    prompts
        .iter()
        .map(|&p| {
            let query = ndarray16::ArrayView1::from(&features[p][..dim]);
            let scores = matrix.dot(&query);
            let mut sims: Vec<(f32, usize)> = scores.iter().copied().zip(0..).collect();
            let k = k.min(sims.len());
            if k > 0 && k < sims.len() {
                sims.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            }
            sims.truncate(k);
            sims.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            sims.into_iter().map(|(_, r)| train[r]).collect()
        })
        .collect()
}

/// kNN estimates from [`nearest`] lists: mean quality and cost of each model over each prompt's
/// first `k` neighbours (cost `f64::MAX` for a model none of them has).
pub fn knn_from(o: &Outcomes, neighbours: &[Vec<usize>], k: usize) -> Vec<(Vec<f64>, Vec<f64>)> {
    let models = o.models.len();
    neighbours
        .iter()
        .map(|near| {
            let mut q = vec![0.0; models];
            let mut c = vec![0.0; models];
            let mut n = vec![0usize; models];
            for &t in near.iter().take(k) {
                for m in 0..models {
                    if let Some(cell) = o.cells[t][m] {
                        q[m] += cell.quality;
                        c[m] += cell.cost_usd;
                        n[m] += 1;
                    }
                }
            }
            for m in 0..models {
                let d = n[m].max(1) as f64;
                q[m] /= d;
                c[m] = if n[m] == 0 { f64::MAX } else { c[m] / d };
            }
            (q, c)
        })
        .collect()
}

/// kNN estimates: mean quality and cost of each model over the `k` most similar `train` prompts
/// (see [`nearest`]).
pub fn knn_estimates(
    o: &Outcomes,
    features: &[Vec<f32>],
    dim: usize,
    train: &[usize],
    prompts: &[usize],
    k: usize,
) -> Vec<(Vec<f64>, Vec<f64>)> {
    knn_from(o, &nearest(features, dim, train, prompts, k), k)
}

#[cfg(test)]
mod tests {
    use super::neighbourhood_sizes;

    #[test]
    fn neighbourhood_sizes_double_up_to_a_quarter_of_train() {
        assert_eq!(neighbourhood_sizes(20, 1988), vec![20, 40, 80, 160, 320]);
        assert_eq!(
            neighbourhood_sizes(20, 8446),
            vec![20, 40, 80, 160, 320, 640, 1280]
        );
        // A tiny table still tries the smallest size.
        assert_eq!(neighbourhood_sizes(20, 30), vec![20]);
        assert_eq!(neighbourhood_sizes(5, 0), vec![5]);
    }
}
