//! The replica's view of its log: the durable part (read through [`Storage`]) followed by
//! the unstable part (entries accepted but not yet reported durable by the caller). The
//! durable part may start after index 1: entries covered by a snapshot are compacted away
//! (by the caller, through its storage), or replaced whole by a snapshot installed from
//! the leader (through this log, see [`RaftLog::install_snapshot`]).

use super::storage::{Storage, StorageError};
use super::types::{Entry, LogIndex, LogPosition, Term};

pub(crate) struct RaftLog<S> {
    storage: S,
    /// Entries not yet durable, starting at `unstable_start`. Durable entries at or after
    /// `unstable_start` are superseded (a conflicting suffix awaiting overwrite).
    unstable: Vec<Entry>,
    unstable_start: LogIndex,
    /// The last index the caller's storage holds once it has written every `Ready` handed
    /// out. Entries in `unstable_start..=stored_last_index` are stored but superseded: the
    /// conflicting suffix `truncate_from` dropped, which the next `Ready` tells the caller
    /// to remove.
    stored_last_index: LogIndex,
    /// The highest index known committed. Never decreases.
    committed: LogIndex,
    /// The last committed index handed to the caller for applying.
    handed_out: LogIndex,
    /// A snapshot this log was reset to, until the caller's storage holds it too (the
    /// `Ready` that asks it to install the snapshot is advanced): meanwhile its storage
    /// still holds the old log, which must not be read.
    installing: Option<LogPosition>,
}

impl<S: Storage> RaftLog<S> {
    /// Opens the log over `storage`, whose state machine has applied through `applied`.
    pub fn new(storage: S, applied: LogIndex) -> Result<Self, StorageError> {
        let last = storage.last_index()?;
        let first = storage.first_index()?;
        if first > applied + 1 {
            // Entries were dropped that the state machine never applied: the snapshot that
            // covers them was not installed in the state machine.
            return Err(StorageError::Corrupt(format!(
                "the log was compacted through entry {} but the state machine applied only through {applied}",
                first - 1
            )));
        }
        if applied > last {
            // Committed entries were acknowledged as durable and are gone: the disk lost
            // fsynced writes. This node must not take part until an operator looks.
            return Err(StorageError::Corrupt(format!(
                "the state machine applied through entry {applied} but the log ends at {last}: the log lost committed entries"
            )));
        }
        // Applied entries are committed by definition; the rest of the commit index is
        // learned again from the leader.
        Ok(Self {
            storage,
            unstable: Vec::new(),
            unstable_start: last + 1,
            stored_last_index: last,
            committed: applied,
            handed_out: applied,
            installing: None,
        })
    }

    /// The first index this log holds an entry at (entries before it are compacted).
    pub fn first_index(&self) -> Result<LogIndex, StorageError> {
        match self.installing {
            Some(snapshot) => Ok(snapshot.index + 1),
            None => self.storage.first_index(),
        }
    }

    /// Resets this log to `snapshot`, which the caller installs with the `Ready` handing
    /// it out: no entries, everything through the snapshot committed and applied. Only a
    /// snapshot beyond the commit index is installed (anything else this log holds already).
    pub fn install_snapshot(&mut self, snapshot: LogPosition) {
        assert!(snapshot.index > self.committed, "snapshot {} installed at commit {}", snapshot.index, self.committed);
        self.unstable.clear();
        self.unstable_start = snapshot.index + 1;
        self.stored_last_index = snapshot.index;
        self.committed = snapshot.index;
        self.handed_out = snapshot.index;
        self.installing = Some(snapshot);
    }

