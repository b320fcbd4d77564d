//! Compaction: runs of sealed segments rewritten as one columnar archive file each.
//!
//! The log owns the protocol; an [`ArchiveFormat`] (Parquet in `triage-archive`) owns the bytes.
//! An archive is named after the segments it replaces, `archive-FIRST-LAST.EXT`, so its place in
//! the log's order is known without opening it, and a segment numbered inside a run is known to
//! be replaced.
//!
//! Crash safety comes from ordering: the archive is written under a temporary name, fsynced,
//! renamed into place and the directory fsynced *before* any segment is deleted. A crash in
//! between leaves both the archive and (some of) its segments; every reader skips segments an
//! archive covers, and the next compaction deletes them. The segment being written (the
//! highest-numbered) is never compacted, and neither is a segment with a damaged frame: its bytes
//! stay for an operator to inspect, and runs split around it.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::LogError;
use crate::record::LogRecord;
use crate::segment::{io_error, scan_segment, segment_paths};

/// A columnar form that sealed segments are compacted into.
pub trait ArchiveFormat: Send + Sync + std::fmt::Debug {
    /// File extension of archives, without the dot (`parquet`).
    fn extension(&self) -> &'static str;
    /// Writes `records`, in log order, to a new file at `path`.
    fn write(&self, records: &[LogRecord], path: &Path) -> Result<(), LogError>;
    /// Reads back, in log order, the records [`write`](Self::write) wrote.
    fn read(&self, path: &Path) -> Result<Vec<LogRecord>, LogError>;
}

/// One archive file and the segment numbers it replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ArchivedRun {
    pub first: u64,
    pub last: u64,
    pub path: PathBuf,
}

impl ArchivedRun {
    fn covers(&self, segment: u64) -> bool {
        (self.first..=self.last).contains(&segment)
    }
}

/// `archive-0000000001-0000000004.parquet` → (1, 4, "parquet").
fn parse_archive_name(path: &Path) -> Option<(u64, u64, &str)> {
    let name = path.file_name()?.to_str()?;
    let (stem, extension) = name.strip_prefix("archive-")?.split_once('.')?;
    let (first, last) = stem.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?, extension))
}

fn archive_path(dir: &Path, first: u64, last: u64, extension: &str) -> PathBuf {
    dir.join(format!("archive-{first:010}-{last:010}.{extension}"))
}

/// Archive files of `dir`, by first segment. Temporary files of an interrupted compaction
/// (`….tmp`) are not archives.
pub(crate) fn archive_runs(dir: &Path) -> Result<Vec<ArchivedRun>, LogError> {
    let mut runs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let path = entry.map_err(|e| io_error(dir, e))?.path();
        if let Some((first, last, extension)) = parse_archive_name(&path)
            && !extension.ends_with(".tmp")
        {
            runs.push(ArchivedRun { first, last, path });
        }
    }
    runs.sort_by_key(|r| r.first);
    Ok(runs)
}

/// Where the log's records lie, in log order.
pub(crate) enum Source {
    Segment(u64, PathBuf),
    Archive(ArchivedRun),
}

/// Segments not covered by an archive, and archives, ordered by segment number.
pub(crate) fn sources(dir: &Path) -> Result<Vec<Source>, LogError> {
    let runs = archive_runs(dir)?;
    let mut sources: Vec<(u64, Source)> = segment_paths(dir)?
        .into_iter()
        .filter(|(n, _)| !runs.iter().any(|r| r.covers(*n)))
        .map(|(n, path)| (n, Source::Segment(n, path)))
        .collect();
    sources.extend(runs.into_iter().map(|r| (r.first, Source::Archive(r))));
    sources.sort_by_key(|(n, _)| *n);
    Ok(sources.into_iter().map(|(_, s)| s).collect())
}

/// Reads an archive with `format`, or says why it cannot be read.
pub(crate) fn read_archive(
    run: &ArchivedRun,
    format: Option<&dyn ArchiveFormat>,
) -> Result<Vec<LogRecord>, LogError> {
    let extension = parse_archive_name(&run.path).map_or("", |(_, _, e)| e);
    match format {
        Some(format) if format.extension() == extension => format.read(&run.path),
        Some(format) => Err(io_error(
            &run.path,
            format!(
                "archive format {extension:?} is not readable here (this reader reads {:?})",
                format.extension()
            ),
        )),
        None => Err(io_error(
            &run.path,
            "the log holds compacted archives and this reader was given no archive format \
             (read it with `triage_log::read_log_with` and the Parquet format of \
             `triage-archive`; a `triage` built without the `train` feature cannot)",
        )),
    }
}

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CompactReport {
    /// Archive files written.
    pub archives: usize,
    /// Segment files replaced (and deleted).
    pub segments: usize,
    /// Records moved into archives.
    pub records: usize,
    /// Bytes of the replaced segments.
    pub segment_bytes: u64,
    /// Bytes of the archives written.
    pub archive_bytes: u64,
    /// Sealed segments left alone because a frame in them is damaged.
    pub damaged_kept: usize,
    /// Segments already covered by an archive (left by an interrupted compaction) and deleted.
    pub leftovers_deleted: usize,
}

