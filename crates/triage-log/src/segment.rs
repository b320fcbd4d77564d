//! Segment files: framing, listing and scanning with torn-tail detection.

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::LogError;
use crate::compact::{ArchiveFormat, Source, read_archive, sources};
use crate::record::LogRecord;

/// Frame header: payload length then CRC-32 of the payload, both u32 little-endian.
pub(crate) const HEADER_BYTES: usize = 8;
/// A length beyond this is corruption, not a record (and the store refuses to write one).
pub(crate) const MAX_RECORD_BYTES: usize = 64 << 20;

/// Frames one payload.
pub(crate) fn frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

pub(crate) fn io_error(path: &Path, e: impl std::fmt::Display) -> LogError {
    LogError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// `segment-0000000001.log` → 1.
fn segment_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("segment-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

pub(crate) fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("segment-{number:010}.log"))
}

/// Segment files of `dir`, oldest first.
pub(crate) fn segment_paths(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let path = entry.map_err(|e| io_error(dir, e))?.path();
        if let Some(n) = segment_number(&path) {
            found.push((n, path));
        }
    }
    found.sort();
    Ok(found)
}

/// One segment's readable content.
pub(crate) struct ScannedSegment {
    pub records: Vec<LogRecord>,
    /// Bytes up to the end of the last intact frame.
    pub valid_bytes: u64,
    /// Bytes in the file.
    pub file_bytes: u64,
    /// Intact frames whose payload did not parse (written by a newer version, say).
    pub unreadable: usize,
    /// Damaged byte ranges followed by intact frames (damage in the middle, not a torn tail).
    pub damaged: Vec<Range<usize>>,
    /// Byte ranges of the intact frames, in order.
    pub frames: Vec<Range<usize>>,
}

impl ScannedSegment {
    /// Damaged bytes in the middle of the segment.
    pub fn damaged_bytes(&self) -> u64 {
        self.damaged.iter().map(|r| r.len() as u64).sum()
    }
}

/// The payload length of an intact frame at `at`: the header fits, the length is plausible,
/// the payload is a JSON object and its checksum matches.
fn frame_at(bytes: &[u8], at: usize) -> Option<usize> {
    let header = bytes.get(at..at + HEADER_BYTES)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_RECORD_BYTES {
        return None;
    }
    let start = at + HEADER_BYTES;
    let payload = bytes.get(start..start + len)?;
    (payload[0] == b'{' && crc32fast::hash(payload) == crc).then_some(len)
}

/// Reads every intact frame. A bad frame followed by intact ones is damage in the middle: it
/// is skipped and reading resumes at the next intact frame, so that one flipped byte costs one
/// record, not everything after it. A bad frame with nothing intact after it is a torn tail.
pub(crate) fn scan_segment(path: &Path) -> Result<ScannedSegment, LogError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io_error(path, e))?;
    let mut scanned = ScannedSegment {
        records: Vec::new(),
        valid_bytes: 0,
        file_bytes: bytes.len() as u64,
        unreadable: 0,
        damaged: Vec::new(),
        frames: Vec::new(),
    };
    let mut at = 0usize;
    while at < bytes.len() {
        let Some(len) = frame_at(&bytes, at) else {
            match (at + 1..bytes.len()).find(|&p| frame_at(&bytes, p).is_some()) {
                Some(next) => {
                    scanned.damaged.push(at..next);
                    at = next;
                    continue;
                }
                None => break,
            }
        };
        let start = at + HEADER_BYTES;
        match serde_json::from_slice(&bytes[start..start + len]) {
            Ok(record) => scanned.records.push(record),
            Err(e) => {
                scanned.unreadable += 1;
                tracing::warn!(path = %path.display(), offset = at, error = %e, "unreadable log record skipped");
            }
        }
        scanned.frames.push(at..start + len);
        at = start + len;
        scanned.valid_bytes = at as u64;
    }
    Ok(scanned)
}

