//! The routing decision: constraints, then the quality/cost trade-off.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;

use triage_core::catalog::{Capability, Catalog, ModelSpec};
use triage_core::request::{Mode, Preferences};

use crate::file::{DecisionParams, Prediction};

/// Why a model cannot serve this request. Checked in this order (`NotPermitted` right after
/// `NotInPolicy`, `Unavailable` last); the first that applies is reported.
#[derive(Clone, Debug, PartialEq)]
pub enum Exclusion {
    /// `enabled = false` in the catalog.
    Disabled,
    /// The loaded policy has no predictions for this model.
    NotInPolicy,
    /// The caller's API key may not use this model.
    NotPermitted {
        /// The key's name.
        key: String,
    },
    /// Not in the request's `allowed_models`.
    NotAllowed,
    /// Lacks a required capability.
    MissingCapability(Capability),
    /// Context window smaller than the conversation or `min_context_tokens`.
    ContextTooSmall {
        /// Tokens needed.
        needed: u32,
        /// The model's window.
        window: u32,
    },
    /// Predicted cost above `max_cost_usd`.
    OverBudget {
        /// Predicted cost, USD.
        cost_usd: f64,
        /// The budget, USD.
        max_cost_usd: f64,
    },
    /// Predicted latency above `max_latency_ms`.
    TooSlow {
        /// Predicted latency, ms.
        latency_ms: f64,
        /// The limit, ms.
        max_latency_ms: u32,
    },
    /// Its circuit breaker is open (or an operator marked it down).
    Unavailable {
        /// Why.
        reason: String,
    },
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::Disabled => write!(f, "disabled in the catalog"),
            Exclusion::NotInPolicy => write!(f, "not covered by the loaded policy"),
            Exclusion::NotPermitted { key } => write!(f, "not permitted for API key {key:?}"),
            Exclusion::Unavailable { reason } => write!(f, "unavailable: {reason}"),
            Exclusion::NotAllowed => write!(f, "not in allowed_models"),
            Exclusion::MissingCapability(c) => write!(f, "lacks capability {}", c.as_str()),
            Exclusion::ContextTooSmall { needed, window } => {
                write!(f, "context too small: needs {needed} tokens, has {window}")
            }
            Exclusion::OverBudget {
                cost_usd,
                max_cost_usd,
            } => {
                write!(
                    f,
                    "over budget: predicted ${cost_usd:.6} > max_cost_usd ${max_cost_usd:.6}"
                )
            }
            Exclusion::TooSlow {
                latency_ms,
                max_latency_ms,
            } => {
                write!(
                    f,
                    "too slow: predicted {latency_ms:.0} ms > max_latency_ms {max_latency_ms}"
                )
            }
        }
    }
}

/// One model's line in the answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Catalog name.
    pub model: String,
    /// Predicted probability of a good answer (0 when the policy does not cover the model).
    pub quality: f64,
    /// Predicted cost of this request, USD.
    pub cost_usd: f64,
    /// Predicted (or caller-given) output tokens.
    pub output_tokens: f64,
    /// Predicted latency, ms.
    pub latency_ms: f64,
    /// `None` when eligible.
    pub exclusion: Option<Exclusion>,
}

/// What the built-in modes give up: BALANCED keeps mean out-of-fold quality within this of
/// QUALITY mode's, and training chooses each mode's margin (and the acceptor's setting for the
/// mode) as the cheapest that does.
pub const BALANCED_QUALITY_DROP: f64 = 0.01;
/// What COST mode gives up, in the same sense as [`BALANCED_QUALITY_DROP`].
pub const COST_QUALITY_DROP: f64 = 0.05;

/// The trade-off between quality and cost a decision applies: a built-in mode or a cost
/// weight λ. The one definition of the routing knob: the server decides with it, the decision
/// log stores it by [`Rule::name`] and [`Rule::cost_weight`], and training replays it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// A built-in mode.
    Mode(Mode),
    /// A caller-given cost weight λ, in quality points per USD.
    CostWeight(f64),
}

impl Rule {
    /// The rule `prefs` ask for: their cost weight when given, else their mode.
    pub fn of(prefs: &Preferences) -> Rule {
        match prefs.cost_weight {
            Some(lambda) => Rule::CostWeight(lambda),
            None => Rule::Mode(prefs.mode),
        }
    }

