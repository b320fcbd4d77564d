//! The writer: one task per replica drains the queue and writes each group in one
//! transaction, answering the reports and verdicts in it only after the commit.
//!
//! A group that fails because the database is away or busy is tried again a few times at once
//! (a deadlock between replicas settling the same key's budget resolves so); if it still fails,
//! its waiters are told `Unavailable` and dropped (they retry; nothing is acknowledged that was
//! not committed), while its decisions and call records are kept and retried with backoff,
//! which holds the queue behind them: new decisions wait in it until it is full. A group the
//! database *refuses* (a value it cannot hold) is written record by record, so one bad record
//! costs only itself.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_postgres::{Pool, Transaction};
use tokio::sync::{mpsc, oneshot};
use triage_log::{
    DecisionRecord, FeedbackAck, FeedbackRecord, LogError, Ticket, VerificationAck,
    VerificationRecord, now_ms,
};

use crate::{PgError, day_of, missing_request, oldest_day, request_day, schema};

/// Where the writer's answer to one record goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, LogError>>;

/// One record for the writer.
pub(crate) enum Item {
    /// A decision: written, never waited on.
    Decision(Box<DecisionRecord>),
    /// A call record of this process's own decision: written, never waited on.
    Attempt(Box<FeedbackRecord>),
    /// A client's report: checked, written, answered after the commit.
    Feedback(Box<FeedbackRecord>, Reply<FeedbackAck>),
    /// A verdict: checked, written, answered after the commit.
    Verification(Box<VerificationRecord>, Reply<VerificationAck>),
    /// Answered once everything queued before it is committed.
    Flush(Reply<()>),
}

/// What the store shows of its writer.
#[derive(Default)]
pub(crate) struct State {
    stalled: Mutex<Option<String>>,
    decisions: AtomicUsize,
    feedback: AtomicUsize,
}

impl State {
    /// Why the writer cannot write now, if it cannot.
    pub(crate) fn stalled(&self) -> Option<String> {
        self.stalled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_stalled(&self, why: Option<String>) {
        *self.stalled.lock().unwrap_or_else(PoisonError::into_inner) = why;
    }

    /// Decisions and new reports this process wrote.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (
            self.decisions.load(Ordering::Relaxed),
            self.feedback.load(Ordering::Relaxed),
        )
    }
}

/// Most records in one transaction.
const MAX_GROUP: usize = 2048;
/// Quick retries of a failed group before its waiters are told `Unavailable`.
const QUICK_RETRIES: u32 = 3;
/// How often an idle writer checks that the database answers (health follows it).
const PING_EVERY: Duration = Duration::from_secs(1);

/// Runs until the store is dropped and the queue drained.
pub(crate) async fn run(
    pool: Pool,
    mut queue: mpsc::Receiver<Item>,
    state: Arc<State>,
    retention_days: u64,
) {
    let mut writer = Writer {
        pool,
        state,
        retention_days,
        partitions: HashSet::new(),
        swept_day: day_of(now_ms()),
    };
    let mut group = Vec::new();
    loop {
        match tokio::time::timeout(PING_EVERY, queue.recv()).await {
            Ok(Some(item)) => group.push(item),
            Ok(None) => return,
            Err(_) => {
                writer.ping().await;
                continue;
            }
        }
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(item) => group.push(item),
                Err(_) => break,
            }
        }
        writer.write_until_done(&mut group).await;
    }
}

struct Writer {
    pool: Pool,
    state: Arc<State>,
    retention_days: u64,
    /// Day partitions known to exist.
    partitions: HashSet<i32>,
    /// The last day retention was applied.
    swept_day: i32,
}

