//! Carrying the replication core's messages between nodes.
//!
//! The runtime depends only on [`Transport`]; [`GrpcTransport`] implements it over the
//! `chorus.v1.Raft` gRPC service (real sockets, or madsim's simulated network), and
//! [`RaftService`] is that service's receiving end.

mod codec;
mod grpc;
mod raft_service;

use crate::replication::Message;

pub use codec::{DecodeError, decode_message, encode_message};
pub use grpc::GrpcTransport;
pub use raft_service::RaftService;

/// Sends the replication core's messages to their destinations.
pub trait Transport: Send + Sync + 'static {
    /// Queues messages for sending and returns at once. A message that cannot be queued
    /// (its peer is slow or unreachable and its queue is full) is dropped: Raft retransmits
    /// whatever matters, and one dead peer must never hold up the others.
    fn send(&self, messages: Vec<Message>);
}
