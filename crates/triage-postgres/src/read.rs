//! Statements that read what replicas share: reports checked against their decisions (and
//! settled into budgets), plans, budget reservations, and history for start-up and training.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use deadpool_postgres::{Pool, Transaction};
use futures::{StreamExt, pin_mut};
use triage_guard::ledger::periods;
use triage_log::{
    DecisionRecord, FeedbackAck, FeedbackRecord, LogError, LogRecord, MAX_REPORTS_PER_REQUEST,
    PlannedRequest, Reserved, SpendReservation, Ticket, VerificationRecord,
};

use crate::writer::CANDIDATE_SEPARATOR;
use crate::{PgError, day_of, missing_request, request_day};

/// A decision as reports are checked against it.
struct Decided {
    api_key: Option<String>,
    candidates: String,
}

/// Checks `reports` (in queue order) against their decisions and the reports already stored,
/// stores the new ones and settles their cost into budgets, all in `tx`. Returns each one's
/// outcome, in order.
pub(crate) async fn take_reports(
    tx: &Transaction<'_>,
    reports: &[&FeedbackRecord],
    retention_days: u64,
) -> Result<Vec<Result<FeedbackAck, LogError>>, PgError> {
    if reports.is_empty() {
        return Ok(Vec::new());
    }
    let days: Vec<i32> = reports
        .iter()
        .filter_map(|f| request_day(&f.request_id))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let request_ids: Vec<&str> = reports.iter().map(|f| f.request_id.as_str()).collect();
    let decided: HashMap<String, Decided> = tx
        .query(
            "SELECT request_id, api_key, candidates FROM decisions
              WHERE day = ANY($1) AND request_id = ANY($2)",
            &[&days, &request_ids],
        )
        .await?
        .into_iter()
        .map(|r| {
            let decided = Decided {
                api_key: r.get(1),
                candidates: r.get(2),
            };
            (r.get(0), decided)
        })
        .collect();
    // Every report already on these requests (at most MAX_REPORTS_PER_REQUEST each): feedback
    // ids are scoped to their request.
    let mut earlier = Earlier::default();
    for row in tx
        .query(
            "SELECT request_id, feedback_id, record FROM feedback
              WHERE day = ANY($1) AND request_id = ANY($2)",
            &[&days, &request_ids],
        )
        .await?
    {
        let record: Vec<u8> = row.get(2);
        earlier.add(row.get(0), row.get(1), serde_json::from_slice(&record)?);
    }
    let mut outcomes = Vec::with_capacity(reports.len());
    let mut accepted: Vec<&FeedbackRecord> = Vec::new();
    for f in reports {
        let outcome = check(f, decided.get(&f.request_id), &earlier, retention_days);
        if let Ok(FeedbackAck::Stored(_)) = outcome {
            accepted.push(f);
            earlier.add(f.request_id.clone(), f.feedback_id.clone(), (*f).clone());
        }
        outcomes.push(outcome);
    }
    let inserted = insert_reports(tx, &accepted).await?;
    // A report another replica stored between the check and the insert is a retry of it.
    let mut new_reports = Vec::new();
    for (f, outcome) in reports.iter().zip(outcomes.iter_mut()) {
        if let Ok(FeedbackAck::Stored(_)) = outcome {
            if inserted.contains(&(f.request_id.clone(), f.feedback_id.clone())) {
                new_reports.push(*f);
            } else {
                *outcome = Ok(FeedbackAck::Duplicate(Ticket::DURABLE));
            }
        }
    }
    settle(tx, &new_reports).await?;
    Ok(outcomes)
}

/// The reports already stored on the requests being reported on.
#[derive(Default)]
struct Earlier {
    /// (request id, feedback id) → the report.
    reports: HashMap<(String, String), FeedbackRecord>,
    /// Reports per request.
    counts: HashMap<String, usize>,
}

impl Earlier {
    fn add(&mut self, request_id: String, feedback_id: String, report: FeedbackRecord) {
        *self.counts.entry(request_id.clone()).or_default() += 1;
        self.reports.insert((request_id, feedback_id), report);
    }

    fn get(&self, f: &FeedbackRecord) -> Option<&FeedbackRecord> {
        self.reports
            .get(&(f.request_id.clone(), f.feedback_id.clone()))
    }
}

