//! The log as analysis tables: one Parquet file per record kind, each with only its own
//! columns, for DuckDB, polars or pandas (`triage log export`).
//!
//! An archive keeps every kind in one frame, in log order, so that replaying it replays the log;
//! an analyst wants a table per kind instead. The decision and feedback tables are the archive's
//! columns for that kind (one definition of each column); verdicts get their scalar fields as
//! columns and the rest (each draft's evidence) as JSON text in `detail`.

use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::Serialize;
use triage_log::{LogRecord, VerificationRecord};

use crate::write::frame;

/// What an export wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    /// Rows of `decisions.parquet`.
    pub decisions: usize,
    /// Rows of `feedback.parquet`.
    pub feedback: usize,
    /// Rows of `verifications.parquet`.
    pub verifications: usize,
    /// The files written.
    pub files: Vec<PathBuf>,
}

/// Columns of the decision table (the archive's, less those of other kinds).
const DECISION_COLUMNS: [&str; 19] = [
    "request_id",
    "time_ms",
    "input_tokens",
    "policy_version",
    "knob",
    "cost_weight",
    "chosen",
    "propensity",
    "explored",
    "session_id",
    "prompt",
    "api_key",
    "detail",
    "features",
    "candidate_model",
    "candidate_predicted_quality",
    "candidate_base_quality",
    "candidate_predicted_cost_usd",
    "candidate_eligible",
];

/// Columns of the feedback table.
const FEEDBACK_COLUMNS: [&str; 16] = [
    "request_id",
    "feedback_id",
    "time_ms",
    "model",
    "quality",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "latency_ms",
    "error",
    "retry_after_ms",
    "first_byte_ms",
    "tokens_estimated",
    "api_key",
    "source",
    "detail",
];

/// Writes `decisions.parquet`, `feedback.parquet` and `verifications.parquet` into `dir`
/// (created when missing). Refuses to overwrite: an export is a snapshot, written once.
pub fn export_tables(records: &[LogRecord], dir: &Path) -> PolarsResult<ExportReport> {
    std::fs::create_dir_all(dir)?;
    let (mut decisions, mut feedback, mut verdicts) = (Vec::new(), Vec::new(), Vec::new());
    for r in records {
        match r {
            LogRecord::Decision(_) => decisions.push(r.clone()),
            LogRecord::Feedback(_) => feedback.push(r.clone()),
            LogRecord::Verification(v) => verdicts.push(v),
        }
    }
    let mut files = Vec::new();
    let mut decision_table = frame(&decisions)?.select(DECISION_COLUMNS)?;
    decision_table.rename("detail", "draft_plan".into())?;
    files.push(write(dir, "decisions.parquet", &mut decision_table)?);
    let mut feedback_table = frame(&feedback)?.select(FEEDBACK_COLUMNS)?;
    files.push(write(dir, "feedback.parquet", &mut feedback_table)?);
    files.push(write(
        dir,
        "verifications.parquet",
        &mut verdict_table(&verdicts)?,
    )?);
    Ok(ExportReport {
        decisions: decisions.len(),
        feedback: feedback.len(),
        verifications: verdicts.len(),
        files,
    })
}

fn verdict_table(verdicts: &[&VerificationRecord]) -> PolarsResult<DataFrame> {
    let text = |f: fn(&VerificationRecord) -> Option<&str>| -> Vec<Option<&str>> {
        verdicts.iter().map(|v| f(v)).collect()
    };
    let floats =
        |f: fn(&VerificationRecord) -> f64| -> Vec<f64> { verdicts.iter().map(|v| f(v)).collect() };
    let detail: Vec<Option<String>> = verdicts
        .iter()
        .map(|v| serde_json::to_string(&v.drafts).ok())
        .collect();
    DataFrame::new(
        verdicts.len(),
        vec![
            Column::new("request_id".into(), text(|v| Some(&v.request_id))),
            Column::new(
                "time_ms".into(),
                verdicts.iter().map(|v| v.time_ms).collect::<Vec<u64>>(),
            ),
            Column::new("api_key".into(), text(|v| v.api_key.as_deref())),
            Column::new("accepted".into(), text(|v| v.accepted.as_deref())),
            Column::new("escalated_to".into(), text(|v| v.escalated_to.as_deref())),
            Column::new("probability".into(), floats(|v| v.probability)),
            Column::new("threshold".into(), floats(|v| v.threshold)),
            Column::new("drafts".into(), detail),
        ],
    )
}

fn write(dir: &Path, name: &str, table: &mut DataFrame) -> PolarsResult<PathBuf> {
    let path = dir.join(name);
    let file = std::fs::File::create_new(&path).map_err(|e| {
        PolarsError::ComputeError(
            format!(
                "{}: {e} (an export never overwrites: give --to an empty directory)",
                path.display()
            )
            .into(),
        )
    })?;
    ParquetWriter::new(file).finish(table)?;
    Ok(path)
}
