//! How failures become gRPC statuses: the right code, and a message a person can act on.

use std::collections::BTreeMap;

use tonic::Status;

use crate::chat::validate::InvalidInput;
use crate::chat::{Rejection, StateMachineError};
use crate::replication::NodeId;
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

/// Metadata keys of an UNAVAILABLE answer from a node that is not the leader.
pub const LEADER_ID_KEY: &str = "chorus-leader-id";
pub const LEADER_ADDRESS_KEY: &str = "chorus-leader-address";

/// Where to find each member's chat API, for leader hints.
#[derive(Debug, Clone, Default)]
pub struct LeaderHints {
    client_addresses: BTreeMap<NodeId, String>,
}

impl LeaderHints {
    pub fn new(client_addresses: BTreeMap<NodeId, String>) -> Self {
        Self { client_addresses }
    }

    /// Every ProposeError means "not applied here": the client may retry, here or
    /// elsewhere. A node that knows the leader says which, and where, in the metadata.
    pub fn propose_error(&self, error: ProposeError) -> Status {
        let leader = match &error {
            ProposeError::NotLeader { leader } => *leader,
            _ => None,
        };
        let Some(leader) = leader else { return Status::unavailable(error.to_string()) };
        let address = self.client_addresses.get(&leader).cloned().unwrap_or_default();
        let mut status = Status::unavailable(format!("this node is not the leader; node {leader} is, at {address}"));
        let metadata = status.metadata_mut();
        if let Ok(value) = leader.to_string().parse() {
            metadata.insert(LEADER_ID_KEY, value);
        }
        if let Ok(value) = address.parse() {
            metadata.insert(LEADER_ADDRESS_KEY, value);
        }
        status
    }
}

pub fn storage(error: StateMachineError) -> Status {
    tracing::error!(%error, "storage failure while serving a read");
    Status::unavailable(format!("storage failure on this node: {error}"))
}

pub fn session_invalid() -> Status {
    rejection(Rejection::SessionInvalid)
}
