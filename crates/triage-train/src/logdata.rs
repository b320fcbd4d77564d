//! Outcomes learned from usage: the server's decision and feedback log as training data.
//!
//! The log is read as segments plus any Parquet archives they were compacted into.
//! A decision joined with a feedback report that carries a quality score is one outcome row (the
//! same schema as an outcome table): prompt = the request, model = the model that answered,
//! quality and cost as reported. Feature vectors come from the decision record, so nothing is
//! re-embedded and prompt text is never needed. Duplicates are removed: decisions by request id,
//! reports by feedback id, and several reports on one (request, model) keep the latest.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Serialize;
use sha2::{Digest, Sha256};
use triage_core::Catalog;
use triage_log::{
    DecisionRecord, ErrorKind, FeedbackRecord, FeedbackSource, LogRecord, VerificationRecord,
    decode_features, read_log_with,
};

use crate::TrainError;
use crate::embed::PromptFeatures;
use crate::prepare::Prepared;
use crate::table::{Outcome, Outcomes, Prompt, Split, carved_into_dev};

/// Distinct counts after de-duplication (what `triage train --from-log --dry-run --json` prints).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LogCounts {
    /// Distinct request ids decided.
    pub decisions: usize,
    /// Distinct feedback ids reported.
    pub feedback: usize,
    /// Distinct (request, model) pairs with a quality score and a known decision.
    pub outcomes: usize,
    /// Requests whose drafts were verified (their evidence can retrain the acceptor).
    pub verifications: usize,
}

/// One logged outcome.
#[derive(Clone, Debug)]
pub struct LoggedOutcome {
    /// Index into [`LoggedData::decisions`].
    pub decision: usize,
    /// Model that answered.
    pub model: String,
    /// Reported quality and cost; the answer length is `None` when reported as 0.
    pub outcome: Outcome,
    /// Who scored it: a caller, or the judge (on the answer given, or on a shadow answer).
    pub source: FeedbackSource,
}

/// Largest fitting weight of a logged outcome (a model chosen with probability under 5%
/// counts as 20 outcomes, not more: clipping trades a little bias for much less variance).
pub const MAX_FITTING_WEIGHT: f64 = 20.0;

/// Inverse propensity of `model` answering `decision`. A fallback model (the caller used
/// another than the one chosen) has no known propensity and counts once.
fn fitting_weight(decision: &DecisionRecord, model: &str) -> f64 {
    if decision.chosen == model && decision.propensity > 0.0 {
        (1.0 / decision.propensity).min(MAX_FITTING_WEIGHT)
    } else {
        1.0
    }
}

/// Joins reports to decisions, one outcome per (request, model) in first-report order. Its
/// score is a caller's if any (the latest), else the judge's (the latest): a caller's own score
/// outranks the judge's. Its cost and answer length are those of the latest report that billed
/// a call (the gateway's record, a caller's report with a cost, a shadow answer's record), so
/// a score sent without a cost does not erase what the call cost.
fn join(
    decisions: &[DecisionRecord],
    by_request: &HashMap<String, usize>,
    reports: &[FeedbackRecord],
) -> Vec<LoggedOutcome> {
    let mut billed: HashMap<(usize, &str), &FeedbackRecord> = HashMap::new();
    let mut scored: HashMap<(usize, &str), &FeedbackRecord> = HashMap::new();
    let mut order = Vec::new();
    for f in reports {
        let Some(&decision) = by_request.get(&f.request_id) else {
            continue;
        };
        let key = (decision, f.model.as_str());
        if f.error == ErrorKind::None && (f.cost_usd > 0.0 || f.output_tokens > 0) {
            billed.insert(key, f);
        }
        if f.quality.is_none() {
            continue;
        }
        match scored.get(&key) {
            None => {
                order.push((decision, f.model.clone()));
                scored.insert(key, f);
            }
            Some(earlier) if earlier.source.is_judge() || !f.source.is_judge() => {
                scored.insert(key, f);
            }
            Some(_) => {}
        }
    }
    let mut outcomes = Vec::with_capacity(order.len());
    for (decision, model) in order {
        let key = (decision, model.as_str());
        let Some(&f) = scored.get(&key) else {
            continue;
        };
        let cost = billed.get(&key).copied().unwrap_or(f);
        let weight = match f.judged.as_ref().and_then(|j| j.propensity) {
            Some(p) if f.source == FeedbackSource::Shadow && p > 0.0 => {
                (1.0 / p).min(MAX_FITTING_WEIGHT)
            }
            _ => fitting_weight(&decisions[key.0], &f.model),
        };
        let outcome = LoggedOutcome {
            decision: key.0,
            model: f.model.clone(),
            outcome: Outcome {
                quality: f.quality.unwrap_or_default(),
                cost_usd: cost.cost_usd,
                output_tokens: (cost.output_tokens > 0).then_some(f64::from(cost.output_tokens)),
                weight,
                logged: true,
            },
            source: f.source,
        };
        outcomes.push(outcome);
    }
    outcomes
}