/// The checks of the file log's index, against the shared tables: ownership first (another key
/// learns nothing about the request), then retries and reused ids, the bound on reports per
/// request, then the model.
fn check(
    f: &FeedbackRecord,
    decided: Option<&Decided>,
    earlier: &Earlier,
    retention_days: u64,
) -> Result<FeedbackAck, LogError> {
    let Some(d) = decided else {
        return Err(missing_request(&f.request_id, retention_days));
    };
    if d.api_key.as_deref() != f.api_key.as_deref() {
        return Err(LogError::NotYourRequest(f.request_id.clone()));
    }
    if let Some(first) = earlier.get(f) {
        return if first.same_report(f) {
            Ok(FeedbackAck::Duplicate(Ticket::DURABLE))
        } else {
            Err(LogError::ConflictingFeedback(f.feedback_id.clone()))
        };
    }
    if earlier.counts.get(&f.request_id).copied().unwrap_or(0) >= MAX_REPORTS_PER_REQUEST {
        return Err(LogError::TooManyReports(
            f.request_id.clone(),
            MAX_REPORTS_PER_REQUEST,
        ));
    }
    if !d
        .candidates
        .split(CANDIDATE_SEPARATOR)
        .any(|m| m == f.model)
    {
        let names: Vec<&str> = d.candidates.split(CANDIDATE_SEPARATOR).collect();
        return Err(LogError::InvalidRecord(format!(
            "model {:?} was not a candidate of request {}; name the model actually used, one of {}",
            f.model,
            f.request_id,
            names.join(", ")
        )));
    }
    Ok(FeedbackAck::Stored(Ticket::DURABLE))
}

