//! The one writer thread: group commit into the current segment, rotating when it is full, and
//! riding out I/O errors.
//!
//! Writes reach the file (and so survive the process being killed) as soon as the writer takes
//! them; `fsync`, which makes them survive the machine, runs when somebody waits for a record to
//! be durable (a feedback acknowledgement), and otherwise at most `SYNC_INTERVAL` after a write.
//! Decisions and the gateway's own call records are not waited for, so a request costs no
//! `fsync` of its own, while a durable acknowledgement still covers everything queued before it.
//!
//! **Errors.** A full disk (`ENOSPC`), an I/O error or running out of descriptors does not end
//! the writer. It publishes the failure as a stall (the store then refuses new records and
//! acknowledges nothing), and retries with backoff: it reopens the segment, cuts it back to the
//! last synced length, rewrites the bytes written since (the kernel may have dropped them when
//! `fsync` failed, so a later `fsync` proves nothing about them), and carries on with the group
//! it was writing. Once that works, the stall is lifted and nothing queued was lost.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tokio::sync::watch;

use crate::LogError;
use crate::segment::{io_error, segment_path};

/// A framed record waiting to be written, with its sequence number. Sequence 0 with no bytes
/// only wakes the writer to sync what someone waits for.
pub(crate) struct Pending {
    pub seq: u64,
    pub framed: Vec<u8>,
}

/// Longest a written record waits for `fsync` when nobody asks for it sooner.
pub(crate) const SYNC_INTERVAL: Duration = Duration::from_millis(50);

/// Longest pause between two tries after an I/O error.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// How far the log is durable, and whether it can write now.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Durable {
    /// Every record with a sequence number up to this one is on disk.
    pub up_to: u64,
    /// Why the writer cannot write now (it keeps retrying); `None` while it can.
    pub stalled: Option<String>,
    /// The writer has ended: the log was closed, or gave up on closing while stalled.
    pub ended: bool,
}

/// What the store and the writer thread share besides the queue.
pub(crate) struct Shared {
    /// The highest sequence number somebody waits to see durable (the writer syncs for it).
    pub wanted: AtomicU64,
    /// Bytes queued and not yet written (the queue's byte bound).
    pub queued_bytes: AtomicU64,
    /// The log is being closed: a stalled writer stops retrying.
    pub closing: AtomicBool,
}

/// Appends to one segment at a time.
pub(crate) struct SegmentWriter {
    dir: PathBuf,
    number: u64,
    file: File,
    /// Bytes in the segment, synced or not.
    bytes: u64,
    /// Bytes of the segment known to be on disk.
    synced_bytes: u64,
    /// What was written after `synced_bytes`, kept to rewrite after a failed `fsync`.
    unsynced: Vec<u8>,
    segment_limit: u64,
}

impl SegmentWriter {
    /// Opens segment `number` for appending (creating it), its valid length being `bytes`.
    pub fn open(
        dir: PathBuf,
        number: u64,
        bytes: u64,
        segment_limit: u64,
    ) -> Result<Self, LogError> {
        let file = open_segment(&dir, number)?;
        Ok(Self {
            dir,
            number,
            file,
            bytes,
            synced_bytes: bytes,
            unsynced: Vec::new(),
            segment_limit,
        })
    }

    /// Appends `group` (not yet synced), first sealing a full segment (synced).
    fn write_group(&mut self, group: &[u8]) -> Result<(), LogError> {
        if self.bytes > 0 && self.bytes + group.len() as u64 > self.segment_limit {
            self.sync()?;
            let next = Self::open(self.dir.clone(), self.number + 1, 0, self.segment_limit)?;
            *self = next;
        }
        let path = segment_path(&self.dir, self.number);
        self.file.write_all(group).map_err(|e| io_error(&path, e))?;
        self.bytes += group.len() as u64;
        self.unsynced.extend_from_slice(group);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), LogError> {
        self.file
            .sync_data()
            .map_err(|e| io_error(&segment_path(&self.dir, self.number), e))?;
        self.synced_bytes = self.bytes;
        self.unsynced.clear();
        Ok(())
    }

    /// After an error: reopens the segment, cuts whatever a failed write left after the synced
    /// length, and rewrites the unsynced bytes, so the file again holds exactly `bytes` valid
    /// bytes.
    fn repair(&mut self) -> Result<(), LogError> {
        let path = segment_path(&self.dir, self.number);
        self.file = open_segment(&self.dir, self.number)?;
        self.file
            .set_len(self.synced_bytes)
            .and_then(|()| self.file.write_all(&self.unsynced))
            .map_err(|e| io_error(&path, e))?;
        self.bytes = self.synced_bytes + self.unsynced.len() as u64;
        Ok(())
    }
}

