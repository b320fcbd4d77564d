//! Routing policies: the file format, the per-model predictions, and the decision rule.
//!
//! A policy file ([`PolicyFile`], JSON, versioned) holds, per model, a logistic model of the
//! probability of a good answer and a log-linear model of the answer length, both over the
//! standardised feature vector of `triage_core::features`, optionally blended with the outcomes
//! of the most similar training prompts ([`NeighbourSet`]) and with a classifier shared by all
//! models ([`SharedClassifier`]). [`Policy`] is a validated, loaded file.
//!
//! A [`Familiarity`] curve pulls every prediction toward the model's prompt-blind quality as a
//! prompt gets less like the training prompts, so an unfamiliar prompt routes like the zero router.
//!
//! [`decide`] turns predictions plus the catalog and the caller's preferences into a ranked
//! candidate list: hard constraints first (each exclusion with its reason), then the trade-off
//! (QUALITY, BALANCED, COST margins, or a continuous cost weight λ). Ties are broken by lower
//! cost, then by name, so the same inputs always give the same answer.
//!
//! [`acceptor`] adds verify-then-escalate: which cheap drafts to run for a routing rule, and when
//! the evidence in their texts is strong enough to return one instead of escalating; [`verify`]
//! judges the drafts a caller hands back.
//!
//! [`OnlineLearner`] adapts between retrains: priors for unseen models, bandit exploration with
//! exact propensities, and per-model corrections learned from feedback.

pub mod acceptor;
mod decide;
mod familiarity;
mod file;
mod neighbours;
mod online;
mod shared;
pub mod verify;

pub use acceptor::{Acceptor, CascadeSetting, DraftEvidence, DraftPlan, ModeSettings};
pub use decide::{
    Availability, BALANCED_QUALITY_DROP, COST_QUALITY_DROP, Candidate, Decision, DecisionError,
    Exclusion, ExpectedCall, Rule, decide, decide_with, expected_call,
};
pub use familiarity::{FAMILIARITY_NEIGHBOURS, Familiarity, TrustCurve};
pub use file::{
    DecisionParams, LengthHead, LinearHead, ModelHead, POLICY_FORMAT, POLICY_FORMAT_VERSION,
    Policy, PolicyError, PolicyFile, Prediction, Scores, Standardizer,
};
pub use neighbours::{Local, NeighbourSet, Neighbours};
pub use online::{Draw, OnlineLearner, apply_priors};
pub use shared::SharedClassifier;