/// Where a log is read from: a server's `--data-dir`, or the PostgreSQL database replicas
/// share (`--from-log postgres://…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogSource {
    /// Segments and Parquet archives in a directory.
    Dir(PathBuf),
    /// A `postgres://` URL.
    Postgres(String),
}

impl LogSource {
    /// A URL (`postgres://…`, `postgresql://…`) or else a directory.
    pub fn parse(source: &str) -> Self {
        if triage_postgres::is_url(source) {
            LogSource::Postgres(source.to_owned())
        } else {
            LogSource::Dir(PathBuf::from(source))
        }
    }

    /// Every record, oldest first (a tail still being written is left out).
    pub fn records(&self) -> Result<Vec<LogRecord>, TrainError> {
        match self {
            LogSource::Dir(dir) => {
                if !dir.is_dir() {
                    return Err(TrainError::Data(format!(
                        "{}: no such log directory (the server's --data-dir, or a postgres:// URL)",
                        dir.display()
                    )));
                }
                let (records, report) = read_log_with(dir, Some(&triage_archive::ParquetArchive))
                    .map_err(|e| TrainError::Data(e.to_string()))?;
                if report.torn_bytes > 0 {
                    tracing::info!(
                        bytes = report.torn_bytes,
                        "log tail not yet complete; left out"
                    );
                }
                Ok(records)
            }
            LogSource::Postgres(url) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| TrainError::Data(format!("cannot start a runtime: {e}")))?
                .block_on(triage_postgres::read_records(url))
                .map_err(|e| TrainError::Data(format!("{self}: {e}"))),
        }
    }
}

impl From<PathBuf> for LogSource {
    fn from(dir: PathBuf) -> Self {
        LogSource::Dir(dir)
    }
}

impl std::fmt::Display for LogSource {
    /// The directory, or the URL without its credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogSource::Dir(dir) => write!(f, "{}", dir.display()),
            LogSource::Postgres(url) => f.write_str(&triage_postgres::redacted(url)),
        }
    }
}

/// The log, de-duplicated and joined.
#[derive(Clone, Debug)]
pub struct LoggedData {
    /// Distinct decisions, oldest first.
    pub decisions: Vec<DecisionRecord>,
    /// Joined outcomes.
    pub outcomes: Vec<LoggedOutcome>,
    /// Verdicts on verify-then-escalate drafts, one per request: the drafts' evidence, which
    /// retrains the acceptor (joined to quality feedback on the draft models).
    pub verifications: Vec<VerificationRecord>,
    /// The counts.
    pub counts: LogCounts,
    /// Hash of the ids read (the training metadata's data hash).
    pub sha256: String,
}

