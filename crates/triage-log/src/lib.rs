//! The durable record of what Triage decided and how it went.
//!
//! Every `Route` decision and every `Feedback` report becomes one [`LogRecord`]. Records go
//! through the [`EventStore`] trait so that a shared engine can replace the embedded default,
//! [`FileEventLog`]:
//!
//! - **Segments.** Records are appended to numbered segment files, each record framed as
//!   `length (u32 LE) · CRC-32 (u32 LE) · JSON payload`. A segment is sealed when it passes its
//!   size limit and a new one is started; sealed segments never change, so readers (training,
//!   compaction) can read them while the server writes.
//! - **Group commit.** One writer thread drains everything queued since its last write and writes
//!   it in one go. Each record gets a sequence number; a caller is acknowledged when the durable
//!   (`fsync`ed) sequence reaches its own. The writer syncs as soon as somebody waits for a record,
//!   and otherwise within 50 ms of a write: records nobody waits for (decisions, the gateway's
//!   call records) cost no `fsync` of their own, and under load many reports share one.
//! - **Write errors.** A full disk or an I/O error stalls the writer instead of ending it: the
//!   store refuses records and acknowledges nothing (`LogError::Unavailable`) while the writer
//!   retries, and resumes, losing nothing it had taken, once writing works again.
//! - **One writer per directory.** An open log holds an exclusive lock on the directory
//!   (`LOCK`, naming its pid); a second server on the same directory refuses to start.
//! - **Recovery.** On open every segment is scanned; a torn or corrupt tail (a crash mid-write)
//!   fails its length or checksum, is reported, and is cut off so later appends follow valid data.
//! - **Compaction.** Runs of sealed segments are rewritten as one columnar archive each
//!   ([`compact`], through an [`ArchiveFormat`]: Parquet in `triage-archive`): about 2.7×
//!   smaller than the JSON frames, and readable by any Parquet tool. Readers and recovery see
//!   segments and archives as one log, in order.
//! - **Index.** The open log keeps, in memory, which request ids were decided (feedback for an
//!   unknown id is refused) and which feedback ids were stored (a retried report is acknowledged
//!   without being stored twice). The index is rebuilt from the segments on open.
//!
//! Decisions are queued without waiting for `fsync` (routing latency matters, and a decision
//! without feedback teaches nothing); feedback is acknowledged only once durable. Because one
//! writer appends in queue order, a durable feedback implies its decision is durable too.

mod compact;
mod event_store;
mod index;
mod lock;
mod record;
mod segment;
mod store;
mod writer;

pub use compact::{ArchiveFormat, CompactReport, compact};
pub use event_store::{
    Durability, EventStore, FeedbackAck, PlannedRequest, Reserved, SpendReservation, Ticket,
    VerificationAck,
};
pub use index::{issued_ms, missing_request};
pub use lock::LOCK_FILE;
pub use record::{
    DecisionRecord, DraftPlanRecord, ErrorKind, FeedbackRecord, FeedbackSource,
    GATEWAY_FEEDBACK_PREFIX, JUDGE_FEEDBACK_PREFIX, Judged, LogRecord, LoggedCandidate,
    LoggedDraft, MAX_REPORTS_PER_REQUEST, VerificationRecord, decode_features, encode_features,
};
pub use segment::{SegmentReport, read_log, read_log_with};
pub use store::{FileEventLog, LogOptions, now_ms, segment_file};

/// What can go wrong with the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The directory or a segment could not be read or written.
    #[error("event log {path}: {message}")]
    Io {
        /// File or directory.
        path: String,
        /// What failed.
        message: String,
    },
    /// The writer stopped after a failure; nothing more is durable.
    #[error("event log writer stopped: {0}")]
    WriterStopped(String),
    /// Feedback names a request older than the log's retention.
    #[error(
        "request_id {0:?} is past the log's retention (log.retention_days = {1}): feedback must \
         (and Verify) come while its decision is kept"
    )]
    ExpiredRequest(String, u64),
    /// Another process has the log directory open.
    #[error(
        "event log {dir} is in use by {holder}: one server per --data-dir (stop the other, or \
         give this one its own directory)"
    )]
    Locked {
        /// The directory.
        dir: String,
        /// Who holds it (its pid, from the lock file).
        holder: String,
    },
    /// Feedback names a request this log never decided.
    #[error(
        "unknown request_id {0:?}: send the request_id returned by Route (decisions are kept in \
         the log directory; a server started on another --data-dir does not know it)"
    )]
    UnknownRequest(String),
    /// Feedback sent with another API key than the one that routed the request.
    #[error("request_id {0:?} was routed for another API key: report with the key that routed it")]
    NotYourRequest(String),
    /// The same feedback_id was already used for a different report.
    #[error(
        "feedback_id {0:?} was already used for a different report; use a new feedback_id for \
         each report and resend the same one only to retry"
    )]
    ConflictingFeedback(String),
    /// The writer cannot write now (a full disk, an I/O error) and keeps retrying; nothing is
    /// taken or acknowledged meanwhile.
    #[error("event log cannot write now ({0}); nothing was stored: retry later")]
    Unavailable(String),
    /// The writer is behind by more records (or bytes) than the queue holds: shed load.
    #[error("event log queue is full; retry with backoff")]
    Full,
    /// `Verify` for a request that was not routed to verify then escalate.
    #[error(
        "request_id {0:?} has no draft plan: Verify takes requests routed with strategy VERIFY \
         whose plan named drafts (the Route response lists them)"
    )]
    NotPlanned(String),
    /// `Verify` again for a request already verified, with other drafts.
    #[error(
        "request_id {0:?} was already verified with other drafts; each request is verified \
         once (resend the same drafts only to retry)"
    )]
    AlreadyVerified(String),
    /// The record is not acceptable (message says why).
    #[error("{0}")]
    InvalidRecord(String),
    /// The request's decision was dropped from the index to keep it within its memory bound.
    #[error(
        "request_id {0:?} is older than the decisions the log keeps in memory for late reports \
         (log.index_max_bytes = {1}); report sooner after the request, or raise the bound"
    )]
    Evicted(String, usize),
    /// A request already has as many reports as one request may have.
    #[error(
        "request_id {0:?} already has {1} reports, the most one request may have; report \
         once per model called (resend the same feedback_id only to retry)"
    )]
    TooManyReports(String, usize),
}
