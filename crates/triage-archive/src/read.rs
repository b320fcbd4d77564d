//! One data frame → log records, checking every column an archive must have.

use polars::prelude::*;
use triage_log::{
    DecisionRecord, ErrorKind, FeedbackRecord, FeedbackSource, LogRecord, LoggedCandidate,
    encode_features,
};

/// A required column or value is missing, or has the wrong type.
fn malformed(what: impl std::fmt::Display) -> PolarsError {
    PolarsError::ComputeError(format!("not a log archive: {what}").into())
}

/// Column values by row.
struct Frame<'a>(&'a DataFrame);

impl Frame<'_> {
    fn strings(&self, name: &str) -> PolarsResult<Vec<Option<String>>> {
        let column = self.0.column(name)?.cast(&DataType::String)?;
        Ok(column.str()?.iter().map(|v| v.map(str::to_owned)).collect())
    }

    fn floats(&self, name: &str) -> PolarsResult<Vec<Option<f64>>> {
        Ok(self.0.column(name)?.f64()?.iter().collect())
    }

    fn u32s(&self, name: &str) -> PolarsResult<Vec<Option<u32>>> {
        Ok(self.0.column(name)?.u32()?.iter().collect())
    }

    /// A text column that archives written before it existed lack: all nulls there.
    fn optional_strings(&self, name: &str) -> PolarsResult<Vec<Option<String>>> {
        match self.0.column(name) {
            Ok(_) => self.strings(name),
            Err(_) => Ok(vec![None; self.0.height()]),
        }
    }

    /// A column that archives written before it existed lack: all nulls there.
    fn optional_u32s(&self, name: &str) -> PolarsResult<Vec<Option<u32>>> {
        match self.0.column(name) {
            Ok(c) => Ok(c.u32()?.iter().collect()),
            Err(_) => Ok(vec![None; self.0.height()]),
        }
    }

    fn lists(&self, name: &str) -> PolarsResult<Vec<Option<Series>>> {
        let lists = self.0.column(name)?.list()?;
        Ok((0..lists.len()).map(|i| lists.get_as_series(i)).collect())
    }
}

fn required<T>(value: Option<T>, column: &str, row: usize) -> PolarsResult<T> {
    value.ok_or_else(|| malformed(format!("row {row} has no `{column}`")))
}

