//! Domain errors of the serving path and their one mapping to gRPC status codes.

use tonic::{Code, Status};
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
    /// `ReportHealth` named a model the catalog does not have.
    #[error("unknown model {0:?}: ReportHealth takes a catalog model name (see ListModels)")]
    UnknownModel(String),
}

impl From<RouteError> for Status {
    fn from(error: RouteError) -> Self {
        let code = match &error {
            RouteError::Invalid(_) => Code::InvalidArgument,
            RouteError::Encode(EncodeError::QueueFull { .. } | EncodeError::Overloaded { .. }) => {
                Code::ResourceExhausted
            }
            RouteError::Encode(EncodeError::Stopped) => Code::Unavailable,
            RouteError::Encode(EncodeError::Failed(e)) => match e {
                EncoderError::Tokenize(_) => Code::InvalidArgument,
                EncoderError::Inference(_)
                | EncoderError::Runtime { .. }
                | EncoderError::Model { .. }
                | EncoderError::Tokenizer { .. }
                | EncoderError::CudaNotBuilt => Code::Internal,
            },
            RouteError::NoEligibleModel(_) => Code::FailedPrecondition,
            RouteError::Policy(e) => match e {
                PolicyError::Io { .. }
                | PolicyError::Parse { .. }
                | PolicyError::Invalid { .. } => Code::Internal,
            },
            RouteError::AllUnavailable(_) => Code::Unavailable,
            RouteError::BudgetExhausted(_) => Code::ResourceExhausted,
            RouteError::Access(e) => match e {
                AccessError::Missing | AccessError::Unknown | AccessError::Malformed => {
                    Code::Unauthenticated
                }
                AccessError::NotAdmin(_) => Code::PermissionDenied,
                AccessError::Config(_) => Code::Internal,
            },
            RouteError::UnknownModel(_) => Code::InvalidArgument,
            RouteError::Log(e) => match e {
                LogError::UnknownRequest(_) => Code::NotFound,
                LogError::ConflictingFeedback(_) => Code::AlreadyExists,
                LogError::InvalidRecord(_) => Code::InvalidArgument,
                LogError::Full => Code::ResourceExhausted,
                LogError::WriterStopped(_) => Code::Unavailable,
                LogError::Io { .. } => Code::Internal,
            },
        };
        if code == Code::Internal {
            tracing::error!(%error, "route failed");
        }
        Status::new(code, error.to_string())
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
    /// Binding or serving failed.
    #[error("transport: {0}")]
    Transport(String),
}
