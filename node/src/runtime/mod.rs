//! The runtime: wires the chat state machine to the log that orders its commands and to
//! the services that take requests.
//!
//! Every change to chat state goes through one seam, [`Proposer`]: a node proposes a
//! command, the log orders and (in a cluster) replicates it, and once it is committed the
//! runtime applies it to the [`ChatState`] and hands the outcome back. Here the log is a
//! single node's; the Raft log replaces it without the services noticing.

mod chat_state;
mod node;
mod single_node;

use std::future::Future;

use chorus_proto::v1::Command;

use crate::chat::Outcome;

pub use chat_state::ChatState;
pub use node::{NodeConfig, NodeError, run_node};
pub use single_node::SingleNodeLog;

/// Why a proposal or a read fence did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// The command was not (and will not be) applied; the client should retry elsewhere or later.
    #[error("{0}")]
    Unavailable(String),
    /// Storage failed while applying; the command was not applied.
    #[error("storage failure on this node: {0}")]
    Storage(String),
    #[error("this node is shutting down")]
    ShuttingDown,
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
