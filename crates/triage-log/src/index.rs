//! What the open log remembers in memory: which requests were decided (feedback for others is
//! refused), by which key, and which feedback ids were stored on each (a retry is a duplicate).
//! Feedback ids are scoped to their request: two requests' `fb-1` are two reports. A report is
//! kept as its id and a digest, never the record, and a request holds at most
//! [`MAX_REPORTS_PER_REQUEST`] of them.
//!
//! Both are kept for the retention only (`log.retention_days`, 35 by default: enough for
//! monthly budgets), so the index does not grow for ever: entries are dropped oldest first as
//! new ones come in. Feedback for an older request is refused as expired; Triage's request ids
//! are UUIDv7, whose first 48 bits are their creation time, so an expired id is told apart from
//! one never issued.
//!
//! And within a memory bound (`log.index_max_bytes`): an entry is compact (the request id as
//! 128 bits, the candidate list shared by every decision that had the same one, a report as
//! its id and a digest), its size is counted, and past the bound the oldest decisions are
//! dropped first, whatever the retention. A report on one of those is refused with a clear
//! "evicted" error (its id's time is before the newest evicted decision's), never looked for
//! on disk: a busy server keeps a bounded window of late reports, not the whole retention.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::LogError;
use crate::event_store::Ticket;
use crate::record::{DraftPlanRecord, LogRecord, MAX_REPORTS_PER_REQUEST};

/// What the index remembers of a decision: the models feedback may name, the key that may, for
/// a verify-then-escalate request its plan and verdict, and the reports stored on it.
pub(crate) struct DecidedRequest {
    /// Shared by every decision with the same candidates.
    pub candidates: Arc<[Arc<str>]>,
    pub api_key: Option<Arc<str>>,
    pub planned: Option<Box<Planned>>,
    pub reports: Vec<StoredReport>,
}

/// A report as the index keeps it: enough to tell a retry from a conflict.
pub(crate) struct StoredReport {
    pub feedback_id: Box<str>,
    /// [`FeedbackRecord::report_digest`](crate::FeedbackRecord::report_digest).
    pub digest: u64,
    pub ticket: Ticket,
}

impl DecidedRequest {
    /// The report stored under `feedback_id`, if any.
    pub fn report(&self, feedback_id: &str) -> Option<&StoredReport> {
        self.reports.iter().find(|r| &*r.feedback_id == feedback_id)
    }
}

/// A draft plan as the index keeps it (only requests that asked to verify have one), with the
/// digest of its verdict once verified.
pub(crate) struct Planned {
    pub plan: DraftPlanRecord,
    pub policy_version: Arc<str>,
    pub verified: Option<u64>,
}

pub(crate) struct Index {
    /// Sequence numbers start at 1, so "durable up to 0" means nothing is.
    pub next_seq: u64,
    decisions: HashMap<u128, DecidedRequest>,
    /// Reports held, over every request.
    pub reports: usize,
    model_names: HashMap<String, Arc<str>>,
    /// Candidate lists (names joined by a unit separator) → the shared list.
    candidate_lists: HashMap<String, Arc<[Arc<str>]>>,
    /// (time, request key) of the decisions, in arrival order.
    decided_at: VecDeque<(u64, u128)>,
    /// Bytes the entries take, as [`entry_bytes`] counts them.
    pub bytes: usize,
    /// The bound on `bytes` (`None`: the retention alone bounds the index).
    max_bytes: Option<usize>,
    /// The newest decision dropped for the bound, ms (reports on older ones are refused).
    pub evicted_up_to_ms: Option<u64>,
    /// How long entries are kept, ms (`None`: for ever).
    retention_ms: Option<u64>,
}

/// An entry's fixed cost: its key and value in the map (with the map's slack), its place in
/// the arrival queue.
const ENTRY_BYTES: usize = 160;

/// What one decision's entry takes, reports and plan included.
fn entry_bytes(d: &DecidedRequest) -> usize {
    let reports: usize = d
        .reports
        .iter()
        .map(|r| std::mem::size_of::<StoredReport>() + r.feedback_id.len())
        .sum();
    let planned = d.planned.as_ref().map_or(0, |p| {
        std::mem::size_of::<Planned>()
            + p.plan.drafts.iter().map(|m| m.len() + 24).sum::<usize>()
            + p.plan
                .escalation
                .iter()
                .map(|m| m.len() + 24)
                .sum::<usize>()
            + p.plan.predicted_quality.len() * 8
    });
    ENTRY_BYTES + reports + planned
}

/// The index's key for a request id: the UUID's 128 bits (Triage's ids), or two 64-bit hashes
/// of any other string (ids from tests and tools).
pub(crate) fn request_key(request_id: &str) -> u128 {
    if let Ok(id) = uuid::Uuid::try_parse(request_id) {
        return id.as_u128();
    }
    let half = |salt: u8| {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        (salt, request_id).hash(&mut h);
        u128::from(h.finish())
    };
    (half(1) << 64) | half(2)
}

impl Index {
    pub fn new(retention_ms: Option<u64>, max_bytes: Option<usize>) -> Self {
        Self {
            next_seq: 1,
            decisions: HashMap::new(),
            reports: 0,
            model_names: HashMap::new(),
            candidate_lists: HashMap::new(),
            decided_at: VecDeque::new(),
            bytes: 0,
            max_bytes,
            evicted_up_to_ms: None,
            retention_ms,
        }
    }

