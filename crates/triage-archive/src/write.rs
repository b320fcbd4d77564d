//! Log records → one data frame, a row per record.

use polars::chunked_array::builder::get_list_builder;
use polars::prelude::*;
use triage_log::{DecisionRecord, FeedbackRecord, LogRecord, VerificationRecord, decode_features};

/// Column values, one entry per record; `None` where the record's kind lacks the column.
#[derive(Default)]
struct Columns<'a> {
    kind: Vec<&'static str>,
    request_id: Vec<&'a str>,
    time_ms: Vec<u64>,
    input_tokens: Vec<u32>,
    policy_version: Vec<Option<&'a str>>,
    knob: Vec<Option<&'a str>>,
    cost_weight: Vec<Option<f64>>,
    chosen: Vec<Option<&'a str>>,
    propensity: Vec<Option<f64>>,
    explored: Vec<Option<bool>>,
    session_id: Vec<Option<&'a str>>,
    prompt: Vec<Option<&'a str>>,
    api_key: Vec<Option<&'a str>>,
    feedback_id: Vec<Option<&'a str>>,
    model: Vec<Option<&'a str>>,
    quality: Vec<Option<f64>>,
    output_tokens: Vec<Option<u32>>,
    cost_usd: Vec<Option<f64>>,
    latency_ms: Vec<Option<u32>>,
    error: Vec<Option<&'static str>>,
    retry_after_ms: Vec<Option<u32>>,
    first_byte_ms: Vec<Option<u32>>,
    tokens_estimated: Vec<Option<bool>>,
    /// Who wrote a feedback record (`caller`, `gateway`, `judge`, `shadow`).
    source: Vec<Option<&'static str>>,
    /// Nested parts as JSON text: a decision's draft plan, a verification's verdict. Kept as
    /// one text column so the archive's schema stays flat (DuckDB and polars read JSON text).
    detail: Vec<Option<String>>,
}

/// The list columns of decisions.
struct Lists {
    features: Box<dyn ListBuilderTrait>,
    model: Box<dyn ListBuilderTrait>,
    predicted_quality: Box<dyn ListBuilderTrait>,
    base_quality: Box<dyn ListBuilderTrait>,
    predicted_cost_usd: Box<dyn ListBuilderTrait>,
    eligible: Box<dyn ListBuilderTrait>,
}

impl Lists {
    fn new(rows: usize) -> Self {
        let list =
            |dtype: DataType, name: &str| get_list_builder(&dtype, rows * 12, rows, name.into());
        Self {
            features: get_list_builder(&DataType::Float32, rows * 384, rows, "features".into()),
            model: list(DataType::String, "candidate_model"),
            predicted_quality: list(DataType::Float64, "candidate_predicted_quality"),
            base_quality: list(DataType::Float64, "candidate_base_quality"),
            predicted_cost_usd: list(DataType::Float64, "candidate_predicted_cost_usd"),
            eligible: list(DataType::Boolean, "candidate_eligible"),
        }
    }

    fn all(&mut self) -> [&mut Box<dyn ListBuilderTrait>; 6] {
        [
            &mut self.features,
            &mut self.model,
            &mut self.predicted_quality,
            &mut self.base_quality,
            &mut self.predicted_cost_usd,
            &mut self.eligible,
        ]
    }

    fn push(&mut self, d: &DecisionRecord) -> PolarsResult<()> {
        let features = decode_features(&d.features).map_err(|e| {
            PolarsError::ComputeError(format!("decision {}: {e}", d.request_id).into())
        })?;
        let c = &d.candidates;
        let inner = PlSmallStr::EMPTY;
        self.features
            .append_series(&Series::new(inner.clone(), features))?;
        self.model.append_series(&Series::new(
            inner.clone(),
            c.iter().map(|c| c.model.as_str()).collect::<Vec<_>>(),
        ))?;
        self.predicted_quality.append_series(&Series::new(
            inner.clone(),
            c.iter().map(|c| c.predicted_quality).collect::<Vec<_>>(),
        ))?;
        self.base_quality.append_series(&Series::new(
            inner.clone(),
            c.iter().map(|c| c.base_quality).collect::<Vec<_>>(),
        ))?;
        self.predicted_cost_usd.append_series(&Series::new(
            inner.clone(),
            c.iter().map(|c| c.predicted_cost_usd).collect::<Vec<_>>(),
        ))?;
        self.eligible.append_series(&Series::new(
            inner,
            c.iter().map(|c| c.eligible).collect::<Vec<_>>(),
        ))
    }

    fn push_nulls(&mut self) {
        for list in self.all() {
            list.append_null();
        }
    }

    fn finish(mut self) -> Vec<Column> {
        self.all()
            .into_iter()
            .map(|list| list.finish().into_series().into())
            .collect()
    }
}

