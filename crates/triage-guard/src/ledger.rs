//! Spend per API key and overall, per UTC day and calendar month.
//!
//! A request reserves its predicted cost when it is routed (checked against the key's limits
//! and charged under one lock); the first report of its real cost replaces the prediction and
//! later reports (fallback attempts) add theirs. Pending predictions are remembered for a
//! bounded number of requests; past that, the prediction simply stays charged.
//!
//! Where this process makes the calls itself (the gateway) and the key has limits, what is held
//! is not a prediction but the worst case each call allows, so that a caller cannot lower it:
//! every call's hold is settled by that call's own report (`hold`), a fallback holds its own
//! before it runs ([`hold_more`](Ledger::hold_more)), and what no call used is given back (a
//! settlement of that hold at no cost). Once a request's reports are in, its spend is the sum of
//! their costs either way.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Datelike, Utc};

use crate::bounded::BoundedMap;

/// Spend in the current day and month.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Spend {
    /// Days since the epoch of `day_usd`.
    pub day: i64,
    /// USD spent that day.
    pub day_usd: f64,
    /// `year × 12 + month` of `month_usd`.
    pub month: i64,
    /// USD spent that month.
    pub month_usd: f64,
}

impl Spend {
    fn roll(&mut self, now: DateTime<Utc>) {
        let (day, month) = periods(now);
        if self.day != day {
            (self.day, self.day_usd) = (day, 0.0);
        }
        if self.month != month {
            (self.month, self.month_usd) = (month, 0.0);
        }
    }

    /// Whether `usd` more stays within `limits` this day and month. A relative slack: what a
    /// decision computed as fitting must still fit here.
    fn fits(&mut self, usd: f64, limits: Limits, now: DateTime<Utc>) -> bool {
        self.roll(now);
        let within = |limit: Option<f64>, spent: f64| {
            limit.is_none_or(|l| spent + usd <= l * (1.0 + 1e-9) + 1e-12)
        };
        within(limits.daily_usd, self.day_usd) && within(limits.monthly_usd, self.month_usd)
    }

    fn add(&mut self, usd: f64, now: DateTime<Utc>) {
        self.roll(now);
        self.day_usd = (self.day_usd + usd).max(0.0);
        self.month_usd = (self.month_usd + usd).max(0.0);
    }
}

/// (day, month) period ids of `now`.
pub fn periods(now: DateTime<Utc>) -> (i64, i64) {
    let day = now.timestamp().div_euclid(86_400);
    let month = i64::from(now.year()) * 12 + i64::from(now.month0());
    (day, month)
}

/// The spend limits of one key (none: unlimited).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    /// Per UTC day, USD.
    pub daily_usd: Option<f64>,
    /// Per UTC calendar month, USD.
    pub monthly_usd: Option<f64>,
}

struct Pending {
    key: String,
    usd: f64,
    at: DateTime<Utc>,
    /// Whether a report has replaced the prediction already.
    settled: bool,
}

struct Inner {
    by_key: HashMap<String, Spend>,
    global: Spend,
    pending: BoundedMap<Pending>,
}

impl Inner {
    /// Charges `usd` to `key` (and the global spend) if it fits within `limits`.
    fn charge_within(&mut self, key: &str, usd: f64, limits: Limits, now: DateTime<Utc>) -> bool {
        let spend = self.by_key.entry(key.to_owned()).or_default();
        if !spend.fits(usd, limits, now) {
            return false;
        }
        spend.add(usd, now);
        self.global.add(usd, now);
        true
    }
}

/// The spend ledger.
pub struct Ledger {
    inner: Mutex<Inner>,
}

