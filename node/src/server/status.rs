//! How failures become gRPC statuses: the right code, and a message a person can act on.

use tonic::Status;

use crate::chat::validate::InvalidInput;
use crate::chat::{Rejection, StateMachineError};
use crate::runtime::ProposeError;

/// The one answer to a failed login, whichever part was wrong (no user enumeration).
pub const LOGIN_FAILED: &str = "unknown username or wrong password";

pub fn invalid(error: InvalidInput) -> Status {
    Status::invalid_argument(error.to_string())
}

pub fn rejection(rejection: Rejection) -> Status {
    let message = rejection.to_string();
    match rejection {
        Rejection::Invalid(_) => Status::invalid_argument(message),
        Rejection::UsernameTaken { .. } | Rejection::UsernameRetired { .. } => Status::already_exists(message),
        Rejection::ClientMsgIdReused { .. } => Status::already_exists(message),
        Rejection::RetryTooOld { .. } => Status::failed_precondition(message),
        Rejection::ClientClockAhead { .. } => Status::invalid_argument(message),
        Rejection::AccountGone => Status::unauthenticated(LOGIN_FAILED),
        Rejection::SessionInvalid => Status::unauthenticated(message),
        Rejection::RecipientNotFound { .. } | Rejection::MessageNotFound { .. } => Status::not_found(message),
        Rejection::MessageAlreadyRead { .. } => Status::failed_precondition(message),
        Rejection::PasswordChanged | Rejection::TokenCollision => Status::aborted(message),
        Rejection::MalformedCommand(_) | Rejection::UnknownCommand => Status::internal(message),
    }
}

pub fn propose_error(error: ProposeError) -> Status {
    // Every ProposeError means "not applied here": the client may retry, here or elsewhere.
    Status::unavailable(error.to_string())
}

pub fn storage(error: StateMachineError) -> Status {
    tracing::error!(%error, "storage failure while serving a read");
    Status::unavailable(format!("storage failure on this node: {error}"))
}

pub fn session_invalid() -> Status {
    rejection(Rejection::SessionInvalid)
}
