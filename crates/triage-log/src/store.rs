//! [`FileEventLog`]: the embedded [`EventStore`], over a local directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::watch;

use crate::LogError;
use crate::compact::{ArchiveFormat, Source, read_archive, sources};
use crate::event_store::{
    Durability, EventStore, FeedbackAck, PlannedRequest, Ticket, VerificationAck,
};
use crate::index::{DecidedRequest, Index, missing_request};
use crate::lock::DirLock;
use crate::record::{DecisionRecord, FeedbackRecord, LogRecord, VerificationRecord};
use crate::segment::{MAX_RECORD_BYTES, frame, io_error, salvage, scan_segment, segment_path};
use crate::writer::{Durable, Pending, SegmentWriter, Shared, spawn};

/// Settings of [`FileEventLog`].
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// Directory of the segment files (created when missing).
    pub dir: PathBuf,
    /// A segment is sealed once it would pass this size.
    pub segment_bytes: u64,
    /// Records waiting for the writer before new ones are refused.
    pub queue_capacity: usize,
    /// Bytes waiting for the writer before new records are refused.
    pub queue_bytes: u64,
    /// Format of compacted archives in `dir`; without one, a directory holding archives is
    /// refused rather than half read.
    pub archive: Option<Arc<dyn ArchiveFormat>>,
    /// How long decisions and reports are kept in the index, and read at start (`None`: for
    /// ever). Feedback for an older request is refused as expired.
    pub retention: Option<std::time::Duration>,
    /// The most memory the index takes, bytes (`None`: the retention alone bounds it); past
    /// it the oldest decisions are dropped, and reports on them refused as evicted.
    pub index_max_bytes: Option<usize>,
}

/// The embedded store: checksummed segments in a local directory (see the crate docs).
pub struct FileEventLog {
    dir: PathBuf,
    /// For reading history back (compacted archives).
    archive: Option<Arc<dyn ArchiveFormat>>,
    index: Mutex<Index>,
    queue: Option<Sender<Pending>>,
    durable: watch::Receiver<Durable>,
    shared: Arc<Shared>,
    queue_bytes: u64,
    /// For messages.
    retention_days: u64,
    /// For messages (0: unbounded).
    index_max_bytes: usize,
    writer: Option<JoinHandle<()>>,
    /// Held until the writer has finished (dropped after it in `drop`).
    lock: Option<DirLock>,
}

impl FileEventLog {
    /// Opens (or creates) the log in `options.dir`, recovering from a torn tail, and starts the
    /// writer.
    pub fn open(options: &LogOptions) -> Result<Self, LogError> {
        Self::open_visiting(options, |_| {})
    }

