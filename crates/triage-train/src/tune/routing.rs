//! The routing choices, by out-of-fold AIQ replayed through the serving decision: which
//! components route and how they blend, the one-standard-error rule, and the margins.

use rayon::prelude::*;
use serde::Serialize;
use triage_core::Mode;
use triage_policy::{BALANCED_QUALITY_DROP, COST_QUALITY_DROP, DecisionParams, Rule};

use super::Fold;
use crate::TrainError;
use crate::eval::baselines::neighbourhood_sizes;
use crate::prepare::Prepared;
use crate::recipe::{Components, DEFAULT_DECISION, NeighbourRecipe, Routing, assemble};
use crate::score::{file_aiq, replay_on};
use crate::shared::SHARES;

/// Smallest neighbourhood tried (then doubling, see `neighbourhood_sizes`).
pub const SMALLEST_NEIGHBOUR_K: usize = 20;
/// Blend weights of the neighbours' quality tried (1 is plain kNN).
const NEIGHBOUR_WEIGHTS: [f64; 3] = [0.25, 0.5, 0.75];
/// Similarity temperatures tried for the best neighbourhood.
const NEIGHBOUR_TEMPERATURES: [f64; 3] = [0.1, 0.05, 0.02];
/// Margin grid.
const MARGINS: [f64; 13] = [
    0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
];
/// One routing candidate and its AIQ per fold.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    /// What it is.
    pub label: String,
    /// Its routing.
    pub routing: Routing,
    /// Rank in the order of simplicity (lower is simpler).
    pub complexity: u32,
    /// Out-of-fold AIQ per fold.
    pub aiq: Vec<f64>,
}

impl Candidate {
    /// Mean AIQ over the folds.
    pub fn mean(&self) -> f64 {
        self.aiq.iter().sum::<f64>() / self.aiq.len().max(1) as f64
    }
}

/// How simple a routing is: plain kNN, then the heads, heads + neighbourhood, heads +
/// classifier, all three; a temperature or a length weight adds one step.
fn complexity(routing: &Routing) -> u32 {
    let Some(n) = &routing.neighbours else {
        return if routing.share > 0.0 { 30 } else { 10 };
    };
    let refinements = u32::from(n.temperature.is_some());
    if n.weight >= 1.0 && routing.share == 0.0 {
        // The neighbours alone: kNN (its lengths blended in by construction).
        return refinements;
    }
    let base = if routing.share > 0.0 { 40 } else { 20 };
    base + refinements + u32::from(n.length_weight > 0.0)
}

/// Words for a routing.
pub fn describe(routing: &Routing) -> String {
    let mut parts = Vec::new();
    match &routing.neighbours {
        Some(n) if n.weight >= 1.0 && routing.share == 0.0 => {
            parts.push(format!("kNN k={}", n.k));
        }
        Some(n) => {
            parts.push("heads".to_owned());
            if routing.share > 0.0 {
                parts.push(format!("shared classifier (share {})", routing.share));
            }
            parts.push(format!("neighbours k={} weight {}", n.k, n.weight));
        }
        None if routing.share > 0.0 => {
            parts.push("heads".to_owned());
            parts.push(format!("shared classifier (share {})", routing.share));
        }
        None => parts.push("heads alone".to_owned()),
    }
    if let Some(n) = &routing.neighbours {
        if let Some(t) = n.temperature {
            parts.push(format!("temperature {t}"));
        }
        if n.length_weight > 0.0 && n.weight < 1.0 {
            parts.push(format!("length weight {}", n.length_weight));
        }
    }
    parts.join(" + ")
}

/// The one-standard-error rule: among candidates whose mean is within one standard error of
/// the best's (the standard error of the per-fold differences), the simplest; ties to the
/// higher mean.
pub fn select(candidates: &[Candidate]) -> &Candidate {
    let best = candidates
        .iter()
        .max_by(|a, b| a.mean().total_cmp(&b.mean()))
        .unwrap_or(&candidates[0]);
    candidates
        .iter()
        .filter(|c| {
            let diffs: Vec<f64> = best.aiq.iter().zip(&c.aiq).map(|(b, c)| b - c).collect();
            let n = diffs.len() as f64;
            let mean = diffs.iter().sum::<f64>() / n;
            let var = diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
            mean <= (var / n).sqrt()
        })
        .min_by(|a, b| {
            a.complexity
                .cmp(&b.complexity)
                .then(b.mean().total_cmp(&a.mean()))
        })
        .unwrap_or(best)
}

