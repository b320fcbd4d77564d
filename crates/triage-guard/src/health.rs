//! Per-model circuit breakers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// When a breaker opens and for how long.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSettings {
    /// Sliding window over which the failure rate is measured, seconds.
    pub window_secs: f64,
    /// Reports needed in the window before the rate can open the breaker.
    pub min_reports: u32,
    /// Failure share (0..1) that opens the breaker.
    pub failure_rate: f64,
    /// How long an open breaker stays open before probing, seconds.
    pub open_secs: f64,
    /// Requests let through while half-open, until one of them reports back.
    pub half_open_probes: u32,
    /// Longest a reported `retry-after` keeps a breaker open, seconds: one report cannot shut a
    /// model out for weeks.
    #[serde(default = "default_max_retry_after_secs")]
    pub max_retry_after_secs: f64,
}

fn default_max_retry_after_secs() -> f64 {
    300.0
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            window_secs: 60.0,
            min_reports: 5,
            failure_rate: 0.5,
            open_secs: 30.0,
            half_open_probes: 2,
            max_retry_after_secs: default_max_retry_after_secs(),
        }
    }
}

/// An availability failure reported for a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// HTTP 429 or equivalent.
    RateLimited,
    /// The provider was down.
    Unavailable,
    /// No answer in time.
    Timeout,
}

impl FailureKind {
    fn as_str(self) -> &'static str {
        match self {
            FailureKind::RateLimited => "rate limited",
            FailureKind::Unavailable => "unavailable",
            FailureKind::Timeout => "timeout",
        }
    }
}

/// An operator's override (the `ReportHealth` call or configuration).
#[derive(Clone, Debug, PartialEq)]
pub enum Override {
    /// Never route to the model, with why.
    Down(String),
    /// Route to it whatever the breaker says.
    Up,
}

/// Where a breaker stands.
#[derive(Clone, Debug, PartialEq)]
pub enum BreakerState {
    /// Routable.
    Closed,
    /// Not routable until `until`.
    Open {
        /// When probing may start.
        until: Instant,
        /// Why it opened.
        reason: String,
    },
    /// A few probe requests may go through.
    HalfOpen {
        /// Probes routed since half-opening (or since the last probe window expired).
        probes: u32,
        /// When the current probe window began.
        since: Instant,
    },
}

impl BreakerState {
    /// `closed`, `half_open` or `open`.
    pub fn name(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half_open",
        }
    }
}

#[derive(Debug)]
struct Breaker {
    state: BreakerState,
    /// (time, failed) per report in the window.
    reports: VecDeque<(Instant, Option<FailureKind>)>,
    manual: Option<Override>,
}

impl Breaker {
    /// What the breaker reports, operator overrides first.
    fn state_name(&self) -> &'static str {
        match self.manual {
            Some(Override::Down(_)) => "open",
            Some(Override::Up) => "closed",
            None => self.state.name(),
        }
    }
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: BreakerState::Closed,
            reports: VecDeque::new(),
            manual: None,
        }
    }
}

/// Every model's breaker.
#[derive(Debug)]
pub struct HealthBoard {
    settings: BreakerSettings,
    breakers: Mutex<HashMap<String, Breaker>>,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

impl HealthBoard {
    /// All breakers closed.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            breakers: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Breaker>> {
        self.breakers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a report: `None` is a successful call, `Some` an availability failure.
    /// `retry_after` (rate limits) keeps the breaker open at least that long.
    pub fn record(
        &self,
        model: &str,
        failure: Option<FailureKind>,
        retry_after: Option<Duration>,
        now: Instant,
    ) {
        let s = &self.settings;
        let retry_after = retry_after.map(|r| r.min(secs(s.max_retry_after_secs)));
        let mut breakers = self.lock();
        let b = breakers.entry(model.to_owned()).or_default();
        match (&b.state, failure) {
            (BreakerState::HalfOpen { .. }, None) => {
                b.state = BreakerState::Closed;
                b.reports.clear();
                return;
            }
            (BreakerState::HalfOpen { .. }, Some(kind)) => {
                b.state = BreakerState::Open {
                    until: now + secs(s.open_secs).max(retry_after.unwrap_or_default()),
                    reason: format!("a probe failed ({})", kind.as_str()),
                };
                return;
            }
            _ => {}
        }
        b.reports.push_back((now, failure));
        while b
            .reports
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > secs(s.window_secs))
        {
            b.reports.pop_front();
        }
        if let (Some(FailureKind::RateLimited), Some(wait)) = (failure, retry_after) {
            let until = now + wait;
            let later = match &b.state {
                BreakerState::Open { until: current, .. } => until > *current,
                _ => true,
            };
            if later {
                b.state = BreakerState::Open {
                    until,
                    reason: format!("rate limited; retry after {:.1} s", wait.as_secs_f64()),
                };
            }
            return;
        }
        let total = b.reports.len();
        let failed = b.reports.iter().filter(|(_, f)| f.is_some()).count();
        if matches!(b.state, BreakerState::Closed)
            && total >= s.min_reports as usize
            && failed as f64 >= s.failure_rate * total as f64
        {
            b.state = BreakerState::Open {
                until: now + secs(s.open_secs),
                reason: format!(
                    "{failed} of the last {total} calls failed within {:.0} s",
                    s.window_secs
                ),
            };
        }
    }

