//! The one writer thread: group commit into the current segment, rotating when it is full.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;
use tokio::sync::watch;

use crate::LogError;
use crate::segment::{io_error, segment_path};

/// A framed record waiting to be written, with its sequence number.
pub(crate) struct Pending {
    pub seq: u64,
    pub framed: Vec<u8>,
}

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

    fn write_group(&mut self, group: &[u8]) -> Result<(), LogError> {
        if self.bytes > 0 && self.bytes + group.len() as u64 > self.segment_limit {
            let next = Self::open(self.dir.clone(), self.number + 1, 0, self.segment_limit)?;
            *self = next;
        }
        let path = segment_path(&self.dir, self.number);
        self.file
            .write_all(group)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io_error(&path, e))?;
        self.bytes += group.len() as u64;
        Ok(())
    }
}

/// Most bytes written under one `fsync`; more waiting records go in the next group.
const MAX_GROUP_BYTES: usize = 8 << 20;

/// Starts the writer. It ends when every sender is dropped (after writing what was queued) or on
/// the first I/O failure, which it publishes through `durable`.
pub(crate) fn spawn(
    mut writer: SegmentWriter,
    queue: Receiver<Pending>,
    durable: watch::Sender<Durable>,
) -> Result<JoinHandle<()>, LogError> {
    std::thread::Builder::new()
        .name("triage-log-writer".into())
        .spawn(move || {
            let mut group = Vec::new();
            while let Ok(first) = queue.recv() {
                group.clear();
                let mut last = first.seq;
                group.extend_from_slice(&first.framed);
                while group.len() < MAX_GROUP_BYTES {
                    let Ok(next) = queue.try_recv() else { break };
                    last = next.seq;
                    group.extend_from_slice(&next.framed);
                }
                if let Err(e) = writer.write_group(&group) {
                    tracing::error!(error = %e, "event log write failed; feedback is refused until restart");
                    durable.send_replace(Durable::Failed(e.to_string()));
                    return;
                }
                durable.send_replace(Durable::UpTo(last));
            }
        })
        .map_err(|e| LogError::WriterStopped(e.to_string()))
}
