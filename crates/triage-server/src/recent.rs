//! The uncorrected quality predictions of recent decisions, for learning from their feedback.
//!
//! Bounded: the oldest decisions are forgotten first. Feedback on a forgotten decision is still
//! stored durably; it only does not move the online correction (the next retrain uses it).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

#[derive(Default)]
struct Inner {
    by_request: HashMap<String, Vec<(String, f64)>>,
    order: VecDeque<String>,
}

/// A bounded map of request id → (model, predicted quality).
pub struct RecentPredictions {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl RecentPredictions {
    /// Keeps at most `capacity` decisions.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Remembers a decision's predictions.
    pub fn insert(&self, request_id: &str, predictions: &[(String, f64)]) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.order.len() >= self.capacity
            && let Some(oldest) = inner.order.pop_front()
        {
            inner.by_request.remove(&oldest);
        }
        inner.order.push_back(request_id.to_owned());
        inner
            .by_request
            .insert(request_id.to_owned(), predictions.to_vec());
    }

    /// The predicted quality of `model` for `request_id`, if still remembered.
    pub fn get(&self, request_id: &str, model: &str) -> Option<f64> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .by_request
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
