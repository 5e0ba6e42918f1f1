//! A simulated disk for the replication log, modelling power loss (madsim simulates no
//! disk: SQLite on the real file system only ever sees process crashes).
//!
//! The disk is an append-only sequence of checksummed records. `write` appends to a
//! volatile buffer; `sync` makes the buffer durable. At a power loss the buffer is lost,
//! except that a random prefix of it may have reached the platter, the last of those
//! possibly torn. A separate fault flips a bit in a durable record. On reopen, a torn
//! record at the end of the durable records is a write that never completed: it is
//! dropped. A bad record anywhere else is corruption: the node refuses to start with a
//! clear error rather than serve or vote on wrong data.

use std::sync::{Arc, Mutex, MutexGuard};

use chorus::replication::{
    Entry, HardState, LogIndex, Membership, MemoryStorage, Payload, SnapshotMeta, Storage, StorageError, Term,
};
use chorus::storage::{ClusterIdentity, Creation, LogStore, LogStoreError, ScrubProgress};
use rand::Rng;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    HardState(HardState),
    /// An entry. The first entry of a write that truncates carries the truncation
    /// (`truncate_from`, its own index): replaying it first removes every stored entry from
    /// there on. In the entry's own record, a power loss keeps the truncation exactly when
    /// it keeps the first entry that replaces the suffix.
    Entry {
        entry: Entry,
        truncate_from: Option<LogIndex>,
    },
    /// A snapshot recorded, and the log compacted through `compact_through`; or, when
    /// `installed`, the whole log replaced by the snapshot.
    Snapshot {
        snapshot: SnapshotMeta,
        compact_through: LogIndex,
        installed: bool,
    },
}

#[derive(Debug, Clone)]
struct Record {
    body: Body,
    checksum: u32,
}

impl Record {
    fn new(body: Body) -> Self {
        let checksum = checksum(&body);
        Self { body, checksum }
    }

    fn intact(&self) -> bool {
        checksum(&self.body) == self.checksum
    }
}

fn checksum(body: &Body) -> u32 {
    let mut bytes = Vec::new();
    match body {
        Body::HardState(hard_state) => {
            bytes.push(0);
            bytes.extend(hard_state.term.to_be_bytes());
            bytes.extend(hard_state.vote.unwrap_or(u64::MAX).to_be_bytes());
        }
        Body::Entry { entry, truncate_from } => {
            bytes.push(2);
            bytes.extend(truncate_from.unwrap_or(0).to_be_bytes());
            bytes.extend(entry.index.to_be_bytes());
            bytes.extend(entry.term.to_be_bytes());
            match &entry.payload {
                Payload::Noop => bytes.push(0),
                Payload::Command(command) => {
                    bytes.push(1);
                    bytes.extend(command.iter());
                }
                Payload::Membership(membership) => {
                    bytes.push(2);
                    extend_with_membership(&mut bytes, membership);
                }
            }
        }
        Body::Snapshot { snapshot, compact_through, installed } => {
            bytes.push(3);
            bytes.push(u8::from(*installed));
            for value in [snapshot.last_included.index, snapshot.last_included.term, *compact_through] {
                bytes.extend(value.to_be_bytes());
            }
            extend_with_membership(&mut bytes, &snapshot.membership);
        }
    }
    crc32c::crc32c(&bytes)
}

/// A configuration's bytes for a record's checksum: each id set with its length first,
/// so that no two configurations give the same bytes.
fn extend_with_membership(bytes: &mut Vec<u8>, membership: &Membership) {
    for ids in [&membership.voters, &membership.learners] {
        bytes.extend((ids.len() as u64).to_be_bytes());
        for id in ids {
            bytes.extend(id.to_be_bytes());
        }
    }
    bytes.extend(membership.context.iter());
}

#[derive(Default)]
struct Platter {
    identity: Option<ClusterIdentity>,
    durable: Vec<Record>,
    volatile: Vec<Record>,
    /// A fault the node recorded: the disk refuses to open after it.
    fault: Option<String>,
}

