//! Domain errors of the serving path. Each front door maps them exhaustively to its own
//! status codes (`triage-server`: gRPC, `triage-gateway`: HTTP), with no wildcard arm, so a new
//! variant fails to compile until both doors say what it means.

use triage_core::InvalidRequest;
use triage_encoder::{EncodeError, EncoderError};
use triage_guard::AccessError;
use triage_log::LogError;
use triage_policy::{DecisionError, PolicyError};

/// Why a `Route` or `Feedback` call failed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The request is malformed; the message names the field and the fix.
    #[error("invalid request: {0}")]
    Invalid(#[from] InvalidRequest),
    /// The encoder queue is full: shed load.
    #[error("{0}")]
    Encode(#[from] EncodeError),
    /// Constraints leave no model.
    #[error(transparent)]
    NoEligibleModel(#[from] DecisionError),
    /// The loaded policy cannot score this request (encoder/policy mismatch).
    #[error("policy error: {0}")]
    Policy(#[from] PolicyError),
    /// The decision and feedback log refused or failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Every model the request allows is down.
    #[error("{0}")]
    AllUnavailable(String),
    /// The caller's API key has no budget left for any eligible model.
    #[error("{0}")]
    BudgetExhausted(String),
    /// The caller is not authenticated or not allowed this method.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// A request named a model the catalog does not have (its name, clipped: see
    /// [`RouteError::unknown_model`]).
    #[error("unknown model {0:?}: name a catalog model (see ListModels or GET /v1/models)")]
    UnknownModel(String),
    /// The caller asked for one model by name and the request's constraints exclude it.
    #[error("model {model:?} cannot serve this request: {reason}")]
    ModelExcluded {
        /// The model asked for.
        model: String,
        /// Why it is excluded (the decision's own reason).
        reason: String,
    },
    /// The drafts handed to `Verify` do not fit the request's plan (which draft and why).
    #[error("invalid drafts: {0}")]
    Verify(#[from] triage_policy::verify::VerifyError),
    /// The policy serving now no longer has the plan a request was routed with (it was
    /// reloaded in between).
    #[error(
        "request_id {request_id:?} was planned by policy {policy_version}, which has since been \
         replaced, and the serving policy has no such plan: route the request again"
    )]
    PlanRetired {
        /// The request.
        request_id: String,
        /// The policy that planned it.
        policy_version: String,
    },
    /// The caller's key may not use the model it asked for by name.
    #[error("API key {key:?} may not use model {model:?}; ask for one of its allowed models")]
    ModelNotPermitted {
        /// The key's name.
        key: String,
        /// The model asked for.
        model: String,
    },
}

impl RouteError {
    /// The refusal for a model name the catalog lacks, repeating at most
    /// `triage_core::request::MAX_ECHO_BYTES` of it.
    pub fn unknown_model(name: &str) -> Self {
        RouteError::UnknownModel(triage_core::request::clip(name).into_owned())
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Configuration or catalog problem.
    #[error(transparent)]
    Config(#[from] triage_core::ConfigError),
    /// Encoder could not be loaded.
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    /// Policy could not be loaded.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The policy and the encoder disagree on the embedding width.
    #[error("policy expects {policy}-wide embeddings but the encoder produces {encoder}")]
    DimensionMismatch {
        /// From the policy.
        policy: usize,
        /// From the encoder.
        encoder: usize,
    },
    /// The API key configuration is invalid.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The decision and feedback log could not be opened.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The PostgreSQL store (`log.backend = "postgres"`) could not be reached or prepared.
    #[error(
        "log.backend = \"postgres\": {0} (check log.url / TRIAGE_LOG__URL and that the database runs)"
    )]
    Postgres(#[from] triage_postgres::PgError),
    /// Binding or serving failed.
    #[error("transport: {0}")]
    Transport(String),
}
