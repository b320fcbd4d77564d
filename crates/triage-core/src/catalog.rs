//! The model catalog: what each model costs, how much context it takes, what it can do.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// Something a request may require of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Accepts images in the conversation.
    Vision,
    /// Supports tool / function calling.
    Tools,
    /// Has a mode that guarantees syntactically valid JSON output.
    JsonOutput,
}

impl Capability {
    /// The name used in config files and error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Vision => "vision",
            Capability::Tools => "tools",
            Capability::JsonOutput => "json_output",
        }
    }
}

/// Rough serving speed, used to predict latency for `max_latency_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyProfile {
    /// Typical time to first token, milliseconds.
    pub first_token_ms: f64,
    /// Typical decoding speed, output tokens per second.
    pub output_tokens_per_s: f64,
}

/// One model of the catalog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The name clients use and the policy is keyed by.
    pub name: String,
    /// Who serves it: the name of a `[[providers]]` entry, through which the HTTP gateway calls
    /// it (without a matching entry the model is still routable over gRPC).
    pub provider: String,
    /// The provider's own name for the model (default: `name`).
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// List price in USD per one million input tokens.
    pub input_usd_per_1m: f64,
    /// List price in USD per one million output tokens.
    pub output_usd_per_1m: f64,
    /// Price of input tokens read from the provider's prompt cache, USD per 1M (default: the
    /// input price).
    #[serde(default)]
    pub cached_input_usd_per_1m: Option<f64>,
    /// Price of input tokens written to the prompt cache (Anthropic's cache writes), USD per
    /// 1M (default: the input price).
    #[serde(default)]
    pub cache_write_usd_per_1m: Option<f64>,
    /// Context window in tokens (input plus output).
    pub context_window: u32,
    /// What the model can do beyond plain text chat.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Disabled models stay listed but are never chosen.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Serving speed used for latency predictions.
    pub latency: LatencyProfile,
    /// For a model the policy has no data on: borrow this known model's predictions.
    #[serde(default)]
    pub prior_from: Option<String>,
    /// Added to the borrowed quality in log-odds (e.g. -0.5: somewhat worse than `prior_from`).
    #[serde(default)]
    pub prior_offset: f64,
    /// A reasoning model (o-series, GPT-5, Claude with extended thinking, DeepSeek R1): the
    /// gateway sends it the parameters its provider accepts for one (its answer limit as
    /// `max_completion_tokens`, no sampling settings, `reasoning_effort`), and strips
    /// `reasoning_effort` from requests to other models.
    #[serde(default)]
    pub reasoning: bool,
}

fn enabled_by_default() -> bool {
    true
}

impl ModelSpec {
    /// The name the provider knows the model by.
    pub fn upstream_name(&self) -> &str {
        self.upstream_model.as_deref().unwrap_or(&self.name)
    }

    /// USD cost of a request with these token counts at this model's list prices.
    pub fn cost_usd(&self, input_tokens: f64, output_tokens: f64) -> f64 {
        self.cost_with_cache(input_tokens, 0.0, 0.0, output_tokens)
    }

    /// The cost of a call whose `input_tokens` (all of them) include `cached` read from the
    /// prompt cache and `written` to it: the one price formula, which [`Self::cost_usd`] is
    /// with no cache.
    pub fn cost_with_cache(
        &self,
        input_tokens: f64,
        cached: f64,
        written: f64,
        output_tokens: f64,
    ) -> f64 {
        let fresh = (input_tokens - cached - written).max(0.0);
        let read = self
            .cached_input_usd_per_1m
            .unwrap_or(self.input_usd_per_1m);
        let write = self.cache_write_usd_per_1m.unwrap_or(self.input_usd_per_1m);
        (fresh * self.input_usd_per_1m
            + cached * read
            + written * write
            + output_tokens * self.output_usd_per_1m)
            / 1e6
    }

    /// Predicted end-to-end latency in milliseconds for an answer of `output_tokens`.
    pub fn latency_ms(&self, output_tokens: f64) -> f64 {
        self.latency.first_token_ms + 1000.0 * output_tokens / self.latency.output_tokens_per_s
    }

    /// Whether the model has `capability`.
    pub fn has(&self, capability: Capability) -> bool {
        self.capabilities.contains(&capability)
    }
}

