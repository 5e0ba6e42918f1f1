//! What the workload did and saw, with simulated timestamps: the input of the checkers.

use std::time::Duration;

/// A message as a client observed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub id: u64,
    pub from: String,
    pub to: String,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `body` is unique per logical send (retries reuse it, and the session's sequence).
    Send {
        from: String,
        to: String,
        body: String,
    },
    /// ReadMessages: the caller's oldest unread messages, which become read.
    ReadUnread {
        user: String,
    },
    /// The caller's whole mailbox (received messages), all pages of History.
    ReadMailbox {
        user: String,
    },
    /// DeleteMessages of messages the caller received.
    Delete {
        user: String,
        ids: Vec<u64>,
    },
    CreateAccount {
        user: String,
    },
    /// ListAccounts with a pattern that names one account exactly.
    AccountExists {
        user: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent {
        message_id: u64,
    },
    Messages(Vec<Observed>),
    Deleted,
    Created,
    AlreadyExists,
    Exists(bool),
    /// The operation certainly did not take effect (a refusal such as NOT_FOUND).
    Refused(String),
    /// The outcome is unknown (UNAVAILABLE after the deadline, a timeout): it may or may
    /// not have taken effect, at any time after it was invoked.
    Unknown(String),
    /// The server answered, but after the client had retried, so the answer may describe
    /// the call's own earlier attempt (a retried create finding its own account): it may or
    /// may not have taken effect.
    Ambiguous(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub client: usize,
    pub op: Op,
    pub invoked: Duration,
    /// `None`: the operation never returned (the run ended first).
    pub completed: Option<(Duration, Outcome)>,
}

impl Operation {
    /// The outcome, if the operation completed successfully (not refused, not unknown).
    pub fn ok(&self) -> Option<&Outcome> {
        match &self.completed {
            Some((_, Outcome::Unknown(_) | Outcome::Ambiguous(_) | Outcome::Refused(_))) | None => None,
            Some((_, outcome)) => Some(outcome),
        }
    }

    /// Whether the operation may have taken effect: it succeeded, or its outcome is unknown.
    pub fn may_have_happened(&self) -> bool {
        !matches!(self.completed, Some((_, Outcome::Refused(_))))
    }

    pub fn completed_at(&self) -> Option<Duration> {
        self.completed.as_ref().map(|(at, _)| *at)
    }

    /// Completed before `other` was invoked: real-time order.
    pub fn precedes(&self, other: &Operation) -> bool {
        self.completed_at().is_some_and(|at| at < other.invoked)
    }
}

/// A message delivered by a user's subscription stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub user: String,
    pub message: Observed,
    pub at: Duration,
}

/// A message as a node's subscription stream sent it, before the client library's check
/// for repeats: the server's streams are judged by these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDelivery {
    pub user: String,
    pub id: u64,
    /// The stream's number within the user's subscription (one per node subscribed to).
    pub stream: u64,
    pub at: Duration,
}

/// Everything one run recorded.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub operations: Vec<Operation>,
    /// What the client library delivered to the user.
    pub deliveries: Vec<Delivery>,
    /// What the servers' streams sent, repeats included.
    pub raw_deliveries: Vec<RawDelivery>,
    /// Each user's mailbox after the faults healed, read from the leader.
    pub final_mailboxes: Vec<(String, Vec<Observed>)>,
}
