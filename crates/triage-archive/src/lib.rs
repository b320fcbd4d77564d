//! Parquet archives of the decision and feedback log.
//!
//! `triage-log` decides *when* sealed segments are compacted and keeps that crash-safe; this
//! crate decides what an archive looks like ([`ParquetArchive`], a
//! [`triage_log::ArchiveFormat`]). It is a crate of its own so that the log, and the server that
//! embeds it, do not pull in polars.
//!
//! One row per log record, in log order, so replaying an archive replays the log exactly. A
//! `kind` column says `decision`, `feedback` or `verification`; columns that only some kinds
//! have are null on the others. Decision candidates are parallel list columns
//! (`candidate_model`, `candidate_predicted_quality`, …) and the feature vector is a list of
//! f32, so outside tools (pandas, DuckDB, polars) read an archive without knowing the segment
//! framing:
//!
//! ```text
//! kind · request_id · time_ms · input_tokens
//! decision: policy_version · features[f32] · knob · cost_weight · candidate_model[] ·
//!           candidate_predicted_quality[] · candidate_base_quality[] ·
//!           candidate_predicted_cost_usd[] · candidate_eligible[] · chosen · propensity ·
//!           explored · session_id · prompt · api_key
//! feedback: feedback_id · model · quality · output_tokens · cost_usd · latency_ms · error ·
//!           retry_after_ms · first_byte_ms · tokens_estimated · source · detail (the judge's
//!           mark as JSON) (the last four absent in older archives: read as null, false, a
//!           caller's report and no mark)
//! verification: api_key · detail (the verdict as JSON; a decision's `detail` is its draft plan)
//! ```
//!
//! [`export_tables`] writes the same records as one table per kind, for analysis.

mod export;
mod read;
mod write;

pub use export::{ExportReport, export_tables};

use std::path::Path;

use polars::prelude::SerReader as _;
use triage_log::{ArchiveFormat, LogError, LogRecord};

/// Archives as Parquet files (see the crate docs for the columns).
#[derive(Clone, Copy, Debug, Default)]
pub struct ParquetArchive;

impl ArchiveFormat for ParquetArchive {
    fn extension(&self) -> &'static str {
        "parquet"
    }

    fn write(&self, records: &[LogRecord], path: &Path) -> Result<(), LogError> {
        let mut frame = write::frame(records).map_err(|e| archive_error(path, e))?;
        let file = std::fs::File::create_new(path).map_err(|e| archive_error(path, e))?;
        polars::prelude::ParquetWriter::new(file)
            .finish(&mut frame)
            .map(|_| ())
            .map_err(|e| archive_error(path, e))
    }

    fn read(&self, path: &Path) -> Result<Vec<LogRecord>, LogError> {
        let file = std::fs::File::open(path).map_err(|e| archive_error(path, e))?;
        let frame = polars::prelude::ParquetReader::new(file)
            .finish()
            .map_err(|e| archive_error(path, e))?;
        read::records(&frame).map_err(|e| archive_error(path, e))
    }
}

fn archive_error(path: &Path, e: impl std::fmt::Display) -> LogError {
    LogError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}