    /// [`open`](Self::open), showing every recovered record to `visit`, oldest first, during the
    /// one scan that rebuilds the index (so callers that need the history do not read it again).
    pub fn open_visiting(
        options: &LogOptions,
        mut visit: impl FnMut(&LogRecord),
    ) -> Result<Self, LogError> {
        let dir = options.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        let lock = DirLock::acquire(&dir)?;
        let retention_ms = options
            .retention
            .map(|r| u64::try_from(r.as_millis()).unwrap_or(u64::MAX));
        let mut index = Index::new(retention_ms, options.index_max_bytes);
        let now = now_ms();
        let sources = sources(&dir)?;
        let last_segment = sources.iter().rev().find_map(|s| match s {
            Source::Segment(n, _) => Some(*n),
            Source::Archive(_) => None,
        });
        let mut next_free = 1;
        let mut tail = None;
        let mut add = |records: &[LogRecord], index: &mut Index| {
            for record in records {
                visit(record);
                let ticket = Ticket(index.next_seq);
                index.next_seq += 1;
                index.add(record, ticket, now);
            }
        };
        let mut skipped = 0;
        for source in &sources {
            // Start-up reads only what the retention keeps: a file last written before the
            // cutoff holds nothing newer. The segment appended to is always read.
            let path = match source {
                Source::Archive(run) => &run.path,
                Source::Segment(_, path) => path,
            };
            let is_tail = matches!(source, Source::Segment(n, _) if Some(*n) == last_segment);
            if !is_tail && written_before(path, index.cutoff_ms(now)) {
                skipped += 1;
                next_free = match source {
                    Source::Archive(run) => run.last + 1,
                    Source::Segment(n, _) => n + 1,
                };
                continue;
            }
            match source {
                Source::Archive(run) => {
                    add(&read_archive(run, options.archive.as_deref())?, &mut index);
                    next_free = run.last + 1;
                }
                Source::Segment(number, path) => {
                    let mut scanned = scan_segment(path)?;
                    add(&scanned.records, &mut index);
                    if !scanned.damaged.is_empty() {
                        scanned.valid_bytes = salvage(path, &scanned)?;
                        scanned.file_bytes = scanned.valid_bytes;
                    }
                    if scanned.valid_bytes < scanned.file_bytes {
                        let lost = scanned.file_bytes - scanned.valid_bytes;
                        tracing::warn!(
                            segment = %path.display(),
                            bytes = lost,
                            "torn or corrupt tail skipped (an interrupted write; nothing acknowledged is in it)"
                        );
                        if Some(*number) == last_segment {
                            cut_tail(path, scanned.valid_bytes)?;
                        }
                    }
                    next_free = number + 1;
                    tail = Some((*number, scanned.valid_bytes));
                }
            }
        }
        // Never append after a sealed segment's damaged tail: a damaged last segment is cut
        // above; any other keeps its bytes and writing continues in a fresh segment. Nor into
        // a number an archive already covers.
        let (number, bytes) = match tail {
            Some((n, bytes)) if n + 1 == next_free => (n, bytes),
            _ => (next_free, 0),
        };
        tracing::info!(
            dir = %dir.display(),
            sources = sources.len(),
            past_retention = skipped,
            decisions = index.decision_count(),
            index_bytes = index.bytes,
            feedback = index.reports,
            "event log opened"
        );
        let writer = SegmentWriter::open(dir.clone(), number, bytes, options.segment_bytes)?;
        let (queue, receiver) = crossbeam_channel::bounded(options.queue_capacity.max(1));
        let (durable_tx, durable) = watch::channel(Durable {
            up_to: index.next_seq - 1,
            stalled: None,
            ended: false,
        });
        let shared = Arc::new(Shared {
            wanted: AtomicU64::new(0),
            queued_bytes: AtomicU64::new(0),
            closing: AtomicBool::new(false),
        });
        let writer = spawn(writer, receiver, durable_tx, Arc::clone(&shared))?;
        Ok(Self {
            dir,
            archive: options.archive.clone(),
            index: Mutex::new(index),
            queue: Some(queue),
            durable,
            shared,
            queue_bytes: options.queue_bytes.max(1),
            retention_days: options.retention.map_or(0, |r| r.as_secs() / 86_400),
            index_max_bytes: options.index_max_bytes.unwrap_or(0),
            writer: Some(writer),
            lock: Some(lock),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The decision `request_id`, when `api_key` routed it: unknown, expired (past the retention)
    /// and another key's requests are told apart.
    fn decided<'i>(
        &self,
        index: &'i Index,
        request_id: &str,
        api_key: Option<&str>,
    ) -> Result<&'i DecidedRequest, LogError> {
        let decided = index.decision(request_id).ok_or_else(|| {
            let evicted = index
                .evicted_up_to_ms
                .zip(crate::issued_ms(request_id))
                .is_some_and(|(up_to, issued)| issued <= up_to);
            if evicted {
                return LogError::Evicted(request_id.to_owned(), self.index_max_bytes);
            }
            missing_request(request_id, index.cutoff_ms(now_ms()), self.retention_days)
        })?;
        if decided.api_key.as_deref() != api_key {
            return Err(LogError::NotYourRequest(request_id.to_owned()));
        }
        Ok(decided)
    }

    /// Assigns the next sequence number and queues `record` under the index lock, so queue order
    /// is sequence order.
    fn enqueue(&self, index: &mut Index, record: &LogRecord) -> Result<Ticket, LogError> {
        if let Some(why) = self.failure() {
            return Err(LogError::Unavailable(why));
        }
        let payload =
            serde_json::to_vec(record).map_err(|e| LogError::InvalidRecord(e.to_string()))?;
        // A frame the reader would take for corruption must never be written: refused here,
        // it costs one request; written, it would cut off everything after it at the next start.
        if payload.len() > MAX_RECORD_BYTES {
            return Err(LogError::InvalidRecord(format!(
                "a record of {} bytes is over the log's frame limit of {MAX_RECORD_BYTES} bytes; \
                 send a smaller request",
                payload.len()
            )));
        }
        let mut framed = Vec::with_capacity(payload.len() + 8);
        frame(&payload, &mut framed);
        let size = framed.len() as u64;
        let queued = self.shared.queued_bytes.fetch_add(size, Ordering::AcqRel);
        if queued > 0 && queued + size > self.queue_bytes {
            self.shared.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            return Err(LogError::Full);
        }
        let seq = index.next_seq;
        let sent = match &self.queue {
            Some(queue) => queue
                .try_send(Pending { seq, framed })
                .map_err(|e| match e {
                    TrySendError::Full(_) => LogError::Full,
                    TrySendError::Disconnected(_) => {
                        LogError::WriterStopped("the writer has ended".into())
                    }
                }),
            None => Err(LogError::WriterStopped("the log is closed".into())),
        };
        if let Err(e) = sent {
            self.shared.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            return Err(e);
        }
        index.next_seq += 1;
        let ticket = Ticket(seq);
        index.add(record, ticket, now_ms());
        Ok(ticket)
    }

    /// Checks a report against the index and queues it.
    fn take_feedback(&self, feedback: FeedbackRecord) -> Result<FeedbackAck, LogError> {
        let mut index = self.lock();
        // Ownership first: another key learns nothing about the request, not even which
        // feedback ids it has.
        let decided = self.decided(&index, &feedback.request_id, feedback.api_key.as_deref())?;
        if let Some(earlier) = decided.report(&feedback.feedback_id) {
            return if earlier.digest == feedback.report_digest() {
                Ok(FeedbackAck::Duplicate(earlier.ticket))
            } else {
                Err(LogError::ConflictingFeedback(feedback.feedback_id))
            };
        }
        if decided.reports.len() >= crate::MAX_REPORTS_PER_REQUEST {
            return Err(LogError::TooManyReports(
                feedback.request_id,
                crate::MAX_REPORTS_PER_REQUEST,
            ));
        }
        if !decided.candidates.iter().any(|m| **m == *feedback.model) {
            let names: Vec<&str> = decided.candidates.iter().map(|m| &**m).collect();
            return Err(LogError::InvalidRecord(format!(
                "model {:?} was not a candidate of request {}; name the model actually used, one \
                 of {}",
                feedback.model,
                feedback.request_id,
                names.join(", ")
            )));
        }
        self.enqueue(&mut index, &LogRecord::Feedback(feedback))
            .map(FeedbackAck::Stored)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Milliseconds since the Unix epoch, as records carry them.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether `path` was last modified before `cutoff_ms` (never, without a cutoff or an mtime).
fn written_before(path: &Path, cutoff_ms: Option<u64>) -> bool {
    let Some(cutoff) = cutoff_ms else {
        return false;
    };
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .is_some_and(|t| (t.as_millis() as u64) < cutoff)
}

fn cut_tail(path: &Path, valid: u64) -> Result<(), LogError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    file.set_len(valid)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error(path, e))
}

#[async_trait::async_trait]
impl EventStore for FileEventLog {
    fn record_decision(&self, decision: DecisionRecord) -> Result<Ticket, LogError> {
        let mut index = self.lock();
        self.enqueue(&mut index, &LogRecord::Decision(decision))
    }

