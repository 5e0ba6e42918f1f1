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

impl MessageView {
    /// What the message costs a page: its strings and an allowance for the numbers and
    /// field tags around them, at least its protobuf encoding (`Message` in chat.proto,
    /// inside a repeated field).
    pub fn page_bytes(&self) -> usize {
        const FRAMING_BYTES: usize = 48;
        self.body.len() + self.from.len() + self.to.len() + FRAMING_BYTES
    }
}

/// Messages of one page, and whether more may follow it (the page stopped at its count or
/// at `PAGE_BYTES_MAX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagePage {
    pub messages: Vec<MessageView>,
    pub more: bool,
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
        expires_at_ms: u64,
    },
    SessionClosed,
    MessageSent {
        message_id: u64,
        duplicate: bool,
        /// The sending account (what a node's per-account send limit counts).
        sender_id: u64,
    },
    MessagesRead {
        messages: Vec<MessageView>,
        unread_remaining: u64,
    },
    MessagesDeleted {
        count: u64,
    },
    AccountDeleted,
    /// The password was replaced, and the account's other sessions ended.
    PasswordChanged {
        sessions_ended: u64,
    },
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
    #[error(
        "session is not valid (logged out, expired, ended by a password change, replaced, or never issued): log in again"
    )]
    SessionInvalid,
    #[error("user '{username}' does not exist")]
    RecipientNotFound { username: String },
    #[error(
        "sequence {sequence} of this session was already used for a different message (id {message_id}): give a new message the next sequence"
    )]
    SequenceReused { sequence: u64, message_id: u64 },
    #[error(
        "sequence {sequence} of this session was acknowledged as answered (acknowledged_through {acknowledged_through}), so the server no longer remembers it and cannot tell a retry from a new message: a new message needs a sequence above {acknowledged_through}"
    )]
    SequenceAcknowledged { sequence: u64, acknowledged_through: u64 },
    #[error(
        "this session has {count} sends whose answers were never acknowledged, the most the server remembers: send acknowledged_through (the lowest sequence still waiting for an answer, minus one) so it can forget the answered ones"
    )]
    TooManyUnacknowledgedSends { count: u64 },
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
