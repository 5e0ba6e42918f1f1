//! Durable storage as the core sees it: it reads the log, term and vote through
//! [`Storage`]; the caller writes what a `Ready` asks to persist and then calls
//! `Replica::advance`.

use std::collections::VecDeque;

use super::types::{Entry, HardState, LogIndex, LogPosition, Payload, SnapshotMeta, Term};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The storage cannot be read or written; the replica must stop.
    #[error("replication log storage failed: {0}")]
    Io(String),
    /// A record failed its checksum or does not decode.
    #[error("replication log is corrupt: {0}")]
    Corrupt(String),
}

/// Read access to the durable log.
///
/// A log may be compacted: the entries before `first_index` were dropped once a snapshot
/// covering them was durable. The term of the entry just before the first one is kept (the
/// consistency check of the next append needs it), and `snapshot` describes the latest
/// snapshot, which covers at least every dropped entry.
pub trait Storage {
    /// The term and vote as last persisted.
    fn hard_state(&self) -> Result<HardState, StorageError>;
    /// The index of the last durable entry (0 when empty; after a compaction that dropped
    /// everything, the index of the last dropped entry).
    fn last_index(&self) -> Result<LogIndex, StorageError>;
    /// The index of the first entry held: 1 when nothing was compacted.
    fn first_index(&self) -> Result<LogIndex, StorageError>;
    /// The term of the durable entry at `index`: `Some(0)` for index 0, the kept term for
    /// `first_index - 1`, `None` beyond the end and below `first_index - 1` (compacted).
    fn term(&self, index: LogIndex) -> Result<Option<Term>, StorageError>;
    /// The latest durable snapshot, if any was taken or installed.
    fn snapshot(&self) -> Result<Option<SnapshotMeta>, StorageError>;
    /// Durable entries in `low..high` (high exclusive), stopping early once `bytes_max`
    /// would be exceeded (but always at least one entry if any is in range).
    fn entries(&self, low: LogIndex, high: LogIndex, bytes_max: usize) -> Result<Vec<Entry>, StorageError>;
    /// The durable entries after `after` that hold a configuration, in order: what a
    /// replica reads at start to know the configuration in effect. By default a scan of
    /// the whole log; a log on disk keeps them findable without one.
    fn configuration_entries(&self, after: LogIndex) -> Result<Vec<Entry>, StorageError> {
        /// Entries read at a time while scanning.
        const SCAN_BYTES: usize = 4 * 1024 * 1024;
        let last = self.last_index()?;
        let mut next = (after + 1).max(self.first_index()?);
        let mut found = Vec::new();
        while next <= last {
            let entries = self.entries(next, last + 1, SCAN_BYTES)?;
            let Some(end) = entries.last().map(|entry| entry.index) else {
                return Err(StorageError::Corrupt(format!(
                    "the log holds no entry {next} below its last index {last}"
                )));
            };
            found.extend(entries.into_iter().filter(|entry| matches!(entry.payload, Payload::Membership(_))));
            next = end + 1;
        }
        Ok(found)
    }
}

/// Storage in memory: the reference implementation, used by tests and the cluster harness.
/// "Durable" means whatever has been written to it.
#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    hard_state: HardState,
    /// The last compacted entry (ZERO when none was): `entries[i]` has index
    /// `compacted.index + i + 1`.
    compacted: LogPosition,
    entries: VecDeque<Entry>,
    snapshot: Option<SnapshotMeta>,
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// A storage already holding `entries` (indices 1..) and `hard_state`: for tests that
    /// start from the dissertation's log figures.
    pub fn with_log(hard_state: HardState, entries: Vec<Entry>) -> Self {
        for (offset, entry) in entries.iter().enumerate() {
            assert_eq!(entry.index, offset as LogIndex + 1, "entries must be contiguous from 1");
        }
        Self { hard_state, entries: entries.into(), ..Self::default() }
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    /// Writes a `Ready`'s entries: removes every stored entry at or after `truncate_from`
    /// (a conflicting suffix the leader overwrote), if set, then appends `entries`, which
    /// must start exactly there, or else right after the last stored entry.
    pub fn append(&mut self, truncate_from: Option<LogIndex>, entries: &[Entry]) {
        let start = assert_writable(self.last_index_held(), truncate_from, entries);
        assert!(start > self.compacted.index, "write at {start} into the compacted part of the log");
        self.entries.truncate((start - self.compacted.index) as usize - 1);
        self.entries.extend(entries.iter().cloned());
    }

    /// The entries held (from `first_index`).
    pub fn all_entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Records a snapshot the caller took of its state machine, through an index this log
    /// holds (or its compaction point).
    pub fn record_snapshot(&mut self, snapshot: SnapshotMeta) {
        let position = snapshot.last_included;
        let previous = self.snapshot.as_ref().map_or(0, |s| s.last_included.index);
        assert!(position.index >= previous, "snapshot through {} older than the one held ({previous})", position.index);
        assert_eq!(self.term(position.index).ok().flatten(), Some(position.term), "snapshot of an entry not held");
        self.snapshot = Some(snapshot);
    }

    /// Drops the entries through `through`, which the latest snapshot must cover.
    pub fn compact(&mut self, through: LogIndex) {
        let covered = self.snapshot.as_ref().map_or(0, |s| s.last_included.index);
        assert!(through <= covered, "compaction through {through} beyond the snapshot ({covered})");
        if through <= self.compacted.index {
            return;
        }
        let term = self.term(through).ok().flatten().expect("a covered index is held");
        let drop = (through - self.compacted.index) as usize;
        self.entries.drain(..drop);
        self.compacted = LogPosition { term, index: through };
    }

    /// Replaces the whole log with a snapshot installed from the leader: no entries, the
    /// snapshot's last entry as the compaction point.
    pub fn install_snapshot(&mut self, snapshot: SnapshotMeta) {
        self.entries.clear();
        self.compacted = snapshot.last_included;
        self.snapshot = Some(snapshot);
    }
}

