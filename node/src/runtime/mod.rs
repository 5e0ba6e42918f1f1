//! The runtime: wires the chat state machine to the log that orders its commands and to
//! the services that take requests.
//!
//! Every change to chat state goes through one seam, [`Proposer`]: a node proposes a
//! command, the log orders and (in a cluster) replicates it, and once it is committed the
//! runtime applies it to the [`ChatState`] and hands the outcome back. The log is the Raft
//! log ([`RaftHandle`], [`RaftRuntime`]); a single node is a cluster of one.

mod chat_state;
mod raft_runtime;

use std::future::Future;

use chorus_proto::v1::Command;

use crate::chat::Outcome;

pub use chat_state::{ChatState, DigestBusy, MailboxWatch, READS_WAITING_MAX, ReadError};
pub use raft_runtime::{
    HandOver, NodeStatus, RaftHandle, RaftRuntime, ReplicaSetup, ReplicationObserver, RuntimeError, SnapshotPolicy,
    SnapshotSetup, TransferLeaderError, start_runtime,
};

/// Why a proposal or a read fence did not go through. Each variant says whether the
/// command may have taken effect: the server turns that into a distinct reason on the
/// wire, and a client decides from it whether a retry is safe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Certainly not applied: this node is not the leader; `leader` is the one it knows of.
    #[error("this node is not the leader{}", leader.map(|id| format!(" (node {id} is)")).unwrap_or_default())]
    NotLeader { leader: Option<crate::replication::NodeId> },
    /// Certainly not applied: leadership is being handed to another node.
    #[error("leadership is moving to another node; retry")]
    TransferInProgress,
    /// Certainly not applied: too much is waiting to commit.
    #[error("too many commands are waiting to commit; retry shortly")]
    Overloaded,
    /// Certainly not applied: another leader's entry took the command's place in the log.
    #[error("leadership changed before the command committed, and it did not; retry")]
    Superseded,
    /// Nothing changed: a linearizable read could not be confirmed (no quorum, or
    /// leadership changed while confirming it).
    #[error("{0}")]
    ReadUnconfirmed(String),
    /// May or may not have been applied: the command was in the log when this node lost
    /// leadership or its majority, or it did not commit in time.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// Certainly not applied: the node is stopping and never took the command.
    #[error("this node is shutting down")]
    ShuttingDown,
    /// Certainly not applied: this node's log was found corrupt and it takes no part.
    #[error("{0}")]
    Quarantined(String),
}

/// The seam through which services change chat state.
pub trait Proposer: Send + Sync + 'static {
    /// Appends `command` to the log, waits until it is committed and applied on this node,
    /// and returns what applying it produced. A returned outcome is durable.
    fn propose(&self, command: Command) -> impl Future<Output = Result<Outcome, ProposeError>> + Send;

    /// Waits until this node's chat state reflects every command committed before the
    /// call, so that a read that follows is linearizable.
    fn read_fence(&self) -> impl Future<Output = Result<(), ProposeError>> + Send;
}
