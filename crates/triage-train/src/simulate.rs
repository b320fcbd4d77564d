//! Replays routing decisions over an outcome table: what a router would have chosen for each
//! prompt, and the realised cost and quality of that choice.
//!
//! Decisions go through `triage_policy::decide`, the very function the server calls, over a
//! catalog built from the table's prices, so what `triage eval` reports is what `Route` does.

use std::collections::HashMap;

use triage_core::Catalog;
use triage_core::catalog::{Capability, LatencyProfile, ModelSpec};
use triage_policy::{Policy, Prediction, Rule, decide};

use crate::TrainError;
use crate::table::Outcomes;

/// A catalog holding exactly the priced models of `outcomes` that `policy` scores, with no
/// capability or context limits (tables carry neither).
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

/// A catalog entry for a model of `outcomes` at the table's price, with no capability, context or
/// latency limits (tables carry none); `None` when the table does not price it.
pub fn replay_spec(outcomes: &Outcomes, name: &str) -> Option<ModelSpec> {
    let &(input, output) = outcomes.prices.get(name)?;
    Some(ModelSpec {
        name: name.to_owned(),
        provider: "replay".into(),
        input_usd_per_1m: input,
        output_usd_per_1m: output,
        context_window: u32::MAX,
        capabilities: vec![
            Capability::Vision,
            Capability::Tools,
            Capability::JsonOutput,
        ],
        enabled: true,
        latency: LatencyProfile {
            first_token_ms: 0.0,
            output_tokens_per_s: 1.0,
        },
        prior_from: None,
        prior_offset: 0.0,
        upstream_model: None,
        reasoning: false,
        cached_input_usd_per_1m: None,
        cache_write_usd_per_1m: None,
    })
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
        self.prompts
            .iter()
            .enumerate()
            .map(|(k, &p)| {
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
                .map(|d| d.chosen().model.clone())
            })
            .collect()
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