/// Checks a `Ready`'s write against a log ending at `last`, as every storage must before
/// writing it, and returns the index the entries start at: a truncation must remove
/// something, and the entries must run contiguous from it (or from `last + 1`).
pub fn assert_writable(last: LogIndex, truncate_from: Option<LogIndex>, entries: &[Entry]) -> LogIndex {
    let start = match truncate_from {
        Some(index) => {
            assert!(index >= 1 && index <= last, "truncation at {index} removes nothing from a log ending at {last}");
            index
        }
        None => last + 1,
    };
    for (offset, entry) in (0..).zip(entries) {
        assert_eq!(
            entry.index,
            start + offset,
            "entries must be contiguous from {start} (truncation {truncate_from:?}, last stored {last})"
        );
    }
    start
}

impl MemoryStorage {
    fn last_index_held(&self) -> LogIndex {
        self.compacted.index + self.entries.len() as LogIndex
    }
}

impl Storage for MemoryStorage {
    fn hard_state(&self) -> Result<HardState, StorageError> {
        Ok(self.hard_state)
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.last_index_held())
    }

    fn first_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.compacted.index + 1)
    }

    fn term(&self, index: LogIndex) -> Result<Option<Term>, StorageError> {
        if index == 0 {
            return Ok(Some(0));
        }
        if index <= self.compacted.index {
            return Ok((index == self.compacted.index).then_some(self.compacted.term));
        }
        Ok(self.entries.get((index - self.compacted.index) as usize - 1).map(|entry| entry.term))
    }

    fn snapshot(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        Ok(self.snapshot.clone())
    }

    fn entries(&self, low: LogIndex, high: LogIndex, bytes_max: usize) -> Result<Vec<Entry>, StorageError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for index in low.max(self.compacted.index + 1)..high.min(self.last_index_held() + 1) {
            let entry = &self.entries[(index - self.compacted.index) as usize - 1];
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::replication::types::Payload;

    fn entry(index: LogIndex, term: Term) -> Entry {
        Entry { term, index, payload: Payload::Command(Bytes::from(format!("{index}@{term}"))) }
    }

    fn stored(storage: &MemoryStorage) -> Vec<(LogIndex, Term)> {
        storage.all_entries().map(|e| (e.index, e.term)).collect()
    }

    /// Entries go right after the last one, or exactly where a truncation removed the
    /// suffix from.
    #[test]
    fn appends_after_the_last_entry_or_at_the_truncation_point() {
        let mut storage = MemoryStorage::new();
        storage.append(None, &[entry(1, 1), entry(2, 1), entry(3, 1)]);
        storage.append(Some(2), &[entry(2, 2)]);
        assert_eq!(stored(&storage), [(1, 1), (2, 2)]);
        storage.append(None, &[entry(3, 2)]);
        assert_eq!(stored(&storage), [(1, 1), (2, 2), (3, 2)]);
    }

    /// A gap after the last entry would be a log with a hole in it.
    #[test]
    #[should_panic(expected = "entries must be contiguous from 2")]
    fn an_append_that_leaves_a_gap_panics() {
        let mut storage = MemoryStorage::with_log(HardState::default(), vec![entry(1, 1)]);
        storage.append(None, &[entry(3, 1)]);
    }

    /// Without the truncation the storage would have kept its own entry 2.
    #[test]
    #[should_panic(expected = "entries must be contiguous from 3")]
    fn an_overwrite_without_its_truncation_panics() {
        let mut storage = MemoryStorage::with_log(HardState::default(), vec![entry(1, 1), entry(2, 1)]);
        storage.append(None, &[entry(2, 2)]);
    }

    /// A compacted log answers for its kept boundary and nothing before it, and appends
    /// after its end as before.
    #[test]
    fn a_compacted_log_keeps_the_boundary_term_and_appends_after_its_end() {
        let mut storage = MemoryStorage::with_log(HardState::default(), vec![entry(1, 1), entry(2, 1), entry(3, 2)]);
        let membership = super::super::types::Membership::with_voters([1, 2, 3]);
        storage.record_snapshot(SnapshotMeta { last_included: LogPosition { term: 1, index: 2 }, membership });
        storage.compact(2);
        assert_eq!((storage.first_index().unwrap(), storage.last_index().unwrap()), (3, 3));
        assert_eq!([0, 1, 2, 3, 4].map(|i| storage.term(i).unwrap()), [Some(0), None, Some(1), Some(2), None]);
        assert_eq!(storage.entries(1, 4, usize::MAX).unwrap(), [entry(3, 2)]);
        storage.append(Some(3), &[entry(3, 3)]);
        assert_eq!(stored(&storage), [(3, 3)]);
    }

    /// Nothing may be dropped that no snapshot covers.
    #[test]
    #[should_panic(expected = "beyond the snapshot")]
    fn compaction_beyond_the_snapshot_panics() {
        let mut storage = MemoryStorage::with_log(HardState::default(), vec![entry(1, 1), entry(2, 1)]);
        storage.compact(1);
    }

    /// A truncation that removes nothing means the core's view of this storage is wrong.
    #[test]
    #[should_panic(expected = "removes nothing")]
    fn a_truncation_beyond_the_last_entry_panics() {
        let mut storage = MemoryStorage::with_log(HardState::default(), vec![entry(1, 1)]);
        storage.append(Some(2), &[entry(2, 2)]);
    }
}