    /// Decisions held.
    pub fn decision_count(&self) -> usize {
        self.decisions.len()
    }

    /// The decision `request_id`, if the index holds it.
    pub fn decision(&self, request_id: &str) -> Option<&DecidedRequest> {
        self.decisions.get(&request_key(request_id))
    }

    fn candidates(&mut self, models: &[&str]) -> Arc<[Arc<str>]> {
        let joined = models.join("\u{1f}");
        if let Some(list) = self.candidate_lists.get(&joined) {
            return Arc::clone(list);
        }
        let list: Arc<[Arc<str>]> = models.iter().map(|m| self.intern(m)).collect();
        self.candidate_lists.insert(joined, Arc::clone(&list));
        list
    }

    /// Records older than this (ms since the epoch) are past the retention.
    pub fn cutoff_ms(&self, now_ms: u64) -> Option<u64> {
        self.retention_ms.map(|r| now_ms.saturating_sub(r))
    }

    fn intern(&mut self, model: &str) -> Arc<str> {
        if let Some(name) = self.model_names.get(model) {
            return Arc::clone(name);
        }
        let name: Arc<str> = Arc::from(model);
        self.model_names.insert(model.to_owned(), Arc::clone(&name));
        name
    }

    /// Remembers `record` unless it is past the retention, and forgets what has passed it.
    pub fn add(&mut self, record: &LogRecord, ticket: Ticket, now_ms: u64) {
        let cutoff = self.cutoff_ms(now_ms).unwrap_or(0);
        match record {
            LogRecord::Decision(d) if d.time_ms >= cutoff => {
                let names: Vec<&str> = d.candidates.iter().map(|c| c.model.as_str()).collect();
                let candidates = self.candidates(&names);
                let api_key = d.api_key.as_deref().map(|k| self.intern(k));
                let policy_version = self.intern(&d.policy_version);
                let planned = d.draft_plan.as_ref().map(|plan| {
                    Box::new(Planned {
                        plan: plan.clone(),
                        policy_version,
                        verified: None,
                    })
                });
                let decided = DecidedRequest {
                    candidates,
                    api_key,
                    planned,
                    reports: Vec::new(),
                };
                let key = request_key(&d.request_id);
                self.bytes += entry_bytes(&decided);
                if let Some(earlier) = self.decisions.insert(key, decided) {
                    self.uncount(&earlier);
                }
                self.decided_at.push_back((d.time_ms, key));
            }
            LogRecord::Feedback(f) => {
                // A report lives and expires with its decision (one on a request the index
                // does not hold could not be taken now either).
                if let Some(decided) = self.decisions.get_mut(&request_key(&f.request_id))
                    && decided.report(&f.feedback_id).is_none()
                    && decided.reports.len() < MAX_REPORTS_PER_REQUEST
                {
                    let before = entry_bytes(decided);
                    decided.reports.push(StoredReport {
                        feedback_id: f.feedback_id.as_str().into(),
                        digest: f.report_digest(),
                        ticket,
                    });
                    self.bytes += entry_bytes(decided) - before;
                    self.reports += 1;
                }
            }
            LogRecord::Verification(v) => {
                let planned = self
                    .decisions
                    .get_mut(&request_key(&v.request_id))
                    .and_then(|d| d.planned.as_mut());
                if let Some(planned) = planned
                    && planned.verified.is_none()
                {
                    planned.verified = Some(v.verdict_digest());
                }
            }
            LogRecord::Decision(_) => {}
        }
        self.prune(cutoff);
        self.bound();
    }

    /// Drops the oldest decisions while the entries take more than the bound.
    fn bound(&mut self) {
        let Some(max) = self.max_bytes else {
            return;
        };
        while self.bytes > max {
            let Some((time_ms, key)) = self.decided_at.pop_front() else {
                break;
            };
            if let Some(decided) = self.decisions.remove(&key) {
                self.uncount(&decided);
                self.evicted_up_to_ms = Some(self.evicted_up_to_ms.unwrap_or(0).max(time_ms));
            }
        }
    }

    /// Takes a dropped entry out of the counts.
    fn uncount(&mut self, dropped: &DecidedRequest) {
        self.bytes -= entry_bytes(dropped);
        self.reports -= dropped.reports.len();
    }

    /// Drops entries older than `cutoff`, oldest first (arrival order is close to time order;
    /// an entry queued behind a newer one goes at the newer one's turn).
    fn prune(&mut self, cutoff: u64) {
        while let Some((_, key)) = self.decided_at.front().filter(|(t, _)| *t < cutoff) {
            if let Some(decided) = self.decisions.remove(key) {
                self.uncount(&decided);
            }
            self.decided_at.pop_front();
        }
    }
}

/// The error for a request a store holds no decision for: expired when its id says it was
/// issued before `cutoff_ms` (the retention's; `retention_days` for the message), else unknown.
pub fn missing_request(request_id: &str, cutoff_ms: Option<u64>, retention_days: u64) -> LogError {
    let id = request_id.to_owned();
    match (issued_ms(&id), cutoff_ms) {
        (Some(issued), Some(cutoff)) if issued < cutoff => {
            LogError::ExpiredRequest(id, retention_days)
        }
        _ => LogError::UnknownRequest(id),
    }
}

/// Creation time of a UUIDv7 request id, ms since the epoch (`None` for any other id).
pub fn issued_ms(request_id: &str) -> Option<u64> {
    let id = uuid::Uuid::parse_str(request_id).ok()?;
    if id.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}