/// Scores routings over the folds.
pub(super) struct Cv<'a> {
    pub(super) prepared: &'a Prepared,
    pub(super) folds: &'a [Fold],
    pub(super) comps: &'a [Components],
    pub(super) informative: &'a [Vec<usize>],
}

impl Cv<'_> {
    fn score(&self, label: String, routing: Routing) -> Result<Candidate, TrainError> {
        let aiq: Result<Vec<f64>, TrainError> = (0..self.folds.len())
            .into_par_iter()
            .map(|f| {
                let file = assemble(
                    self.prepared,
                    &self.comps[f],
                    &routing,
                    &self.folds[f].fit,
                    &DEFAULT_DECISION,
                );
                file_aiq(self.prepared, &file, &self.informative[f])
            })
            .collect();
        let c = Candidate {
            complexity: complexity(&routing),
            label,
            routing,
            aiq: aiq?,
        };
        tracing::info!(
            label = %c.label,
            mean_aiq = format!("{:.4}", c.mean()),
            "routing candidate scored over the folds"
        );
        Ok(c)
    }

    /// Plain kNN (each size), the heads, heads + classifier (each share), heads + neighbourhood
    /// on top of the best share (each size at an even blend, then each weight at the best size;
    /// and the best blend without the classifier), then a temperature and the lengths for the
    /// best neighbourhood.
    pub(super) fn candidates(&self, with_shared: bool) -> Result<Vec<Candidate>, TrainError> {
        let mut out = vec![self.score("heads alone".into(), Routing::HEADS)?];
        let smallest_fit = self.folds.iter().map(|f| f.fit.len()).min().unwrap_or(0);
        let sizes = neighbourhood_sizes(SMALLEST_NEIGHBOUR_K, smallest_fit);
        for &k in &sizes {
            let routing = Routing {
                share: 0.0,
                neighbours: Some(NeighbourRecipe {
                    k,
                    weight: 1.0,
                    temperature: None,
                    length_weight: 1.0,
                }),
            };
            out.push(self.score(describe(&routing), routing)?);
        }
        let mut share = 0.0;
        if with_shared {
            let mut best = out[0].mean();
            for s in SHARES.into_iter().filter(|s| *s > 0.0) {
                let routing = Routing {
                    share: s,
                    neighbours: None,
                };
                let c = self.score(describe(&routing), routing)?;
                if c.mean() > best {
                    (best, share) = (c.mean(), s);
                }
                out.push(c);
            }
        }
        let first_blend = out.len();
        self.blends(share, &sizes, &mut out)?;
        let Some(blend) = best_of(&out[first_blend..]) else {
            return Ok(out);
        };
        if share > 0.0 {
            let without = Routing {
                share: 0.0,
                ..blend
            };
            out.push(self.score(describe(&without), without)?);
        }
        let best = best_of(
            &out.iter()
                .filter(|c| c.routing.neighbours.is_some_and(|n| n.weight < 1.0))
                .cloned()
                .collect::<Vec<_>>(),
        )
        .unwrap_or(blend);
        self.refinements(best, &mut out)?;
        Ok(out)
    }

    /// Heads (at `share`) + a neighbourhood: each size at an even blend, then each weight at
    /// the best size.
    fn blends(
        &self,
        share: f64,
        sizes: &[usize],
        out: &mut Vec<Candidate>,
    ) -> Result<(), TrainError> {
        let first = out.len();
        let blend_at = |k: usize, weight: f64| Routing {
            share,
            neighbours: Some(NeighbourRecipe {
                k,
                weight,
                temperature: None,
                length_weight: 0.0,
            }),
        };
        for &k in sizes {
            let routing = blend_at(k, 0.5);
            out.push(self.score(describe(&routing), routing)?);
        }
        if let Some(k) = best_of(&out[first..]).and_then(|r| r.neighbours.map(|n| n.k)) {
            for weight in NEIGHBOUR_WEIGHTS.into_iter().filter(|w| *w != 0.5) {
                let routing = blend_at(k, weight);
                out.push(self.score(describe(&routing), routing)?);
            }
        }
        Ok(())
    }

    /// `blend` with each similarity temperature, then the best of those (or `blend`) with the
    /// neighbours' lengths blended in too.
    fn refinements(&self, blend: Routing, out: &mut Vec<Candidate>) -> Result<(), TrainError> {
        let blend_mean = out
            .iter()
            .find(|c| c.routing == blend)
            .map_or(f64::MIN, Candidate::mean);
        let mut best = (blend, blend_mean);
        for temperature in NEIGHBOUR_TEMPERATURES {
            let mut routing = blend;
            if let Some(n) = &mut routing.neighbours {
                n.temperature = Some(temperature);
            }
            let c = self.score(describe(&routing), routing)?;
            if c.mean() > best.1 {
                best = (c.routing, c.mean());
            }
            out.push(c);
        }
        let mut routing = best.0;
        if let Some(n) = &mut routing.neighbours {
            n.length_weight = n.weight;
        }
        out.push(self.score(describe(&routing), routing)?);
        Ok(())
    }
}