    async fn record_feedback(&self, feedback: FeedbackRecord) -> Result<FeedbackAck, LogError> {
        self.take_feedback(feedback)
    }

    fn record_attempt(&self, attempt: FeedbackRecord) -> Result<bool, LogError> {
        Ok(matches!(
            self.take_feedback(attempt)?,
            FeedbackAck::Stored(_)
        ))
    }

    async fn planned(
        &self,
        request_id: &str,
        api_key: Option<&str>,
    ) -> Result<PlannedRequest, LogError> {
        let index = self.lock();
        let decided = self.decided(&index, request_id, api_key)?;
        let planned = decided
            .planned
            .as_ref()
            .ok_or_else(|| LogError::NotPlanned(request_id.to_owned()))?;
        Ok(PlannedRequest {
            plan: planned.plan.clone(),
            policy_version: planned.policy_version.to_string(),
            verified: planned.verified.is_some(),
        })
    }

    async fn record_verification(
        &self,
        verification: VerificationRecord,
    ) -> Result<VerificationAck, LogError> {
        let mut index = self.lock();
        let id = verification.request_id.as_str();
        let decided = self.decided(&index, id, verification.api_key.as_deref())?;
        let planned = decided
            .planned
            .as_ref()
            .ok_or_else(|| LogError::NotPlanned(id.to_owned()))?;
        match planned.verified {
            Some(earlier) if earlier == verification.verdict_digest() => {
                Ok(VerificationAck::Duplicate)
            }
            Some(_) => Err(LogError::AlreadyVerified(id.to_owned())),
            None => self
                .enqueue(&mut index, &LogRecord::Verification(verification))
                .map(VerificationAck::Stored),
        }
    }

