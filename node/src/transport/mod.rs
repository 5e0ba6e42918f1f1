//! Carrying the replication core's messages between nodes.
//!
//! The runtime depends only on [`Transport`]; [`GrpcTransport`] implements it over the
//! `chorus.v1.Raft` gRPC service (real sockets, or madsim's simulated network), and
//! [`RaftService`] is that service's receiving end.

mod codec;
mod grpc;
mod inbox;
mod raft_service;

use crate::replication::Message;

pub use codec::{DecodeError, decode_message, encode_message};
pub use grpc::{GrpcTransport, LinkSecurity};
pub use inbox::{InboxReceiver, InboxSender, PEER_INBOX_BYTES_MAX, PEER_INBOX_MESSAGES_MAX, message_cost, peer_inbox};
pub use raft_service::{BatchGate, PeerAuthentication, RaftService, SnapshotIntake, SnapshotValidator};

/// Most messages in one `chorus.v1.Raft/Deliver` batch; a node refuses larger batches.
pub const RAFT_BATCH_MESSAGES_MAX: usize = 64;
/// Largest encoded batch a node accepts. Senders keep their batches under half of it
/// (one append is at most about `append_bytes_max`, 1 MiB, plus one entry).
pub const RAFT_BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Batches a node decodes at once, from all connections together: what decoding can take
/// is bounded (16 × 8 MiB) whoever reaches the peer port, with room for every member's
/// link (a link sends one batch at a time). Further ones wait, unread, in their streams'
/// flow-control windows.
pub const PEER_DELIVERIES_MAX: usize = 16;
/// Batches one connection may have under way at once (a peer's link has one).
pub const PEER_DELIVERIES_PER_CONNECTION_MAX: usize = 2;
/// Longest a node spends on one batch, reading included: a sender whose body stalls (a
/// machine that died mid-send, or someone holding the port's slots) frees its slot by
/// then. Senders give up after 2 s themselves.
pub const PEER_DELIVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Peer connections that answer no HTTP/2 ping within the timeout are closed: a dead
/// machine's half-open connection does not linger.
pub const PEER_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
pub const PEER_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends the replication core's messages to their destinations.
pub trait Transport: Send + Sync + 'static {
    /// Queues messages for sending and returns at once. A message that cannot be queued
    /// (its peer is slow or unreachable and its queue is full) is dropped: Raft retransmits
    /// whatever matters, and one dead peer must never hold up the others.
    fn send(&self, messages: Vec<Message>);
}
