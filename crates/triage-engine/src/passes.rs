//! Passed-through requests whose decision is not in the log yet.
//!
//! A request that names its model is forwarded before its prompt is scored
//! ([`RoutingEngine::pass_through`](crate::RoutingEngine::pass_through)); its decision record,
//! which carries the features retraining needs, is written once the encoder has embedded the
//! prompt, off the request path. The gateway's records of its calls, or a caller's report, can
//! arrive before that: they wait here, in order, and are written behind the decision, so the log
//! never holds a report on a request it does not know.
//!
//! The number waiting is bounded: past the bound, named requests wait for the encoder like any
//! other, so an overloaded encoder sheds them instead of piling up unwritten decisions.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;
use triage_log::FeedbackRecord;

/// One request whose decision is being described.
struct Waiting {
    /// Its call records, in arrival order.
    attempts: Vec<FeedbackRecord>,
    /// Dropped when the decision is written (or given up on): wakes reports waiting for it.
    _written: watch::Sender<()>,
}

/// The requests passed through whose decision record is not written yet.
pub(crate) struct Passes {
    waiting: Mutex<HashMap<String, Waiting>>,
    bound: usize,
}

impl Passes {
    /// At most `bound` passed-through decisions waiting for the encoder at once.
    pub(crate) fn new(bound: usize) -> Self {
        Self {
            waiting: Mutex::default(),
            bound,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Waiting>> {
        // The map stays consistent whatever a panicking holder was doing: each entry is
        // inserted or removed whole.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether another request may pass through now.
    pub(crate) fn has_room(&self) -> bool {
        self.lock().len() < self.bound
    }

    /// Starts holding reports on `request_id` until [`Self::written`].
    pub(crate) fn open(&self, request_id: &str) {
        let (written, _) = watch::channel(());
        self.lock().insert(
            request_id.to_owned(),
            Waiting {
                attempts: Vec::new(),
                _written: written,
            },
        );
    }

    /// Keeps `record` to be written behind its decision when that is still being described;
    /// otherwise gives it back.
    pub(crate) fn hold(&self, record: FeedbackRecord) -> Option<FeedbackRecord> {
        match self.lock().get_mut(&record.request_id) {
            Some(waiting) => {
                waiting.attempts.push(record);
                None
            }
            None => Some(record),
        }
    }

    /// Waits until `request_id`'s decision is written, when it is being described.
    pub(crate) async fn wait(&self, request_id: &str) {
        let receiver = self.lock().get(request_id).map(|w| w._written.subscribe());
        if let Some(mut receiver) = receiver {
            // Nothing is ever sent: the sender's drop (the entry's removal) ends the wait.
            while receiver.changed().await.is_ok() {}
        }
    }

    /// Ends `request_id`'s wait once its decision is written (or given up on), handing each
    /// record kept for it to `flush` in order. The lock is held meanwhile, so a record arriving
    /// now queues behind them rather than overtaking them.
    pub(crate) fn written(&self, request_id: &str, mut flush: impl FnMut(FeedbackRecord)) {
        let mut waiting = self.lock();
        if let Some(w) = waiting.remove(request_id) {
            for record in w.attempts {
                flush(record);
            }
        }
    }

    /// Decisions still being described.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: &str, attempt: u32) -> FeedbackRecord {
        triage_testkit::records::report(id, &format!("attempt-{attempt}"), "m", 0.0)
    }

    #[test]
    fn reports_wait_in_order_and_are_flushed_once() {
        let passes = Passes::new(2);
        passes.open("a");
        assert!(passes.hold(report("a", 1)).is_none());
        assert!(passes.hold(report("a", 2)).is_none());
        assert!(passes.hold(report("b", 1)).is_some(), "b is not waiting");
        assert!(passes.has_room());
        passes.open("b");
        assert!(!passes.has_room(), "two are waiting: the bound");
        let mut flushed = Vec::new();
        passes.written("a", |r| flushed.push(r.feedback_id));
        assert_eq!(flushed, ["attempt-1", "attempt-2"]);
        passes.written("a", |_| panic!("flushed twice"));
        assert!(passes.hold(report("a", 3)).is_some(), "a is written");
        assert_eq!(passes.len(), 1);
    }

    #[tokio::test]
    async fn a_wait_ends_when_the_decision_is_written() {
        let passes = std::sync::Arc::new(Passes::new(4));
        passes.wait("unknown").await;
        passes.open("a");
        let waiter = {
            let passes = std::sync::Arc::clone(&passes);
            tokio::spawn(async move { passes.wait("a").await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        passes.written("a", |_| {});
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the wait ends")
            .expect("no panic");
    }
}
