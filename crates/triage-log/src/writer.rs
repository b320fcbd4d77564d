//! The one writer thread: group commit into the current segment, rotating when it is full.
//!
//! Writes reach the file (and so survive the process being killed) as soon as the writer takes
//! them; `fsync`, which makes them survive the machine, runs when somebody waits for a record to
//! be durable (a feedback acknowledgement), and otherwise at most `SYNC_INTERVAL` after a write.
//! Decisions and the gateway's own call records are not waited for, so a request costs no
//! `fsync` of its own, while a durable acknowledgement still covers everything queued before it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// How far the log is durable.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Durable {
    /// Every record with a sequence number up to this one is on disk.
    UpTo(u64),
    /// The writer failed; nothing after `UpTo` is durable.
    Failed(String),
}

/// Appends to one segment at a time.
pub(crate) struct SegmentWriter {
    pub dir: PathBuf,
    pub number: u64,
    pub file: File,
    pub bytes: u64,
    pub segment_limit: u64,
}

impl SegmentWriter {
    /// Opens segment `number` for appending (creating it), its valid length being `bytes`.
    pub fn open(
        dir: PathBuf,
        number: u64,
        bytes: u64,
        segment_limit: u64,
    ) -> Result<Self, LogError> {
        let path = segment_path(&dir, number);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        // A new file's directory entry must be durable too, or a crash can lose the whole file.
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(&dir, e))?;
        Ok(Self {
            dir,
            number,
            file,
            bytes,
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
        Ok(())
    }

    fn sync(&self) -> Result<(), LogError> {
        self.file
            .sync_data()
            .map_err(|e| io_error(&segment_path(&self.dir, self.number), e))
    }
}

/// Most bytes written under one `fsync`; more waiting records go in the next group.
const MAX_GROUP_BYTES: usize = 8 << 20;

/// Starts the writer. It ends when every sender is dropped (after writing and syncing what was
/// queued) or on the first I/O failure, which it publishes through `durable`. `wanted` is the
/// highest sequence number somebody waits to see durable.
pub(crate) fn spawn(
    mut writer: SegmentWriter,
    queue: Receiver<Pending>,
    durable: watch::Sender<Durable>,
    wanted: Arc<AtomicU64>,
) -> Result<JoinHandle<()>, LogError> {
    let mut synced = match &*durable.borrow() {
        Durable::UpTo(seq) => *seq,
        Durable::Failed(_) => 0,
    };
    std::thread::Builder::new()
        .name("triage-log-writer".into())
        .spawn(move || {
            let mut group = Vec::new();
            let mut written = synced;
            let mut oldest_unsynced: Option<Instant> = None;
            loop {
                let wait = oldest_unsynced.map_or(Duration::from_secs(3600), |t| {
                    SYNC_INTERVAL.saturating_sub(t.elapsed())
                });
                let ended = match queue.recv_timeout(wait) {
                    Ok(first) => {
                        group.clear();
                        let mut last = written;
                        let mut next = Some(first);
                        while let Some(p) = next.take() {
                            if p.seq > 0 {
                                last = p.seq;
                                group.extend_from_slice(&p.framed);
                            }
                            if group.len() < MAX_GROUP_BYTES {
                                next = queue.try_recv().ok();
                            }
                        }
                        if !group.is_empty() {
                            if let Err(e) = writer.write_group(&group) {
                                return fail(&durable, &e);
                            }
                            written = last;
                            oldest_unsynced.get_or_insert_with(Instant::now);
                        }
                        false
                    }
                    Err(RecvTimeoutError::Timeout) => false,
                    Err(RecvTimeoutError::Disconnected) => true,
                };
                let due = oldest_unsynced.is_some_and(|t| t.elapsed() >= SYNC_INTERVAL);
                if written > synced && (ended || due || wanted.load(Ordering::Acquire) > synced) {
                    if let Err(e) = writer.sync() {
                        return fail(&durable, &e);
                    }
                    synced = written;
                    oldest_unsynced = None;
                    durable.send_replace(Durable::UpTo(synced));
                }
                if ended {
                    return;
                }
            }
        })
        .map_err(|e| LogError::WriterStopped(e.to_string()))
}

fn fail(durable: &watch::Sender<Durable>, e: &LogError) {
    tracing::error!(error = %e, "event log write failed; feedback is refused until restart");
    durable.send_replace(Durable::Failed(e.to_string()));
}
