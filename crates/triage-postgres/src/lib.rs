//! The decision and feedback log in PostgreSQL, for replicas that share one store
//! (`log.backend = "postgres"`). It implements [`triage_log::EventStore`] exactly where the
//! embedded file log does, so the server and training never know which one they use.
//!
//! - **One writer task per replica, group commit.** Decisions, the gateway's call records,
//!   client reports and verdicts go through one bounded queue to one task, which writes
//!   everything waiting in one transaction (decisions first, so a report on a decision of the
//!   same batch finds it). A report is acknowledged only after its transaction commits.
//! - **The database enforces what the file log's index did.** A report is checked against its
//!   decision (which replica routed it does not matter: every replica reads the same table),
//!   `feedback_id` is unique (a retry from any replica answers `duplicate`), a verdict is given
//!   once per request.
//! - **Budgets across replicas.** A request with a limited key reserves its predicted cost with
//!   one conditional `UPDATE … RETURNING` on the key's `budgets` row: two replicas cannot both
//!   spend the same remainder. Its first report replaces the prediction with the real cost,
//!   in the report's transaction.
//! - **When PostgreSQL is down.** Reports and verdicts are refused with `Unavailable` (nothing
//!   is acknowledged that is not committed); decisions wait in the queue, which is bounded
//!   (`log.queue_capacity`): once full, routing is refused with `Full` (`RESOURCE_EXHAUSTED`).
//!   The writer keeps retrying and writes what waited when the database returns.
//!   [`failure`](EventStore::failure) says why meanwhile, so health reports `NOT_SERVING`.
//! - **Lag between replicas.** A decision is queued, not committed, when `Route` answers; a
//!   report that reaches another replica first finds no decision. Reports on a request issued
//!   in the last few seconds are therefore retried briefly before they are refused.
//!
//! Tables, migrations and day partitions: [`schema`]; the writer: [`writer`].

mod read;
mod redact;
mod schema;
mod writer;

pub use redact::redacted;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Pool, Runtime};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;
use triage_log::{
    DecisionRecord, Durability, EventStore, FeedbackAck, FeedbackRecord, LogError, LogRecord,
    PlannedRequest, Reserved, SpendReservation, Ticket, VerificationAck, VerificationRecord,
    issued_ms, now_ms,
};

use crate::writer::{Item, Reply, State};

/// Settings of [`PgEventStore`].
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// Connections in the pool (the writer holds one).
    pub pool_size: usize,
    /// Records waiting for the writer before new ones are refused with `Full`.
    pub queue_capacity: usize,
    /// Days of partitions kept (0: for ever); reports on older requests are refused as expired.
    pub retention_days: u64,
}

