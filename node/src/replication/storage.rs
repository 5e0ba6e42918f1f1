//! Durable storage as the core sees it: it reads the log, term and vote through
//! [`Storage`]; the caller writes what a `Ready` asks to persist and then calls
//! `Replica::advance`.

use std::collections::VecDeque;

use super::types::{Entry, HardState, LogIndex, Term};

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
pub trait Storage {
    /// The term and vote as last persisted.
    fn hard_state(&self) -> Result<HardState, StorageError>;
    /// The index of the last durable entry (0 when empty).
    fn last_index(&self) -> Result<LogIndex, StorageError>;
    /// The term of the durable entry at `index`; `Some(0)` for index 0, `None` beyond the end.
    fn term(&self, index: LogIndex) -> Result<Option<Term>, StorageError>;
    /// Durable entries in `low..high` (high exclusive), stopping early once `bytes_max`
    /// would be exceeded (but always at least one entry if any is in range).
    fn entries(&self, low: LogIndex, high: LogIndex, bytes_max: usize) -> Result<Vec<Entry>, StorageError>;
}

/// Storage in memory: the reference implementation, used by tests and the cluster harness.
/// "Durable" means whatever has been written to it.
#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    hard_state: HardState,
    /// entries[i] has index i + 1.
    entries: VecDeque<Entry>,
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
        Self { hard_state, entries: entries.into() }
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    /// Writes a `Ready`'s entries: removes every stored entry at or after `truncate_from`
    /// (a conflicting suffix the leader overwrote), if set, then appends `entries`, which
    /// must start exactly there, or else right after the last stored entry.
    pub fn append(&mut self, truncate_from: Option<LogIndex>, entries: &[Entry]) {
        let start = assert_writable(self.entries.len() as LogIndex, truncate_from, entries);
        self.entries.truncate(start as usize - 1);
        self.entries.extend(entries.iter().cloned());
    }

    pub fn all_entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
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

impl Storage for MemoryStorage {
    fn hard_state(&self) -> Result<HardState, StorageError> {
        Ok(self.hard_state)
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.entries.len() as LogIndex)
    }

    fn term(&self, index: LogIndex) -> Result<Option<Term>, StorageError> {
        if index == 0 {
            return Ok(Some(0));
        }
        Ok(self.entries.get(index as usize - 1).map(|entry| entry.term))
    }

    fn entries(&self, low: LogIndex, high: LogIndex, bytes_max: usize) -> Result<Vec<Entry>, StorageError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for index in low.max(1)..high.min(self.entries.len() as LogIndex + 1) {
            let entry = &self.entries[index as usize - 1];
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

    /// A truncation that removes nothing means the core's view of this storage is wrong.
    #[test]
    #[should_panic(expected = "removes nothing")]
    fn a_truncation_beyond_the_last_entry_panics() {
        let mut storage = MemoryStorage::with_log(HardState::default(), vec![entry(1, 1)]);
        storage.append(Some(2), &[entry(2, 2)]);
    }
}
