//! The replication core: Raft as a deterministic state machine.
//!
//! It does no I/O, spawns nothing and reads no clock: time arrives through
//! [`Replica::tick`], messages through [`Replica::step`], randomness from a seed. What must
//! be persisted, sent and applied comes out of [`Replica::ready`] as a [`Ready`]. The same
//! code therefore runs in a real node, in a madsim simulation and in the in-memory cluster
//! harness of the tests, and a seed replays a run exactly.
//!
//! Implemented: leader election with randomized timeouts, PreVote and CheckQuorum; log
//! replication with the consistency check, conflict-term hints, batching, pipelining and
//! flow control; commitment of current-term entries only, with a no-op per new leader;
//! ReadIndex reads; leadership transfer; log compaction behind snapshots the caller takes,
//! and snapshot installation on followers that fell behind the compacted log
//! (`snapshot.rs`); membership changes one server at a time, with learners
//! (`membership.rs`).

mod config;
mod election;
mod follower;
mod leader;
mod log;
mod membership;
mod message;
mod progress;
mod read_index;
mod ready;
mod replica;
mod rng;
mod snapshot;
mod storage;
#[cfg(test)]
mod test_support;
mod transfer;
mod types;

pub use config::{ConfigError, ReplicaConfig};
pub use membership::{MemberRole, MembershipChange, MembershipError, PROMOTION_LAG_MAX};
pub use message::{AppendResult, Message, MessageBody};
pub use ready::{ReadAborted, ReadOutcome, Ready, SoftState};
pub use replica::{
    COMMITTED_ENTRIES_PER_READY_MAX, FollowerStatus, ProposeError, Replica, ReplicaError, ReplicaStatus,
};
pub use snapshot::SnapshotTransfer;
pub use storage::{MemoryStorage, Storage, StorageError, assert_writable};
pub use transfer::TransferError;
pub use types::{
    Entry, HardState, INDEX_MAX, LEARNERS_MAX, LogIndex, LogPosition, Membership, NodeId, Payload, Role, SnapshotMeta,
    TERM_MAX, Term, VOTERS_MAX,
};
