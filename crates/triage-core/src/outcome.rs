//! What counts as a good answer.
//!
//! Outcome tables and feedback carry a quality in 0..1 (a grade, a judge's score, a pass rate).
//! The quality models predict the probability of a *good* answer, so every learner that turns
//! qualities into labels uses this one cut-off.

/// Qualities at or above this are good answers.
pub const GOOD_ANSWER_QUALITY: f64 = 0.5;

/// Whether an answer of `quality` counts as good.
pub fn is_good_answer(quality: f64) -> bool {
    quality >= GOOD_ANSWER_QUALITY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cut_off_is_inclusive() {
        assert!(is_good_answer(0.5) && is_good_answer(1.0));
        assert!(!is_good_answer(0.49) && !is_good_answer(f64::NAN));
    }
}