/// Replaces a segment damaged in the middle by one holding exactly its intact frames, and keeps
/// the damaged file beside it (`….log.damaged-<unix seconds>`) for inspection. Returns the new
/// length.
pub(crate) fn salvage(path: &Path, scanned: &ScannedSegment) -> Result<u64, LogError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io_error(path, e))?;
    let mut kept = Vec::with_capacity(bytes.len());
    for frame in &scanned.frames {
        kept.extend_from_slice(&bytes[frame.clone()]);
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = path.with_extension(format!("log.damaged-{stamp}"));
    let temporary = path.with_extension("log.salvage");
    let dir = path.parent().unwrap_or(Path::new("."));
    // The repaired copy is complete and durable before the original moves: a crash in between
    // leaves the original in place, to be salvaged again.
    std::fs::write(&temporary, &kept)
        .and_then(|()| File::open(&temporary)?.sync_all())
        .and_then(|()| std::fs::rename(path, &aside))
        .and_then(|()| std::fs::rename(&temporary, path))
        .and_then(|()| File::open(dir)?.sync_all())
        .map_err(|e| io_error(path, e))?;
    tracing::error!(
        segment = %path.display(),
        damaged_bytes = scanned.damaged_bytes(),
        damaged_ranges = ?scanned.damaged,
        records_kept = scanned.frames.len(),
        moved_to = %aside.display(),
        "damage in the middle of a log segment: every intact record was kept, the damaged \
         bytes were skipped, and the damaged file was moved aside"
    );
    Ok(kept.len() as u64)
}

/// What reading a log directory found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentReport {
    /// Segment files read.
    pub segments: usize,
    /// Archive files (compacted segments) read.
    pub archives: usize,
    /// Records returned.
    pub records: usize,
    /// Bytes after the last intact frame of a segment (a torn write, or a write in progress).
    pub torn_bytes: u64,
    /// Damaged bytes skipped in the middle of segments (intact records after them are read).
    pub damaged_bytes: u64,
    /// Intact frames that did not parse.
    pub unreadable: usize,
}

/// Reads every record in `dir`, oldest first, without modifying anything: safe while a server
/// appends (a tail being written reads as torn and is left out). A log with compacted archives
/// needs [`read_log_with`] and their format.
pub fn read_log(dir: &Path) -> Result<(Vec<LogRecord>, SegmentReport), LogError> {
    read_log_with(dir, None)
}

/// [`read_log`] for a log whose sealed segments may have been compacted into `archive` files.
/// Safe during a compaction too: a segment deleted under the reader is read again from the
/// archive that replaced it.
pub fn read_log_with(
    dir: &Path,
    archive: Option<&dyn ArchiveFormat>,
) -> Result<(Vec<LogRecord>, SegmentReport), LogError> {
    // A compaction renames its archive into place before deleting segments, so a second
    // listing finds what vanished; a third try covers a second compaction in between.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match read_sources(dir, archive) {
            Err(LogError::Io { path, .. }) if attempts < 3 && !Path::new(&path).exists() => {
                tracing::debug!(segment = %path, "segment compacted while reading; reading again");
            }
            read => return read,
        }
    }
}

fn read_sources(
    dir: &Path,
    archive: Option<&dyn ArchiveFormat>,
) -> Result<(Vec<LogRecord>, SegmentReport), LogError> {
    let mut report = SegmentReport::default();
    let mut records = Vec::new();
    for source in sources(dir)? {
        match source {
            Source::Segment(_, path) => {
                let scanned = scan_segment(&path)?;
                report.segments += 1;
                report.torn_bytes += scanned.file_bytes - scanned.valid_bytes;
                report.damaged_bytes += scanned.damaged_bytes();
                report.unreadable += scanned.unreadable;
                records.extend(scanned.records);
            }
            Source::Archive(run) => {
                records.extend(read_archive(&run, archive)?);
                report.archives += 1;
            }
        }
    }
    report.records = records.len();
    Ok((records, report))
}