impl Ledger {
    /// Remembers predictions of at most `capacity` unsettled requests.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                by_key: HashMap::new(),
                global: Spend::default(),
                pending: BoundedMap::new(capacity),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Charges `usd` (predicted) to `key` for `request_id`, whatever its limits (replaying the
    /// log, which holds what was charged before).
    pub fn charge(&self, key: &str, request_id: &str, usd: f64, now: DateTime<Utc>) {
        self.reserve(key, request_id, usd, Limits::default(), now);
    }

    /// Charges `usd` (predicted) to `key` for `request_id` if it fits within `limits`, checked
    /// and charged under one lock so that concurrent requests cannot all spend the same
    /// remainder. Returns whether it was charged.
    pub fn reserve(
        &self,
        key: &str,
        request_id: &str,
        usd: f64,
        limits: Limits,
        now: DateTime<Utc>,
    ) -> bool {
        let mut inner = self.lock();
        if !inner.charge_within(key, usd, limits, now) {
            return false;
        }
        inner.pending.insert(
            request_id,
            Pending {
                key: key.to_owned(),
                usd,
                at: now,
                settled: false,
            },
        );
        true
    }

    /// Books a reported cost for `request_id`. A report that settles a `hold` of its own
    /// replaces that hold with its cost; otherwise the first report replaces the predicted
    /// charge and later ones (further attempts of the same request at other models) add to it,
    /// so the spend of a request is the sum of what its reports say it cost. Returns the key
    /// charged, or `None` when the request is unknown (never routed here, or long forgotten).
    pub fn settle(
        &self,
        request_id: &str,
        reported: f64,
        hold: Option<f64>,
        now: DateTime<Utc>,
    ) -> Option<String> {
        let mut inner = self.lock();
        let p = inner.pending.get_mut(request_id)?;
        // The correction belongs to the period the request was charged in.
        let same_period = periods(p.at) == periods(now);
        let delta = match (same_period, hold, p.settled) {
            (false, ..) => 0.0,
            (true, Some(held), _) => reported - held,
            (true, None, false) => reported - p.usd,
            (true, None, true) => reported,
        };
        p.settled = true;
        let key = p.key.clone();
        inner.by_key.entry(key.clone()).or_default().add(delta, now);
        inner.global.add(delta, now);
        Some(key)
    }

    /// Holds `usd` more for `request_id` (a fallback call about to be made) if it fits within
    /// `limits`, checked and charged under one lock. Returns whether it was held (an unknown
    /// request is not).
    pub fn hold_more(
        &self,
        request_id: &str,
        usd: f64,
        limits: Limits,
        now: DateTime<Utc>,
    ) -> bool {
        let mut inner = self.lock();
        let Some(key) = inner.pending.get_mut(request_id).map(|p| p.key.clone()) else {
            return false;
        };
        inner.charge_within(&key, usd, limits, now)
    }

    /// Sets `key`'s spend this day and month to what a shared store counted (every replica's
    /// requests), keeping what is pending here for settlement.
    pub fn observe(&self, key: &str, day_usd: f64, month_usd: f64, now: DateTime<Utc>) {
        let mut inner = self.lock();
        let spend = inner.by_key.entry(key.to_owned()).or_default();
        spend.roll(now);
        spend.day_usd = day_usd.max(0.0);
        spend.month_usd = month_usd.max(0.0);
    }

    /// Spend of `key` now.
    pub fn spent(&self, key: &str, now: DateTime<Utc>) -> Spend {
        let mut inner = self.lock();
        let s = inner.by_key.entry(key.to_owned()).or_default();
        s.roll(now);
        *s
    }

    /// Spend of all keys together now.
    pub fn global(&self, now: DateTime<Utc>) -> Spend {
        let mut inner = self.lock();
        inner.global.roll(now);
        inner.global
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn predictions_are_settled_and_periods_roll_over() {
        let ledger = Ledger::new(10);
        let t = Utc
            .with_ymd_and_hms(2026, 1, 31, 23, 0, 0)
            .single()
            .expect("time");
        ledger.charge("a", "r1", 0.5, t);
        ledger.charge("b", "r2", 0.25, t);
        assert_eq!(ledger.settle("r1", 0.125, None, t), Some("a".into()));
        assert_eq!(
            ledger.settle("r1", 0.0, None, t),
            Some("a".into()),
            "a later report adds its own cost (here none), never refunds the first"
        );
        let s = ledger.spent("a", t);
        assert!((s.day_usd - 0.125).abs() < 1e-12 && (s.month_usd - 0.125).abs() < 1e-12);
        assert!((ledger.global(t).day_usd - 0.375).abs() < 1e-12);
        // A failed attempt reports nothing spent, the fallback that answered its real cost.
        ledger.settle("r2", 0.0, None, t);
        ledger.settle("r2", 0.0625, None, t);
        assert!((ledger.spent("b", t).day_usd - 0.0625).abs() < 1e-12);
        let tight = Limits {
            daily_usd: Some(1.0),
            monthly_usd: None,
        };
        assert!(ledger.reserve("c", "r3", 0.75, tight, t));
        assert!(
            !ledger.reserve("c", "r4", 0.5, tight, t),
            "what is left is checked and charged under one lock"
        );
        assert!(ledger.reserve("c", "r5", 0.25, tight, t));
        assert!((ledger.spent("c", t).day_usd - 1.0).abs() < 1e-12);
        // Held calls: each report settles its own hold, a fallback holds before it runs (and
        // is refused when the limit has no room), and an unused hold is given back.
        let cap = Limits {
            daily_usd: Some(1.0),
            monthly_usd: None,
        };
        assert!(
            ledger.reserve("d", "r6", 0.5, cap, t),
            "first call and a draft, 0.25 each"
        );
        assert_eq!(ledger.settle("r6", 0.0, Some(0.25), t), Some("d".into()));
        assert!(
            (ledger.spent("d", t).day_usd - 0.25).abs() < 1e-12,
            "the failed call's hold is back"
        );
        assert!(
            ledger.hold_more("r6", 0.5, cap, t),
            "a fallback holds before it runs"
        );
        assert!(
            !ledger.hold_more("r6", 0.5, cap, t),
            "and cannot pass the limit"
        );
        ledger.settle("r6", 0.125, Some(0.5), t);
        ledger.settle("r6", 0.0, Some(0.25), t);
        assert!(
            (ledger.spent("d", t).day_usd - 0.125).abs() < 1e-12,
            "spend is what was used"
        );
        let next_day = t + chrono::Duration::hours(2); // February 1st
        let s = ledger.spent("a", next_day);
        assert_eq!((s.day_usd, s.month_usd), (0.0, 0.0));
    }
}