/// One node's disk. It outlives the node's process: the simulation keeps it across kills.
#[derive(Clone, Default)]
pub struct SimDisk {
    platter: Arc<Mutex<Platter>>,
}

impl SimDisk {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Platter> {
        self.platter.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Power loss: unsynced records are lost, but a random prefix of them may have been
    /// written, the last of those possibly torn. Returns a description for the timeline.
    pub fn power_loss(&self, rng: &mut impl Rng) -> String {
        let mut platter = self.lock();
        let volatile = std::mem::take(&mut platter.volatile);
        if volatile.is_empty() {
            return "nothing unsynced".to_owned();
        }
        let kept = rng.random_range(0..=volatile.len());
        let torn = kept > 0 && rng.random_bool(0.5);
        let lost = volatile.len() - kept;
        platter.durable.extend(volatile.into_iter().take(kept));
        if torn && let Some(last) = platter.durable.last_mut() {
            last.checksum ^= 0x8000_0000;
        }
        format!("{lost} unsynced record(s) lost, {kept} reached the disk{}", if torn { ", the last torn" } else { "" })
    }

    /// Flips a bit in a durable record other than the last (which would read as torn).
    /// Returns whether there was one to flip.
    pub fn flip_bit(&self, rng: &mut impl Rng) -> bool {
        let mut platter = self.lock();
        let count = platter.durable.len();
        if count < 2 {
            return false;
        }
        let victim = rng.random_range(0..count - 1);
        platter.durable[victim].checksum ^= 1 << rng.random_range(0..32);
        true
    }

    /// The disk is replaced by an empty one (a wiped or swapped data directory).
    pub fn wipe(&self) {
        *self.lock() = Platter::default();
    }

    /// Opens the log on this disk for a starting node, initializing an empty disk only as
    /// `creation` allows (as the SQLite log does).
    pub fn open(&self, identity: &ClusterIdentity, creation: Creation) -> Result<SimDiskLog, LogStoreError> {
        let mut platter = self.lock();
        let path = std::path::PathBuf::from("simulated disk");
        if let Some(detail) = &platter.fault {
            return Err(LogStoreError::FaultRecorded { path, detail: detail.clone() });
        }
        match &platter.identity {
            None if creation == Creation::MemberOfExisting && identity.members.len() > 1 => {
                return Err(LogStoreError::Uninitialized {
                    path,
                    node_id: identity.node_id,
                    members: identity.members.len(),
                });
            }
            None => platter.identity = Some(identity.clone()),
            Some(stored) if creation == Creation::Bootstrap => {
                return Err(LogStoreError::AlreadyInitialized { path, cluster_id: stored.cluster_id.clone() });
            }
            Some(stored) if stored.cluster_id != identity.cluster_id => {
                return Err(LogStoreError::WrongCluster {
                    stored: stored.cluster_id.clone(),
                    configured: identity.cluster_id.clone(),
                });
            }
            Some(_) => {}
        }
        // A process never reopens its log with unsynced writes pending: those died with it.
        platter.volatile.clear();
        let corrupt = |detail: String| LogStoreError::Corrupt { path: "simulated disk".into(), detail };
        let last = platter.durable.len();
        if let Some(record) = platter.durable.last()
            && !record.intact()
        {
            // A torn final record: a write that never completed, and was never acknowledged.
            tracing::warn!("dropping a torn record at the end of the log");
            platter.durable.truncate(last - 1);
        }
        if let Some(position) = platter.durable.iter().position(|record| !record.intact()) {
            return Err(corrupt(format!("record {position} of {} fails its checksum", platter.durable.len())));
        }
        let mut log = SimDiskLog { disk: self.clone(), view: MemoryStorage::new(), scrub_next: 0 };
        for record in &platter.durable {
            log.replay(&record.body);
        }
        Ok(log)
    }
}

/// A node's view of its log on a [`SimDisk`]: what it wrote, durable or not, kept in a
/// [`MemoryStorage`] that serves the reads.
pub struct SimDiskLog {
    disk: SimDisk,
    view: MemoryStorage,
    /// The next durable record the scrub checks.
    scrub_next: usize,
}

impl SimDiskLog {
    /// Appends one record and syncs, as the SQLite log's own transactions do.
    fn write_durably(&mut self, body: Body) -> Result<(), StorageError> {
        self.replay(&body);
        self.disk.lock().volatile.push(Record::new(body));
        self.sync()
    }