/// Compacts the sealed segments of `dir` into archives when at least `min_sealed` of them
/// wait (0 or 1: whenever any does). Safe while a server appends to the same directory.
pub fn compact(
    dir: &Path,
    format: &dyn ArchiveFormat,
    min_sealed: usize,
) -> Result<CompactReport, LogError> {
    let mut report = CompactReport::default();
    let runs = archive_runs(dir)?;
    let mut segments = segment_paths(dir)?;
    // The highest-numbered segment is the one a server appends to.
    segments.pop();
    let mut sealed = Vec::new();
    for (number, path) in segments {
        if runs.iter().any(|r| r.covers(number)) {
            remove(&path)?;
            report.leftovers_deleted += 1;
        } else {
            sealed.push((number, path));
        }
    }
    remove_stale_temporaries(dir, format.extension())?;
    if sealed.is_empty() || sealed.len() < min_sealed {
        return Ok(report);
    }
    let mut run: Vec<(u64, PathBuf, u64)> = Vec::new();
    let mut records = Vec::new();
    for (number, path) in sealed {
        let scanned = scan_segment(&path)?;
        let damaged = !scanned.damaged.is_empty() || scanned.unreadable > 0;
        if damaged || scanned.valid_bytes < scanned.file_bytes {
            tracing::warn!(segment = %path.display(), "damaged segment kept out of compaction");
            report.damaged_kept += 1;
            write_run(dir, format, &mut run, &mut records, &mut report)?;
            continue;
        }
        // An archive holds at most about MAX_ARCHIVE_RECORDS: files of bounded size, and
        // retention can skip whole old archives at start.
        if !records.is_empty() && records.len() + scanned.records.len() > MAX_ARCHIVE_RECORDS {
            write_run(dir, format, &mut run, &mut records, &mut report)?;
        }
        run.push((number, path, scanned.file_bytes));
        records.extend(scanned.records);
    }
    write_run(dir, format, &mut run, &mut records, &mut report)?;
    Ok(report)
}

/// Most records one archive takes (a run of segments is split before passing it).
pub const MAX_ARCHIVE_RECORDS: usize = 1_000_000;

/// Archives `run`'s records, then deletes its segments; empties both.
fn write_run(
    dir: &Path,
    format: &dyn ArchiveFormat,
    run: &mut Vec<(u64, PathBuf, u64)>,
    records: &mut Vec<LogRecord>,
    report: &mut CompactReport,
) -> Result<(), LogError> {
    let (Some(first), Some(last)) = (run.first(), run.last()) else {
        return Ok(());
    };
    if !records.is_empty() {
        let path = archive_path(dir, first.0, last.0, format.extension());
        let temporary = path.with_extension(format!("{}.tmp", format.extension()));
        format.write(records, &temporary)?;
        File::open(&temporary)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_error(&temporary, e))?;
        std::fs::rename(&temporary, &path).map_err(|e| io_error(&path, e))?;
        sync_dir(dir)?;
        report.archives += 1;
        report.records += records.len();
        report.archive_bytes += std::fs::metadata(&path).map_or(0, |m| m.len());
    }
    for (_, path, bytes) in run.iter() {
        remove(path)?;
        report.segments += 1;
        report.segment_bytes += bytes;
    }
    sync_dir(dir)?;
    run.clear();
    records.clear();
    Ok(())
}

fn remove_stale_temporaries(dir: &Path, extension: &str) -> Result<(), LogError> {
    let suffix = format!(".{extension}.tmp");
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let path = entry.map_err(|e| io_error(dir, e))?.path();
        let is_temporary = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("archive-") && n.ends_with(&suffix));
        if is_temporary {
            remove(&path)?;
        }
    }
    Ok(())
}

/// Deletes a file; one already gone (another compaction got there first) is fine.
fn remove(path: &Path) -> Result<(), LogError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(path, e)),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_round_trip_and_temporaries_are_not_archives() {
        let dir = Path::new("/log");
        let path = archive_path(dir, 3, 17, "parquet");
        assert_eq!(parse_archive_name(&path), Some((3, 17, "parquet")));
        let temporary = path.with_extension("parquet.tmp");
        assert_eq!(
            parse_archive_name(&temporary).map(|(_, _, e)| e),
            Some("parquet.tmp")
        );
        assert_eq!(
            parse_archive_name(Path::new("segment-0000000001.log")),
            None
        );
    }
}
