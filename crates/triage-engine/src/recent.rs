//! The uncorrected quality predictions of recent decisions, for learning from their feedback.
//!
//! Bounded: the oldest decisions are forgotten first. Feedback on a forgotten decision is still
//! stored durably; it only does not move the online correction (the next retrain uses it).

use std::sync::{Mutex, PoisonError};

use triage_guard::BoundedMap;

/// A bounded map of request id → (model, predicted quality).
pub struct RecentPredictions {
    inner: Mutex<BoundedMap<Vec<(String, f64)>>>,
}

impl RecentPredictions {
    /// Keeps at most `capacity` decisions.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(BoundedMap::new(capacity)),
        }
    }

    /// Remembers a decision's predictions.
    pub fn insert(&self, request_id: &str, predictions: &[(String, f64)]) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(request_id, predictions.to_vec());
    }

    /// The predicted quality of `model` for `request_id`, if still remembered.
    pub fn get(&self, request_id: &str, model: &str) -> Option<f64> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .get(request_id)?
            .iter()
            .find(|(m, _)| m == model)
            .map(|(_, q)| *q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_decisions_are_forgotten_first() {
        let r = RecentPredictions::new(2);
        r.insert("a", &[("m".into(), 0.1)]);
        r.insert("b", &[("m".into(), 0.2)]);
        r.insert("c", &[("m".into(), 0.3)]);
        assert_eq!(r.get("a", "m"), None);
        assert_eq!(r.get("b", "m"), Some(0.2));
        assert_eq!(r.get("c", "n"), None);
    }
}
