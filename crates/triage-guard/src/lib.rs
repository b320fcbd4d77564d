//! Production controls around the routing decision, independent of gRPC.
//!
//! - [`health`]: one circuit breaker per model, driven by the error kinds callers report through
//!   `Feedback` and by operator overrides: closed → open after a failure rate over a sliding
//!   window (or at once for a rate limit with retry-after) → half-open probes → closed.
//! - [`access`]: API keys, stored only as SHA-256 hashes, each with the models it may use and
//!   optional daily and monthly spend limits.
//! - [`ledger`]: spend per key and overall per UTC day and month, charged with the predicted cost
//!   at route time and settled with the reported cost at feedback time.
//! - [`alerts`]: spend thresholds that fire once per period.
//!
//! Everything takes the current time as an argument, so behaviour over time is testable without
//! sleeping, and the server passes the real clock.

pub mod access;
pub mod alerts;
pub mod bounded;
pub mod health;
pub mod ledger;

pub use access::{AccessControl, AccessError, AuthSettings, Caller, KeySpec, hash_key};
pub use alerts::{AlertSpec, Alerts, FiredAlert, Period};
pub use bounded::BoundedMap;
pub use health::{BreakerSettings, BreakerState, FailureKind, HealthBoard, Override};
pub use ledger::{Ledger, Limits, Spend};
