//! What applying a command produced. Every replica computes the same outcome for the same
//! command; the node that proposed it turns the outcome into the client's reply.

use super::validate::InvalidInput;

/// A message as queries and outcomes show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    pub message_id: u64,
    pub from: String,
    pub to: String,
    pub body: String,
    pub sent_at_ms: u64,
    pub read: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    AccountCreated {
        user_id: u64,
        username: String,
    },
    SessionOpened {
        username: String,
        unread_count: u64,
    },
    SessionClosed,
    MessageSent {
        message_id: u64,
        duplicate: bool,
    },
    MessagesRead {
        messages: Vec<MessageView>,
        unread_remaining: u64,
    },
    MessagesDeleted {
        count: u64,
    },
    AccountDeleted,
    /// The command was applied as a no-op because the state did not allow it. Rejections are
    /// part of the replicated history: every replica rejects the same command the same way.
    Rejected(Rejection),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("username '{username}' is taken: choose another")]
    UsernameTaken { username: String },
    #[error("username '{username}' belonged to a deleted account and cannot be registered again: choose another")]
    UsernameRetired { username: String },
    #[error("the account no longer exists")]
    AccountGone,
    #[error("session is not valid (logged out, replaced, or never issued): log in again")]
    SessionInvalid,
    #[error("user '{username}' does not exist")]
    RecipientNotFound { username: String },
    #[error(
        "client_msg_id '{client_msg_id}' was already used for a different message (id {message_id}): use a new id for a new message"
    )]
    ClientMsgIdReused { client_msg_id: String, message_id: u64 },
    #[error(
        "client_msg_id '{client_msg_id}' is older than what the server remembers (the sender's last 10,000 ids within 24 hours), so it cannot tell whether that message was already stored and refuses it; if this is a new message, check the client's clock and send it with a fresh id"
    )]
    RetryTooOld { client_msg_id: String },
    #[error(
        "client_msg_id '{client_msg_id}' carries a time {ahead_ms} ms ahead of the server's clock: fix the client's clock (ids must carry the time of the first attempt)"
    )]
    ClientClockAhead { client_msg_id: String, ahead_ms: u64 },
    #[error("message {message_id} not found")]
    MessageNotFound { message_id: u64 },
    #[error("message {message_id} was already read by its recipient: only the recipient can delete it now")]
    MessageAlreadyRead { message_id: u64 },
    #[error("the account's password changed while the request was in flight: try again")]
    PasswordChanged,
    #[error("a session with this token already exists: log in again")]
    TokenCollision,
    #[error("malformed command ({0}): a bug in the node that formed it")]
    MalformedCommand(&'static str),
    #[error("the command is empty or of a kind this node does not know: upgrade the node")]
    UnknownCommand,
}
