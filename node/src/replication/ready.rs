//! What the replica asks its caller to do, batched (raft-rs's `Ready`).
//!
//! The caller handles a `Ready` in this order:
//! 1. send `messages` (they depend on nothing unpersisted);
//! 2. if `snapshot` is set, install it, durably and atomically: the state machine becomes
//!    the staged snapshot's state, and the stored log becomes empty with the snapshot's last
//!    entry as its compaction point (`Storage::first_index` = its index + 1);
//! 3. make `hard_state`, `truncate_from` and `entries` durable in one write (fsync): first
//!    remove the stored entries from `truncate_from` on, if set, then append `entries`
//!    (with a snapshot to install, the hard state may be made durable first, before step 2:
//!    a log never holds a compaction point of a term after its stored one);
//! 4. send `messages_after_persist`: each depends on that state (a granted vote, an
//!    acknowledged append or snapshot) and must never leave before it is durable;
//! 5. apply `committed_entries` in order (after a snapshot, they follow its last entry);
//!    serve `reads` once applied through their index;
//! 6. call `Replica::advance`.

use super::message::Message;
use super::types::{Entry, HardState, LogIndex, NodeId, Role, SnapshotMeta, Term};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// A snapshot from the leader to install before anything else (see the module's steps):
    /// the one its `InstallSnapshot` named, whose data the transport staged.
    pub snapshot: Option<SnapshotMeta>,
    pub hard_state: Option<HardState>,
    /// Remove every stored entry at or after this index before appending `entries`, in the
    /// same durable write. Set only when the storage holds entries that the replica dropped
    /// (a conflicting suffix, §3.5), and then equal to the index of the first of `entries`.
    /// When unset, `entries` start right after the last stored entry.
    pub truncate_from: Option<LogIndex>,
    /// Entries to append, contiguous.
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub messages_after_persist: Vec<Message>,
    pub committed_entries: Vec<Entry>,
    pub reads: Vec<ReadOutcome>,
    /// Set when role, term or leader changed since the last `Ready`.
    pub soft_state: Option<SoftState>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none()
            && self.hard_state.is_none()
            && self.truncate_from.is_none()
            && self.entries.is_empty()
            && self.messages.is_empty()
            && self.messages_after_persist.is_empty()
            && self.committed_entries.is_empty()
            && self.reads.is_empty()
            && self.soft_state.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftState {
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
}

/// The fate of a `read_index` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    pub context: u64,
    /// `Ok(index)`: reading the state machine once it has applied through `index` is
    /// linearizable. `Err`: this replica lost leadership before confirming the read.
    pub result: Result<LogIndex, ReadAborted>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("leadership was lost before the read was confirmed")]
pub struct ReadAborted;
