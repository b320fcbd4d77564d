//! Triage's domain: what a routing request *is*, independent of gRPC, ONNX or training.
//!
//! This crate owns
//! - the validated conversation and routing preferences ([`request`]),
//! - what counts as a good answer ([`outcome`]), and what an answer's text commits to ([`answer`]),
//! - the model catalog with prices, context windows and capabilities ([`catalog`]),
//! - the layered configuration (embedded defaults, a TOML file, `TRIAGE_*` environment) ([`config`]),
//! - and the one prompt → feature-vector function, [`features::features`], together with the rule
//!   that picks which tokens the encoder sees ([`features::select_encoder_tokens`]).
//!
//! Serving and training both call [`features::features`], so the two cannot drift apart: a policy
//! records [`features::FEATURE_SCHEMA`] and is rejected when it was trained on another schema.

pub mod answer;
pub mod catalog;
pub mod config;
pub mod features;
pub mod learning;
pub mod outcome;
pub mod request;

pub use catalog::{Capability, Catalog, CatalogError, ModelSpec};
pub use config::{ConfigError, Settings};
pub use features::{EncoderInput, PromptStats};
pub use learning::{JudgeSettings, LearningSettings};
pub use request::{Conversation, InvalidRequest, Message, Mode, Preferences, Role};
