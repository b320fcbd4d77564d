//! Segment files: framing, listing and scanning with torn-tail detection.

use std::fs::File;
use std::io::Read;
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
}

/// Reads frames until the end or the first torn or corrupt one.
pub(crate) fn scan_segment(path: &Path) -> Result<ScannedSegment, LogError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io_error(path, e))?;
    let mut records = Vec::new();
    let mut unreadable = 0;
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + HEADER_BYTES) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let start = at + HEADER_BYTES;
        let Some(payload) = bytes
            .get(start..start + len)
            .filter(|_| len <= MAX_RECORD_BYTES)
        else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        match serde_json::from_slice(payload) {
            Ok(record) => records.push(record),
            Err(e) => {
                unreadable += 1;
                tracing::warn!(path = %path.display(), offset = at, error = %e, "unreadable log record skipped");
            }
        }
        at = start + len;
    }
    Ok(ScannedSegment {
        records,
        valid_bytes: at as u64,
        file_bytes: bytes.len() as u64,
        unreadable,
    })
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
