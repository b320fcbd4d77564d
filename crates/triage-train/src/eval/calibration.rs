//! Calibration by familiarity: is the policy as sure of itself on unfamiliar prompts as its
//! accuracy there warrants?
//!
//! The evaluated prompts are cut into equal-count buckets by how familiar each was to the policy
//! (mean similarity to its nearest training prompts). Per bucket: the mean predicted quality of
//! the model the balanced mode chose, and the mean quality it realised. A policy that is
//! over-confident where it is ignorant shows predicted well above observed in the low buckets.

use serde::Serialize;

use crate::simulate::Replay;
use crate::table::Outcomes;

/// Buckets the evaluated prompts are cut into (quintiles).
pub const BUCKETS: usize = 5;

/// One familiarity bucket.
#[derive(Clone, Debug, Serialize)]
pub struct Bucket {
    /// Lowest and highest familiarity in the bucket.
    pub familiarity: [f64; 2],
    /// Prompts in it (with a choice and an outcome).
    pub prompts: usize,
    /// Mean predicted quality of the chosen model.
    pub predicted: f64,
    /// Mean realised quality of the chosen model.
    pub observed: f64,
}

/// Buckets of `replay`'s prompts by familiarity, for `choices` (one per replayed prompt); `None`
/// when the policy cannot measure familiarity.
pub fn by_familiarity(
    o: &Outcomes,
    replay: &Replay<'_>,
    choices: &[Option<String>],
) -> Option<Vec<Bucket>> {
    let mut rows: Vec<(f64, f64, f64)> = replay
        .prompts()
        .iter()
        .enumerate()
        .zip(choices)
        .filter_map(|((k, &p), chosen)| {
            let model = chosen.as_deref()?;
            let f = replay.familiarity(k)?;
            let predicted = replay.predicted_quality(k, model)?;
            let observed = o.cells[p][o.model_index(model)?]?.quality;
            Some((f, predicted, observed))
        })
        .collect();
    if rows.len() < BUCKETS {
        return None;
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = rows.len();
    let buckets = (0..BUCKETS)
        .map(|b| {
            let part = &rows[b * n / BUCKETS..(b + 1) * n / BUCKETS];
            let count = part.len().max(1) as f64;
            Bucket {
                familiarity: [
                    part.first().map_or(0.0, |r| r.0),
                    part.last().map_or(0.0, |r| r.0),
                ],
                prompts: part.len(),
                predicted: part.iter().map(|r| r.1).sum::<f64>() / count,
                observed: part.iter().map(|r| r.2).sum::<f64>() / count,
            }
        })
        .collect();
    Some(buckets)
}
