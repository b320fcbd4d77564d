//! The transport-free core of Triage, shared by both front doors (gRPC in `triage-server`, the
//! OpenAI-compatible HTTP gateway in `triage-gateway`), the way text-embeddings-inference's
//! `router/{grpc,http}` sit over one core.
//!
//! - [`RoutingEngine`]: prompt → encoder pool (off the async runtime, bounded) → features →
//!   policy → decision, then exploration, session affinity, pinning a model asked for by name,
//!   and online corrections (`triage_policy::OnlineLearner`). The CLI's `triage route` calls it
//!   in-process.
//! - [`Service`]: the engine with the durable log, API keys and metrics. Every decision and
//!   feedback report goes through it, so both doors log, learn, charge budgets and count alike;
//!   feedback is acknowledged once it is on disk.
//! - [`startup`]: opening and replaying the log, and the background tasks (policy hot reload,
//!   log compaction, `/metrics`).
//! - [`drafts`]: verify then escalate: the drafts a request runs, and the verdict on them.
//! - [`RouteError`]: the domain errors. Each door maps them exhaustively to its own codes.

mod cache;
mod controls;
mod counted;
pub mod drafts;
mod engine;
mod error;
pub mod feedback;
pub mod listener;
pub mod metrics;
mod passes;
mod recent;
mod reload;
mod scrape;
mod service;
pub mod startup;

pub use cache::CacheUse;
pub use controls::{BudgetCap, Controls, Tokens, WorstCase};
pub use drafts::{Direct, PlannedDrafts, Strategy};
pub use engine::{Charge, RouteOutcome, RoutingEngine, RoutingRequest};
pub use error::{RouteError, StartupError};
pub use service::{ModelView, Routed, Service, Verdict};
/// The archive format start-up takes, so that callers need not depend on `triage-log`.
pub use triage_log::ArchiveFormat;
