//! Offline learning: outcome tables in, a policy file out.
//!
//! `triage train` reads an outcome table with polars ([`table`]), embeds every distinct prompt
//! once through the serving encoder and the shared `triage_core::features` (cached on disk,
//! [`embed`]; [`mod@prepare`] holds the result), chooses every part of the policy's recipe by
//! K-fold cross-validation over the training prompts ([`tune`]): per-model heads fitted with
//! linfa ([`fit`]), shrunk toward a fit pooled over all models ([`pooled`]), a classifier shared
//! by all models ([`shared`]), a neighbourhood of training prompts, which of them route and the
//! BALANCED/COST margins, each scored by replaying decisions through the serving decision rule
//! ([`simulate`], [`score`]). It then fits that [`recipe`] on every training prompt and writes the
//! policy atomically ([`output`]: temporary file, fsync, rename).
//!
//! Training can also learn from usage: [`logdata`] turns the server's decision and feedback log
//! into outcome rows (alone or mixed with a seed table), and [`promote`] only replaces the
//! serving policy when an off-policy ([`offpolicy`]) or held-out estimate says the new one is not
//! worse.

pub mod cascade;
pub mod embed;
pub mod eval;
pub mod familiarity;
pub mod fit;
pub mod logdata;
pub mod offpolicy;
pub mod output;
pub mod pooled;
pub mod prepare;
pub mod promote;
pub mod recipe;
pub mod responses;
pub mod score;
pub mod shared;
pub mod simulate;
pub mod table;
mod train;
pub mod tune;

pub use output::{candidate_path, write_policy_atomically};
pub use prepare::{DEFAULT_JUDGE_WEIGHT, Prepared, TrainOptions, prepare, training_prompts};
pub use recipe::{neighbour_set, prior_policy};
pub use score::{policy_aiq, replay_aiq, zero_router_aiq};
pub use train::{Fitted, TrainReport, fit_policy, train};

/// Why training or evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Bad command-line use.
    #[error("{0}")]
    Usage(String),
    /// The outcome table is missing, malformed or inconsistent.
    #[error("invalid outcome data: {0}")]
    Data(String),
    /// The embedding cache could not be read or written.
    #[error("embedding cache: {0}")]
    Cache(String),
    /// The encoder failed.
    #[error("encoder: {0}")]
    Encoder(String),
    /// A model fit failed.
    #[error("fitting: {0}")]
    Fit(String),
    /// Writing an output (the policy, a plot, exported choices) failed.
    #[error("cannot write {path}: {message}")]
    Write {
        /// Destination.
        path: String,
        /// Cause.
        message: String,
    },
}
