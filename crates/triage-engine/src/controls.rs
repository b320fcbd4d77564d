//! The production controls the engine applies around each decision: model health, key
//! permissions and budgets, spend alerts and session affinity (`triage_guard` holds the logic).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use triage_core::catalog::ModelSpec;
use triage_core::{Preferences, Settings};
use triage_guard::{
    Alerts, BoundedMap, Caller, FailureKind, FiredAlert, HealthBoard, KeySpec, Ledger, Limits,
};
use triage_log::{ErrorKind, FeedbackRecord, LogRecord};
use triage_policy::Decision;

use crate::error::RouteError;

/// Requests whose predicted charge and session entry are remembered.
const REMEMBERED: usize = 100_000;

/// Health, budgets, alerts and sessions.
pub struct Controls {
    /// Circuit breakers.
    pub health: HealthBoard,
    ledger: Ledger,
    alerts: Alerts,
    /// Session id → the model its last turn went to.
    sessions: Mutex<BoundedMap<String>>,
    /// The operator's spend on the judge (its calls and shadow answers) in one UTC day: never
    /// a key's, capped by `judge.daily_usd`, and rebuilt from the records' marks at start so
    /// that a restart does not reset the cap.
    judge_day: Mutex<(i64, f64)>,
}

/// A key's spend limit binding this request.
pub struct BudgetCap {
    message: String,
}

/// What a key has left of its tightest limit.
struct Remaining {
    usd: f64,
    limit: f64,
    which: &'static str,
    period: &'static str,
}

/// A request's tokens, as its worst case reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tokens {
    /// The encoder's count of the input (for a model's room).
    pub input: u32,
    /// The most input tokens a provider can count (what is held).
    pub max_input: u32,
    /// The request's `max_tokens`, if it gave one.
    pub max_output: Option<u32>,
}

/// The worst case a request's calls may cost, held against its key's limits.
#[derive(Clone, Debug, PartialEq)]
pub struct WorstCase {
    /// Each call's hold: (model, USD).
    pub shares: Vec<(String, f64)>,
    /// The answer length the key's remaining budget covers, when it is less than the request
    /// allows: sent upstream as the call's `max_tokens`.
    pub output_cap: Option<u32>,
}

impl WorstCase {
    /// The whole hold, USD.
    pub fn total_usd(&self) -> f64 {
        self.shares.iter().map(|(_, usd)| usd).sum()
    }
}

impl Controls {
    /// From the `[health]` and `[[alerts]]` settings.
    pub fn new(settings: &Settings) -> Self {
        Self {
            health: HealthBoard::new(settings.health.clone()),
            ledger: Ledger::new(REMEMBERED),
            alerts: Alerts::new(settings.alerts.clone()),
            sessions: Mutex::new(BoundedMap::new(REMEMBERED)),
            judge_day: Mutex::new((0, 0.0)),
        }
    }

    /// Adds `usd` of judge spend at `at` (spend of an earlier day is not today's).
    pub fn judge_spend(&self, usd: f64, at: DateTime<Utc>) {
        let day = at.timestamp().div_euclid(86_400);
        let mut d = self
            .judge_day
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if day > d.0 {
            *d = (day, 0.0);
        }
        if day == d.0 {
            d.1 += usd;
        }
    }

    /// The judge's spend on the UTC day of `now`.
    pub fn judge_spent_today(&self, now: DateTime<Utc>) -> f64 {
        let d = self
            .judge_day
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if d.0 == now.timestamp().div_euclid(86_400) {
            d.1
        } else {
            0.0
        }
    }