/// What went wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL or pool settings are not usable.
    #[error("log.url: {0}")]
    Config(#[from] deadpool_postgres::CreatePoolError),
    /// No connection could be had from the pool.
    #[error("PostgreSQL connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("PostgreSQL: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// A stored record could not be read back.
    #[error("PostgreSQL log holds an unreadable record: {0}")]
    Corrupt(#[from] serde_json::Error),
}

impl PgError {
    /// Whether the database refused the data itself (a constraint, a value it cannot hold),
    /// rather than being unreachable or busy: retrying the same statement cannot help.
    pub fn is_rejection(&self) -> bool {
        let PgError::Db(e) = self else {
            return matches!(self, PgError::Corrupt(_));
        };
        let Some(code) = e.code() else {
            return false;
        };
        // 08: connection, 53: resources, 57: operator intervention (shutdown), 40: a deadlock or
        // serialization failure, 58: system error. Anything else is about the statement.
        !["08", "53", "57", "40", "58"]
            .iter()
            .any(|class| code.code().starts_with(class))
    }
}

impl From<PgError> for LogError {
    fn from(e: PgError) -> Self {
        if e.is_rejection() {
            LogError::InvalidRecord(e.to_string())
        } else {
            LogError::Unavailable(e.to_string())
        }
    }
}

/// How long after its request was issued a report on an unknown request is retried: the
/// decision may still be on its way from the replica that routed it.
const DECISION_LAG: Duration = Duration::from_secs(10);

/// The log in PostgreSQL (see the crate docs).
pub struct PgEventStore {
    pool: Pool,
    queue: mpsc::Sender<Item>,
    state: Arc<State>,
    retention_days: u64,
    writer: tokio::task::JoinHandle<()>,
    /// Keys whose `budgets` row exists: a reservation is then one statement.
    budget_rows: Mutex<HashSet<String>>,
}

impl PgEventStore {
    /// Connects, applies the migrations this database lacks, drops partitions past the
    /// retention and starts the writer. Fails when the database cannot be reached: a replica
    /// that starts without its store would refuse every report.
    pub async fn connect(options: &PgOptions) -> Result<Self, PgError> {
        let mut config = deadpool_postgres::Config::new();
        config.url = Some(options.url.clone());
        config.pool = Some(deadpool_postgres::PoolConfig {
            max_size: options.pool_size.max(2),
            timeouts: deadpool_postgres::Timeouts {
                wait: Some(Duration::from_secs(5)),
                create: Some(Duration::from_secs(5)),
                recycle: Some(Duration::from_secs(5)),
            },
            ..Default::default()
        });
        let pool = config.create_pool(Some(Runtime::Tokio1), NoTls)?;
        let mut client = pool.get().await?;
        schema::migrate(&mut client).await?;
        if let Some(oldest) = oldest_day(options.retention_days) {
            let dropped = schema::drop_before(&mut client, oldest).await?;
            if dropped > 0 {
                tracing::info!(
                    dropped,
                    "PostgreSQL log: partitions past the retention dropped"
                );
            }
        }
        drop(client);
        let (queue, receiver) = mpsc::channel(options.queue_capacity.max(1));
        let state = Arc::new(State::default());
        let writer = tokio::spawn(writer::run(
            pool.clone(),
            receiver,
            Arc::clone(&state),
            options.retention_days,
        ));
        tracing::info!("PostgreSQL log connected");
        Ok(Self {
            pool,
            queue,
            state,
            retention_days: options.retention_days,
            writer,
            budget_rows: Mutex::new(HashSet::new()),
        })
    }

    /// Queues `item` for the writer, refusing when the queue is full or the writer gone.
    fn enqueue(&self, item: Item) -> Result<(), LogError> {
        self.queue.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => LogError::Full,
            mpsc::error::TrySendError::Closed(_) => {
                LogError::WriterStopped("the PostgreSQL writer has ended".into())
            }
        })
    }

    /// Sends `item` (built around its reply channel) and waits for the writer's answer.
    async fn ask<T>(&self, item: impl FnOnce(Reply<T>) -> Item) -> Result<T, LogError> {
        if let Some(why) = self.state.stalled() {
            return Err(LogError::Unavailable(why));
        }
        let (reply, answer) = oneshot::channel();
        self.enqueue(item(reply))?;
        answer
            .await
            .map_err(|_| LogError::WriterStopped("the PostgreSQL writer has ended".into()))?
    }

    /// Runs `attempt` again once the request's decision is stored, while it says the request
    /// is unknown and the request is recent enough to be on its way from another replica. The
    /// waiting is a cheap lookup, not a trip through the writer, so reports on made-up recent
    /// ids cost the writer one check each. Still unknown after 2 s: `Unavailable` ("not stored
    /// yet"); not recent: the unknown-request error at once.
    async fn tolerating_lag<T, F, Fut>(&self, request_id: &str, attempt: F) -> Result<T, LogError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, LogError>>,
    {
        let mut pause = Duration::from_millis(10);
        let mut waited = Duration::ZERO;
        loop {
            let missing = match attempt().await {
                Err(LogError::UnknownRequest(id)) => id,
                other => return other,
            };
            let recent = issued_ms(&missing)
                .is_some_and(|at| now_ms().saturating_sub(at) < DECISION_LAG.as_millis() as u64);
            let Some(day) = request_day(&missing).filter(|_| recent) else {
                return Err(LogError::UnknownRequest(missing));
            };
            loop {
                if waited >= Duration::from_secs(2) {
                    return Err(LogError::Unavailable(format!(
                        "request_id {request_id:?} is not stored yet (the replica that routed \
                         it is still writing it); retry in a moment"
                    )));
                }
                tokio::time::sleep(pause).await;
                waited += pause;
                pause = (pause * 2).min(Duration::from_millis(400));
                if read::is_decided(&self.pool, day, request_id).await? {
                    break;
                }
            }
        }
    }

    /// Waits until everything queued before now is committed.
    async fn flush(&self) -> Result<(), LogError> {
        self.ask(Item::Flush).await
    }

    /// The error for a request this store has no decision for.
    fn missing(&self, request_id: &str) -> LogError {
        missing_request(request_id, self.retention_days)
    }
}

/// Every record in the database at `url`, oldest first, read over one plain connection (no
/// migrations, no writer): for training and export, which only read.
pub async fn read_records(url: &str) -> Result<Vec<LogRecord>, PgError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    let connection = tokio::spawn(connection);
    let mut records = Vec::new();
    let read = read::history(&client, None, &mut |r| records.push(r)).await;
    drop(client);
    let _ = connection.await;
    read.map(|()| records)
}

/// Whether a `--from-log` argument names a database rather than a directory.
pub fn is_url(source: &str) -> bool {
    source.starts_with("postgres://") || source.starts_with("postgresql://")
}