/// A catalog entry that cannot be used, and why.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CatalogError {
    /// The catalog lists no model at all.
    #[error("the catalog has no models: add at least one [[models]] entry")]
    Empty,
    /// A model has an empty name.
    #[error("models[{index}]: `name` is empty")]
    EmptyName {
        /// Position in the catalog.
        index: usize,
    },
    /// `prior_from` names no model of the catalog, or the model itself.
    #[error("model `{model}`: prior_from = {prior_from:?} must name another model of the catalog")]
    BadPrior {
        /// The model.
        model: String,
        /// What it named.
        prior_from: String,
    },
    /// Two entries share a name.
    #[error("model `{0}` is listed twice: model names must be unique")]
    Duplicate(String),
    /// A number is negative, NaN or infinite where it must not be.
    #[error("model `{model}`: `{field}` is {value}; it must be a finite number {rule}")]
    BadNumber {
        /// The model.
        model: String,
        /// The offending field.
        field: &'static str,
        /// Its value.
        value: f64,
        /// What it must be.
        rule: &'static str,
    },
}

/// The models the server may route to, in configuration order.
#[derive(Clone, Debug, PartialEq)]
pub struct Catalog {
    models: Vec<ModelSpec>,
}

impl Catalog {
    /// Validates the entries: unique non-empty names, finite non-negative prices, positive
    /// context windows and speeds.
    pub fn new(models: Vec<ModelSpec>) -> Result<Self, CatalogError> {
        if models.is_empty() {
            return Err(CatalogError::Empty);
        }
        let mut seen = HashSet::new();
        for (index, m) in models.iter().enumerate() {
            if m.name.trim().is_empty() {
                return Err(CatalogError::EmptyName { index });
            }
            if !seen.insert(m.name.as_str()) {
                return Err(CatalogError::Duplicate(m.name.clone()));
            }
            let bad = |field, value: f64, rule| CatalogError::BadNumber {
                model: m.name.clone(),
                field,
                value,
                rule,
            };
            for (field, value) in [
                ("input_usd_per_1m", m.input_usd_per_1m),
                ("output_usd_per_1m", m.output_usd_per_1m),
                (
                    "cached_input_usd_per_1m",
                    m.cached_input_usd_per_1m.unwrap_or(0.0),
                ),
                (
                    "cache_write_usd_per_1m",
                    m.cache_write_usd_per_1m.unwrap_or(0.0),
                ),
                ("latency.first_token_ms", m.latency.first_token_ms),
            ] {
                if !value.is_finite() || value < 0.0 {
                    return Err(bad(field, value, ">= 0"));
                }
            }
            let tps = m.latency.output_tokens_per_s;
            if !tps.is_finite() || tps <= 0.0 {
                return Err(bad("latency.output_tokens_per_s", tps, "> 0"));
            }
            if m.context_window == 0 {
                return Err(bad("context_window", 0.0, "> 0"));
            }
            if !m.prior_offset.is_finite() {
                return Err(bad("prior_offset", m.prior_offset, "(log-odds)"));
            }
        }
        for m in &models {
            if let Some(from) = &m.prior_from
                && (from == &m.name || !models.iter().any(|o| &o.name == from))
            {
                return Err(CatalogError::BadPrior {
                    model: m.name.clone(),
                    prior_from: from.clone(),
                });
            }
        }
        Ok(Self { models })
    }

    /// All models, enabled or not, in configuration order.
    pub fn models(&self) -> &[ModelSpec] {
        &self.models
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> ModelSpec {
        ModelSpec {
            name: name.into(),
            provider: "p".into(),
            input_usd_per_1m: 1.0,
            output_usd_per_1m: 2.0,
            context_window: 1000,
            capabilities: vec![Capability::Tools],
            enabled: true,
            latency: LatencyProfile {
                first_token_ms: 100.0,
                output_tokens_per_s: 50.0,
            },
            prior_from: None,
            prior_offset: 0.0,
            upstream_model: None,
            reasoning: false,
            cached_input_usd_per_1m: None,
            cache_write_usd_per_1m: None,
        }
    }

    #[test]
    fn cost_and_latency_follow_prices_and_speed() {
        let m = spec("a");
        assert!((m.cost_usd(1000.0, 500.0) - 0.002).abs() < 1e-12);
        assert!((m.latency_ms(100.0) - 2100.0).abs() < 1e-9);
    }

    #[test]
    fn rejects_duplicates_empty_names_and_bad_numbers() {
        assert_eq!(Catalog::new(vec![]), Err(CatalogError::Empty));
        assert_eq!(
            Catalog::new(vec![spec("a"), spec("a")]),
            Err(CatalogError::Duplicate("a".into()))
        );
        assert_eq!(
            Catalog::new(vec![spec(" ")]),
            Err(CatalogError::EmptyName { index: 0 })
        );
        let mut nan = spec("n");
        nan.input_usd_per_1m = f64::NAN;
        let err = Catalog::new(vec![nan])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("input_usd_per_1m"), "{err}");
        let mut slow = spec("s");
        slow.latency.output_tokens_per_s = 0.0;
        assert!(Catalog::new(vec![slow]).is_err());
    }
}