    /// Its name in the decision log and metrics: `quality`, `balanced`, `cost` or `lambda`.
    pub fn name(&self) -> &'static str {
        match self {
            Rule::Mode(Mode::Quality) => "quality",
            Rule::Mode(Mode::Balanced) => "balanced",
            Rule::Mode(Mode::Cost) => "cost",
            Rule::CostWeight(_) => "lambda",
        }
    }

    /// λ of a cost-weight rule.
    pub fn cost_weight(&self) -> Option<f64> {
        match self {
            Rule::CostWeight(lambda) => Some(*lambda),
            Rule::Mode(_) => None,
        }
    }

    /// Back from a logged [`Rule::name`] and λ. A name this version does not know (or
    /// `lambda` without λ) reads as BALANCED, the default mode.
    pub fn from_logged(name: &str, cost_weight: Option<f64>) -> Rule {
        match (name, cost_weight) {
            ("lambda", Some(lambda)) => Rule::CostWeight(lambda),
            ("quality", _) => Rule::Mode(Mode::Quality),
            ("cost", _) => Rule::Mode(Mode::Cost),
            _ => Rule::Mode(Mode::Balanced),
        }
    }

    /// Preferences that express this rule, restricted to `allowed` models.
    pub fn preferences(&self, allowed: Vec<String>) -> Preferences {
        Preferences {
            mode: match self {
                Rule::Mode(mode) => *mode,
                Rule::CostWeight(_) => Mode::default(),
            },
            cost_weight: self.cost_weight(),
            allowed_models: allowed,
            ..Default::default()
        }
    }

    /// Label in reports and exported choices: `mode=balanced`, `lambda=2.5`.
    pub fn label(&self) -> String {
        match self {
            Rule::Mode(m) => format!("mode={m}"),
            Rule::CostWeight(w) => format!("lambda={w}"),
        }
    }
}

/// A routing decision: the winner is `candidates[0]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Eligible models ranked best first, then excluded ones (by predicted quality).
    pub candidates: Vec<Candidate>,
    /// The rule applied.
    pub rule: Rule,
    /// One sentence on why the winner won.
    pub explanation: String,
}

impl Decision {
    /// The chosen model.
    pub fn chosen(&self) -> &Candidate {
        &self.candidates[0]
    }
}

/// No model passes the hard constraints.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("no model satisfies the request's constraints: {summary}")]
pub struct DecisionError {
    /// Every model with its exclusion reason.
    pub exclusions: Vec<(String, Exclusion)>,
    /// Readable summary naming each constraint and what it excluded.
    pub summary: String,
}

/// What the serving side knows beyond the request: which models the caller may use and which are
/// down. Offline replays use [`Availability::ALL`].
#[derive(Clone, Copy)]
pub struct Availability<'a> {
    /// `Some(key name)` when the caller's key may not use the model.
    pub not_permitted: &'a dyn Fn(&str) -> Option<String>,
    /// `Some(reason)` when the model is down.
    pub down: &'a dyn Fn(&str) -> Option<String>,
}

impl Availability<'static> {
    /// Every model permitted and up.
    pub const ALL: Availability<'static> = Availability {
        not_permitted: &|_| None,
        down: &|_| None,
    };
}

/// Scores every catalog model and picks one.
///
/// `predictions` maps model name to the policy's prediction; `input_tokens` is the conversation's
/// estimated size.
pub fn decide(
    catalog: &Catalog,
    predictions: &HashMap<&str, Prediction>,
    params: &DecisionParams,
    prefs: &Preferences,
    input_tokens: u32,
) -> Result<Decision, DecisionError> {
    decide_with(
        catalog,
        predictions,
        params,
        prefs,
        input_tokens,
        Availability::ALL,
    )
}

/// What one call to a model is expected to produce, cost and take.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExpectedCall {
    /// Answer length: the request's `expected_output_tokens`, else the prediction's, else 0.
    pub output_tokens: f64,
    /// Its cost at the catalog's prices, USD.
    pub cost_usd: f64,
    /// Its latency by the catalog's latency model, ms.
    pub latency_ms: f64,
}

