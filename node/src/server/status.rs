//! How failures become gRPC statuses: the right code, a message a person can act on, and a
//! `google.rpc.ErrorInfo` whose reason (`chorus_proto::wire`) a program can act on.

use std::collections::BTreeMap;
use std::time::Duration;

use chorus_proto::wire;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::chat::validate::InvalidInput;
use crate::chat::{Rejection, StateMachineError};
use crate::replication::NodeId;
use crate::runtime::{ProposeError, ReadError};

/// The one answer to a failed login, whichever part was wrong (no user enumeration).
pub const LOGIN_FAILED: &str = "unknown username or wrong password";

/// How long a client should wait before retrying what was certainly not applied: about an
/// election's worth of heartbeats, so that a retry usually finds the new leader.
const RETRY_NOT_APPLIED: Duration = Duration::from_millis(100);
/// How long a client should wait before retrying on a busy node.
pub const RETRY_OVERLOADED: Duration = Duration::from_millis(250);

/// A status with a Chorus `ErrorInfo` (and `RetryInfo`, when a retry is worth it).
pub fn error(code: Code, reason: &str, message: impl Into<String>) -> Status {
    with_details(code, reason, message, BTreeMap::new(), None)
}

fn with_details(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    metadata: BTreeMap<&str, String>,
    retry_after: Option<Duration>,
) -> Status {
    // tonic-types wants a HashMap; its order only affects the bytes of the trailer, which
    // nothing in a node reads back.
    let metadata: std::collections::HashMap<String, String> =
        metadata.into_iter().map(|(key, value)| (key.to_owned(), value)).collect();
    let mut details = ErrorDetails::with_error_info(reason, wire::ERROR_DOMAIN, metadata);
    if let Some(delay) = retry_after {
        details.set_retry_info(Some(delay));
    }
    Status::with_error_details(code, message, details)
}

pub fn invalid(error: InvalidInput) -> Status {
    self::error(Code::InvalidArgument, wire::INVALID_INPUT, error.to_string())
}

pub fn rejection(rejection: Rejection) -> Status {
    let message = rejection.to_string();
    let (code, reason) = match &rejection {
        Rejection::Invalid(_) => (Code::InvalidArgument, wire::INVALID_INPUT),
        Rejection::UsernameTaken { .. } | Rejection::UsernameRetired { .. } => {
            (Code::AlreadyExists, wire::USERNAME_TAKEN)
        }
        Rejection::SequenceReused { message_id, .. } => {
            let metadata = BTreeMap::from([(wire::MESSAGE_ID, message_id.to_string())]);
            return with_details(Code::AlreadyExists, wire::SEQUENCE_REUSED, message, metadata, None);
        }
        Rejection::SequenceAcknowledged { .. } => (Code::FailedPrecondition, wire::SEQUENCE_ACKNOWLEDGED),
        Rejection::TooManyUnacknowledgedSends { .. } => (Code::ResourceExhausted, wire::UNACKNOWLEDGED_SENDS_LIMIT),
        Rejection::AccountGone => return self::error(Code::Unauthenticated, wire::LOGIN_FAILED, LOGIN_FAILED),
        Rejection::SessionInvalid => (Code::Unauthenticated, wire::SESSION_INVALID),
        Rejection::RecipientNotFound { .. } | Rejection::MessageNotFound { .. } => (Code::NotFound, wire::NOT_FOUND),
        Rejection::MessageAlreadyRead { .. } => (Code::FailedPrecondition, wire::MESSAGE_ALREADY_READ),
        Rejection::PasswordChanged | Rejection::TokenCollision => (Code::Aborted, wire::CONFLICT),
        Rejection::MalformedCommand(_) | Rejection::UnknownCommand => (Code::Internal, wire::INTERNAL),
    };
    self::error(code, reason, message)
}

/// Where to find each member's chat API, for leader hints.
#[derive(Debug, Clone, Default)]
pub struct LeaderHints {
    client_addresses: BTreeMap<NodeId, String>,
}

impl LeaderHints {
    pub fn new(client_addresses: BTreeMap<NodeId, String>) -> Self {
        Self { client_addresses }
    }

    /// The status for a proposal or read that did not go through: whether it may have
    /// taken effect decides the reason; a node that knows the leader says which, and where.
    pub fn propose_error(&self, error: ProposeError) -> Status {
        let message = error.to_string();
        match error {
            ProposeError::NotLeader { leader: Some(leader) } => {
                let address = self.client_addresses.get(&leader).cloned().unwrap_or_default();
                let message = format!("this node is not the leader; node {leader} is, at {address}");
                let metadata = BTreeMap::from([(wire::LEADER_ID, leader.to_string()), (wire::LEADER_ADDRESS, address)]);
                with_details(Code::Unavailable, wire::NOT_LEADER, message, metadata, None)
            }
            ProposeError::NotLeader { leader: None } => with_details(
                Code::Unavailable,
                wire::NOT_LEADER,
                "this node knows of no leader (an election may be under way); retry",
                BTreeMap::new(),
                Some(RETRY_NOT_APPLIED),
            ),
            ProposeError::TransferInProgress
            | ProposeError::Superseded
            | ProposeError::ReadUnconfirmed(_)
            | ProposeError::Quarantined(_) => not_applied(message),
            ProposeError::Overloaded => overloaded(message),
            ProposeError::OutcomeUnknown(_) => self::error(Code::Unavailable, wire::OUTCOME_UNKNOWN, message),
            ProposeError::ShuttingDown => self::error(Code::Unavailable, wire::SHUTTING_DOWN, message),
        }
    }
}