fn open_segment(dir: &std::path::Path, number: u64) -> Result<File, LogError> {
    let path = segment_path(dir, number);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| io_error(&path, e))?;
    // A new file's directory entry must be durable too, or a crash can lose the whole file.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))?;
    Ok(file)
}

/// Most bytes written under one `fsync`; more waiting records go in the next group.
const MAX_GROUP_BYTES: usize = 8 << 20;

/// The writer thread's state.
struct Writer {
    segment: SegmentWriter,
    queue: Receiver<Pending>,
    durable: watch::Sender<Durable>,
    shared: Arc<Shared>,
}

/// Starts the writer. It ends when every sender is dropped, after writing and syncing what was
/// queued (or, stalled on an error, at once).
pub(crate) fn spawn(
    segment: SegmentWriter,
    queue: Receiver<Pending>,
    durable: watch::Sender<Durable>,
    shared: Arc<Shared>,
) -> Result<JoinHandle<()>, LogError> {
    let writer = Writer {
        segment,
        queue,
        durable,
        shared,
    };
    std::thread::Builder::new()
        .name("triage-log-writer".into())
        .spawn(move || writer.run())
        .map_err(|e| LogError::WriterStopped(e.to_string()))
}

impl Writer {
    fn run(mut self) {
        let mut synced = self.durable.borrow().up_to;
        let mut written = synced;
        let mut oldest_unsynced: Option<Instant> = None;
        let mut group = Vec::new();
        loop {
            let wait = oldest_unsynced.map_or(Duration::from_secs(3600), |t| {
                SYNC_INTERVAL.saturating_sub(t.elapsed())
            });
            let ended = match self.queue.recv_timeout(wait) {
                Ok(first) => {
                    let last = self.take_group(first, written, &mut group);
                    if !group.is_empty() {
                        if !self.persist(|s| s.write_group(&group)) {
                            return self.end();
                        }
                        let bytes = group.len() as u64;
                        self.shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                        written = last;
                        oldest_unsynced.get_or_insert_with(Instant::now);
                    }
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            let due = oldest_unsynced.is_some_and(|t| t.elapsed() >= SYNC_INTERVAL);
            let wanted = self.shared.wanted.load(Ordering::Acquire) > synced;
            if written > synced && (ended || due || wanted) {
                if !self.persist(SegmentWriter::sync) {
                    return self.end();
                }
                synced = written;
                oldest_unsynced = None;
                self.durable.send_modify(|d| d.up_to = synced);
            }
            if ended {
                return self.end();
            }
        }
    }

    /// Drains what is queued (up to `MAX_GROUP_BYTES`) into `group`, starting with `first`.
    /// Returns the last sequence number taken (`written` when only wake-ups came).
    fn take_group(&self, first: Pending, written: u64, group: &mut Vec<u8>) -> u64 {
        group.clear();
        let mut last = written;
        let mut next = Some(first);
        while let Some(p) = next.take() {
            if p.seq > 0 {
                last = p.seq;
                group.extend_from_slice(&p.framed);
            }
            if group.len() < MAX_GROUP_BYTES {
                next = self.queue.try_recv().ok();
            }
        }
        last
    }

    /// Runs `op` until it succeeds, stalling the log while it fails. Returns `false` when the
    /// log was closed while stalled (the writer gives up).
    fn persist(&mut self, mut op: impl FnMut(&mut SegmentWriter) -> Result<(), LogError>) -> bool {
        let Err(first) = op(&mut self.segment) else {
            return true;
        };
        tracing::error!(error = %first, "event log write failed; refusing new records and retrying");
        self.durable
            .send_modify(|d| d.stalled = Some(first.to_string()));
        let mut pause = Duration::from_millis(20);
        loop {
            if self.shared.closing.load(Ordering::Acquire) {
                tracing::error!(
                    "event log closed while it could not write; records not yet acknowledged \
                     are lost"
                );
                return false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(MAX_RETRY_PAUSE);
            match self.segment.repair().and_then(|()| op(&mut self.segment)) {
                Ok(()) => {
                    tracing::info!("event log writes again");
                    self.durable.send_modify(|d| d.stalled = None);
                    return true;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "event log still cannot write");
                    self.durable
                        .send_modify(|d| d.stalled = Some(e.to_string()));
                }
            }
        }
    }

    fn end(&self) {
        self.durable.send_modify(|d| d.ended = true);
    }
}