impl LoggedData {
    /// Reads and joins the log at `source` (read-only; running servers may keep appending).
    pub fn read(source: &LogSource) -> Result<Self, TrainError> {
        let records = source.records()?;
        let mut decisions: Vec<DecisionRecord> = Vec::new();
        let mut by_request: HashMap<String, usize> = HashMap::new();
        let mut reports: Vec<FeedbackRecord> = Vec::new();
        let mut seen_reports: HashMap<String, ()> = HashMap::new();
        let mut verifications: Vec<VerificationRecord> = Vec::new();
        let mut verified: HashMap<String, ()> = HashMap::new();
        for record in records {
            match record {
                LogRecord::Decision(d) => {
                    if !by_request.contains_key(&d.request_id) {
                        by_request.insert(d.request_id.clone(), decisions.len());
                        decisions.push(d);
                    }
                }
                LogRecord::Feedback(f) => {
                    if seen_reports.insert(f.feedback_id.clone(), ()).is_none() {
                        reports.push(f);
                    }
                }
                LogRecord::Verification(v) => {
                    if verified.insert(v.request_id.clone(), ()).is_none() {
                        verifications.push(v);
                    }
                }
            }
        }
        let mut hasher = Sha256::new();
        for d in &decisions {
            hasher.update(d.request_id.as_bytes());
        }
        for f in &reports {
            hasher.update(f.feedback_id.as_bytes());
        }
        let outcomes = join(&decisions, &by_request, &reports);
        Ok(Self {
            counts: LogCounts {
                decisions: decisions.len(),
                feedback: reports.len(),
                outcomes: outcomes.len(),
                verifications: verifications.len(),
            },
            decisions,
            outcomes,
            verifications,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    /// The judge's scores weighing `weight` times a caller's (0 leaves them out).
    pub fn with_judge_weight(mut self, weight: f64) -> Self {
        if weight <= 0.0 {
            self.outcomes.retain(|o| !o.source.is_judge());
        } else {
            for o in self.outcomes.iter_mut().filter(|o| o.source.is_judge()) {
                o.outcome.weight *= weight;
            }
        }
        self.counts.outcomes = self.outcomes.len();
        self
    }

    /// Only the decisions (and their outcomes) whose request id is in `ids`.
    pub fn restricted_to(&self, ids: &std::collections::HashSet<&str>) -> LoggedData {
        self.filtered(|id| ids.contains(id))
    }

    /// Only the decisions (and their outcomes) whose request id is not in `ids`.
    pub fn excluding(&self, ids: &std::collections::HashSet<&str>) -> LoggedData {
        self.filtered(|id| !ids.contains(id))
    }

    fn filtered(&self, keep_id: impl Fn(&str) -> bool) -> LoggedData {
        let verifications: Vec<VerificationRecord> = self
            .verifications
            .iter()
            .filter(|v| keep_id(v.request_id.as_str()))
            .cloned()
            .collect();
        let mut keep = HashMap::new();
        let mut decisions = Vec::new();
        for (i, d) in self.decisions.iter().enumerate() {
            if keep_id(d.request_id.as_str()) {
                keep.insert(i, decisions.len());
                decisions.push(d.clone());
            }
        }
        let outcomes: Vec<LoggedOutcome> = self
            .outcomes
            .iter()
            .filter_map(|o| {
                keep.get(&o.decision).map(|&decision| LoggedOutcome {
                    decision,
                    ..o.clone()
                })
            })
            .collect();
        LoggedData {
            counts: LogCounts {
                decisions: decisions.len(),
                feedback: self.counts.feedback,
                outcomes: outcomes.len(),
                verifications: verifications.len(),
            },
            verifications,
            decisions,
            outcomes,
            sha256: self.sha256.clone(),
        }
    }

    /// The outcomes as a training table with features, ready for `fit_policy`. Prices come from
    /// the catalog (decisions were priced with it); ~15% of prompts (by a hash of their feature
    /// vector) are carved out as dev.
    pub fn prepared(&self, catalog: &Catalog) -> Result<Prepared, TrainError> {
        if self.outcomes.is_empty() {
            return Err(TrainError::Data(
                "the log has no feedback with a quality score joined to a decision yet".into(),
            ));
        }
        let mut names: Vec<String> = self.outcomes.iter().map(|o| o.model.clone()).collect();
        names.sort();
        names.dedup();
        let model_index: HashMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, m)| (m.as_str(), i))
            .collect();
        let mut prompt_of: HashMap<usize, usize> = HashMap::new();
        let mut prompts = Vec::new();
        let mut features = Vec::new();
        let mut input_tokens = Vec::new();
        let mut cells: Vec<Vec<Option<Outcome>>> = Vec::new();
        for o in &self.outcomes {
            let p = match prompt_of.get(&o.decision) {
                Some(&p) => p,
                None => {
                    let d = &self.decisions[o.decision];
                    let x = decode_features(&d.features)
                        .map_err(|e| TrainError::Data(format!("decision {}: {e}", d.request_id)))?;
                    // Carved (and folded) by content, not by the random request id: the same
                    // prompt always lands on the same side (no leak between repeats), and a
                    // replay of the same traffic splits the same way.
                    let split = if carved_into_dev(&d.features) {
                        Split::Dev
                    } else {
                        Split::Train
                    };
                    prompts.push(Prompt {
                        id: d.request_id.clone(),
                        text: d.prompt.clone().unwrap_or_default(),
                        split,
                        task: None,
                        fold_key: hex::encode(Sha256::digest(d.features.as_bytes())),
                    });
                    features.push(x);
                    input_tokens.push(d.input_tokens);
                    cells.push(vec![None; names.len()]);
                    prompt_of.insert(o.decision, prompts.len() - 1);
                    prompts.len() - 1
                }
            };
            cells[p][model_index[o.model.as_str()]] = Some(o.outcome);
        }
        let width = features[0].len();
        if features.iter().any(|x| x.len() != width) {
            return Err(TrainError::Data(
                "the log mixes feature vectors of different widths (several encoders); train \
                 from one encoder's log"
                    .into(),
            ));
        }
        // Logged traffic was decided with the catalog: replayed with it too.
        let specs = names
            .iter()
            .filter_map(|m| catalog.get(m).map(|s| (m.clone(), s.clone())))
            .collect();
        Ok(Prepared {
            outcomes: Outcomes {
                prompts,
                models: names,
                cells,
                specs,
                sources: vec![self.sha256.clone()],
                data_sha256: self.sha256.clone(),
                rows: self.outcomes.len(),
            },
            features: PromptFeatures {
                features,
                input_tokens,
            },
        })
    }
}

/// Seed table plus logged outcomes: prompts appended, model columns united.
pub fn merge(seed: Prepared, logged: Prepared) -> Result<Prepared, TrainError> {
    let (a, b) = (&seed.outcomes, &logged.outcomes);
    if let (Some(x), Some(y)) = (
        seed.features.features.first(),
        logged.features.features.first(),
    ) && x.len() != y.len()
    {
        return Err(TrainError::Data(format!(
            "the seed table's features have {} values and the log's {}: they come from different \
             encoders or feature schemas",
            x.len(),
            y.len()
        )));
    }
    let mut models: Vec<String> = a.models.iter().chain(&b.models).cloned().collect();
    models.sort();
    models.dedup();
    let remap = |o: &Outcomes| -> Vec<Vec<Option<Outcome>>> {
        o.cells
            .iter()
            .map(|row| {
                models
                    .iter()
                    .map(|m| o.model_index(m).and_then(|i| row[i]))
                    .collect()
            })
            .collect()
    };
    let mut cells = remap(a);
    cells.extend(remap(b));
    let mut prompts = a.prompts.clone();
    prompts.extend(b.prompts.iter().cloned());
    let mut specs = b.specs.clone();
    specs.extend(a.specs.clone());
    let mut features = seed.features.features;
    features.extend(logged.features.features);
    let mut input_tokens = seed.features.input_tokens;
    input_tokens.extend(logged.features.input_tokens);
    let sha = hex::encode(Sha256::digest(format!(
        "{}+{}",
        a.data_sha256, b.data_sha256
    )));
    Ok(Prepared {
        outcomes: Outcomes {
            prompts,
            models,
            cells,
            specs,
            sources: a.sources.iter().chain(&b.sources).cloned().collect(),
            data_sha256: sha,
            rows: a.rows + b.rows,
        },
        features: PromptFeatures {
            features,
            input_tokens,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use triage_log::{FeedbackSource, Judged};
    use triage_testkit::records::{decision, report};

    use super::join;

    #[test]
    fn a_callers_score_outranks_the_judges_and_scores_keep_the_calls_cost() {
        let decisions = vec![decision("r1", &["small", "big"], 0.01)];
        let by_request = HashMap::from([("r1".to_owned(), 0)]);
        // The gateway's record of the call (cost, no score), a caller's score sent without a
        // cost, then the judge's later verdict on the same answer.
        let mut call = report("r1", "gateway:r1:1", "big", 0.02);
        call.quality = None;
        call.source = FeedbackSource::Gateway;
        let mut caller = report("r1", "c1", "big", 0.0);
        caller.quality = Some(0.25);
        caller.output_tokens = 0;
        let mut judge = report("r1", "judge:r1:big", "big", 0.0);
        judge.quality = Some(0.9);
        judge.output_tokens = 0;
        judge.source = FeedbackSource::Judge;
        // A shadow answer by a model not chosen, picked with probability 0.1.
        let mut shadow = report("r1", "judge:r1:small", "small", 0.001);
        shadow.quality = Some(1.0);
        shadow.source = FeedbackSource::Shadow;
        shadow.judged = Some(Judged {
            judge_model: "j".into(),
            rubric: "h".into(),
            spend_usd: 0.002,
            propensity: Some(0.1),
        });
        let outcomes = join(&decisions, &by_request, &[call, caller, judge, shadow]);
        assert_eq!(outcomes.len(), 2);
        let big = &outcomes[0];
        assert_eq!(big.outcome.quality, 0.25);
        assert_eq!(big.source, FeedbackSource::Caller);
        assert_eq!(big.outcome.cost_usd, 0.02);
        assert_eq!(big.outcome.output_tokens, Some(40.0));
        let small = &outcomes[1];
        assert_eq!(small.source, FeedbackSource::Shadow);
        assert_eq!(small.outcome.cost_usd, 0.001);
        assert!((small.outcome.weight - 10.0).abs() < 1e-9);
    }
}
