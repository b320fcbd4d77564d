//! The serving path: gRPC `triage.v1.Router` on tonic, with standard health and reflection.
//!
//! Layers, outermost first:
//! - [`serve`] wires the tonic server: message size limits, `grpc.health.v1`, server reflection
//!   (both `v1` and `v1alpha`, so every generic client finds the schema), graceful shutdown.
//! - `service` holds the RPC handlers. They only convert wire types to domain types
//!   (`convert`) and back, and map errors through the one exhaustive [`RouteError`] → `Status`
//!   conversion.
//! - [`RoutingEngine`] does the work, independent of gRPC (the CLI's `triage route` calls it
//!   in-process): prompt → encoder pool (off the async runtime, bounded) → features → policy →
//!   decision, then exploration and online corrections (`triage_policy::OnlineLearner`).
//! - Every decision and feedback report goes to the durable log (`triage_log`); feedback is
//!   acknowledged once it is on disk.
//! - `reload` watches the policy file and swaps a new policy in without a restart; a file that
//!   fails to load is logged and the old policy keeps serving.

mod controls;
mod convert;
mod engine;
mod error;
mod metrics;
mod recent;
mod reload;
mod serve;
mod service;

pub use engine::{RouteOutcome, RoutingEngine, RoutingRequest};
pub use error::{RouteError, StartupError};
pub use serve::{ServerHandle, bind_metrics, serve, start};
pub use service::RouterService;
/// The archive format [`serve`] takes, so that callers need not depend on `triage-log`.
pub use triage_log::ArchiveFormat;
