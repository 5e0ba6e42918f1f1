//! What the runtime needs from the replication log's storage, so that a simulation can
//! swap the SQLite log for a simulated disk that loses unsynced writes on power loss.

use std::sync::{Arc, Mutex, MutexGuard};

use super::raft_log::{ClusterIdentity, LogStoreError};
use crate::replication::{Entry, HardState, LogIndex, Storage, StorageError, Term};

/// Durable storage of the term, the vote and the log. Reads go through [`Storage`].
pub trait LogStore: Storage + Send + 'static {
    /// Writes the hard state and the entries (stored entries at or after the first new
    /// one's index are replaced). What is written may not be durable until `sync`.
    fn write(&mut self, hard_state: Option<HardState>, entries: &[Entry]) -> Result<(), StorageError>;

    /// Makes everything written so far durable. Nothing that depends on a write may leave
    /// the node before the `sync` after it has returned.
    fn sync(&mut self) -> Result<(), StorageError>;
}

/// Opens the log store of a node; for simulations that bring their own disk.
pub type LogStoreFactory = Arc<dyn Fn(&ClusterIdentity) -> Result<Box<dyn LogStore>, LogStoreError> + Send + Sync>;

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

    fn term(&self, index: LogIndex) -> Result<Option<Term>, StorageError> {
        self.lock().term(index)
    }

    fn entries(&self, low: LogIndex, high: LogIndex, bytes_max: usize) -> Result<Vec<Entry>, StorageError> {
        self.lock().entries(low, high, bytes_max)
    }
}
