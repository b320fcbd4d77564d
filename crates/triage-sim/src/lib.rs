//! `triage simulate`: the proof that Triage learns from usage.
//!
//! An outcome table is replayed as live traffic against a real server over gRPC: each prompt is
//! routed, the outcome of the model the server chose is looked up in the table and sent back as
//! `Feedback`, and every `retrain_every` requests the policy is retrained from the server's log
//! (optionally mixed with a seed table) through the same promotion gate as `triage train`. The
//! server picks the new policy up by hot reload. Each round reports mean quality, mean cost, each
//! model's share of traffic, and (when an evaluation split is given) the serving policy's AIQ on
//! it, computed offline exactly as `triage eval` does.
//!
//! Scenarios are set up by the options: a prior-only starting policy (cold start), a catalog
//! model the starting policy has never seen (new model), degraded outcomes for one model from
//! some request on (drift), and a domain shift (the start knows some tasks of the table, the
//! traffic comes from the others). A simulated judge ([`Judge`]) makes the quality signal what a
//! running Triage gets without callers' scores: a sampled share of requests, some verdicts
//! wrong, each costed at a catalog model's prices.

mod plot;
mod run;
mod shift;

pub use plot::write_svg;
pub use run::{
    CurvePoint, Drift, Judge, RUBRIC_TOKENS, Round, SimOptions, SimReport, Start, VERDICT_TOKENS,
    simulate,
};

/// Why a simulation failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Bad options.
    #[error("{0}")]
    Usage(String),
    /// Training or the table failed.
    #[error(transparent)]
    Train(#[from] triage_train::TrainError),
    /// The server failed to start or answer.
    #[error("server: {0}")]
    Server(String),
    /// Writing an output failed.
    #[error("writing {path}: {message}")]
    Write {
        /// Destination.
        path: String,
        /// Cause.
        message: String,
    },
}
