//! What the runtime needs from the replication log's storage, so that a simulation can
//! swap the SQLite log for a simulated disk that loses unsynced writes on power loss.

use std::sync::{Arc, Mutex, MutexGuard};

use super::sqlite_log::{ClusterIdentity, LogStoreError};
use crate::replication::{Entry, HardState, LogIndex, SnapshotMeta, Storage, StorageError, Term};

/// Whether opening a log may initialize an empty one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    /// The operator says this is a member's first start in a new cluster (`--bootstrap`):
    /// the log must be empty, and is initialized.
    Bootstrap,
    /// An ordinary start: the log must already belong to this member, unless the cluster
    /// is a cluster of one (whose empty log endangers nobody else).
    MemberOfExisting,
}

/// How far a scrub step got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubProgress {
    /// Records through this index were verified by this step (its pass's position).
    pub verified_through: LogIndex,
    /// This step started a new pass, the previous one having reached the end.
    pub pass_completed: bool,
}

/// Durable storage of the term, the vote and the log. Reads go through [`Storage`].
pub trait LogStore: Storage + Send + 'static {
    /// Writes a `Ready`'s hard state, truncation and entries as one write: removes the
    /// stored entries at or after `truncate_from`, if set, and appends `entries` (which start
    /// exactly there, or else right after the last stored entry). What is written may not be
    /// durable until `sync`, but reads (`last_index`, `entries`) see it at once: the core
    /// checks at `advance` that the storage ends where the `Ready` left it.
    fn write(
        &mut self,
        hard_state: Option<HardState>,
        truncate_from: Option<LogIndex>,
        entries: &[Entry],
    ) -> Result<(), StorageError>;

    /// Records a snapshot the node took of its state machine (its file already durable)
    /// and drops the entries through `compact_through` (at most the snapshot's last index),
    /// in one durable write.
    fn record_snapshot(&mut self, snapshot: &SnapshotMeta, compact_through: LogIndex) -> Result<(), StorageError>;

    /// Replaces the whole log with a snapshot installed from the leader (its file already
    /// durable, and installed in the state machine or about to be): no entries, its last
    /// entry as the compaction point, in one durable write.
    fn install_snapshot(&mut self, snapshot: &SnapshotMeta) -> Result<(), StorageError>;

    /// Makes everything written so far durable. Nothing that depends on a write may leave
    /// the node before the `sync` after it has returned.
    fn sync(&mut self) -> Result<(), StorageError>;

    /// Verifies more records of the log, up to `records_max` and about `bytes_max` (at
    /// least one record), going round and round; a bad one is `StorageError::Corrupt`. A
    /// store that verifies everything when it opens (and keeps it in memory) has nothing
    /// to do.
    fn scrub(&mut self, records_max: usize, bytes_max: usize) -> Result<ScrubProgress, StorageError> {
        let _ = (records_max, bytes_max);
        Ok(ScrubProgress { verified_through: self.last_index()?, pass_completed: false })
    }

    /// Records, durably if it can, that the log was found faulty: it must refuse to open
    /// from now on, so that the node never takes part with it again.
    fn record_fault(&mut self, detail: &str) -> Result<(), StorageError>;
}

/// Opens the log store of a node; for simulations that bring their own disk.
pub type LogStoreFactory =
    Arc<dyn Fn(&ClusterIdentity, Creation) -> Result<Box<dyn LogStore>, LogStoreError> + Send + Sync>;

/// The log shared between the replica, which reads it, and the runtime, which writes it
/// from a blocking thread. The two never run at once: the runtime awaits each write before
/// touching the replica again, so the lock is never contended.
#[derive(Clone)]
pub struct SharedLog(Arc<Mutex<Box<dyn LogStore>>>);

impl SharedLog {
    pub fn new(store: Box<dyn LogStore>) -> Self {
        Self(Arc::new(Mutex::new(store)))
    }

    pub fn lock(&self) -> MutexGuard<'_, Box<dyn LogStore>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Storage for SharedLog {
    fn hard_state(&self) -> Result<HardState, StorageError> {
        self.lock().hard_state()
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        self.lock().last_index()
    }

    fn first_index(&self) -> Result<LogIndex, StorageError> {
        self.lock().first_index()
    }

    fn term(&self, index: LogIndex) -> Result<Option<Term>, StorageError> {
        self.lock().term(index)
    }

    fn snapshot(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        self.lock().snapshot()
    }

    fn entries(&self, low: LogIndex, high: LogIndex, bytes_max: usize) -> Result<Vec<Entry>, StorageError> {
        self.lock().entries(low, high, bytes_max)
    }

    fn configuration_entries(&self, after: LogIndex) -> Result<Vec<Entry>, StorageError> {
        self.lock().configuration_entries(after)
    }
}
