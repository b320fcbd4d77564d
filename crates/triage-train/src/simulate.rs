//! Replays routing decisions over an outcome table: what a router would have chosen for each
//! prompt, and the realised cost and quality of that choice.
//!
//! Decisions go through `triage_policy::decide`, the very function the server calls, over the
//! serving catalog's entries for the table's models (see `Outcomes::specs`) and the same
//! input-token estimate serving makes (the encoder tokenizer's count of the prompt, see
//! `triage_core::features::PromptStats`; a table's `input_tokens` only prices realised costs),
//! so what `triage eval` reports is what `Route` does.

use std::collections::HashMap;

use triage_core::Catalog;
use triage_core::catalog::ModelSpec;
use triage_policy::{Decision, Policy, Prediction, Rule, decide};

use crate::TrainError;
use crate::table::Outcomes;

/// A catalog holding exactly the models of `outcomes` that `policy` scores, as serving's
/// catalog has them (see [`Outcomes::specs`]).
pub fn replay_catalog(outcomes: &Outcomes, policy: &Policy) -> Result<Catalog, TrainError> {
    let specs: Vec<ModelSpec> = policy
        .model_names()
        .filter_map(|name| replay_spec(outcomes, name))
        .collect();
    Catalog::new(specs).map_err(|e| {
        TrainError::Data(format!(
            "no model of the policy has a price in this table: {e}"
        ))
    })
}

/// What decisions on `name` are replayed with (its serving catalog entry, else one at the
/// table's price); `None` when the table has no such model.
pub fn replay_spec(outcomes: &Outcomes, name: &str) -> Option<ModelSpec> {
    outcomes.specs.get(name).cloned()
}

/// Predictions of one policy on a set of prompts, ready to replay under many knobs.
pub struct Replay<'a> {
    outcomes: &'a Outcomes,
    catalog: Catalog,
    params: triage_policy::DecisionParams,
    prompts: Vec<usize>,
    predictions: Vec<HashMap<String, Prediction>>,
    familiarity: Vec<Option<f64>>,
    input_tokens: Vec<u32>,
}

pub use crate::eval::curve::Point;

impl<'a> Replay<'a> {
    /// Scores `prompts` (indices into `outcomes`) with `policy`; `features[i]` and
    /// `input_tokens[i]` belong to prompt `i` of the table.
    pub fn new(
        outcomes: &'a Outcomes,
        policy: &Policy,
        features: &[Vec<f32>],
        input_tokens: &[u32],
        prompts: Vec<usize>,
    ) -> Result<Self, TrainError> {
        let catalog = replay_catalog(outcomes, policy)?;
        let mut predictions = Vec::with_capacity(prompts.len());
        let mut familiarity = Vec::with_capacity(prompts.len());
        for &p in &prompts {
            let scored = policy
                .score(&features[p])
                .map_err(|e| TrainError::Fit(e.to_string()))?;
            familiarity.push(scored.familiarity);
            predictions.push(
                scored
                    .predictions
                    .into_iter()
                    .map(|(m, pr)| (m.to_owned(), pr))
                    .collect(),
            );
        }
        let input_tokens = prompts.iter().map(|&p| input_tokens[p]).collect();
        Ok(Self {
            outcomes,
            catalog,
            params: policy.decision().clone(),
            prompts,
            predictions,
            familiarity,
            input_tokens,
        })
    }

    /// How familiar the `k`-th replayed prompt was to the policy (`None`: it cannot tell).
    pub fn familiarity(&self, k: usize) -> Option<f64> {
        self.familiarity.get(k).copied().flatten()
    }

    /// The prompts replayed.
    pub fn prompts(&self) -> &[usize] {
        &self.prompts
    }

    /// The model chosen for each prompt under `knob` (None when no model with an outcome was
    /// eligible).
    pub fn choices(&self, knob: Rule) -> Vec<Option<String>> {
        self.choices_with(knob, &[])
    }

    /// Like [`Self::choices`], restricted to `only` models when non-empty.
    pub fn choices_with(&self, knob: Rule, only: &[String]) -> Vec<Option<String>> {
        (0..self.prompts.len())
            .map(|k| {
                self.decision_with(k, knob, only)
                    .map(|d| d.chosen().model.clone())
            })
            .collect()
    }

    /// The whole decision (ranked candidates with their predictions) on the `k`-th replayed
    /// prompt under `knob`, as serving would make it.
    pub fn decision(&self, k: usize, knob: Rule) -> Option<Decision> {
        self.decision_with(k, knob, &[])
    }

    fn decision_with(&self, k: usize, knob: Rule, only: &[String]) -> Option<Decision> {
        let p = *self.prompts.get(k)?;
        let allowed: Vec<String> = self
            .catalog
            .models()
            .iter()
            .filter(|m| only.is_empty() || only.contains(&m.name))
            .filter(|m| {
                self.outcomes
                    .model_index(&m.name)
                    .is_some_and(|i| self.outcomes.cells[p][i].is_some())
            })
            .map(|m| m.name.clone())
            .collect();
        let preds: HashMap<&str, Prediction> = self.predictions[k]
            .iter()
            .map(|(m, pr)| (m.as_str(), *pr))
            .collect();
        decide(
            &self.catalog,
            &preds,
            &self.params,
            &knob.preferences(allowed),
            self.input_tokens[k],
        )
        .ok()
    }

    /// The estimated input tokens of the `k`-th replayed prompt (what its predicted costs use).
    pub fn input_tokens(&self, k: usize) -> Option<u32> {
        self.input_tokens.get(k).copied()
    }

    /// The policy's probability of a good answer from `model` on the `k`-th replayed prompt.
    pub fn predicted_quality(&self, k: usize, model: &str) -> Option<f64> {
        self.predictions.get(k)?.get(model).map(|p| p.quality)
    }

    /// Mean realised cost and quality under `knob`.
    pub fn point(&self, knob: Rule) -> Point {
        let choices = self.choices(knob);
        realised(self.outcomes, &self.prompts, &choices)
    }

    /// Sets the margins used by later replays.
    pub fn set_params(&mut self, params: triage_policy::DecisionParams) {
        self.params = params;
    }
}

/// Mean realised cost and quality of per-prompt choices (prompts without a choice count as
/// quality 0 and cost 0).
pub fn realised(outcomes: &Outcomes, prompts: &[usize], choices: &[Option<String>]) -> Point {
    realised_by_index(outcomes, prompts, &model_indices(outcomes, choices))
}

/// Per-prompt choices by model name as indices into `outcomes.models`.
pub fn model_indices(outcomes: &Outcomes, choices: &[Option<String>]) -> Vec<Option<usize>> {
    choices
        .iter()
        .map(|c| c.as_deref().and_then(|m| outcomes.model_index(m)))
        .collect()
}

/// [`realised`] for choices given as model indices.
pub fn realised_by_index(
    outcomes: &Outcomes,
    prompts: &[usize],
    choices: &[Option<usize>],
) -> Point {
    let n = prompts.len().max(1) as f64;
    let (mut cost, mut quality) = (0.0, 0.0);
    for (&p, choice) in prompts.iter().zip(choices) {
        if let Some(o) = choice.and_then(|m| outcomes.cells[p][m]) {
            cost += o.cost_usd;
            quality += o.quality;
        }
    }
    Point {
        cost: cost / n,
        quality: quality / n,
    }
}
