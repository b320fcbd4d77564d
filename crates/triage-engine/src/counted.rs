//! Which (request, model) pairs have been learned from, so that one call counts once.
//!
//! The gateway records every upstream call itself, and the caller may later send a quality
//! score for the same answer (`POST /v1/feedback` or gRPC `Feedback`); a caller may also report
//! the same failure twice under two ids. Breakers and the feedback counts take the first report
//! of an outcome per pair, the online correction the first score per pair; later ones are still
//! stored (and their cost booked) but do not count again. Bounded: the oldest pairs are
//! forgotten first.

use std::sync::{Mutex, PoisonError};

use triage_guard::BoundedMap;

/// What a report may still count for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    /// The first report on this pair: breakers and feedback counts take it.
    pub outcome: bool,
    /// The first quality score on this pair: the online correction takes it.
    pub score: bool,
}

/// Pairs already counted.
pub struct CountedPairs {
    /// pair → whether a score was counted too.
    inner: Mutex<BoundedMap<bool>>,
}

impl CountedPairs {
    /// Remembers at most `capacity` pairs.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(BoundedMap::new(capacity)),
        }
    }

    /// Marks a report on (`request_id`, `model`), with or without a score, and says what it
    /// may count for.
    pub fn mark(&self, request_id: &str, model: &str, scored: bool) -> Counts {
        let key = format!("{request_id}\u{0}{model}");
        let mut seen = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let seen_before = seen.get(&key).copied();
        let had_score = seen_before.unwrap_or(false);
        seen.insert(&key, had_score || scored);
        Counts {
            outcome: seen_before.is_none(),
            score: scored && !had_score,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_and_a_score_count_once_per_pair() {
        let c = CountedPairs::new(4);
        assert_eq!(
            c.mark("r", "m", false),
            Counts {
                outcome: true,
                score: false
            }
        );
        assert_eq!(
            c.mark("r", "m", true),
            Counts {
                outcome: false,
                score: true
            }
        );
        assert_eq!(
            c.mark("r", "m", true),
            Counts {
                outcome: false,
                score: false
            }
        );
        assert_eq!(
            c.mark("r", "other", true),
            Counts {
                outcome: true,
                score: true
            }
        );
    }
}