/// RESOURCE_EXHAUSTED: the node is too busy for this now; nothing was applied.
/// UNAVAILABLE, NOT_APPLIED: this node did not do it, and another may (a quarantined
/// node's refusal, the end of its streams).
pub fn not_applied(message: impl Into<String>) -> Status {
    with_details(Code::Unavailable, wire::NOT_APPLIED, message, BTreeMap::new(), Some(RETRY_NOT_APPLIED))
}

pub fn overloaded(message: impl Into<String>) -> Status {
    with_details(Code::ResourceExhausted, wire::OVERLOADED, message, BTreeMap::new(), Some(RETRY_OVERLOADED))
}

/// A request over one of the `[limits]`: `what` says which, for a person.
pub fn rate_limited(what: &str, retry_after: Duration) -> Status {
    let seconds = retry_after.as_millis().div_ceil(1000).max(1);
    with_details(
        Code::ResourceExhausted,
        wire::RATE_LIMITED,
        format!("too many {what} on this node: retry in {seconds} s"),
        BTreeMap::new(),
        Some(retry_after),
    )
}

pub fn storage(error: StateMachineError) -> Status {
    tracing::error!(%error, "storage failure while serving a read");
    self::error(Code::Unavailable, wire::STORAGE_FAILURE, format!("storage failure on this node: {error}"))
}

/// A client query that did not run: too many waiting (OVERLOADED), or a storage failure.
pub fn read(error: ReadError) -> Status {
    match error {
        ReadError::Busy(busy) => overloaded(format!("{busy}; retry shortly")),
        ReadError::Storage(error) => storage(error),
    }
}

pub fn session_invalid() -> Status {
    rejection(Rejection::SessionInvalid)
}

pub fn login_failed() -> Status {
    self::error(Code::Unauthenticated, wire::LOGIN_FAILED, LOGIN_FAILED)
}

pub fn internal(message: impl Into<String>) -> Status {
    self::error(Code::Internal, wire::INTERNAL, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rejection and every propose error carries an ErrorInfo with a documented reason.
    #[test]
    fn every_error_names_a_documented_reason() {
        let hints = LeaderHints::new(BTreeMap::from([(2, "10.0.0.2:7001".to_owned())]));
        let statuses = [
            hints.propose_error(ProposeError::NotLeader { leader: Some(2) }),
            hints.propose_error(ProposeError::NotLeader { leader: None }),
            hints.propose_error(ProposeError::TransferInProgress),
            hints.propose_error(ProposeError::Overloaded),
            hints.propose_error(ProposeError::Superseded),
            hints.propose_error(ProposeError::ReadUnconfirmed("x".into())),
            hints.propose_error(ProposeError::OutcomeUnknown("x".into())),
            hints.propose_error(ProposeError::ShuttingDown),
            hints.propose_error(ProposeError::Quarantined("x".into())),
            rejection(Rejection::SequenceReused { sequence: 3, message_id: 9 }),
            rejection(Rejection::SequenceAcknowledged { sequence: 3, acknowledged_through: 4 }),
            rejection(Rejection::TooManyUnacknowledgedSends { count: 1024 }),
            rejection(Rejection::AccountGone),
            session_invalid(),
            login_failed(),
        ];
        for status in &statuses {
            let info = status.get_details_error_info().unwrap_or_else(|| panic!("no ErrorInfo on {status:?}"));
            assert_eq!(info.domain, wire::ERROR_DOMAIN);
            assert!(wire::ALL_REASONS.contains(&info.reason.as_str()), "{}", info.reason);
        }
        let hint = statuses[0].get_details_error_info().unwrap();
        assert_eq!(hint.reason, wire::NOT_LEADER);
        assert_eq!(hint.metadata[wire::LEADER_ADDRESS], "10.0.0.2:7001");
        assert_eq!(statuses[6].get_details_error_info().unwrap().reason, wire::OUTCOME_UNKNOWN);
        assert_eq!(statuses[4].get_details_error_info().unwrap().reason, wire::NOT_APPLIED);
        assert!(statuses[3].get_details_retry_info().and_then(|r| r.retry_delay).is_some());
        assert_eq!(statuses[9].get_details_error_info().unwrap().metadata[wire::MESSAGE_ID], "9");
    }
}