    fn replay(&mut self, body: &Body) {
        match body {
            Body::HardState(hard_state) => self.view.set_hard_state(*hard_state),
            Body::Entry { entry, truncate_from } => self.view.append(*truncate_from, std::slice::from_ref(entry)),
            Body::Snapshot { snapshot, installed: true, .. } => self.view.install_snapshot(snapshot.clone()),
            Body::Snapshot { snapshot, compact_through, installed: false } => {
                self.view.record_snapshot(snapshot.clone());
                self.view.compact(*compact_through);
            }
        }
    }
}

impl Storage for SimDiskLog {
    fn hard_state(&self) -> Result<HardState, StorageError> {
        self.view.hard_state()
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        self.view.last_index()
    }

    fn first_index(&self) -> Result<LogIndex, StorageError> {
        self.view.first_index()
    }

    fn term(&self, index: LogIndex) -> Result<Option<Term>, StorageError> {
        self.view.term(index)
    }

    fn snapshot(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        self.view.snapshot()
    }

    fn entries(&self, low: LogIndex, high: LogIndex, bytes_max: usize) -> Result<Vec<Entry>, StorageError> {
        self.view.entries(low, high, bytes_max)
    }
}

impl LogStore for SimDiskLog {
    fn write(
        &mut self,
        hard_state: Option<HardState>,
        truncate_from: Option<LogIndex>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        chorus::replication::assert_writable(self.view.last_index()?, truncate_from, entries);
        // A truncation comes with the entries that replace the suffix (see `Ready`): it
        // rides in the first one's record.
        assert!(
            truncate_from.is_none() || entries.first().map(|e| e.index) == truncate_from,
            "truncation at {truncate_from:?} without an entry there to carry it"
        );
        let mut records = Vec::new();
        if let Some(hard_state) = hard_state {
            records.push(Record::new(Body::HardState(hard_state)));
        }
        records.extend(entries.iter().enumerate().map(|(offset, entry)| {
            let truncate_from = if offset == 0 { truncate_from } else { None };
            Record::new(Body::Entry { entry: entry.clone(), truncate_from })
        }));
        for record in &records {
            self.replay(&record.body);
        }
        self.disk.lock().volatile.extend(records);
        Ok(())
    }

    fn record_snapshot(&mut self, snapshot: &SnapshotMeta, compact_through: LogIndex) -> Result<(), StorageError> {
        self.write_durably(Body::Snapshot { snapshot: snapshot.clone(), compact_through, installed: false })
    }

    fn install_snapshot(&mut self, snapshot: &SnapshotMeta) -> Result<(), StorageError> {
        let compact_through = snapshot.last_included.index;
        self.write_durably(Body::Snapshot { snapshot: snapshot.clone(), compact_through, installed: true })
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        let mut platter = self.disk.lock();
        let volatile = std::mem::take(&mut platter.volatile);
        platter.durable.extend(volatile);
        Ok(())
    }