/// The expected call to `spec` for a prompt of `input_tokens` under `prefs`, with the policy's
/// `prediction` for it (if any): how every candidate is priced.
pub fn expected_call(
    spec: &ModelSpec,
    prediction: Option<&Prediction>,
    prefs: &Preferences,
    input_tokens: u32,
) -> ExpectedCall {
    let output_tokens = match (prefs.expected_output_tokens, prediction) {
        (Some(t), _) => f64::from(t),
        (None, Some(p)) => p.output_tokens,
        (None, None) => 0.0,
    };
    ExpectedCall {
        output_tokens,
        cost_usd: spec.cost_usd(f64::from(input_tokens), output_tokens),
        latency_ms: spec.latency_ms(output_tokens),
    }
}

/// [`decide`], with API-key permissions and model health as further exclusions.
pub fn decide_with(
    catalog: &Catalog,
    predictions: &HashMap<&str, Prediction>,
    params: &DecisionParams,
    prefs: &Preferences,
    input_tokens: u32,
    availability: Availability<'_>,
) -> Result<Decision, DecisionError> {
    let mut eligible = Vec::new();
    let mut excluded = Vec::new();
    for spec in catalog.models() {
        let prediction = predictions.get(spec.name.as_str());
        let ExpectedCall {
            output_tokens,
            cost_usd,
            latency_ms,
        } = expected_call(spec, prediction, prefs, input_tokens);
        let exclusion = exclusion(
            spec,
            prediction.is_some(),
            prefs,
            input_tokens,
            cost_usd,
            latency_ms,
            availability,
        );
        let candidate = Candidate {
            model: spec.name.clone(),
            quality: prediction.map_or(0.0, |p| p.quality),
            cost_usd,
            output_tokens,
            latency_ms,
            exclusion,
        };
        if candidate.exclusion.is_some() {
            excluded.push(candidate);
        } else {
            eligible.push(candidate);
        }
    }

    if eligible.is_empty() {
        return Err(no_eligible(excluded));
    }

    let rule = Rule::of(prefs);
    let explanation = rank(&mut eligible, &rule, params);
    excluded.sort_by(by_quality_then_cost);
    eligible.extend(excluded);
    Ok(Decision {
        candidates: eligible,
        rule,
        explanation,
    })
}

/// The first hard constraint `spec` fails, in the order documented on [`Exclusion`].
fn exclusion(
    spec: &ModelSpec,
    scored: bool,
    prefs: &Preferences,
    input_tokens: u32,
    cost_usd: f64,
    latency_ms: f64,
    availability: Availability<'_>,
) -> Option<Exclusion> {
    if !spec.enabled {
        return Some(Exclusion::Disabled);
    }
    if !scored {
        return Some(Exclusion::NotInPolicy);
    }
    if let Some(key) = (availability.not_permitted)(&spec.name) {
        return Some(Exclusion::NotPermitted { key });
    }
    if !prefs.allowed_models.is_empty() && !prefs.allowed_models.contains(&spec.name) {
        return Some(Exclusion::NotAllowed);
    }
    if let Some(c) = prefs.required_capabilities.iter().find(|c| !spec.has(**c)) {
        return Some(Exclusion::MissingCapability(*c));
    }
    let needed = prefs.min_context_tokens.unwrap_or(0).max(input_tokens);
    if spec.context_window < needed {
        return Some(Exclusion::ContextTooSmall {
            needed,
            window: spec.context_window,
        });
    }
    if let Some(max_cost_usd) = prefs.max_cost_usd.filter(|max| cost_usd > *max) {
        return Some(Exclusion::OverBudget {
            cost_usd,
            max_cost_usd,
        });
    }
    if let Some(max_latency_ms) = prefs
        .max_latency_ms
        .filter(|max| latency_ms > f64::from(*max))
    {
        return Some(Exclusion::TooSlow {
            latency_ms,
            max_latency_ms,
        });
    }
    (availability.down)(&spec.name).map(|reason| Exclusion::Unavailable { reason })
}

fn by_quality_then_cost(a: &Candidate, b: &Candidate) -> Ordering {
    b.quality
        .total_cmp(&a.quality)
        .then(a.cost_usd.total_cmp(&b.cost_usd))
        .then_with(|| a.model.cmp(&b.model))
}

