//! The [`EventStore`] trait: what serving and training ask of wherever decisions and feedback
//! are kept, writing and reading alike. The embedded [`FileEventLog`](crate::FileEventLog)
//! implements it over a local directory; `triage-postgres` over a database shared by replicas.
//!
//! The writing side is split by what a caller waits for. Decisions (and the gateway's own call
//! records) are queued and never waited on: routing latency matters, and a store that cannot
//! write yet buffers them. Reports from clients are checked against their decision and earlier
//! reports, and acknowledged only once durable. The reading side serves start-up (replaying
//! history into budgets and online learning) and training (`train --from-log`).

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;

use crate::LogError;
use crate::record::{
    DecisionRecord, DraftPlanRecord, FeedbackRecord, LogRecord, VerificationRecord,
};

/// Position of a record in the log; await it with [`EventStore::wait_durable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(pub(crate) u64);

impl Ticket {
    /// A ticket for a store whose acknowledgements are already durable (nothing to wait for).
    pub const DURABLE: Ticket = Ticket(0);
}

/// How a feedback report was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedbackAck {
    /// New: stored at this position.
    Stored(Ticket),
    /// A retry of a report already taken (at this position); not stored again.
    Duplicate(Ticket),
}

impl FeedbackAck {
    /// Where the report (first copy) lies.
    pub fn ticket(self) -> Ticket {
        match self {
            FeedbackAck::Stored(t) | FeedbackAck::Duplicate(t) => t,
        }
    }
}

/// How a verification was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerificationAck {
    /// New: queued at this position.
    Stored(Ticket),
    /// The same verdict was already recorded (a retried `Verify`); not stored again.
    Duplicate,
}

/// A verify-then-escalate request as the store knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedRequest {
    /// Its draft plan.
    pub plan: DraftPlanRecord,
    /// The policy that planned it.
    pub policy_version: String,
    /// Whether it has been verified.
    pub verified: bool,
}

/// A request's predicted charge, to be reserved against its key's limits.
#[derive(Clone, Debug, PartialEq)]
pub struct SpendReservation {
    /// The key charged.
    pub api_key: String,
    /// The request it is for (its report settles it).
    pub request_id: String,
    /// Predicted cost, USD.
    pub usd: f64,
    /// The key's limit per UTC day, USD.
    pub daily_usd: Option<f64>,
    /// The key's limit per UTC calendar month, USD.
    pub monthly_usd: Option<f64>,
    /// When, ms since the epoch (picks the day and month).
    pub time_ms: u64,
}

/// What a store made of a [`SpendReservation`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reserved {
    /// This store keeps no shared budgets: the replica's own ledger is the authority.
    Local,
    /// Charged; the key's spend this day and month now (every replica's requests included).
    Charged {
        /// USD this UTC day.
        day_usd: f64,
        /// USD this calendar month.
        month_usd: f64,
    },
    /// Not charged: it would pass a limit. The key's spend as it stands.
    Refused {
        /// USD this UTC day.
        day_usd: f64,
        /// USD this calendar month.
        month_usd: f64,
    },
}

/// A future resolving when a record is durable.
pub type Durability<'a> = Pin<Box<dyn Future<Output = Result<(), LogError>> + Send + 'a>>;

/// Where decisions and feedback go, and where start-up and training read them back.
/// Implementations must make a feedback durable before [`wait_durable`](EventStore::wait_durable)
/// resolves for its ticket.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Queues a decision (never waits for a disk or a database; refuses with `Full` once the
    /// records waiting to be written pass the store's bound).
    fn record_decision(&self, decision: DecisionRecord) -> Result<Ticket, LogError>;
    /// Checks a report against the decisions and earlier reports, then stores it; durable once
    /// [`wait_durable`](EventStore::wait_durable) resolves for the ticket.
    async fn record_feedback(&self, feedback: FeedbackRecord) -> Result<FeedbackAck, LogError>;
    /// Queues the record of a call this process made for a decision it made itself (the
    /// gateway's own feedback), without waiting. Returns whether it was new.
    fn record_attempt(&self, attempt: FeedbackRecord) -> Result<bool, LogError>;
    /// The plan of a request routed to verify then escalate, for the key `api_key` that routed
    /// it (another key is told `NotYourRequest`, a request without a plan `NotPlanned`).
    async fn planned(
        &self,
        request_id: &str,
        api_key: Option<&str>,
    ) -> Result<PlannedRequest, LogError>;
    /// Checks a verdict against its request's plan and earlier verdicts, then stores it.
    async fn record_verification(
        &self,
        verification: VerificationRecord,
    ) -> Result<VerificationAck, LogError>;
    /// Reserves a request's predicted charge against its key's limits where the store keeps
    /// budgets shared by replicas (atomically: concurrent requests on any replica cannot both
    /// spend the same remainder). The default keeps none.
    async fn reserve_spend(&self, _reservation: SpendReservation) -> Result<Reserved, LogError> {
        Ok(Reserved::Local)
    }
    /// Takes back a reservation [`reserve_spend`](EventStore::reserve_spend) charged, for a
    /// request that was then not served (its decision could not be recorded). The default
    /// keeps no shared budgets, so has nothing to take back.
    async fn release_spend(&self, _reservation: SpendReservation) -> Result<(), LogError> {
        Ok(())
    }
    /// Resolves once everything up to `ticket` is durable.
    fn wait_durable(&self, ticket: Ticket) -> Durability<'_>;
    /// Writes what is still queued, before the process ends (the file log does so when
    /// dropped; the default has nothing to do).
    fn close(&self) -> Durability<'_> {
        Box::pin(async { Ok(()) })
    }
    /// Shows `visit` every record written since `since_ms` (ms since the epoch; everything when
    /// `None`), decisions before the reports on them.
    async fn history(
        &self,
        since_ms: Option<u64>,
        visit: &mut (dyn FnMut(LogRecord) + Send),
    ) -> Result<(), LogError>;
    /// Decisions and distinct feedback reports held (a shared store: taken by this process).
    fn counts(&self) -> (usize, usize);
    /// Why the store can take no more records, if it cannot (readiness probes ask).
    fn failure(&self) -> Option<String>;
    /// Why routing must stop now, if it must. A store that buffers decisions while it cannot
    /// write keeps routing until its buffer is full (`record_decision` then refuses).
    fn refuses_decisions(&self) -> Option<String> {
        self.failure()
    }
}
