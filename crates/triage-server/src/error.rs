//! The one mapping of domain errors to gRPC status codes: exhaustive, with no wildcard arm, so
//! a new error variant does not compile until it says what it means on the wire.

use tonic::{Code, Status};
use triage_encoder::{EncodeError, EncoderError};
use triage_engine::RouteError;
use triage_guard::AccessError;
use triage_log::LogError;
use triage_policy::PolicyError;

/// The gRPC status for `error`.
pub fn status(error: RouteError) -> Status {
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
            PolicyError::Io { .. } | PolicyError::Parse { .. } | PolicyError::Invalid { .. } => {
                Code::Internal
            }
        },
        RouteError::AllUnavailable(_) => Code::Unavailable,
        RouteError::BudgetExhausted(_) => Code::ResourceExhausted,
        RouteError::Access(e) => match e {
            AccessError::Missing | AccessError::Unknown | AccessError::Malformed => {
                Code::Unauthenticated
            }
            AccessError::NotAdmin(_) | AccessError::AnonymousNotAdmin => Code::PermissionDenied,
            AccessError::Config(_) => Code::Internal,
        },
        RouteError::UnknownModel(_) => Code::InvalidArgument,
        RouteError::ModelExcluded { .. } => Code::FailedPrecondition,
        RouteError::ModelNotPermitted { .. } => Code::PermissionDenied,
        RouteError::Verify(_) => Code::InvalidArgument,
        RouteError::PlanRetired { .. } => Code::FailedPrecondition,
        RouteError::Log(e) => match e {
            LogError::UnknownRequest(_) | LogError::ExpiredRequest(..) | LogError::Evicted(..) => {
                Code::NotFound
            }
            LogError::NotYourRequest(_) => Code::PermissionDenied,
            LogError::ConflictingFeedback(_) | LogError::AlreadyVerified(_) => Code::AlreadyExists,
            LogError::NotPlanned(_) => Code::FailedPrecondition,
            LogError::InvalidRecord(_) => Code::InvalidArgument,
            LogError::TooManyReports(..) => Code::FailedPrecondition,
            LogError::Full => Code::ResourceExhausted,
            LogError::WriterStopped(_) | LogError::Unavailable(_) => Code::Unavailable,
            LogError::Io { .. } | LogError::Locked { .. } => Code::Internal,
        },
    };
    if code == Code::Internal {
        tracing::error!(%error, "request failed");
    }
    Status::new(code, error.to_string())
}