    /// Checks the durable records' checksums, round and round: a bit flipped under a
    /// running node (which reads from its view in memory) is found here.
    fn scrub(&mut self, records_max: usize, bytes_max: usize) -> Result<ScrubProgress, StorageError> {
        // Records here are in memory: the byte budget, which spares a real disk, changes
        // nothing but the pace.
        let _ = bytes_max;
        let platter = self.disk.lock();
        let mut pass_completed = false;
        if self.scrub_next >= platter.durable.len() {
            self.scrub_next = 0;
            pass_completed = true;
        }
        let end = (self.scrub_next + records_max).min(platter.durable.len());
        if let Some(bad) = (self.scrub_next..end).find(|&n| !platter.durable[n].intact()) {
            return Err(StorageError::Corrupt(format!("simulated disk: record {bad} fails its checksum")));
        }
        self.scrub_next = end;
        Ok(ScrubProgress { verified_through: self.view.last_index()?, pass_completed })
    }

    fn record_fault(&mut self, detail: &str) -> Result<(), StorageError> {
        self.disk.lock().fault.get_or_insert_with(|| detail.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use bytes::Bytes;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn identity() -> ClusterIdentity {
        ClusterIdentity { cluster_id: "sim".into(), node_id: 1, members: BTreeSet::from([1]) }
    }

    fn entry(index: LogIndex, term: Term) -> Entry {
        Entry { index, term, payload: Payload::Command(Bytes::from(format!("{index}"))) }
    }

    #[test]
    fn synced_writes_survive_power_loss_and_unsynced_ones_may_not() {
        let disk = SimDisk::new();
        let mut log = disk.open(&identity(), Creation::Bootstrap).unwrap();
        log.write(Some(HardState { term: 1, vote: Some(1) }), None, &[entry(1, 1), entry(2, 1)]).unwrap();
        log.sync().unwrap();
        log.write(None, None, &[entry(3, 1)]).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        disk.power_loss(&mut rng);
        let log = disk.open(&identity(), Creation::MemberOfExisting).unwrap();
        assert_eq!(log.hard_state().unwrap(), HardState { term: 1, vote: Some(1) });
        assert!(log.last_index().unwrap() >= 2, "synced entries survive");
    }

    #[test]
    fn a_torn_tail_is_dropped_and_a_flipped_bit_refuses_to_open() {
        for seed in 0..20 {
            let disk = SimDisk::new();
            let mut log = disk.open(&identity(), Creation::Bootstrap).unwrap();
            log.write(Some(HardState { term: 2, vote: None }), None, &[entry(1, 2)]).unwrap();
            log.sync().unwrap();
            log.write(None, None, &[entry(2, 2), entry(3, 2)]).unwrap();
            let mut rng = StdRng::seed_from_u64(seed);
            disk.power_loss(&mut rng);
            let log = disk.open(&identity(), Creation::MemberOfExisting).expect("a torn tail is not corruption");
            assert!(log.last_index().unwrap() >= 1);
        }
        let disk = SimDisk::new();
        let mut log = disk.open(&identity(), Creation::Bootstrap).unwrap();
        log.write(Some(HardState { term: 1, vote: None }), None, &[entry(1, 1), entry(2, 1)]).unwrap();
        log.sync().unwrap();
        assert!(disk.flip_bit(&mut StdRng::seed_from_u64(3)));
        let error = disk.open(&identity(), Creation::MemberOfExisting).err().expect("corruption is refused");
        assert!(error.to_string().contains("fails its checksum"), "{error}");
    }

    #[test]
    fn overwritten_suffixes_replay_correctly() {
        let disk = SimDisk::new();
        let mut log = disk.open(&identity(), Creation::Bootstrap).unwrap();
        log.write(Some(HardState { term: 1, vote: None }), None, &[entry(1, 1), entry(2, 1), entry(3, 1)]).unwrap();
        log.write(Some(HardState { term: 2, vote: None }), Some(2), &[entry(2, 2)]).unwrap();
        log.sync().unwrap();
        let log = disk.open(&identity(), Creation::MemberOfExisting).unwrap();
        assert_eq!(log.entries(1, 10, usize::MAX).unwrap(), vec![entry(1, 1), entry(2, 2)]);
    }
}