fn by_cost_then_quality(a: &Candidate, b: &Candidate) -> Ordering {
    a.cost_usd
        .total_cmp(&b.cost_usd)
        .then(b.quality.total_cmp(&a.quality))
        .then_with(|| a.model.cmp(&b.model))
}

/// Sorts eligible candidates best first and explains the winner.
fn rank(eligible: &mut [Candidate], rule: &Rule, params: &DecisionParams) -> String {
    let best_quality = eligible
        .iter()
        .map(|c| c.quality)
        .fold(f64::NEG_INFINITY, f64::max);
    let margin = match rule {
        Rule::Mode(Mode::Quality) => {
            eligible.sort_by(by_quality_then_cost);
            return format!("quality: highest predicted quality ({best_quality:.3})");
        }
        Rule::CostWeight(lambda) => {
            let lambda = *lambda;
            let utility = |c: &Candidate| c.quality - lambda * c.cost_usd;
            eligible.sort_by(|a, b| {
                utility(b)
                    .total_cmp(&utility(a))
                    .then_with(|| by_cost_then_quality(a, b))
            });
            let top = utility(&eligible[0]);
            return format!(
                "cost weight {lambda}: maximises quality - {lambda} x cost_usd ({top:.4})"
            );
        }
        Rule::Mode(Mode::Balanced) => params.balanced_margin,
        Rule::Mode(Mode::Cost) => params.cost_margin,
    };
    // The margin comparison tolerates float noise so "exactly at the margin" counts as inside.
    let floor = best_quality - margin - 1e-12;
    eligible.sort_by(|a, b| {
        let (a_in, b_in) = (a.quality >= floor, b.quality >= floor);
        b_in.cmp(&a_in).then_with(|| {
            if a_in {
                by_cost_then_quality(a, b)
            } else {
                by_quality_then_cost(a, b)
            }
        })
    });
    let name = if matches!(rule, Rule::Mode(Mode::Balanced)) {
        "balanced"
    } else {
        "cost"
    };
    format!(
        "{name}: cheapest model within {margin:.3} of the best predicted quality ({best_quality:.3})"
    )
}

fn no_eligible(excluded: Vec<Candidate>) -> DecisionError {
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    // The models a key may not use are counted, never named: the key learns nothing of the
    // rest of the catalog.
    let mut not_permitted: Option<(&str, usize)> = None;
    for c in &excluded {
        let Some(reason) = &c.exclusion else { continue };
        let key = match reason {
            Exclusion::Disabled => "disabled in the catalog".to_owned(),
            Exclusion::NotInPolicy => "not covered by the policy".to_owned(),
            Exclusion::NotPermitted { key } => {
                not_permitted.get_or_insert((key.as_str(), 0)).1 += 1;
                continue;
            }
            Exclusion::Unavailable { .. } => "unavailable (circuit open or marked down)".to_owned(),
            Exclusion::NotAllowed => "excluded by allowed_models".to_owned(),
            Exclusion::MissingCapability(cap) => {
                format!(
                    "excluded by required_capabilities ({} missing)",
                    cap.as_str()
                )
            }
            Exclusion::ContextTooSmall { needed, .. } => {
                format!("context window below {needed} tokens")
            }
            Exclusion::OverBudget { max_cost_usd, .. } => {
                format!("over max_cost_usd ${max_cost_usd}")
            }
            Exclusion::TooSlow { max_latency_ms, .. } => {
                format!("slower than max_latency_ms {max_latency_ms}")
            }
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, models)) => models.push(&c.model),
            None => groups.push((key, vec![&c.model])),
        }
    }
    let mut said: Vec<String> = groups
        .iter()
        .map(|(key, models)| format!("{key}: {}", models.join(", ")))
        .collect();
    if let Some((key, n)) = not_permitted {
        said.push(format!("{n} more not permitted for API key {key:?}"));
    }
    let summary = said.join("; ");
    DecisionError {
        summary: format!("{summary}. Relax these constraints or enable more models."),
        exclusions: excluded
            .into_iter()
            .filter_map(|c| c.exclusion.map(|e| (c.model, e)))
            .collect(),
    }
}
