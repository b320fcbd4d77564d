//! The gRPC front door: `triage.v1.Router` on tonic, with standard health and reflection.
//!
//! A thin adapter over `triage_engine` (the HTTP gateway, `triage_gateway`, is its sibling):
//! - [`serve_grpc`] wires the tonic server: message size limits, `grpc.health.v1`, server
//!   reflection (both `v1` and `v1alpha`, so every generic client finds the schema), TLS,
//!   graceful shutdown with a drain deadline.
//! - `service` holds the RPC handlers. They only convert wire types to domain types
//!   (`convert`) and back, call the engine's [`Service`], and map errors through the one
//!   exhaustive `RouteError` → `Status` function (`error`).
//! - [`serve`] and [`start`] also open the service and its background tasks, for a process
//!   (or a test) that serves gRPC alone.

mod convert;
mod error;
mod serve;
mod service;

pub use error::status;
pub use serve::{ServerHandle, serve, serve_grpc, start};
pub use service::RouterService;
pub use triage_engine::startup::bind_metrics;
/// Re-exported so that callers of [`serve`] and [`start`] need not name `triage-engine`.
pub use triage_engine::{
    ArchiveFormat, RouteError, RouteOutcome, RoutingEngine, RoutingRequest, Service, StartupError,
};