/// Unknown, or expired when its id says it was issued before the first day the retention
/// keeps (partitions go by whole days).
pub(crate) fn missing_request(request_id: &str, retention_days: u64) -> LogError {
    let cutoff_ms =
        oldest_day(retention_days).map(|day| u64::try_from(day).unwrap_or(0) * 86_400_000);
    triage_log::missing_request(request_id, cutoff_ms, retention_days)
}

/// The partition day of a request (its UUIDv7 time); `None` for an id Triage never issued.
pub(crate) fn request_day(request_id: &str) -> Option<i32> {
    issued_ms(request_id).map(day_of)
}

/// Days since the epoch of `ms`.
pub(crate) fn day_of(ms: u64) -> i32 {
    i32::try_from(ms / 86_400_000).unwrap_or(i32::MAX)
}

/// The first day the retention keeps (`None`: keeps everything).
pub(crate) fn oldest_day(retention_days: u64) -> Option<i32> {
    (retention_days > 0)
        .then(|| day_of(now_ms()).saturating_sub(i32::try_from(retention_days).unwrap_or(i32::MAX)))
}

#[async_trait]
impl EventStore for PgEventStore {
    fn record_decision(&self, decision: DecisionRecord) -> Result<Ticket, LogError> {
        if request_day(&decision.request_id).is_none() {
            return Err(LogError::InvalidRecord(format!(
                "request_id {:?} is not a UUIDv7: the PostgreSQL log partitions by its time",
                decision.request_id
            )));
        }
        self.enqueue(Item::Decision(Box::new(decision)))?;
        Ok(Ticket::DURABLE)
    }

    async fn record_feedback(&self, feedback: FeedbackRecord) -> Result<FeedbackAck, LogError> {
        if request_day(&feedback.request_id).is_none() {
            return Err(self.missing(&feedback.request_id));
        }
        let id = feedback.request_id.clone();
        self.tolerating_lag(&id, || {
            let feedback = feedback.clone();
            self.ask(move |reply| Item::Feedback(Box::new(feedback), reply))
        })
        .await
    }

    fn record_attempt(&self, attempt: FeedbackRecord) -> Result<bool, LogError> {
        // The gateway's own record of a call for a decision it just queued: checked by
        // construction, written in the next group, never waited on.
        self.enqueue(Item::Attempt(Box::new(attempt)))?;
        Ok(true)
    }

    async fn planned(
        &self,
        request_id: &str,
        api_key: Option<&str>,
    ) -> Result<PlannedRequest, LogError> {
        let Some(day) = request_day(request_id) else {
            return Err(self.missing(request_id));
        };
        let lookup = || read::planned(&self.pool, day, request_id, api_key, self.retention_days);
        match lookup().await {
            // Not stored yet: this replica's own decision may still be queued (write it), or
            // another replica's on its way.
            Err(LogError::UnknownRequest(_)) => {
                self.flush().await?;
                self.tolerating_lag(request_id, lookup).await
            }
            other => other,
        }
    }

    async fn record_verification(
        &self,
        verification: VerificationRecord,
    ) -> Result<VerificationAck, LogError> {
        if request_day(&verification.request_id).is_none() {
            return Err(self.missing(&verification.request_id));
        }
        self.ask(move |reply| Item::Verification(Box::new(verification), reply))
            .await
    }

    async fn reserve_spend(&self, reservation: SpendReservation) -> Result<Reserved, LogError> {
        let has_row = self
            .budget_rows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&reservation.api_key);
        let reserved = read::reserve(&self.pool, &reservation, has_row).await?;
        if !has_row {
            self.budget_rows
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(reservation.api_key);
        }
        Ok(reserved)
    }

    async fn release_spend(&self, reservation: SpendReservation) -> Result<(), LogError> {
        Ok(read::release(&self.pool, &reservation).await?)
    }

    fn wait_durable(&self, _ticket: Ticket) -> Durability<'_> {
        // Reports are acknowledged after their commit: there is nothing left to wait for.
        Box::pin(async { Ok(()) })
    }

    fn close(&self) -> Durability<'_> {
        Box::pin(async move {
            match self.flush().await {
                Ok(()) | Err(LogError::WriterStopped(_)) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    async fn history(
        &self,
        since_ms: Option<u64>,
        visit: &mut (dyn FnMut(LogRecord) + Send),
    ) -> Result<(), LogError> {
        let client = self.pool.get().await.map_err(PgError::from)?;
        Ok(read::history(&client, since_ms, visit).await?)
    }

    fn counts(&self) -> (usize, usize) {
        self.state.counts()
    }

    fn failure(&self) -> Option<String> {
        if self.writer.is_finished() {
            return Some("the PostgreSQL writer has ended".into());
        }
        self.state.stalled()
    }

    fn refuses_decisions(&self) -> Option<String> {
        // Decisions wait in the bounded queue while the database is away.
        self.writer
            .is_finished()
            .then(|| "the PostgreSQL writer has ended".into())
    }
}