/// Inserts `reports`; returns the (request id, feedback id) pairs that were new.
async fn insert_reports(
    tx: &Transaction<'_>,
    reports: &[&FeedbackRecord],
) -> Result<HashSet<(String, String)>, PgError> {
    if reports.is_empty() {
        return Ok(HashSet::new());
    }
    let days: Vec<i32> = reports
        .iter()
        .map(|f| request_day(&f.request_id).unwrap_or_default())
        .collect();
    let feedback_ids: Vec<&str> = reports.iter().map(|f| f.feedback_id.as_str()).collect();
    let request_ids: Vec<&str> = reports.iter().map(|f| f.request_id.as_str()).collect();
    let times: Vec<i64> = reports
        .iter()
        .map(|f| i64::try_from(f.time_ms).unwrap_or(i64::MAX))
        .collect();
    let records = reports
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(tx
        .query(
            "INSERT INTO feedback (day, feedback_id, request_id, time_ms, record)
             SELECT * FROM unnest($1::int4[], $2::text[], $3::text[], $4::int8[], $5::bytea[])
             ON CONFLICT DO NOTHING RETURNING request_id, feedback_id",
            &[&days, &feedback_ids, &request_ids, &times, &records],
        )
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Books new reports' costs into their keys' budgets, as the replica's ledger does: a report
/// that settles a hold of its own replaces that hold; otherwise the first report on a request
/// replaces its predicted cost, later ones (fallback attempts) add theirs; a correction counts
/// only in the day and month the request was charged in.
async fn settle(tx: &Transaction<'_>, reports: &[&FeedbackRecord]) -> Result<(), PgError> {
    // The judge's records are the operator's spend, never the caller's.
    let reports: Vec<&FeedbackRecord> = reports
        .iter()
        .copied()
        .filter(|f| f.charges_caller())
        .collect();
    if reports.is_empty() {
        return Ok(());
    }
    let mut ids: Vec<&str> = reports.iter().map(|f| f.request_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let days: Vec<i32> = ids.iter().filter_map(|id| request_day(id)).collect();
    // Only requests of keys with a budget row (keys with limits) have anything to settle:
    // reports on the others touch no decision row. Rows locked in one order, so two replicas
    // settling the same requests cannot deadlock.
    let rows = tx
        .query(
            "WITH before AS (
                SELECT day, request_id, settled FROM decisions
                 WHERE day = ANY($1) AND request_id = ANY($2)
                   AND api_key IN (SELECT api_key FROM budgets)
                 ORDER BY request_id FOR UPDATE)
             UPDATE decisions d SET settled = true FROM before
              WHERE d.day = before.day AND d.request_id = before.request_id
             RETURNING d.request_id, d.api_key, d.reserved_usd, before.settled, d.time_ms",
            &[&days, &ids],
        )
        .await?;
    // request → (key, predicted, settled already, charged at)
    let mut charged: HashMap<String, (String, f64, bool, i64)> = rows
        .into_iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
        .collect();
    let now = Utc::now();
    let (today, this_month) = periods(now);
    let mut deltas: HashMap<String, (f64, f64)> = HashMap::new();
    for f in reports {
        let Some((key, predicted, settled, at_ms)) = charged.get_mut(&f.request_id) else {
            continue;
        };
        // A report that settles a hold of its own replaces just that hold (see the ledger).
        let delta = match (f.hold_usd, *settled) {
            (Some(held), _) => f.cost_usd - held,
            (None, true) => f.cost_usd,
            (None, false) => f.cost_usd - *predicted,
        };
        *settled = true;
        let at = DateTime::from_timestamp_millis(*at_ms).unwrap_or(now);
        let (day, month) = periods(at);
        let entry = deltas.entry(key.clone()).or_default();
        if day == today {
            entry.0 += delta;
        }
        if month == this_month {
            entry.1 += delta;
        }
    }
    if deltas.is_empty() {
        return Ok(());
    }
    let mut keys: Vec<(&String, &(f64, f64))> = deltas.iter().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    let day_deltas: Vec<f64> = keys.iter().map(|(_, d)| d.0).collect();
    let month_deltas: Vec<f64> = keys.iter().map(|(_, d)| d.1).collect();
    let (today, this_month) = (period_i32(today), period_i32(this_month));
    tx.execute(
        "UPDATE budgets b SET
            day_usd = CASE WHEN b.day = $2 THEN greatest(0, b.day_usd + u.dd) ELSE b.day_usd END,
            month_usd = CASE WHEN b.month = $3 THEN greatest(0, b.month_usd + u.dm) ELSE b.month_usd END
           FROM unnest($1::text[], $4::float8[], $5::float8[]) AS u(api_key, dd, dm)
          WHERE b.api_key = u.api_key",
        &[&names, &today, &this_month, &day_deltas, &month_deltas],
    )
    .await?;
    Ok(())
}

fn period_i32(period: i64) -> i32 {
    i32::try_from(period).unwrap_or(i32::MAX)
}

/// Reserves a request's predicted cost on its key's budget row, in one conditional update:
/// charged only when the day's and the month's spend, with it, stay within their limits.
/// `has_row`: whether the key's row is known to exist (rows are never deleted), which saves
/// creating it first.
pub(crate) async fn reserve(
    pool: &Pool,
    r: &SpendReservation,
    has_row: bool,
) -> Result<Reserved, PgError> {
    let client = pool.get().await?;
    let at = DateTime::from_timestamp_millis(i64::try_from(r.time_ms).unwrap_or(i64::MAX))
        .unwrap_or_else(Utc::now);
    let (day, month) = periods(at);
    let (day, month) = (period_i32(day), period_i32(month));
    if !has_row {
        client
            .execute(
                "INSERT INTO budgets (api_key, day, day_usd, month, month_usd)
                 VALUES ($1, $2, 0, $3, 0) ON CONFLICT (api_key) DO NOTHING",
                &[&r.api_key, &day, &month],
            )
            .await?;
    }
    // The same relative slack as the ledger: what the decision computed as fitting still fits.
    let charged = client
        .query_opt(
            "UPDATE budgets SET
                day_usd = (CASE WHEN day = $2 THEN day_usd ELSE 0 END) + $4,
                month_usd = (CASE WHEN month = $3 THEN month_usd ELSE 0 END) + $4,
                day = $2, month = $3
              WHERE api_key = $1
                AND ($5::float8 IS NULL
                     OR (CASE WHEN day = $2 THEN day_usd ELSE 0 END) + $4 <= $5 * (1 + 1e-9) + 1e-12)
                AND ($6::float8 IS NULL
                     OR (CASE WHEN month = $3 THEN month_usd ELSE 0 END) + $4 <= $6 * (1 + 1e-9) + 1e-12)
              RETURNING day_usd, month_usd",
            &[&r.api_key, &day, &month, &r.usd, &r.daily_usd, &r.monthly_usd],
        )
        .await?;
    if let Some(row) = charged {
        return Ok(Reserved::Charged {
            day_usd: row.get(0),
            month_usd: row.get(1),
        });
    }
    let row = client
        .query_one(
            "SELECT CASE WHEN day = $2 THEN day_usd ELSE 0 END,
                    CASE WHEN month = $3 THEN month_usd ELSE 0 END
               FROM budgets WHERE api_key = $1",
            &[&r.api_key, &day, &month],
        )
        .await?;
    Ok(Reserved::Refused {
        day_usd: row.get(0),
        month_usd: row.get(1),
    })
}

/// Takes `r` back from its key's budget row, in the day and month it was charged in (a period
/// that has rolled over since has nothing of it left to take).
pub(crate) async fn release(pool: &Pool, r: &SpendReservation) -> Result<(), PgError> {
    let client = pool.get().await?;
    let at = DateTime::from_timestamp_millis(i64::try_from(r.time_ms).unwrap_or(i64::MAX))
        .unwrap_or_else(Utc::now);
    let (day, month) = periods(at);
    let (day, month) = (period_i32(day), period_i32(month));
    client
        .execute(
            "UPDATE budgets SET
                day_usd = CASE WHEN day = $2 THEN greatest(0, day_usd - $4) ELSE day_usd END,
                month_usd = CASE WHEN month = $3 THEN greatest(0, month_usd - $4) ELSE month_usd END
              WHERE api_key = $1",
            &[&r.api_key, &day, &month, &r.usd],
        )
        .await?;
    Ok(())
}

/// Whether the decision `request_id` is stored.
pub(crate) async fn is_decided(pool: &Pool, day: i32, request_id: &str) -> Result<bool, PgError> {
    let client = pool.get().await?;
    Ok(client
        .query_opt(
            "SELECT 1 FROM decisions WHERE day = $1 AND request_id = $2",
            &[&day, &request_id],
        )
        .await?
        .is_some())
}

/// The plan of a verify-then-escalate request, for the key that routed it.
pub(crate) async fn planned(
    pool: &Pool,
    day: i32,
    request_id: &str,
    api_key: Option<&str>,
    retention_days: u64,
) -> Result<PlannedRequest, LogError> {
    let client = pool.get().await.map_err(PgError::from)?;
    let row = client
        .query_opt(
            "SELECT api_key, verified, record FROM decisions WHERE day = $1 AND request_id = $2",
            &[&day, &request_id],
        )
        .await
        .map_err(PgError::from)?
        .ok_or_else(|| missing_request(request_id, retention_days))?;
    if row.get::<_, Option<&str>>(0) != api_key {
        return Err(LogError::NotYourRequest(request_id.to_owned()));
    }
    let record: &[u8] = row.get(2);
    let decision: DecisionRecord = serde_json::from_slice(record).map_err(PgError::from)?;
    let plan = decision
        .draft_plan
        .ok_or_else(|| LogError::NotPlanned(request_id.to_owned()))?;
    Ok(PlannedRequest {
        plan,
        policy_version: decision.policy_version,
        verified: row.get::<_, Option<i64>>(1).is_some(),
    })
}

/// Streams every record since `since_ms` to `visit`: ordered by time, a decision before the
/// reports and verdicts written in the same millisecond.
pub(crate) async fn history(
    client: &tokio_postgres::Client,
    since_ms: Option<u64>,
    visit: &mut (dyn FnMut(LogRecord) + Send),
) -> Result<(), PgError> {
    let since = since_ms.unwrap_or(0);
    // Reports lie in their request's partition, which is never newer than the report.
    let first_day = day_of(since);
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    let statement = client
        .prepare(
            "SELECT kind, record FROM (
                SELECT 0 AS kind, time_ms, record FROM decisions WHERE day >= $1 AND time_ms >= $2
                UNION ALL
                SELECT 1, time_ms, record FROM feedback WHERE time_ms >= $2
                UNION ALL
                SELECT 2, time_ms, record FROM verifications WHERE time_ms >= $2
             ) r ORDER BY time_ms, kind",
        )
        .await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&first_day, &since];
    let rows = client.query_raw(&statement, params).await?;
    pin_mut!(rows);
    while let Some(row) = rows.next().await {
        let row = row?;
        let kind: i32 = row.get(0);
        let bytes: &[u8] = row.get(1);
        let record = match kind {
            0 => LogRecord::Decision(serde_json::from_slice(bytes)?),
            1 => LogRecord::Feedback(serde_json::from_slice::<FeedbackRecord>(bytes)?),
            _ => LogRecord::Verification(serde_json::from_slice::<VerificationRecord>(bytes)?),
        };
        visit(record);
    }
    Ok(())
}