impl<'a> Columns<'a> {
    fn push_decision(&mut self, d: &'a DecisionRecord) {
        self.kind.push("decision");
        self.request_id.push(&d.request_id);
        self.time_ms.push(d.time_ms);
        self.input_tokens.push(d.input_tokens);
        self.policy_version.push(Some(&d.policy_version));
        self.knob.push(Some(&d.knob));
        self.cost_weight.push(d.cost_weight);
        self.chosen.push(Some(&d.chosen));
        self.propensity.push(Some(d.propensity));
        self.explored.push(Some(d.explored));
        self.session_id.push(Some(&d.session_id));
        self.prompt.push(d.prompt.as_deref());
        self.api_key.push(d.api_key.as_deref());
        self.no_feedback();
        self.detail.push(
            d.draft_plan
                .as_ref()
                .and_then(|p| serde_json::to_string(p).ok()),
        );
    }

    /// A verification row: its request, time and key in their columns, the verdict in `detail`.
    fn push_verification(&mut self, v: &'a VerificationRecord) {
        self.kind.push("verification");
        self.request_id.push(&v.request_id);
        self.time_ms.push(v.time_ms);
        self.input_tokens.push(0);
        self.api_key.push(v.api_key.as_deref());
        self.no_decision();
        self.no_feedback();
        self.detail.push(serde_json::to_string(v).ok());
    }

    /// Nulls in the columns only decisions fill.
    fn no_decision(&mut self) {
        for column in [
            &mut self.policy_version,
            &mut self.knob,
            &mut self.chosen,
            &mut self.session_id,
            &mut self.prompt,
        ] {
            column.push(None);
        }
        self.cost_weight.push(None);
        self.propensity.push(None);
        self.explored.push(None);
    }

    /// Nulls in the columns only feedback reports fill.
    fn no_feedback(&mut self) {
        self.feedback_id.push(None);
        self.model.push(None);
        self.quality.push(None);
        self.output_tokens.push(None);
        self.cost_usd.push(None);
        self.latency_ms.push(None);
        self.error.push(None);
        self.retry_after_ms.push(None);
        self.first_byte_ms.push(None);
        self.tokens_estimated.push(None);
        self.source.push(None);
    }

    fn push_feedback(&mut self, f: &'a FeedbackRecord) {
        self.kind.push("feedback");
        self.request_id.push(&f.request_id);
        self.time_ms.push(f.time_ms);
        self.input_tokens.push(f.input_tokens);
        self.no_decision();
        self.api_key.push(f.api_key.as_deref());
        self.feedback_id.push(Some(&f.feedback_id));
        self.model.push(Some(&f.model));
        self.quality.push(f.quality);
        self.output_tokens.push(Some(f.output_tokens));
        self.cost_usd.push(Some(f.cost_usd));
        self.latency_ms.push(Some(f.latency_ms));
        self.error.push(Some(f.error.as_str()));
        self.retry_after_ms.push(f.retry_after_ms);
        self.first_byte_ms.push(f.first_byte_ms);
        self.tokens_estimated.push(Some(f.tokens_estimated));
        self.source.push(Some(f.source.as_str()));
        // A judge's mark (judge model, rubric, spend) as JSON, like the other kinds' details.
        self.detail.push(
            f.judged
                .as_ref()
                .and_then(|j| serde_json::to_string(j).ok()),
        );
    }

    fn finish(self) -> Vec<Column> {
        vec![
            Column::new("kind".into(), self.kind),
            Column::new("request_id".into(), self.request_id),
            Column::new("time_ms".into(), self.time_ms),
            Column::new("input_tokens".into(), self.input_tokens),
            Column::new("policy_version".into(), self.policy_version),
            Column::new("knob".into(), self.knob),
            Column::new("cost_weight".into(), self.cost_weight),
            Column::new("chosen".into(), self.chosen),
            Column::new("propensity".into(), self.propensity),
            Column::new("explored".into(), self.explored),
            Column::new("session_id".into(), self.session_id),
            Column::new("prompt".into(), self.prompt),
            Column::new("api_key".into(), self.api_key),
            Column::new("feedback_id".into(), self.feedback_id),
            Column::new("model".into(), self.model),
            Column::new("quality".into(), self.quality),
            Column::new("output_tokens".into(), self.output_tokens),
            Column::new("cost_usd".into(), self.cost_usd),
            Column::new("latency_ms".into(), self.latency_ms),
            Column::new("error".into(), self.error),
            Column::new("retry_after_ms".into(), self.retry_after_ms),
            Column::new("first_byte_ms".into(), self.first_byte_ms),
            Column::new("tokens_estimated".into(), self.tokens_estimated),
            Column::new("source".into(), self.source),
            Column::new("detail".into(), self.detail),
        ]
    }
}

/// The frame an archive holds.
pub(crate) fn frame(records: &[LogRecord]) -> PolarsResult<DataFrame> {
    let mut columns = Columns::default();
    let mut lists = Lists::new(records.len());
    for record in records {
        match record {
            LogRecord::Decision(d) => {
                columns.push_decision(d);
                lists.push(d)?;
            }
            LogRecord::Feedback(f) => {
                columns.push_feedback(f);
                lists.push_nulls();
            }
            LogRecord::Verification(v) => {
                columns.push_verification(v);
                lists.push_nulls();
            }
        }
    }
    let mut all = columns.finish();
    all.extend(lists.finish());
    DataFrame::new(records.len(), all)
}