    fn wait_durable(&self, ticket: Ticket) -> Durability<'_> {
        let mut durable = self.durable.clone();
        let reached = durable.borrow().up_to >= ticket.0;
        if !reached {
            // Ask the writer to sync now rather than at its next interval; a full queue means
            // it is busy and will see `wanted` after its current group.
            self.shared.wanted.fetch_max(ticket.0, Ordering::AcqRel);
            if let Some(queue) = &self.queue {
                let _ = queue.try_send(Pending {
                    seq: 0,
                    framed: Vec::new(),
                });
            }
        }
        Box::pin(async move {
            let state = durable
                .wait_for(|d| d.up_to >= ticket.0 || d.stalled.is_some() || d.ended)
                .await
                .map_err(|_| LogError::WriterStopped("the writer has ended".into()))?
                .clone();
            match state {
                Durable { up_to, .. } if up_to >= ticket.0 => Ok(()),
                Durable {
                    stalled: Some(why), ..
                } => Err(LogError::Unavailable(why)),
                Durable { .. } => Err(LogError::WriterStopped("the log is closed".into())),
            }
        })
    }

    async fn history(
        &self,
        since_ms: Option<u64>,
        visit: &mut (dyn FnMut(LogRecord) + Send),
    ) -> Result<(), LogError> {
        let (dir, archive) = (self.dir.clone(), self.archive.clone());
        let (records, _) =
            tokio::task::spawn_blocking(move || crate::read_log_with(&dir, archive.as_deref()))
                .await
                .map_err(|e| LogError::WriterStopped(format!("the reader failed: {e}")))??;
        let since = since_ms.unwrap_or(0);
        records
            .into_iter()
            .filter(|r| r.time_ms() >= since)
            .for_each(visit);
        Ok(())
    }

    fn counts(&self) -> (usize, usize) {
        let index = self.lock();
        (index.decision_count(), index.reports)
    }

    fn failure(&self) -> Option<String> {
        let durable = self.durable.borrow();
        match (&durable.stalled, durable.ended || self.queue.is_none()) {
            (Some(why), _) => Some(why.clone()),
            (None, true) => Some("the log is closed".into()),
            (None, false) => None,
        }
    }
}

impl Drop for FileEventLog {
    /// Closes the queue and waits for the writer to flush what was queued.
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        self.lock.take();
    }
}

/// The path segment `number` has in `dir` (for tools and tests).
pub fn segment_file(dir: &Path, number: u64) -> PathBuf {
    segment_path(dir, number)
}