    /// `Ok` when `model` may be routed to now, else why not. Moves open breakers whose time is
    /// up to half-open.
    pub fn check(&self, model: &str, now: Instant) -> Result<(), String> {
        let s = &self.settings;
        let mut breakers = self.lock();
        let Some(b) = breakers.get_mut(model) else {
            return Ok(());
        };
        match &b.manual {
            Some(Override::Down(reason)) => return Err(format!("marked down: {reason}")),
            Some(Override::Up) => return Ok(()),
            None => {}
        }
        if let BreakerState::Open { until, reason } = &b.state {
            if now < *until {
                return Err(format!(
                    "circuit open for {:.1} s more: {reason}",
                    until.duration_since(now).as_secs_f64()
                ));
            }
            b.state = BreakerState::HalfOpen {
                probes: 0,
                since: now,
            };
        }
        if let BreakerState::HalfOpen { probes, since } = &mut b.state {
            // Probes that never report back must not block the model for ever.
            if now.duration_since(*since) > secs(s.open_secs) {
                (*probes, *since) = (0, now);
            }
            if *probes >= s.half_open_probes {
                return Err(format!(
                    "circuit half-open: waiting for {probes} probe request(s) to report back"
                ));
            }
        }
        Ok(())
    }

    /// Notes that a request was routed to `model` (counts as a probe when half-open).
    pub fn routed(&self, model: &str) {
        if let Some(b) = self.lock().get_mut(model)
            && let BreakerState::HalfOpen { probes, .. } = &mut b.state
        {
            *probes += 1;
        }
    }

    /// Sets or clears (`None`) an operator override.
    pub fn set_override(&self, model: &str, manual: Option<Override>) {
        let mut breakers = self.lock();
        let b = breakers.entry(model.to_owned()).or_default();
        if manual == Some(Override::Up) {
            b.state = BreakerState::Closed;
            b.reports.clear();
        }
        b.manual = manual;
    }

    /// The state name of `model` (`closed` when it has no breaker yet, `open` when an operator
    /// marked it down).
    pub fn state(&self, model: &str) -> &'static str {
        self.lock().get(model).map_or("closed", Breaker::state_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board() -> HealthBoard {
        HealthBoard::new(BreakerSettings {
            window_secs: 10.0,
            min_reports: 4,
            failure_rate: 0.5,
            open_secs: 5.0,
            half_open_probes: 1,
            max_retry_after_secs: 60.0,
        })
    }

    #[test]
    fn opens_on_failure_rate_probes_and_recovers() {
        let h = board();
        let t0 = Instant::now();
        h.record("m", None, None, t0);
        h.record("m", Some(FailureKind::Timeout), None, t0);
        h.record("m", None, None, t0);
        assert!(h.check("m", t0).is_ok(), "3 reports: below min_reports");
        h.record("m", Some(FailureKind::Unavailable), None, t0);
        let err = h.check("m", t0).expect_err("2 of 4 failed: open");
        assert!(err.contains("2 of the last 4"), "{err}");
        // After open_secs one probe may go through; a second waits for its result.
        let t1 = t0 + Duration::from_secs(6);
        assert!(h.check("m", t1).is_ok());
        h.routed("m");
        assert!(h.check("m", t1).is_err());
        h.record("m", Some(FailureKind::Timeout), None, t1);
        assert!(
            h.check("m", t1)
                .expect_err("probe failed")
                .contains("probe failed")
        );
        let t2 = t1 + Duration::from_secs(6);
        assert!(h.check("m", t2).is_ok());
        h.routed("m");
        h.record("m", None, None, t2);
        assert_eq!(h.state("m"), "closed");
        assert!(h.check("m", t2).is_ok());
    }

    #[test]
    fn old_reports_leave_the_window() {
        let h = board();
        let t0 = Instant::now();
        for _ in 0..3 {
            h.record("m", Some(FailureKind::Timeout), None, t0);
        }
        let later = t0 + Duration::from_secs(11);
        h.record("m", Some(FailureKind::Timeout), None, later);
        assert!(
            h.check("m", later).is_ok(),
            "only one failure in the window"
        );
    }

    #[test]
    fn retry_after_opens_at_once_and_overrides_win() {
        let h = board();
        let t0 = Instant::now();
        h.record(
            "m",
            Some(FailureKind::RateLimited),
            Some(Duration::from_secs(20)),
            t0,
        );
        assert!(h.check("m", t0 + Duration::from_secs(19)).is_err());
        assert!(h.check("m", t0 + Duration::from_secs(21)).is_ok());
        // A retry-after of about 49 days (u32::MAX ms) is held to max_retry_after_secs.
        h.record(
            "n",
            Some(FailureKind::RateLimited),
            Some(Duration::from_millis(u64::from(u32::MAX))),
            t0,
        );
        assert!(h.check("n", t0 + Duration::from_secs(59)).is_err());
        assert!(h.check("n", t0 + Duration::from_secs(61)).is_ok());
        h.set_override("x", Some(Override::Down("maintenance".into())));
        assert_eq!(h.check("x", t0), Err("marked down: maintenance".into()));
        h.set_override("x", None);
        assert!(h.check("x", t0).is_ok());
    }
}
