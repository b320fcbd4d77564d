//! Each model's answer text, joined to an outcome table (`--responses FILE`): what a cascade's
//! acceptor learns from.
//!
//! The file has one row per (prompt, model) with columns `prompt_id`, `model` and `response`
//! (Parquet or CSV, like the outcome table). Only the evidence in each text is kept
//! ([`DraftEvidence`], read by the same `triage_policy::acceptor` code the server runs), not the
//! text. `--answer-column COL` takes each draft's final-answer key from column `COL` instead of
//! the generic extraction, to compare the two (a benchmark's own extraction is a reference, not
//! something a router sees at run time).

use std::collections::HashMap;
use std::path::PathBuf;

use triage_core::answer::AnswerForm;
use triage_log::VerificationRecord;
use triage_policy::DraftEvidence;

use crate::TrainError;
use crate::table::{Outcomes, read_frame, strings};

/// Where the responses come from and how their final answers are read.
#[derive(Clone, Debug, PartialEq)]
pub struct ResponsesSource {
    /// The responses file.
    pub path: PathBuf,
    /// A column holding each draft's final-answer key; `None`: the generic extraction.
    pub answer_column: Option<String>,
}

impl ResponsesSource {
    /// `generic`, or the answer column's name: recorded in the acceptor.
    pub fn answers_label(&self) -> String {
        self.answer_column
            .clone()
            .unwrap_or_else(|| "generic".into())
    }
}

/// Each prompt's row in `outcomes`, by prompt id.
fn prompt_index(outcomes: &Outcomes) -> HashMap<&str, usize> {
    outcomes
        .prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id.as_str(), i))
        .collect()
}

/// Evidence per (prompt, model) cell of an outcome table.
#[derive(Clone, Debug)]
pub struct Responses {
    /// `cells[p][m]`: what model `m`'s answer to prompt `p` offers (its predicted quality is 0
    /// until the acceptor sets it from a policy).
    pub cells: Vec<Vec<Option<DraftEvidence>>>,
    /// `generic` or the answer column used.
    pub answers: String,
}

impl Responses {
    /// Reads `source` and joins it to `outcomes`. Rows for prompts or models the table does not
    /// have are counted in one warning; a (prompt, model) given twice is an error.
    pub fn load(source: &ResponsesSource, outcomes: &Outcomes) -> Result<Self, TrainError> {
        let path = &source.path;
        let df = read_frame(path)?;
        let at = |what: String| TrainError::Data(format!("{}: {what}", path.display()));
        let ids = strings(&df, "prompt_id")?;
        let models = strings(&df, "model")?;
        let texts = strings(&df, "response")?;
        let keys = match &source.answer_column {
            Some(col) => Some(strings(&df, col).map_err(|_| {
                at(format!(
                    "--answer-column {col}: the file has no text column {col:?}"
                ))
            })?),
            None => None,
        };
        let prompt_index = prompt_index(outcomes);
        let mut cells = vec![vec![None; outcomes.models.len()]; outcomes.prompts.len()];
        let mut unmatched = 0usize;
        for row in 0..df.height() {
            let (Some(id), Some(model)) = (&ids[row], &models[row]) else {
                return Err(at(format!("row {row}: `prompt_id` or `model` is empty")));
            };
            let (Some(&p), Some(m)) = (prompt_index.get(id.as_str()), outcomes.model_index(model))
            else {
                unmatched += 1;
                continue;
            };
            if cells[p][m].is_some() {
                return Err(at(format!(
                    "row {row}: prompt {id:?} has a second response from {model:?}; keep one \
                     row per (prompt_id, model)"
                )));
            }
            let text = texts[row].as_deref().unwrap_or("");
            let mut evidence = DraftEvidence::read(text, 0.0);
            if let Some(keys) = &keys {
                evidence.answer = keys[row].clone().filter(|k| !k.trim().is_empty());
                evidence.form = None;
            }
            cells[p][m] = Some(evidence);
        }
        let joined = cells.iter().flatten().filter(|c| c.is_some()).count();
        if unmatched > 0 {
            tracing::warn!(
                rows = unmatched,
                "responses for prompts or models the outcome table does not have were left out"
            );
        }
        if joined == 0 {
            return Err(at(
                "no response matches a (prompt_id, model) of the outcome table".into(),
            ));
        }
        tracing::info!(joined, answers = %source.answers_label(), "responses joined");
        Ok(Self {
            cells,
            answers: source.answers_label(),
        })
    }

    /// The drafts' evidence the decision log kept with each verdict, joined to `outcomes` (a
    /// table read from the log, whose prompt ids are request ids); `None` when none joins.
    pub fn from_log(verifications: &[VerificationRecord], outcomes: &Outcomes) -> Option<Self> {
        let prompt_index = prompt_index(outcomes);
        let mut cells = vec![vec![None; outcomes.models.len()]; outcomes.prompts.len()];
        let mut joined = 0usize;
        for v in verifications {
            let Some(&p) = prompt_index.get(v.request_id.as_str()) else {
                continue;
            };
            for d in &v.drafts {
                if let Some(m) = outcomes.model_index(&d.model) {
                    cells[p][m] = Some(DraftEvidence {
                        predicted_quality: 0.0,
                        answer: d.answer.clone(),
                        form: d.form.as_deref().and_then(AnswerForm::from_name),
                        chars: usize::try_from(d.chars).unwrap_or(usize::MAX),
                        refuses: d.refuses,
                        hedges: d.hedges,
                    });
                    joined += 1;
                }
            }
        }
        tracing::info!(joined, "drafts' evidence joined from the decision log");
        (joined > 0).then(|| Self {
            cells,
            answers: "generic".into(),
        })
    }

    /// These responses, with cells they lack taken from `other` (same table).
    pub fn filled_from(mut self, other: Responses) -> Self {
        for (mine, theirs) in self.cells.iter_mut().zip(other.cells) {
            for (cell, from) in mine.iter_mut().zip(theirs) {
                if cell.is_none() {
                    *cell = from;
                }
            }
        }
        self
    }

    /// The evidence of model `m` on prompt `p`, with its predicted quality set.
    pub fn evidence(&self, p: usize, m: usize, predicted_quality: f64) -> Option<DraftEvidence> {
        let mut e = self.cells[p][m].clone()?;
        e.predicted_quality = predicted_quality;
        Some(e)
    }
}