impl Writer {
    /// Writes `group`, retrying until it is committed (its waiters may be dropped on the way).
    async fn write_until_done(&mut self, group: &mut Vec<Item>) {
        let mut failures = 0u32;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.write(group).await {
                Ok(()) => {
                    if failures >= QUICK_RETRIES {
                        tracing::info!("PostgreSQL log writes again; what waited is written");
                    }
                    self.state.set_stalled(None);
                    group.clear();
                    self.sweep().await;
                    return;
                }
                Err(e) if e.is_rejection() => {
                    tracing::warn!(error = %e, "PostgreSQL refused a group; writing it record by record");
                    self.write_one_by_one(std::mem::take(group)).await;
                    return;
                }
                Err(e) => {
                    failures += 1;
                    if failures < QUICK_RETRIES {
                        continue;
                    }
                    if failures == QUICK_RETRIES {
                        tracing::warn!(error = %e, "PostgreSQL log cannot write; reports are refused and decisions wait");
                    }
                    self.state.set_stalled(Some(e.to_string()));
                    answer_unavailable(group, &e.to_string());
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// After a refused group: each record alone, the refused one answered (or, for records
    /// nobody waits for, logged) and dropped.
    async fn write_one_by_one(&mut self, group: Vec<Item>) {
        for item in group {
            let mut single = vec![item];
            match self.write(&mut single).await {
                Ok(()) => {}
                Err(e) if e.is_rejection() => {
                    tracing::error!(error = %e, "PostgreSQL refused a record; it is dropped");
                    answer(single, || LogError::InvalidRecord(e.to_string()));
                }
                Err(_) => Box::pin(self.write_until_done(&mut single)).await,
            }
        }
    }

    /// One transaction for `group`; once committed, answers its waiters and empties it.
    async fn write(&mut self, group: &mut Vec<Item>) -> Result<(), PgError> {
        let outcomes = self.transact(group).await?;
        self.state
            .decisions
            .fetch_add(outcomes.decisions, Ordering::Relaxed);
        let new_reports = outcomes
            .reports
            .iter()
            .filter(|o| matches!(o, Ok(FeedbackAck::Stored(_))))
            .count();
        self.state
            .feedback
            .fetch_add(new_reports, Ordering::Relaxed);
        let mut reports = outcomes.reports.into_iter();
        let mut verdicts = outcomes.verdicts.into_iter();
        let lost = || LogError::Unavailable("the record lost its place in the group".into());
        for item in group.drain(..) {
            match item {
                Item::Feedback(_, reply) => {
                    let _ = reply.send(reports.next().unwrap_or_else(|| Err(lost())));
                }
                Item::Attempt(attempt) => {
                    if let Some(Err(e)) = reports.next() {
                        tracing::warn!(error = %e, request_id = %attempt.request_id, "gateway call record not stored");
                    }
                }
                Item::Verification(_, reply) => {
                    let _ = reply.send(verdicts.next().unwrap_or_else(|| Err(lost())));
                }
                Item::Flush(reply) => {
                    let _ = reply.send(Ok(()));
                }
                Item::Decision(_) => {}
            }
        }
        Ok(())
    }

    /// Writes `group` in one transaction: decisions first, then reports (checked against
    /// them), then verdicts. Nothing is answered here.
    async fn transact(&mut self, group: &[Item]) -> Result<Outcomes, PgError> {
        let mut client = self.pool.get().await?;
        let days: Vec<i32> = group.iter().filter_map(item_day).collect();
        schema::ensure_partitions(&mut client, &mut self.partitions, days).await?;
        let tx = client.transaction().await?;
        let decisions: Vec<&DecisionRecord> = group
            .iter()
            .filter_map(|i| match i {
                Item::Decision(d) => Some(&**d),
                _ => None,
            })
            .collect();
        insert_decisions(&tx, &decisions).await?;
        let reports: Vec<&FeedbackRecord> = group
            .iter()
            .filter_map(|i| match i {
                Item::Attempt(f) | Item::Feedback(f, _) => Some(&**f),
                _ => None,
            })
            .collect();
        let reports = crate::read::take_reports(&tx, &reports, self.retention_days).await?;
        let mut verdicts = Vec::new();
        for item in group {
            if let Item::Verification(v, _) = item {
                verdicts.push(take_verdict(&tx, v, self.retention_days).await?);
            }
        }
        tx.commit().await?;
        Ok(Outcomes {
            decisions: decisions.len(),
            reports,
            verdicts,
        })
    }

    /// Checks that the database answers; health follows.
    async fn ping(&mut self) {
        let answered = match self.pool.get().await {
            Ok(client) => client.simple_query("SELECT 1").await.map_err(PgError::from),
            Err(e) => Err(PgError::from(e)),
        };
        match answered {
            Ok(_) => {
                if self.state.stalled().is_some() {
                    tracing::info!("PostgreSQL log reachable again");
                }
                self.state.set_stalled(None);
                self.sweep().await;
            }
            Err(e) => self.state.set_stalled(Some(e.to_string())),
        }
    }

    /// Once a day: drops the partitions past the retention.
    async fn sweep(&mut self) {
        let today = day_of(now_ms());
        let Some(oldest) = oldest_day(self.retention_days) else {
            return;
        };
        if today == self.swept_day {
            return;
        }
        self.swept_day = today;
        let dropped = match self.pool.get().await {
            Ok(mut client) => schema::drop_before(&mut client, oldest).await,
            Err(e) => Err(e.into()),
        };
        match dropped {
            Ok(n) if n > 0 => tracing::info!(dropped = n, "partitions past the retention dropped"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "dropping old partitions failed; will retry"),
        }
        self.partitions.retain(|d| *d >= oldest);
    }
}

/// What a committed group did, in the order of its items.
struct Outcomes {
    decisions: usize,
    reports: Vec<Result<FeedbackAck, LogError>>,
    verdicts: Vec<Result<VerificationAck, LogError>>,
}

/// The partition day an item writes to.
fn item_day(item: &Item) -> Option<i32> {
    match item {
        Item::Decision(d) => request_day(&d.request_id),
        Item::Attempt(f) | Item::Feedback(f, _) => request_day(&f.request_id),
        Item::Verification(v, _) => request_day(&v.request_id),
        Item::Flush(_) => None,
    }
}

/// Tells the waiters of `group` that nothing of theirs was stored, and drops them; decisions
/// and call records stay to be retried.
fn answer_unavailable(group: &mut Vec<Item>, why: &str) {
    let waiters: Vec<Item> = group
        .extract_if(.., |i| {
            matches!(
                i,
                Item::Feedback(..) | Item::Verification(..) | Item::Flush(_)
            )
        })
        .collect();
    answer(waiters, || LogError::Unavailable(why.to_owned()));
}

/// Answers every waiter in `items` with the error `error` makes (one each: errors are not
/// `Clone`); records nobody waits for are logged as lost.
fn answer(items: Vec<Item>, error: impl Fn() -> LogError) {
    for item in items {
        match item {
            Item::Feedback(_, reply) => {
                let _ = reply.send(Err(error()));
            }
            Item::Verification(_, reply) => {
                let _ = reply.send(Err(error()));
            }
            Item::Flush(reply) => {
                let _ = reply.send(Err(error()));
            }
            Item::Decision(d) => {
                tracing::error!(request_id = %d.request_id, "decision not stored");
            }
            Item::Attempt(f) => {
                tracing::error!(request_id = %f.request_id, "gateway call record not stored");
            }
        }
    }
}

/// The model names a decision's reports may name, one string (the separator is no character
/// a catalog name holds).
pub(crate) const CANDIDATE_SEPARATOR: char = '\u{1}';

async fn insert_decisions(
    tx: &Transaction<'_>,
    decisions: &[&DecisionRecord],
) -> Result<(), PgError> {
    if decisions.is_empty() {
        return Ok(());
    }
    let mut days = Vec::with_capacity(decisions.len());
    let mut ids = Vec::with_capacity(decisions.len());
    let mut times = Vec::with_capacity(decisions.len());
    let mut keys = Vec::with_capacity(decisions.len());
    let mut candidates = Vec::with_capacity(decisions.len());
    let mut reserved = Vec::with_capacity(decisions.len());
    let mut planned = Vec::with_capacity(decisions.len());
    let mut records = Vec::with_capacity(decisions.len());
    for d in decisions {
        days.push(request_day(&d.request_id).unwrap_or_default());
        ids.push(d.request_id.as_str());
        times.push(i64::try_from(d.time_ms).unwrap_or(i64::MAX));
        keys.push(d.api_key.as_deref());
        candidates.push(
            d.candidates
                .iter()
                .map(|c| c.model.as_str())
                .collect::<Vec<_>>()
                .join(&CANDIDATE_SEPARATOR.to_string()),
        );
        reserved.push(d.reserved_usd());
        planned.push(d.draft_plan.is_some());
        records.push(serde_json::to_vec(d)?);
    }
    // A retried group may hold decisions a lost commit wrote already: those stay as they are.
    tx.execute(
        "INSERT INTO decisions (day, request_id, time_ms, api_key, candidates, reserved_usd, planned, record)
         SELECT * FROM unnest($1::int4[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::float8[], $7::bool[], $8::bytea[])
         ON CONFLICT DO NOTHING",
        &[&days, &ids, &times, &keys, &candidates, &reserved, &planned, &records],
    )
    .await?;
    Ok(())
}

/// Checks a verdict against its decision (in the transaction, row locked) and stores it.
async fn take_verdict(
    tx: &Transaction<'_>,
    v: &VerificationRecord,
    retention_days: u64,
) -> Result<Result<VerificationAck, LogError>, PgError> {
    let day = request_day(&v.request_id).unwrap_or_default();
    let row = tx
        .query_opt(
            "SELECT api_key, planned, verified FROM decisions
              WHERE day = $1 AND request_id = $2 FOR UPDATE",
            &[&day, &v.request_id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Err(missing_request(&v.request_id, retention_days)));
    };
    let key: Option<String> = row.get(0);
    if key.as_deref() != v.api_key.as_deref() {
        return Ok(Err(LogError::NotYourRequest(v.request_id.clone())));
    }
    if !row.get::<_, bool>(1) {
        return Ok(Err(LogError::NotPlanned(v.request_id.clone())));
    }
    // The digest as the column holds it (the same 64 bits, signed).
    let digest = v.verdict_digest() as i64;
    match row.get::<_, Option<i64>>(2) {
        Some(earlier) if earlier == digest => return Ok(Ok(VerificationAck::Duplicate)),
        Some(_) => return Ok(Err(LogError::AlreadyVerified(v.request_id.clone()))),
        None => {}
    }
    tx.execute(
        "UPDATE decisions SET verified = $3 WHERE day = $1 AND request_id = $2",
        &[&day, &v.request_id, &digest],
    )
    .await?;
    tx.execute(
        "INSERT INTO verifications (day, request_id, time_ms, record) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
        &[
            &day,
            &v.request_id,
            &i64::try_from(v.time_ms).unwrap_or(i64::MAX),
            &serde_json::to_vec(v)?,
        ],
    )
    .await?;
    Ok(Ok(VerificationAck::Stored(Ticket::DURABLE)))
}
