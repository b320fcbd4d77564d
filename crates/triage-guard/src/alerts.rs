//! Spend thresholds that fire once per period.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::ledger::Spend;

/// Day or month.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// UTC day.
    Day,
    /// UTC calendar month.
    Month,
}

impl Period {
    /// `day` or `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

/// One configured alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSpec {
    /// `global` (all keys together) or an API key's name.
    pub scope: String,
    /// Period the threshold applies to.
    pub period: Period,
    /// Fires when spend in the period reaches this, USD.
    pub threshold_usd: f64,
}

/// An alert that just fired.
#[derive(Clone, Debug, PartialEq)]
pub struct FiredAlert {
    /// The alert.
    pub spec: AlertSpec,
    /// Spend when it fired.
    pub spent_usd: f64,
}

/// The configured alerts and which have fired in their current period.
pub struct Alerts {
    specs: Vec<AlertSpec>,
    fired: Mutex<HashSet<(usize, i64)>>,
}

impl Alerts {
    /// Alerts from configuration.
    pub fn new(specs: Vec<AlertSpec>) -> Self {
        Self {
            specs,
            fired: Mutex::new(HashSet::new()),
        }
    }

    /// Checks `scope`'s spend (a key name or `global`); returns alerts crossing their threshold
    /// for the first time in this period.
    pub fn check(&self, scope: &str, spend: &Spend) -> Vec<FiredAlert> {
        let mut fired = self.fired.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for (i, spec) in self.specs.iter().enumerate() {
            if spec.scope != scope {
                continue;
            }
            let (period, spent) = match spec.period {
                Period::Day => (spend.day, spend.day_usd),
                Period::Month => (spend.month, spend.month_usd),
            };
            if spent >= spec.threshold_usd && fired.insert((i, period)) {
                out.push(FiredAlert {
                    spec: spec.clone(),
                    spent_usd: spent,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_once_per_period() {
        let alerts = Alerts::new(vec![AlertSpec {
            scope: "global".into(),
            period: Period::Day,
            threshold_usd: 1.0,
        }]);
        let mut s = Spend {
            day: 10,
            day_usd: 0.5,
            ..Spend::default()
        };
        assert!(alerts.check("global", &s).is_empty());
        s.day_usd = 1.5;
        assert_eq!(alerts.check("global", &s).len(), 1);
        s.day_usd = 3.0;
        assert!(alerts.check("global", &s).is_empty(), "once per day");
        assert!(alerts.check("team", &s).is_empty());
        s.day = 11;
        assert_eq!(alerts.check("global", &s).len(), 1, "next day fires again");
    }
}