/// The routing of the candidate with the best mean AIQ.
fn best_of(candidates: &[Candidate]) -> Option<Routing> {
    candidates
        .iter()
        .max_by(|a, b| a.mean().total_cmp(&b.mean()))
        .map(|c| c.routing)
}

/// The widest margins whose mean out-of-fold quality in BALANCED (COST) mode stays within
/// [`BALANCED_QUALITY_DROP`] ([`COST_QUALITY_DROP`]) of QUALITY mode's.
pub(super) fn choose_margins(
    prepared: &Prepared,
    folds: &[Fold],
    comps: &[Components],
    informative: &[Vec<usize>],
    routing: &Routing,
) -> Result<DecisionParams, TrainError> {
    // Per fold: QUALITY mode's quality, then BALANCED's at each margin.
    let per_fold: Result<Vec<(f64, Vec<f64>)>, TrainError> = (0..folds.len())
        .into_par_iter()
        .map(|f| {
            let file = assemble(
                prepared,
                &comps[f],
                routing,
                &folds[f].fit,
                &DEFAULT_DECISION,
            );
            let mut replay = replay_on(prepared, &file, &informative[f])?;
            let top = replay.point(Rule::Mode(Mode::Quality)).quality;
            let at = MARGINS
                .iter()
                .map(|&m| {
                    replay.set_params(DecisionParams {
                        balanced_margin: m,
                        cost_margin: m,
                    });
                    replay.point(Rule::Mode(Mode::Balanced)).quality
                })
                .collect();
            Ok((top, at))
        })
        .collect();
    let per_fold = per_fold?;
    let n = per_fold.len().max(1) as f64;
    let (mut balanced, mut cost) = (0.0, 0.0);
    for (i, &m) in MARGINS.iter().enumerate() {
        let drop = per_fold.iter().map(|(top, at)| top - at[i]).sum::<f64>() / n;
        if drop <= BALANCED_QUALITY_DROP {
            balanced = m;
        }
        if drop <= COST_QUALITY_DROP {
            cost = m;
        }
    }
    Ok(DecisionParams {
        balanced_margin: balanced,
        cost_margin: f64::max(cost, balanced),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(label: &str, routing: Routing, aiq: &[f64]) -> Candidate {
        Candidate {
            label: label.into(),
            complexity: complexity(&routing),
            routing,
            aiq: aiq.to_vec(),
        }
    }

    fn knn(k: usize) -> Routing {
        Routing {
            share: 0.0,
            neighbours: Some(NeighbourRecipe {
                k,
                weight: 1.0,
                temperature: None,
                length_weight: 1.0,
            }),
        }
    }

    fn blend(share: f64) -> Routing {
        Routing {
            share,
            neighbours: Some(NeighbourRecipe {
                k: 40,
                weight: 0.5,
                temperature: None,
                length_weight: 0.0,
            }),
        }
    }

    #[test]
    fn the_simplest_candidate_within_one_standard_error_wins() {
        // The full blend is best on average, but kNN trails it by a noisy margin (per-fold
        // differences 0.004, -0.002, 0.006, 0.000, -0.003: mean 0.001, standard error 0.0017).
        let full = candidate("all", blend(0.5), &[0.80, 0.81, 0.79, 0.82, 0.80]);
        let near = candidate("knn", knn(80), &[0.796, 0.812, 0.784, 0.82, 0.803]);
        let heads = candidate("heads", Routing::HEADS, &[0.70, 0.71, 0.69, 0.72, 0.70]);
        let all = [heads, full.clone(), near];
        assert_eq!(select(&all).label, "knn");

        // A gap well beyond the noise keeps the better candidate.
        let behind = candidate("knn", knn(80), &[0.78, 0.79, 0.77, 0.80, 0.78]);
        assert_eq!(select(&[full, behind]).label, "all");
    }

    #[test]
    fn simplicity_orders_knn_heads_neighbours_classifier() {
        let order = [
            complexity(&knn(20)),
            complexity(&Routing::HEADS),
            complexity(&blend(0.0)),
            complexity(&Routing {
                share: 0.5,
                neighbours: None,
            }),
            complexity(&blend(0.5)),
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    }
}