    /// What `key` has left of its tightest limit now (`None`: it has no limits).
    fn remaining(&self, key: &KeySpec, now: DateTime<Utc>) -> Option<Remaining> {
        let spend = self.ledger.spent(&key.name, now);
        let limits = [
            key.daily_usd
                .map(|l| (l - spend.day_usd, l, "daily", "day")),
            key.monthly_usd
                .map(|l| (l - spend.month_usd, l, "monthly", "month")),
        ];
        limits
            .into_iter()
            .flatten()
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(usd, limit, which, period)| Remaining {
                usd,
                limit,
                which,
                period,
            })
    }

    /// Lowers `prefs.max_cost_usd` to what the caller's key has left, or refuses when nothing is.
    pub fn cap_budget(
        &self,
        caller: &Caller,
        prefs: &mut Preferences,
        now: DateTime<Utc>,
    ) -> Result<Option<BudgetCap>, RouteError> {
        let Some(key) = &caller.key else {
            return Ok(None);
        };
        let Some(Remaining {
            usd: left,
            limit,
            which,
            period,
        }) = self.remaining(key, now)
        else {
            return Ok(None);
        };
        let spent = limit - left;
        if left <= 0.0 {
            return Err(RouteError::BudgetExhausted(format!(
                "API key {:?} has spent ${spent:.4} of its {which} budget of ${limit:.2}; it \
                 resets at the start of the next UTC {period} (or raise {which}_usd)",
                key.name
            )));
        }
        if prefs.max_cost_usd.is_none_or(|m| m > left) {
            prefs.max_cost_usd = Some(left);
            return Ok(Some(BudgetCap {
                message: format!(
                    "API key {:?} has ${left:.6} left of its {which} budget of ${limit:.2} and \
                     no eligible model is predicted to cost less",
                    key.name
                ),
            }));
        }
        Ok(None)
    }

    /// The worst case `calls` (the models a request will call, each once) may cost a key with
    /// limits, at catalog prices: `tokens.max_input` in and, out, `tokens.max_output` (the
    /// request's `max_tokens`) or all the room the model's context leaves. When the key has
    /// less left, the answer's length is capped to what it covers (`output_cap`); when it does
    /// not cover the input and one token, the request is refused. `None`: no limits to hold.
    pub fn worst_case(
        &self,
        caller: &Caller,
        calls: &[&ModelSpec],
        tokens: Tokens,
        now: DateTime<Utc>,
    ) -> Result<Option<WorstCase>, RouteError> {
        let Some(key) = &caller.key else {
            return Ok(None);
        };
        let Some(left) = self.remaining(key, now) else {
            return Ok(None);
        };
        let input = f64::from(tokens.max_input);
        let room = |m: &ModelSpec| m.context_window.saturating_sub(tokens.input).max(1);
        let out = |m: &ModelSpec| tokens.max_output.map_or(room(m), |t| t.min(room(m)));
        let shares = |cap: Option<u32>| -> Vec<(String, f64)> {
            calls
                .iter()
                .map(|m| {
                    let tokens = cap.map_or(out(m), |c| c.min(out(m)));
                    (m.name.clone(), m.cost_usd(input, f64::from(tokens)))
                })
                .collect()
        };
        let whole = shares(None);
        if whole.iter().map(|(_, usd)| usd).sum::<f64>() <= left.usd {
            return Ok(Some(WorstCase {
                shares: whole,
                output_cap: None,
            }));
        }
        let input_usd: f64 = calls.iter().map(|m| m.cost_usd(input, 0.0)).sum();
        let per_token: f64 = calls.iter().map(|m| m.cost_usd(0.0, 1.0)).sum();
        let covered = if per_token > 0.0 {
            ((left.usd - input_usd) / per_token).floor()
        } else {
            f64::from(u32::MAX)
        };
        if covered < 1.0 {
            return Err(RouteError::BudgetExhausted(format!(
                "API key {:?} has ${:.6} left of its {} budget of ${:.2}, which does not cover \
                 this request's input (${input_usd:.6}) and an answer; it resets at the start of \
                 the next UTC {} (or raise {}_usd)",
                key.name,
                left.usd.max(0.0),
                left.which,
                left.limit,
                left.period,
                left.which
            )));
        }
        let cap = covered.min(f64::from(u32::MAX)) as u32;
        Ok(Some(WorstCase {
            shares: shares(Some(cap)),
            output_cap: Some(cap),
        }))
    }

    /// Holds `usd` more of the caller's budget for `request_id` (a fallback call about to be
    /// made); false when the key's limits have no room for it.
    pub fn hold_more(&self, caller: &Caller, request_id: &str, usd: f64) -> bool {
        let limits = caller
            .key
            .as_ref()
            .map_or_else(Limits::default, |k| k.limits());
        self.ledger.hold_more(request_id, usd, limits, Utc::now())
    }

    /// Gives back `usd` held for `request_id` that no call used: the hold settled at no cost
    /// (so a later report adds its cost rather than replacing a charge already given back).
    pub fn release_hold(&self, request_id: &str, usd: f64) {
        self.ledger.settle(request_id, 0.0, Some(usd), Utc::now());
    }

    /// The refusal for a decision that failed only because of the key's remaining budget.
    pub fn budget_refusal(cap: BudgetCap) -> RouteError {
        RouteError::BudgetExhausted(cap.message)
    }

    /// Keeps the session on its previous model when that model is eligible. Returns whether it
    /// did.
    pub fn stick(&self, session_id: &str, decision: &mut Decision) -> bool {
        if session_id.is_empty() {
            return false;
        }
        let previous = {
            let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            sessions.get(session_id).cloned()
        };
        let Some(previous) = previous else {
            return false;
        };
        let eligible = decision
            .candidates
            .iter()
            .take_while(|c| c.exclusion.is_none())
            .position(|c| c.model == previous);
        match eligible {
            Some(0) => {
                decision.explanation = format!(
                    "{} (also this session's previous model)",
                    decision.explanation
                );
                true
            }
            Some(i) => {
                let policy_choice = decision.candidates[0].model.clone();
                let kept = decision.candidates.remove(i);
                decision.candidates.insert(0, kept);
                decision.explanation = format!(
                    "session affinity: kept {previous} from this session's previous turn (the \
                     policy alone would pick {policy_choice}; set no_session_affinity to opt out)"
                );
                true
            }
            None => false,
        }
    }

    /// Records what was routed: reserves the predicted charge within the caller's limits, then
    /// counts a half-open probe and sets the session's model. Returns the alerts that fired, or
    /// `None` (and records nothing) when the key's budget no longer covers the charge.
    pub fn routed(
        &self,
        request_id: &str,
        session_id: &str,
        caller: &Caller,
        model: &str,
        predicted_usd: f64,
        now: DateTime<Utc>,
    ) -> Option<Vec<FiredAlert>> {
        let limits = caller
            .key
            .as_ref()
            .map_or_else(Limits::default, |k| k.limits());
        if !self
            .ledger
            .reserve(caller.name(), request_id, predicted_usd, limits, now)
        {
            return None;
        }
        self.health.routed(model);
        if !session_id.is_empty() {
            self.sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(session_id, model.to_owned());
        }
        Some(self.check_alerts(caller.name(), now))
    }

    /// The refusal when concurrent requests kept spending the key's budget before this one
    /// could reserve its share.
    pub fn raced_budget(caller: &Caller) -> RouteError {
        RouteError::BudgetExhausted(format!(
            "API key {:?}: concurrent requests spent what was left of its budget while this one \
             was decided; retry (it is refused outright once nothing is left)",
            caller.name()
        ))
    }

    /// The refusal when the budgets shared by every replica have no room for the request.
    pub fn shared_refusal(key: &triage_guard::KeySpec, day_usd: f64, month_usd: f64) -> RouteError {
        let spent = |limit: Option<f64>, usd: f64, which: &str| {
            limit.map(|l| format!("${usd:.4} of its {which} budget of ${l:.2}"))
        };
        let said: Vec<String> = [
            spent(key.daily_usd, day_usd, "daily"),
            spent(key.monthly_usd, month_usd, "monthly"),
        ]
        .into_iter()
        .flatten()
        .collect();
        RouteError::BudgetExhausted(format!(
            "API key {:?} has spent {} across all replicas, and this request's predicted cost \
             does not fit; retry with a cheaper constraint, wait for the next UTC period, or \
             raise the limit",
            key.name,
            said.join(" and ")
        ))
    }

    /// Takes back the predicted charge of a request that was not served after all.
    pub fn release(&self, request_id: &str) {
        self.ledger.settle(request_id, 0.0, None, Utc::now());
    }

    /// Adopts the spend the shared store reported for `key` (every replica's requests), so
    /// that the next decisions are capped by what is really left.
    pub fn observe_spend(&self, key: &str, day_usd: f64, month_usd: f64) {
        self.ledger.observe(key, day_usd, month_usd, Utc::now());
    }

    fn check_alerts(&self, key: &str, now: DateTime<Utc>) -> Vec<FiredAlert> {
        let mut fired = self.alerts.check(key, &self.ledger.spent(key, now));
        fired.extend(self.alerts.check("global", &self.ledger.global(now)));
        fired
    }

    /// Learns from a stored report: breaker state (when `counts_outcome`: the first report on
    /// its request and model) and the real cost. Returns alerts that fired.
    pub fn feedback(
        &self,
        f: &FeedbackRecord,
        counts_outcome: bool,
        now: DateTime<Utc>,
    ) -> Vec<FiredAlert> {
        // The judge's records are the operator's spend, never the caller's, and say nothing
        // of a provider's health that the gateway's record of the call did not.
        if !f.charges_caller() {
            return Vec::new();
        }
        if !counts_outcome {
            return self.settle(f, now);
        }
        let failure = match f.error {
            ErrorKind::None => None,
            ErrorKind::RateLimited => Some(FailureKind::RateLimited),
            ErrorKind::Unavailable => Some(FailureKind::Unavailable),
            ErrorKind::Timeout => Some(FailureKind::Timeout),
            // Request-specific failures (content filters, bad tool calls) say nothing about
            // the provider's availability.
            ErrorKind::Other => return self.settle(f, now),
        };
        let retry_after = f
            .retry_after_ms
            .map(|ms| Duration::from_millis(u64::from(ms)));
        self.health
            .record(&f.model, failure, retry_after, Instant::now());
        self.settle(f, now)
    }

    fn settle(&self, f: &FeedbackRecord, now: DateTime<Utc>) -> Vec<FiredAlert> {
        match self
            .ledger
            .settle(&f.request_id, f.cost_usd, f.hold_usd, now)
        {
            Some(key) => self.check_alerts(&key, now),
            None => Vec::new(),
        }
    }

    /// Replays one logged record into this period's spend (called for every record at start,
    /// oldest first), so budgets survive restarts. Alerts crossed during the replay count as
    /// fired (they fired before the restart) and do not fire again.
    pub fn replay(&self, record: &LogRecord, now: DateTime<Utc>) {
        let month_start = now.timestamp() - 32 * 86_400;
        match record {
            LogRecord::Decision(d) => {
                let at = DateTime::from_timestamp_millis(d.time_ms as i64).unwrap_or(now);
                if at.timestamp() < month_start {
                    return;
                }
                let cost = d.reserved_usd();
                let key = d.api_key.as_deref().unwrap_or("anonymous");
                self.ledger.charge(key, &d.request_id, cost, at);
                let _ = self.check_alerts(key, at);
            }
            LogRecord::Feedback(f) if !f.charges_caller() => {
                if let Some(mark) = &f.judged {
                    let at = DateTime::from_timestamp_millis(f.time_ms as i64).unwrap_or(now);
                    self.judge_spend(mark.spend_usd, at);
                }
            }
            LogRecord::Feedback(f) => {
                let at = DateTime::from_timestamp_millis(f.time_ms as i64).unwrap_or(now);
                // At rest a request's spend is the sum of its reports' costs, whatever was
                // held while it ran: holds are not replayed.
                self.ledger.settle(&f.request_id, f.cost_usd, None, at);
            }
            // A verdict costs nothing: the drafts' calls are charged by their own reports.
            LogRecord::Verification(_) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use chrono::{DateTime, Utc};
    use triage_core::Settings;
    use triage_log::{ErrorKind, FeedbackRecord, FeedbackSource, Judged, LogRecord};

    use super::Controls;

    fn verdict(source: FeedbackSource, at: DateTime<Utc>, spend: f64) -> LogRecord {
        LogRecord::Feedback(FeedbackRecord {
            request_id: "r".into(),
            feedback_id: format!("judge:r:{spend}"),
            time_ms: at.timestamp_millis() as u64,
            model: "m".into(),
            quality: Some(1.0),
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
            latency_ms: 0,
            error: ErrorKind::None,
            retry_after_ms: None,
            first_byte_ms: None,
            tokens_estimated: false,
            api_key: None,
            hold_usd: None,
            source,
            judged: Some(Judged {
                judge_model: "j".into(),
                rubric: "h".into(),
                spend_usd: spend,
                propensity: None,
            }),
        })
    }

    /// A restart does not reset the judge's daily cap: today's marks are replayed, earlier
    /// days' are not, and the judge's spend never lands on a key.
    #[test]
    fn the_judges_spend_today_is_replayed_from_its_marks() {
        let controls = Controls::new(&Settings::load(None).expect("defaults"));
        let now = Utc::now();
        let yesterday = now - chrono::Duration::days(1);
        controls.replay(&verdict(FeedbackSource::Judge, yesterday, 4.0), now);
        controls.replay(&verdict(FeedbackSource::Judge, now, 0.25), now);
        controls.replay(&verdict(FeedbackSource::Shadow, now, 0.5), now);
        assert!((controls.judge_spent_today(now) - 0.75).abs() < 1e-12);
        controls.judge_spend(0.25, now);
        assert!((controls.judge_spent_today(now) - 1.0).abs() < 1e-12);
        assert_eq!(
            controls.judge_spent_today(now + chrono::Duration::days(1)),
            0.0
        );
        assert_eq!(controls.ledger.spent("anonymous", now).day_usd, 0.0);
    }
}