    /// The caller's storage now holds the installed snapshot (or none was installing).
    fn snapshot_installed(&mut self) -> Result<(), StorageError> {
        let Some(snapshot) = self.installing.take() else { return Ok(()) };
        let (first, term) = (self.storage.first_index()?, self.storage.term(snapshot.index)?);
        assert!(
            first == snapshot.index + 1 && term == Some(snapshot.term),
            "the caller's storage starts at {first} with term {term:?} before it, not at the installed snapshot {snapshot:?}"
        );
        Ok(())
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    pub fn into_storage(self) -> S {
        self.storage
    }

    pub fn committed(&self) -> LogIndex {
        self.committed
    }

    /// The last index that is durable and not superseded.
    pub fn persisted_index(&self) -> LogIndex {
        self.unstable_start - 1
    }

    pub fn last_index(&self) -> LogIndex {
        self.unstable_start - 1 + self.unstable.len() as LogIndex
    }

    pub fn last_position(&self) -> Result<LogPosition, StorageError> {
        let index = self.last_index();
        Ok(LogPosition { term: self.term(index)?.expect("the last index has a term"), index })
    }

    /// The term of the entry at `index`: `Some(0)` at 0, `None` beyond the end and before
    /// the entry preceding the first one (compacted).
    pub fn term(&self, index: LogIndex) -> Result<Option<Term>, StorageError> {
        if index == 0 {
            return Ok(Some(0));
        }
        if index >= self.unstable_start {
            return Ok(self.unstable.get((index - self.unstable_start) as usize).map(|entry| entry.term));
        }
        if let Some(snapshot) = self.installing {
            return Ok((index == snapshot.index).then_some(snapshot.term));
        }
        self.storage.term(index)
    }

    /// True when this log holds an entry at `position`.
    pub fn matches(&self, position: LogPosition) -> Result<bool, StorageError> {
        Ok(self.term(position.index)? == Some(position.term))
    }

    /// Entries in `low..high`, at most `bytes_max` bytes (but at least one). `low` must not
    /// be compacted: callers look at `first_index` first.
    pub fn entries(&self, low: LogIndex, high: LogIndex, bytes_max: usize) -> Result<Vec<Entry>, StorageError> {
        let high = high.min(self.last_index() + 1);
        if low >= high {
            return Ok(Vec::new());
        }
        let first = self.first_index()?;
        assert!(low >= first, "entries from {low} asked of a log compacted before {first}");
        let mut out = Vec::new();
        if low < self.unstable_start {
            let stable_high = high.min(self.unstable_start);
            out = self.storage.entries(low, stable_high, bytes_max)?;
            for (offset, entry) in out.iter().enumerate() {
                assert_eq!(entry.index, low + offset as LogIndex, "storage returned non-contiguous entries");
            }
            assert!(!out.is_empty(), "storage lacks entry {low}, below its last index");
            if out.len() < (stable_high - low) as usize {
                // Storage stopped at the byte bound.
                return Ok(out);
            }
        }
        let mut bytes: usize = out.iter().map(Entry::size_bytes).sum();
        for index in low.max(self.unstable_start)..high {
            let entry = &self.unstable[(index - self.unstable_start) as usize];
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    /// Appends an entry the leader created.
    pub fn append_new(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last_index() + 1, "leader appended out of order");
        self.unstable.push(entry);
    }

    /// Follower side of AppendEntries (§3.5) once `previous` is known to match: keeps
    /// entries that agree, truncates at the first conflict, appends the rest. Returns the
    /// index through which this log now matches the leader's, and the first index written
    /// (None when every entry was already there).
    pub fn accept(
        &mut self,
        previous: LogPosition,
        entries: Vec<Entry>,
    ) -> Result<(LogIndex, Option<LogIndex>), StorageError> {
        let match_index = previous.index + entries.len() as LogIndex;
        let mut new_from = None;
        for (offset, entry) in entries.iter().enumerate() {
            assert_eq!(entry.index, previous.index + 1 + offset as LogIndex, "append request is not contiguous");
            if self.term(entry.index)? != Some(entry.term) {
                new_from = Some(offset);
                break;
            }
        }
        if let Some(offset) = new_from {
            let first = entries[offset].index;
            if first <= self.last_index() {
                self.truncate_from(first);
            }
            self.unstable.extend(entries.into_iter().skip(offset));
            return Ok((match_index, Some(first)));
        }
        Ok((match_index, None))
    }

    /// Drops every entry at or after `index` (a suffix that conflicts with the leader's).
    /// Entries the caller has stored there stay in its storage until the next `Ready`,
    /// whose `truncate_from` says to remove them (see [`RaftLog::take_to_persist`]).
    fn truncate_from(&mut self, index: LogIndex) {
        // raft-rs `raft_log.rs`: overwriting a committed entry is the bug that must never
        // pass silently (State Machine Safety).
        assert!(
            index > self.committed,
            "truncating at {index} would remove committed entries (commit {})",
            self.committed
        );
        if index >= self.unstable_start {
            self.unstable.truncate((index - self.unstable_start) as usize);
        } else {
            self.unstable.clear();
            self.unstable_start = index;
        }
    }

    /// The hint a follower returns when it has no entry at `previous`: the term it holds
    /// there and the first index of that term, scanning back no further than the commit
    /// index (everything committed matches the leader anyway).
    pub fn conflict_hint(&self, previous: LogPosition) -> Result<(Option<Term>, LogIndex), StorageError> {
        let Some(term) = self.term(previous.index)? else {
            return Ok((None, self.last_index() + 1));
        };
        let mut first = previous.index;
        while first > self.committed + 1 && self.term(first - 1)? == Some(term) {
            first -= 1;
        }
        Ok((Some(term), first))
    }

    /// The last index at or below `index` whose term is at most `term`, with that term:
    /// where the leader's log last agrees with a follower's conflicting term.
    pub fn last_at_or_below_with_term_at_most(
        &self,
        index: LogIndex,
        term: Term,
    ) -> Result<(LogIndex, Term), StorageError> {
        // Below the first entry's predecessor nothing is known; stopping there sends the
        // follower the snapshot if it needs anything before it.
        let floor = self.first_index()? - 1;
        let mut index = index.min(self.last_index()).max(floor);
        loop {
            let found = self.term(index)?.expect("index within the log has a term");
            if found <= term || index == floor {
                return Ok((index, found));
            }
            index -= 1;
        }
    }

    pub fn commit_to(&mut self, index: LogIndex) {
        assert!(index <= self.last_index(), "commit {index} beyond the last index {}", self.last_index());
        if index > self.committed {
            self.committed = index;
        }
    }

    /// The unstable entries, for the caller to persist.
    pub fn unstable_entries(&self) -> &[Entry] {
        &self.unstable
    }

    /// What the next `Ready` asks the caller to write: the unstable entries and, when its
    /// storage holds entries at or after the first of them (a conflicting suffix this log
    /// truncated, §3.5, or entries of an earlier `Ready` superseded before it was
    /// advanced), the index from which to remove them first. That index is always the
    /// first entry's: the caller's log then ends exactly where this one does.
    pub fn take_to_persist(&mut self) -> (Option<LogIndex>, Vec<Entry>) {
        assert!(
            self.stored_last_index + 1 >= self.unstable_start,
            "unstable entries start at {} but the storage ends at {}: a gap",
            self.unstable_start,
            self.stored_last_index
        );
        let Some(last) = self.unstable.last() else {
            // A truncation always comes with the entries that replace it.
            assert_eq!(
                self.stored_last_index + 1,
                self.unstable_start,
                "stored entries are superseded, but nothing replaces them"
            );
            return (None, Vec::new());
        };
        let truncate_from = (self.unstable_start <= self.stored_last_index).then_some(self.unstable_start);
        self.stored_last_index = last.index;
        (truncate_from, self.unstable.clone())
    }

    /// Marks entries through `position` durable, unless they were superseded meanwhile.
    /// `position` is the last entry of the `Ready` the caller just wrote.
    pub fn stable_to(&mut self, position: Option<LogPosition>) -> Result<(), StorageError> {
        self.snapshot_installed()?;
        let Some(position) = position else { return Ok(()) };
        // Checked where the storage was written, against what `take_to_persist` expected
        // of it: a storage that ignored a truncation, or lost or invented entries, would
        // let the leader count this replica for entries it does not hold.
        assert_eq!(position.index, self.stored_last_index, "advance() for entries the last Ready did not hold");
        let stored_last_index = self.storage.last_index()?;
        assert_eq!(
            stored_last_index, self.stored_last_index,
            "the caller's storage ends at {stored_last_index}, not where the last Ready left it"
        );
        if position.index < self.unstable_start || !self.matches(position)? {
            return Ok(());
        }
        let durable = (position.index - self.unstable_start + 1) as usize;
        self.unstable.drain(..durable);
        self.unstable_start = position.index + 1;
        Ok(())
    }

    /// Committed entries not yet handed out, at most `count_max` and `bytes_max` (but at
    /// least one); marks them handed out. They may include entries of the current batch to
    /// persist: the caller persists before it applies.
    pub fn take_committed(&mut self, count_max: usize, bytes_max: usize) -> Result<Vec<Entry>, StorageError> {
        let through = if crate::bugs::active(crate::bugs::Bug::ApplyBeforeCommit) {
            self.last_index().max(self.committed)
        } else {
            self.committed
        };
        if self.handed_out >= through {
            return Ok(Vec::new());
        }
        let through = through.min(self.handed_out + count_max as LogIndex);
        let entries = self.entries(self.handed_out + 1, through + 1, bytes_max)?;
        if let Some(last) = entries.last() {
            self.handed_out = last.index;
        }
        Ok(entries)
    }

    pub fn has_committed_to_hand_out(&self) -> bool {
        if crate::bugs::active(crate::bugs::Bug::ApplyBeforeCommit) {
            return self.handed_out < self.last_index();
        }
        self.handed_out < self.committed
    }
}