/// The records of an archive frame, in row order.
pub(crate) fn records(df: &DataFrame) -> PolarsResult<Vec<LogRecord>> {
    let f = Frame(df);
    let kind = f.strings("kind")?;
    let request_id = f.strings("request_id")?;
    let time_ms: Vec<Option<u64>> = df.column("time_ms")?.u64()?.iter().collect();
    let input_tokens = f.u32s("input_tokens")?;
    let policy_version = f.strings("policy_version")?;
    let knob = f.strings("knob")?;
    let cost_weight = f.floats("cost_weight")?;
    let chosen = f.strings("chosen")?;
    let propensity = f.floats("propensity")?;
    let explored: Vec<Option<bool>> = df.column("explored")?.bool()?.iter().collect();
    let session_id = f.strings("session_id")?;
    let prompt = f.strings("prompt")?;
    let api_key = f.strings("api_key")?;
    let feedback_id = f.strings("feedback_id")?;
    let model = f.strings("model")?;
    let quality = f.floats("quality")?;
    let output_tokens = f.u32s("output_tokens")?;
    let cost_usd = f.floats("cost_usd")?;
    let latency_ms = f.u32s("latency_ms")?;
    let error = f.strings("error")?;
    let retry_after_ms = f.u32s("retry_after_ms")?;
    let first_byte_ms = f.optional_u32s("first_byte_ms")?;
    let tokens_estimated: Vec<Option<bool>> = match df.column("tokens_estimated") {
        Ok(c) => c.bool()?.iter().collect(),
        Err(_) => vec![None; df.height()],
    };
    let detail = f.optional_strings("detail")?;
    let source = f.optional_strings("source")?;
    let features = f.lists("features")?;
    let candidates = CandidateLists {
        model: f.lists("candidate_model")?,
        predicted_quality: f.lists("candidate_predicted_quality")?,
        base_quality: f.lists("candidate_base_quality")?,
        predicted_cost_usd: f.lists("candidate_predicted_cost_usd")?,
        eligible: f.lists("candidate_eligible")?,
    };

    let mut records = Vec::with_capacity(df.height());
    for row in 0..df.height() {
        let request_id = required(request_id[row].clone(), "request_id", row)?;
        let time_ms = required(time_ms[row], "time_ms", row)?;
        let input_tokens = required(input_tokens[row], "input_tokens", row)?;
        let record = match kind[row].as_deref() {
            Some("decision") => {
                let vector = required(features[row].as_ref(), "features", row)?;
                let vector: Vec<f32> = vector.f32()?.into_no_null_iter().collect();
                LogRecord::Decision(DecisionRecord {
                    request_id,
                    time_ms,
                    policy_version: required(policy_version[row].clone(), "policy_version", row)?,
                    features: encode_features(&vector),
                    input_tokens,
                    knob: required(knob[row].clone(), "knob", row)?,
                    cost_weight: cost_weight[row],
                    candidates: candidates.row(row)?,
                    chosen: required(chosen[row].clone(), "chosen", row)?,
                    propensity: required(propensity[row], "propensity", row)?,
                    explored: required(explored[row], "explored", row)?,
                    session_id: required(session_id[row].clone(), "session_id", row)?,
                    prompt: prompt[row].clone(),
                    api_key: api_key[row].clone(),
                    draft_plan: detail[row]
                        .as_deref()
                        .map(|json| parse_detail(json, row))
                        .transpose()?,
                    familiarity: None,
                    held_usd: None,
                })
            }
            Some("verification") => {
                let json = required(detail[row].as_deref(), "detail", row)?;
                LogRecord::Verification(parse_detail(json, row)?)
            }
            Some("feedback") => {
                let error_name = required(error[row].as_deref(), "error", row)?;
                LogRecord::Feedback(FeedbackRecord {
                    request_id,
                    feedback_id: required(feedback_id[row].clone(), "feedback_id", row)?,
                    time_ms,
                    model: required(model[row].clone(), "model", row)?,
                    quality: quality[row],
                    input_tokens,
                    output_tokens: required(output_tokens[row], "output_tokens", row)?,
                    cost_usd: required(cost_usd[row], "cost_usd", row)?,
                    latency_ms: required(latency_ms[row], "latency_ms", row)?,
                    error: ErrorKind::from_name(error_name).ok_or_else(|| {
                        malformed(format!("row {row}: unknown error kind {error_name:?}"))
                    })?,
                    retry_after_ms: retry_after_ms[row],
                    first_byte_ms: first_byte_ms[row],
                    tokens_estimated: tokens_estimated[row].unwrap_or(false),
                    api_key: api_key[row].clone(),
                    hold_usd: None,
                    // Archives older than the judge have no source: a caller's or the gateway's.
                    source: match source[row].as_deref() {
                        None => FeedbackSource::Caller,
                        Some(name) => FeedbackSource::from_name(name).ok_or_else(|| {
                            malformed(format!("row {row}: unknown feedback source {name:?}"))
                        })?,
                    },
                    judged: detail[row]
                        .as_deref()
                        .map(|json| parse_detail(json, row))
                        .transpose()?,
                })
            }
            other => return Err(malformed(format!("row {row} has kind {other:?}"))),
        };
        records.push(record);
    }
    Ok(records)
}

/// A row's `detail` JSON.
fn parse_detail<T: serde::de::DeserializeOwned>(json: &str, row: usize) -> PolarsResult<T> {
    serde_json::from_str(json).map_err(|e| malformed(format!("row {row}: `detail`: {e}")))
}

/// The parallel candidate lists of decision rows.
struct CandidateLists {
    model: Vec<Option<Series>>,
    predicted_quality: Vec<Option<Series>>,
    base_quality: Vec<Option<Series>>,
    predicted_cost_usd: Vec<Option<Series>>,
    eligible: Vec<Option<Series>>,
}

impl CandidateLists {
    fn row(&self, row: usize) -> PolarsResult<Vec<LoggedCandidate>> {
        let list = |lists: &[Option<Series>], name: &str| required(lists[row].clone(), name, row);
        let model = list(&self.model, "candidate_model")?;
        let predicted_quality = list(&self.predicted_quality, "candidate_predicted_quality")?;
        let base_quality = list(&self.base_quality, "candidate_base_quality")?;
        let predicted_cost_usd = list(&self.predicted_cost_usd, "candidate_predicted_cost_usd")?;
        let eligible = list(&self.eligible, "candidate_eligible")?;
        let lengths = [
            predicted_quality.len(),
            base_quality.len(),
            predicted_cost_usd.len(),
            eligible.len(),
        ];
        if lengths.iter().any(|&n| n != model.len()) {
            return Err(malformed(format!(
                "row {row}: candidate lists differ in length"
            )));
        }
        model
            .str()?
            .iter()
            .zip(predicted_quality.f64()?.iter())
            .zip(base_quality.f64()?.iter())
            .zip(predicted_cost_usd.f64()?.iter())
            .zip(eligible.bool()?.iter())
            .map(|((((model, quality), base), cost), eligible)| {
                Ok(LoggedCandidate {
                    model: required(model, "candidate_model", row)?.to_owned(),
                    predicted_quality: required(quality, "candidate_predicted_quality", row)?,
                    base_quality: base,
                    predicted_cost_usd: required(cost, "candidate_predicted_cost_usd", row)?,
                    eligible: required(eligible, "candidate_eligible", row)?,
                })
            })
            .collect()
    }
}
