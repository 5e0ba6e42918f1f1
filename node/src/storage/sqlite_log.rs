//! The replication log, term and vote in SQLite (`raft.sqlite3` in the data directory),
//! with the identity of the cluster the directory belongs to.
//!
//! Every record carries a CRC-32C; a record that fails it is reported as corruption, never
//! served. At open the term and vote record and the last `RECENT_ENTRIES_MAX` records are
//! verified (they are loaded to serve the tail); every record is verified whenever it is
//! read, and a background scrub ([`LogStore::scrub`]) goes over the whole log again and
//! again, from a persisted position, so that an old bad record is found before a lagging
//! follower needs it. A fault found is persisted, and the log refuses to open after it.
//! `persist` commits with `synchronous=FULL`: when it returns, the term, vote and entries
//! are fsynced, and only then may the runtime send the messages that depend on them.

use std::borrow::Cow;
use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::log_store::{Creation, LogStore, ScrubProgress};
use super::membership_codec::{decode_membership, encode_membership};
use crate::replication::{
    Entry, HardState, LogIndex, LogPosition, Membership, NodeId, Payload, SnapshotMeta, Storage, StorageError, Term,
    assert_writable,
};
use crate::sqlite::{Sharing, SqliteError, migrate, open_database};

/// What a data directory belongs to: checked at every start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterIdentity {
    pub cluster_id: String,
    pub node_id: NodeId,
    pub members: BTreeSet<NodeId>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error(transparent)]
    Open(#[from] SqliteError),
    #[error("replication log {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error(
        "data directory belongs to cluster '{stored}' but the configuration says '{configured}': point --data-dir at this cluster's directory (or an empty one)"
    )]
    WrongCluster { stored: String, configured: String },
    #[error(
        "data directory belongs to node {stored} but this is node {configured}: each node needs its own data directory"
    )]
    WrongNode { stored: NodeId, configured: NodeId },
    #[error(
        "the configuration lists members {configured:?} but this node's data records members {stored:?}; changing membership by editing the configuration is not supported"
    )]
    MembershipChanged { stored: Vec<NodeId>, configured: Vec<NodeId> },
    #[error("replication log {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "replication log {path} holds no data, but node {node_id} is a member of a {members}-member cluster: if this is the cluster's first start, pass --bootstrap; if this member's data was lost or replaced, it must not rejoin as the voter it was (it could make the cluster lose acknowledged writes) and can only come back as a new member (membership changes, not yet supported)"
    )]
    Uninitialized { path: PathBuf, node_id: NodeId, members: usize },
    #[error(
        "--bootstrap is only for a member's first start, and {path} already belongs to cluster '{cluster_id}': start without it (so that a data directory lost later is never silently started empty)"
    )]
    AlreadyInitialized { path: PathBuf, cluster_id: String },
    #[error(
        "replication log {path} was found corrupt ({detail}) while this node ran; it takes no part until its data directory is replaced (membership changes), and refuses to start meanwhile"
    )]
    FaultRecorded { path: PathBuf, detail: String },
}

const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE raft_identity (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    cluster_id TEXT    NOT NULL,
    node_id    INTEGER NOT NULL,
    members    TEXT    NOT NULL   -- sorted ids, comma-separated
);
CREATE TABLE raft_hard_state (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    term      INTEGER NOT NULL,
    vote      INTEGER,
    checksum  INTEGER NOT NULL
);
CREATE TABLE raft_log (
    log_index    INTEGER PRIMARY KEY,
    term         INTEGER NOT NULL,
    payload_kind INTEGER NOT NULL,   -- 0 no-op, 1 command, 2 configuration (a chorus.v1.Membership)
    payload      BLOB    NOT NULL,
    checksum     INTEGER NOT NULL    -- CRC-32C of index, term, kind and payload
);
",
    "
-- The background scrub: where its pass over the log stands, and the first fault it (or a
-- read) ever found, after which the log refuses to open.
CREATE TABLE raft_scrub (
    singleton     INTEGER PRIMARY KEY CHECK (singleton = 1),
    next_index    INTEGER NOT NULL,
    passes        INTEGER NOT NULL,
    fault         TEXT
);
INSERT INTO raft_scrub VALUES (1, 1, 0, NULL);
",
    "
-- The latest snapshot of the state machine (its file lives beside this database), and the
-- point the log is compacted through: entries up to compacted_index are gone, and the
-- term of that last one is kept for the consistency check of the next append.
CREATE TABLE raft_snapshot (
    singleton       INTEGER PRIMARY KEY CHECK (singleton = 1),
    last_index      INTEGER NOT NULL,
    last_term       INTEGER NOT NULL,
    members         TEXT    NOT NULL,   -- sorted ids, comma-separated
    compacted_index INTEGER NOT NULL,
    compacted_term  INTEGER NOT NULL,
    checksum        INTEGER NOT NULL    -- CRC-32C of the five fields above
);
",
    "
-- The whole configuration a snapshot records (voters, learners, addresses) as a
-- chorus.v1.Membership; `members` keeps its voters. Empty in a record written before
-- membership changes, whose configuration is its voters alone. The checksum covers it too
-- (appended after the other fields, so that an old record's checksum still holds).
ALTER TABLE raft_snapshot ADD COLUMN membership BLOB NOT NULL DEFAULT x'';
-- The configuration entries, found at every start without reading the rest of the log.
CREATE INDEX raft_log_configurations ON raft_log (log_index) WHERE payload_kind = 2;
",
];

/// Recent entries kept in memory: followers mostly ask for the tail of the log.
const RECENT_ENTRIES_MAX: usize = 4096;
/// Scrub steps between two saves of the scrub's position: a crash repeats at most this
/// many steps of verification.
const SCRUB_STEPS_PER_SAVE: u64 = 64;

pub struct SqliteLog {
    conn: Connection,
    path: PathBuf,
    hard_state: HardState,
    /// The last entry compacted away (ZERO when none was), and the latest snapshot.
    compacted: LogPosition,
    snapshot: Option<SnapshotMeta>,
    /// The term of every entry held: `terms[i]` is the term of index
    /// `compacted.index + 1 + i`. 8 bytes an entry buys term lookups (the consistency
    /// check, conflict hints) without I/O.
    terms: Vec<Term>,
    /// The last entries, starting at `recent_start`, each with the checksum computed when
    /// it was written (or read back at open) and verified whenever it is read from here,
    /// as rows read from the database are.
    recent: VecDeque<(Entry, u32)>,
    recent_start: LogIndex,
    /// The next record the scrub verifies, and steps since its position was saved.
    scrub_next: LogIndex,
    scrub_steps_unsaved: u64,
}

impl SqliteLog {
    /// Opens the log in `path`, refusing it if it belongs to another cluster, node or
    /// membership, or if a fault was recorded in it. An empty log is initialized for
    /// `identity` only as `creation` allows.
    pub fn open(path: &Path, identity: &ClusterIdentity, creation: Creation) -> Result<Self, LogStoreError> {
        let mut conn = open_database(path, Sharing::Exclusive)?;
        migrate(&mut conn, path, MIGRATIONS)?;
        let sql_error = |source| LogStoreError::Sqlite { path: path.to_owned(), source };
        check_identity(&conn, path, identity, creation).map_err(|e| match e {
            IdentityCheck::Sqlite(source) => sql_error(source),
            IdentityCheck::Mismatch(error) => error,
        })?;
        let (scrub_next, fault): (i64, Option<String>) = conn
            .query_row("SELECT next_index, fault FROM raft_scrub WHERE singleton = 1", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .map_err(sql_error)?;
        if let Some(detail) = fault {
            return Err(LogStoreError::FaultRecorded { path: path.to_owned(), detail });
        }
        let corrupt = |detail: String| LogStoreError::Corrupt { path: path.to_owned(), detail };
        let hard_state = match conn
            .query_row("SELECT term, vote, checksum FROM raft_hard_state WHERE singleton = 1", [], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, Option<i64>>(1)?, row.get::<_, i64>(2)?))
            })
            .optional()
            .map_err(sql_error)?
        {
            None => HardState::default(),
            Some((term, vote, checksum)) => {
                let term = stored_u64(term, "the stored term").map_err(corrupt)?;
                let vote = vote.map(|v| stored_u64(v, "the stored vote")).transpose().map_err(corrupt)?;
                let checksum = stored_checksum(checksum, "the term and vote").map_err(corrupt)?;
                let hard_state = HardState { term, vote };
                if hard_state_checksum(&hard_state) != checksum {
                    return Err(corrupt("the term and vote record fails its checksum".to_owned()));
                }
                hard_state
            }
        };
        let (snapshot, compacted) = read_snapshot_record(&conn).map_err(|e| match e {
            RecordError::Sqlite(source) => sql_error(source),
            RecordError::Damaged(detail) => corrupt(detail),
        })?;
        if compacted.term > hard_state.term {
            return Err(corrupt(format!(
                "the log is compacted through an entry of term {}, after the stored term {}",
                compacted.term, hard_state.term
            )));
        }
        let mut terms = Vec::new();
        {
            let mut statement =
                conn.prepare("SELECT log_index, term FROM raft_log ORDER BY log_index").map_err(sql_error)?;
            let mut rows = statement.query([]).map_err(sql_error)?;
            while let Some(row) = rows.next().map_err(sql_error)? {
                let index = stored_u64(row.get(0).map_err(sql_error)?, "an entry's index").map_err(corrupt)?;
                let term = stored_u64(row.get(1).map_err(sql_error)?, "an entry's term").map_err(corrupt)?;
                let expected = compacted.index + terms.len() as u64 + 1;
                if index != expected {
                    return Err(corrupt(format!("entry {index} follows entry {} (a gap)", expected - 1)));
                }
                if term > hard_state.term {
                    return Err(corrupt(format!(
                        "entry {index} has term {term}, after the stored term {}",
                        hard_state.term
                    )));
                }
                if terms.last().copied().unwrap_or(compacted.term) > term {
                    return Err(corrupt(format!("entry {index} has term {term}, below the entry before it")));
                }
                terms.push(term);
            }
        }
        let mut log = Self {
            conn,
            path: path.to_owned(),
            hard_state,
            compacted,
            snapshot,
            terms,
            recent: VecDeque::new(),
            recent_start: compacted.index + 1,
            scrub_next: stored_u64(scrub_next, "the scrub's position").map_err(corrupt)?.max(compacted.index + 1),
            scrub_steps_unsaved: 0,
        };
        let last = log.last_held();
        let start = last.saturating_sub(RECENT_ENTRIES_MAX as LogIndex).max(compacted.index) + 1;
        let recent = log.read_verified(start, last + 1, usize::MAX, Rows::All).map_err(|e| match e {
            StorageError::Corrupt(detail) => corrupt(detail),
            StorageError::Io(detail) => corrupt(detail),
        })?;
        log.recent = recent.into();
        log.recent_start = start;
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn last_held(&self) -> LogIndex {
        self.compacted.index + self.terms.len() as LogIndex
    }

    /// Records `snapshot` (whose state is durable already) and drops the entries through
    /// `compact_through`, in one transaction; durable on return.
    pub fn record_snapshot(&mut self, snapshot: &SnapshotMeta, compact_through: LogIndex) -> Result<(), StorageError> {
        let position = snapshot.last_included;
        let taken = self.snapshot.as_ref().map_or(0, |s| s.last_included.index);
        assert!(position.index >= taken, "snapshot through {} after one through {taken}", position.index);
        assert_eq!(self.term(position.index)?, Some(position.term), "a snapshot of an entry this log does not hold");
        assert!(compact_through <= position.index, "compaction past the snapshot");
        let through = compact_through.max(self.compacted.index);
        let compacted = LogPosition { term: self.term(through)?.expect("a held index has a term"), index: through };
        let io = |e: rusqlite::Error| StorageError::Io(format!("{}: {e}", self.path.display()));
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(io)?;
        write_snapshot_record(&tx, snapshot, compacted).map_err(io)?;
        tx.execute("DELETE FROM raft_log WHERE log_index <= ?1", [through]).map_err(io)?;
        // The commit is the fsync (synchronous=FULL): from here on the entries are gone,
        // and the snapshot file they live on in must be kept.
        tx.commit().map_err(io)?;
        self.drop_through(compacted);
        self.snapshot = Some(snapshot.clone());
        Ok(())
    }

    /// Replaces the whole log with `snapshot`, installed from the leader: no entries, its
    /// last entry as the compaction point; durable on return.
    pub fn install_snapshot(&mut self, snapshot: &SnapshotMeta) -> Result<(), StorageError> {
        let io = |e: rusqlite::Error| StorageError::Io(format!("{}: {e}", self.path.display()));
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(io)?;
        write_snapshot_record(&tx, snapshot, snapshot.last_included).map_err(io)?;
        tx.execute("DELETE FROM raft_log", []).map_err(io)?;
        tx.commit().map_err(io)?;
        self.terms.clear();
        self.recent.clear();
        self.compacted = snapshot.last_included;
        self.recent_start = self.compacted.index + 1;
        self.scrub_next = self.recent_start;
        self.snapshot = Some(snapshot.clone());
        Ok(())
    }

    /// Forgets the entries through `compacted` in memory (they are gone from the table).
    fn drop_through(&mut self, compacted: LogPosition) {
        let dropped = (compacted.index - self.compacted.index) as usize;
        self.terms.drain(..dropped);
        while self.recent_start <= compacted.index && !self.recent.is_empty() {
            self.recent.pop_front();
            self.recent_start += 1;
        }
        self.recent_start = self.recent_start.max(compacted.index + 1);
        self.scrub_next = self.scrub_next.max(compacted.index + 1);
        self.compacted = compacted;
    }

    /// Makes `hard_state`, the removal of the stored entries from `truncate_from` on (if
    /// set) and `entries` durable in one transaction, so that a crash leaves either all of
    /// it or none (never a log truncated but not appended). `entries` must start exactly at
    /// `truncate_from`, or else right after the last stored entry. Returns once fsynced.
    pub fn persist(
        &mut self,
        hard_state: Option<HardState>,
        truncate_from: Option<LogIndex>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        if hard_state.is_none() && truncate_from.is_none() && entries.is_empty() {
            return Ok(());
        }
        let start = assert_writable(self.last_held(), truncate_from, entries);
        assert!(start > self.compacted.index, "write at {start} into the compacted part of the log");
        // Computed once: stored with each row, and kept with each entry in the cache.
        let checksums: Vec<u32> = entries.iter().map(checksum_of).collect();
        let io = |e: rusqlite::Error| StorageError::Io(format!("{}: {e}", self.path.display()));
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(io)?;
        if let Some(hard_state) = hard_state {
            tx.execute(
                "INSERT INTO raft_hard_state (singleton, term, vote, checksum) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT (singleton) DO UPDATE SET term = ?1, vote = ?2, checksum = ?3",
                params![hard_state.term, hard_state.vote, i64::from(hard_state_checksum(&hard_state))],
            )
            .map_err(io)?;
        }
        if let Some(index) = truncate_from {
            tx.execute("DELETE FROM raft_log WHERE log_index >= ?1", [index]).map_err(io)?;
        }
        if !entries.is_empty() {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO raft_log (log_index, term, payload_kind, payload, checksum) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(io)?;
            for (entry, checksum) in entries.iter().zip(&checksums) {
                let (kind, payload) = encode_payload(&entry.payload);
                insert
                    .execute(params![entry.index, entry.term, kind, payload.as_ref(), i64::from(*checksum)])
                    .map_err(io)?;
            }
        }
        // The commit is the fsync (synchronous=FULL) that every reply depending on this
        // state waits for.
        tx.commit().map_err(io)?;

        if let Some(hard_state) = hard_state {
            self.hard_state = hard_state;
        }
        if let Some(index) = truncate_from {
            self.terms.truncate((index - self.compacted.index) as usize - 1);
            if index < self.recent_start {
                self.recent.clear();
                self.recent_start = index;
            } else {
                self.recent.truncate((index - self.recent_start) as usize);
            }
        }
        self.terms.extend(entries.iter().map(|e| e.term));
        self.recent.extend(entries.iter().cloned().zip(checksums));
        while self.recent.len() > RECENT_ENTRIES_MAX {
            self.recent.pop_front();
            self.recent_start += 1;
        }
        // The cache of recent entries ends where the log does.
        assert_eq!(
            self.recent_start + self.recent.len() as LogIndex,
            self.last_held() + 1,
            "the recent-entry cache does not end with the log"
        );
        Ok(())
    }

    fn read_entries(&self, low: LogIndex, high: LogIndex, bytes_max: usize) -> Result<Vec<Entry>, StorageError> {
        Ok(self.read_verified(low, high, bytes_max, Rows::All)?.into_iter().map(|(entry, _)| entry).collect())
    }

    fn read_configuration_entries(&self, after: LogIndex) -> Result<Vec<Entry>, StorageError> {
        let low = after.max(self.compacted.index) + 1;
        let rows = self.read_verified(low, self.last_held() + 1, usize::MAX, Rows::Configurations)?;
        Ok(rows.into_iter().map(|(entry, _)| entry).collect())
    }

    /// Entries read from the database, each with the checksum it was verified against.
    fn read_verified(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: usize,
        rows: Rows,
    ) -> Result<Vec<(Entry, u32)>, StorageError> {
        let io = |e: rusqlite::Error| StorageError::Io(format!("{}: {e}", self.path.display()));
        let query = match rows {
            Rows::All => {
                "SELECT log_index, term, payload_kind, payload, checksum FROM raft_log
                 WHERE log_index >= ?1 AND log_index < ?2 ORDER BY log_index"
            }
            Rows::Configurations => CONFIGURATION_ROWS,
        };
        let mut statement = self.conn.prepare_cached(query).map_err(io)?;
        // Past the log's end there is nothing to read (and an index past i64 has no row).
        let high = high.min(self.last_held() + 1);
        let mut rows = statement.query(params![low, high]).map_err(io)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        while let Some(row) = rows.next().map_err(io)? {
            let damaged = |detail: String| StorageError::Corrupt(format!("{}: {detail}", self.path.display()));
            let index = stored_u64(row.get(0).map_err(io)?, "an entry's index").map_err(damaged)?;
            let term = stored_u64(row.get(1).map_err(io)?, "an entry's term").map_err(damaged)?;
            let kind: i64 = row.get(2).map_err(io)?;
            let payload: Vec<u8> = row.get(3).map_err(io)?;
            let checksum = stored_checksum(row.get(4).map_err(io)?, &format!("entry {index}")).map_err(damaged)?;
            if entry_checksum(index, term, kind, &payload) != checksum {
                return Err(StorageError::Corrupt(format!(
                    "{}: entry {index} fails its checksum",
                    self.path.display()
                )));
            }
            let payload = match kind {
                0 => Payload::Noop,
                1 => Payload::Command(Bytes::from(payload)),
                2 => Payload::Membership(decode_membership_record(&payload).map_err(|detail| {
                    StorageError::Corrupt(format!("{}: entry {index}: {detail}", self.path.display()))
                })?),
                other => {
                    return Err(StorageError::Corrupt(format!(
                        "{}: entry {index} has unknown payload kind {other}",
                        self.path.display()
                    )));
                }
            };
            let entry = Entry { term, index, payload };
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push((entry, checksum));
        }
        Ok(out)
    }
}

/// The configuration entries in a range, through their partial index (a test checks that
/// SQLite's plan uses it).
const CONFIGURATION_ROWS: &str = "SELECT log_index, term, payload_kind, payload, checksum FROM raft_log
     WHERE log_index >= ?1 AND log_index < ?2 AND payload_kind = 2 ORDER BY log_index";

/// Which rows [`SqliteLog::read_verified`] reads.
#[derive(Clone, Copy)]
enum Rows {
    All,
    Configurations,
}

enum RecordError {
    Sqlite(rusqlite::Error),
    Damaged(String),
}

fn members_text(members: &BTreeSet<NodeId>) -> String {
    members.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(",")
}

fn encode_membership_record(membership: &Membership) -> Vec<u8> {
    use prost::Message as _;
    encode_membership(membership).encode_to_vec()
}

/// A stored configuration: one that does not decode, or that no correct replica would
/// hold, is damage.
fn decode_membership_record(bytes: &[u8]) -> Result<Membership, String> {
    use prost::Message as _;
    let decoded =
        chorus_proto::v1::Membership::decode(bytes).map_err(|e| format!("its configuration does not decode ({e})"))?;
    let membership = decode_membership(decoded).map_err(|e| format!("its configuration is malformed ({e})"))?;
    if let Some(reason) = membership.invalid() {
        return Err(format!("it holds {reason}"));
    }
    Ok(membership)
}

fn snapshot_record_checksum(snapshot: &SnapshotMeta, compacted: LogPosition, membership_record: &[u8]) -> u32 {
    let mut bytes = Vec::with_capacity(64);
    for value in [snapshot.last_included.index, snapshot.last_included.term, compacted.index, compacted.term] {
        bytes.extend_from_slice(&value.to_be_bytes());
    }
    bytes.extend_from_slice(members_text(&snapshot.membership.voters).as_bytes());
    bytes.extend_from_slice(membership_record);
    crc32c::crc32c(&bytes)
}

fn write_snapshot_record(
    tx: &rusqlite::Transaction<'_>,
    snapshot: &SnapshotMeta,
    compacted: LogPosition,
) -> Result<(), rusqlite::Error> {
    let membership = encode_membership_record(&snapshot.membership);
    tx.execute(
        "INSERT INTO raft_snapshot
             (singleton, last_index, last_term, members, compacted_index, compacted_term, checksum, membership)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (singleton) DO UPDATE SET last_index = ?1, last_term = ?2, members = ?3,
             compacted_index = ?4, compacted_term = ?5, checksum = ?6, membership = ?7",
        params![
            snapshot.last_included.index,
            snapshot.last_included.term,
            members_text(&snapshot.membership.voters),
            compacted.index,
            compacted.term,
            i64::from(snapshot_record_checksum(snapshot, compacted, &membership)),
            membership,
        ],
    )?;
    Ok(())
}

/// The snapshot record and the compaction point (none and ZERO for a log never compacted).
fn read_snapshot_record(conn: &Connection) -> Result<(Option<SnapshotMeta>, LogPosition), RecordError> {
    type Row = (i64, i64, String, i64, i64, i64, Vec<u8>);
    let row: Option<Row> = conn
        .query_row(
            "SELECT last_index, last_term, members, compacted_index, compacted_term, checksum, membership
             FROM raft_snapshot WHERE singleton = 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?, row.get(6)?)),
        )
        .optional()
        .map_err(RecordError::Sqlite)?;
    let Some((last_index, last_term, members, compacted_index, compacted_term, checksum, membership_record)) = row
    else {
        return Ok((None, LogPosition::ZERO));
    };
    let number = |value, what| stored_u64(value, what).map_err(RecordError::Damaged);
    let last_included = LogPosition {
        index: number(last_index, "the snapshot's index")?,
        term: number(last_term, "the snapshot's term")?,
    };
    let compacted = LogPosition {
        index: number(compacted_index, "the compaction point")?,
        term: number(compacted_term, "the compaction point's term")?,
    };
    let voters: BTreeSet<NodeId> = members
        .split(',')
        .map(|id| {
            id.parse().map_err(|_| RecordError::Damaged(format!("the snapshot's members '{members}' are not ids")))
        })
        .collect::<Result<_, _>>()?;
    let membership = if membership_record.is_empty() {
        // Written before membership changes: the voters are the whole configuration.
        Membership::with_voters(voters.iter().copied())
    } else {
        decode_membership_record(&membership_record)
            .map_err(|detail| RecordError::Damaged(format!("the snapshot record: {detail}")))?
    };
    let snapshot = SnapshotMeta { last_included, membership };
    let checksum = stored_checksum(checksum, "the snapshot record").map_err(RecordError::Damaged)?;
    if snapshot_record_checksum(&snapshot, compacted, &membership_record) != checksum {
        return Err(RecordError::Damaged("the snapshot record fails its checksum".to_owned()));
    }
    if snapshot.membership.voters != voters {
        return Err(RecordError::Damaged("the snapshot record's voters disagree with its configuration".to_owned()));
    }
    if compacted.index > last_included.index {
        return Err(RecordError::Damaged("the log is compacted past its snapshot".to_owned()));
    }
    Ok((Some(snapshot), compacted))
}

enum IdentityCheck {
    Sqlite(rusqlite::Error),
    Mismatch(LogStoreError),
}

fn check_identity(
    conn: &Connection,
    path: &Path,
    identity: &ClusterIdentity,
    creation: Creation,
) -> Result<(), IdentityCheck> {
    let members: Vec<String> = identity.members.iter().map(|id| id.to_string()).collect();
    let members = members.join(",");
    let stored: Option<(String, NodeId, String)> = conn
        .query_row("SELECT cluster_id, node_id, members FROM raft_identity WHERE singleton = 1", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()
        .map_err(IdentityCheck::Sqlite)?;
    let Some((cluster_id, node_id, stored_members)) = stored else {
        // A member of a cluster of several starts empty only when the operator says this is
        // the cluster's first start: a member whose data was lost must not come back as the
        // voter it was, with an empty log (acknowledged writes could be lost).
        if creation == Creation::MemberOfExisting && identity.members.len() > 1 {
            return Err(IdentityCheck::Mismatch(LogStoreError::Uninitialized {
                path: path.to_owned(),
                node_id: identity.node_id,
                members: identity.members.len(),
            }));
        }
        conn.execute(
            "INSERT INTO raft_identity (singleton, cluster_id, node_id, members) VALUES (1, ?1, ?2, ?3)",
            params![identity.cluster_id, identity.node_id, members],
        )
        .map_err(IdentityCheck::Sqlite)?;
        return Ok(());
    };
    if creation == Creation::Bootstrap {
        return Err(IdentityCheck::Mismatch(LogStoreError::AlreadyInitialized { path: path.to_owned(), cluster_id }));
    }
    if cluster_id != identity.cluster_id {
        return Err(IdentityCheck::Mismatch(LogStoreError::WrongCluster {
            stored: cluster_id,
            configured: identity.cluster_id.clone(),
        }));
    }
    if node_id != identity.node_id {
        return Err(IdentityCheck::Mismatch(LogStoreError::WrongNode {
            stored: node_id,
            configured: identity.node_id,
        }));
    }
    if stored_members != members {
        let stored = stored_members.split(',').filter_map(|id| id.parse().ok()).collect();
        return Err(IdentityCheck::Mismatch(LogStoreError::MembershipChanged {
            stored,
            configured: identity.members.iter().copied().collect(),
        }));
    }
    Ok(())
}

/// An entry's payload kind and stored bytes (borrowed but for a configuration, which is
/// encoded: configurations are rare).
fn encode_payload(payload: &Payload) -> (i64, Cow<'_, [u8]>) {
    match payload {
        Payload::Noop => (0, Cow::Borrowed(&[])),
        Payload::Command(bytes) => (1, Cow::Borrowed(bytes)),
        Payload::Membership(membership) => (2, Cow::Owned(encode_membership_record(membership))),
    }
}

/// The checksum stored with an entry: CRC-32C over its index, term, payload kind and
/// payload. Public for the fuzz target, which writes records that pass it.
pub fn entry_checksum(index: LogIndex, term: Term, kind: i64, payload: &[u8]) -> u32 {
    let mut header = [0u8; 17];
    header[..8].copy_from_slice(&index.to_be_bytes());
    header[8..16].copy_from_slice(&term.to_be_bytes());
    header[16] = kind as u8;
    crc32c::crc32c_append(crc32c::crc32c(&header), payload)
}

fn checksum_of(entry: &Entry) -> u32 {
    let (kind, payload) = encode_payload(&entry.payload);
    entry_checksum(entry.index, entry.term, kind, &payload)
}

/// A stored integer that must be a non-negative number (an index, a term, a node id): any
/// other value is damage, reported as such rather than wrapped into a huge number.
fn stored_u64(value: i64, what: &str) -> Result<u64, String> {
    u64::try_from(value).map_err(|_| format!("{what} is {value}, which no valid log holds"))
}

fn stored_checksum(value: i64, what: &str) -> Result<u32, String> {
    u32::try_from(value).map_err(|_| format!("the checksum of {what} is {value}, which no valid log holds"))
}

/// The checksum stored with the term and vote. Public for the fuzz target.
pub fn hard_state_checksum(hard_state: &HardState) -> u32 {
    let mut bytes = [0u8; 17];
    bytes[..8].copy_from_slice(&hard_state.term.to_be_bytes());
    if let Some(vote) = hard_state.vote {
        bytes[8] = 1;
        bytes[9..].copy_from_slice(&vote.to_be_bytes());
    }
    crc32c::crc32c(&bytes)
}

impl Storage for SqliteLog {
    fn hard_state(&self) -> Result<HardState, StorageError> {
        Ok(self.hard_state)
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.last_held())
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
        Ok(self.terms.get((index - self.compacted.index) as usize - 1).copied())
    }

    fn snapshot(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        Ok(self.snapshot.clone())
    }

    fn entries(&self, low: LogIndex, high: LogIndex, bytes_max: usize) -> Result<Vec<Entry>, StorageError> {
        let low = low.max(self.compacted.index + 1);
        let high = high.min(self.last_held() + 1);
        if low >= high {
            return Ok(Vec::new());
        }
        if low >= self.recent_start {
            let mut out = Vec::new();
            let mut bytes = 0;
            for (entry, checksum) in
                self.recent.range((low - self.recent_start) as usize..(high - self.recent_start) as usize)
            {
                if checksum_of(entry) != *checksum {
                    return Err(StorageError::Corrupt(format!(
                        "{}: entry {} fails its checksum in memory",
                        self.path.display(),
                        entry.index
                    )));
                }
                bytes += entry.size_bytes();
                if !out.is_empty() && bytes > bytes_max {
                    break;
                }
                out.push(entry.clone());
            }
            return Ok(out);
        }
        self.read_entries(low, high, bytes_max)
    }

    /// Read through an index of their own: a start does not read the whole log.
    fn configuration_entries(&self, after: LogIndex) -> Result<Vec<Entry>, StorageError> {
        self.read_configuration_entries(after)
    }
}

impl LogStore for SqliteLog {
    fn write(
        &mut self,
        hard_state: Option<HardState>,
        truncate_from: Option<LogIndex>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        self.persist(hard_state, truncate_from, entries)
    }

    /// Nothing to do: SQLite's COMMIT in `write` already fsynced (synchronous=FULL).
    fn sync(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    fn record_snapshot(&mut self, snapshot: &SnapshotMeta, compact_through: LogIndex) -> Result<(), StorageError> {
        SqliteLog::record_snapshot(self, snapshot, compact_through)
    }

    fn install_snapshot(&mut self, snapshot: &SnapshotMeta) -> Result<(), StorageError> {
        SqliteLog::install_snapshot(self, snapshot)
    }

    fn scrub(&mut self, records_max: usize, bytes_max: usize) -> Result<ScrubProgress, StorageError> {
        let last = self.last_held();
        let io = |e: rusqlite::Error| StorageError::Io(format!("{}: {e}", self.path.display()));
        let mut pass_done = false;
        if self.scrub_next > last {
            // The end of a pass (or a log truncated meanwhile): start over.
            self.scrub_next = self.compacted.index + 1;
            pass_done = true;
        }
        let low = self.scrub_next.max(self.compacted.index + 1);
        let high = (low + records_max as LogIndex).min(last + 1);
        if low >= high {
            // An empty log: nothing to verify.
            return Ok(ScrubProgress { verified_through: last, pass_completed: pass_done });
        }
        // read_entries verifies every record it reads, and stops at about `bytes_max` (after
        // one record at least): a step of big records reads fewer of them.
        let entries = self.read_entries(low, high, bytes_max)?;
        let Some(last_read) = entries.last() else {
            return Err(StorageError::Corrupt(format!("{}: entries {low}..{high} are missing", self.path.display())));
        };
        for (offset, entry) in entries.iter().enumerate() {
            let expected = low + offset as LogIndex;
            if entry.index != expected || self.term(expected)? != Some(entry.term) {
                return Err(StorageError::Corrupt(format!(
                    "{}: entry {expected} does not match the log's index of terms",
                    self.path.display()
                )));
            }
        }
        let high = last_read.index + 1;
        self.scrub_next = high;
        self.scrub_steps_unsaved += 1;
        if pass_done || self.scrub_steps_unsaved >= SCRUB_STEPS_PER_SAVE {
            self.conn
                .execute(
                    "UPDATE raft_scrub SET next_index = ?1, passes = passes + ?2 WHERE singleton = 1",
                    params![self.scrub_next, i64::from(pass_done)],
                )
                .map_err(io)?;
            self.scrub_steps_unsaved = 0;
        }
        Ok(ScrubProgress { verified_through: high - 1, pass_completed: pass_done })
    }

    fn record_fault(&mut self, detail: &str) -> Result<(), StorageError> {
        self.conn
            .execute("UPDATE raft_scrub SET fault = ?1 WHERE singleton = 1 AND fault IS NULL", [detail])
            .map_err(|e| StorageError::Io(format!("{}: {e}", self.path.display())))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(cluster: &str, node: NodeId, members: &[NodeId]) -> ClusterIdentity {
        ClusterIdentity { cluster_id: cluster.to_owned(), node_id: node, members: members.iter().copied().collect() }
    }

    fn entry(index: LogIndex, term: Term, text: &str) -> Entry {
        Entry { index, term, payload: Payload::Command(Bytes::from(text.to_owned())) }
    }

    #[test]
    fn persists_and_reopens_term_vote_and_entries_with_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.sqlite3");
        let id = identity("c", 1, &[1, 2, 3]);
        {
            let mut log = SqliteLog::open(&path, &id, Creation::Bootstrap).unwrap();
            log.persist(
                Some(HardState { term: 2, vote: Some(3) }),
                None,
                &[entry(1, 1, "a"), entry(2, 2, "b"), entry(3, 2, "c")],
            )
            .unwrap();
            // A new leader overwrites the suffix from index 2.
            log.persist(
                Some(HardState { term: 3, vote: None }),
                Some(2),
                &[Entry { index: 2, term: 3, payload: Payload::Noop }],
            )
            .unwrap();
            assert_eq!(log.last_index().unwrap(), 2);
        }
        let log = SqliteLog::open(&path, &id, Creation::MemberOfExisting).unwrap();
        assert_eq!(log.hard_state().unwrap(), HardState { term: 3, vote: None });
        assert_eq!(log.term(2).unwrap(), Some(3));
        assert_eq!(log.term(3).unwrap(), None);
        let entries = log.entries(1, 10, usize::MAX).unwrap();
        assert_eq!(entries, vec![entry(1, 1, "a"), Entry { index: 2, term: 3, payload: Payload::Noop }]);
        // The on-disk path (not the cache) returns the same.
        assert_eq!(log.read_entries(1, 10, usize::MAX).unwrap(), entries);
    }

    /// A compacted log keeps its snapshot, its compaction point and its tail across a
    /// reopen, serves reads from the tail (the cache and the table alike) and appends after
    /// it; an installed snapshot leaves an empty log ending at the snapshot.
    #[test]
    fn compaction_and_installed_snapshots_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.sqlite3");
        let id = identity("c", 1, &[1, 2, 3]);
        let snapshot = |index, term| SnapshotMeta {
            last_included: LogPosition { index, term },
            membership: Membership::with_voters(id.members.iter().copied()),
        };
        let entries: Vec<Entry> = (1..=6).map(|i| entry(i, 1 + i / 4, &format!("e{i}"))).collect();
        {
            let mut log = SqliteLog::open(&path, &id, Creation::Bootstrap).unwrap();
            log.persist(Some(HardState { term: 2, vote: None }), None, &entries).unwrap();
            log.record_snapshot(&snapshot(5, 2), 3).unwrap();
        }
        let mut log = SqliteLog::open(&path, &id, Creation::MemberOfExisting).unwrap();
        assert_eq!((log.first_index().unwrap(), log.last_index().unwrap()), (4, 6));
        assert_eq!([2, 3, 4, 6, 7].map(|i| log.term(i).unwrap()), [None, Some(1), Some(2), Some(2), None]);
        assert_eq!(log.snapshot().unwrap(), Some(snapshot(5, 2)));
        assert_eq!(log.entries(1, 10, usize::MAX).unwrap(), entries[3..]);
        assert_eq!(log.read_entries(4, 10, usize::MAX).unwrap(), entries[3..]);
        log.persist(None, Some(6), &[entry(6, 2, "again"), entry(7, 2, "new")]).unwrap();
        assert_eq!(log.scrub(100, usize::MAX).unwrap().verified_through, 7);
        log.persist(Some(HardState { term: 3, vote: None }), None, &[]).unwrap();
        log.install_snapshot(&snapshot(20, 3)).unwrap();
        drop(log);
        let mut log = SqliteLog::open(&path, &id, Creation::MemberOfExisting).unwrap();
        assert_eq!((log.first_index().unwrap(), log.last_index().unwrap(), log.term(20).unwrap()), (21, 20, Some(3)));
        assert_eq!(log.entries(1, 30, usize::MAX).unwrap(), []);
        log.persist(None, None, &[entry(21, 3, "after")]).unwrap();
        assert_eq!(log.entries(21, 22, usize::MAX).unwrap(), [entry(21, 3, "after")]);
    }

    /// Configurations, in entries and in the snapshot record, survive a reopen whole
    /// (learners and context too); the configuration entries are found without the rest,
    /// truncated ones are gone; a snapshot record written before configurations were
    /// stored (an empty `membership`) reads as its voters.
    #[test]
    fn configurations_survive_a_reopen_and_old_snapshot_records_read_as_voters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.sqlite3");
        let id = identity("c", 1, &[1, 2, 3]);
        let with_learner = Membership {
            learners: [4].into(),
            context: Bytes::from_static(b"ctx"),
            ..Membership::with_voters([1, 2, 3])
        };
        let promoted = Membership::with_voters([1, 2, 3, 4]);
        let configuration = |index, membership| Entry { term: 1, index, payload: Payload::Membership(membership) };
        let entries = vec![
            entry(1, 1, "a"),
            configuration(2, with_learner.clone()),
            entry(3, 1, "b"),
            configuration(4, promoted.clone()),
            configuration(5, with_learner.clone()),
        ];
        {
            let mut log = SqliteLog::open(&path, &id, Creation::Bootstrap).unwrap();
            log.persist(Some(HardState { term: 1, vote: None }), None, &entries).unwrap();
            log.persist(None, Some(5), &[entry(5, 1, "c")]).unwrap();
            let snapshot =
                SnapshotMeta { last_included: LogPosition { index: 2, term: 1 }, membership: with_learner.clone() };
            log.record_snapshot(&snapshot, 0).unwrap();
        }
        let log = SqliteLog::open(&path, &id, Creation::MemberOfExisting).unwrap();
        assert_eq!(log.entries(1, 6, usize::MAX).unwrap()[..4], entries[..4]);
        assert_eq!(log.configuration_entries(0).unwrap(), [entries[1].clone(), entries[3].clone()]);
        assert_eq!(log.configuration_entries(2).unwrap(), [entries[3].clone()]);
        assert_eq!(log.snapshot().unwrap().unwrap().membership, with_learner);
        drop(log);
        // The record as a build before configurations wrote it: no `membership`, and the
        // checksum over the voters alone.
        let conn = Connection::open(&path).unwrap();
        let voters = SnapshotMeta {
            last_included: LogPosition { index: 2, term: 1 },
            membership: Membership::with_voters([1, 2, 3]),
        };
        let old_checksum = snapshot_record_checksum(&voters, LogPosition::ZERO, &[]);
        conn.execute("UPDATE raft_snapshot SET membership = x'', checksum = ?1", [i64::from(old_checksum)]).unwrap();
        drop(conn);
        let log = SqliteLog::open(&path, &id, Creation::MemberOfExisting).unwrap();
        assert_eq!(log.snapshot().unwrap(), Some(voters));
    }

    /// The start-up query for configuration entries goes through their partial index: a
    /// start must not read the whole log to find them.
    #[test]
    fn configuration_entries_are_found_through_their_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.sqlite3");
        let log = SqliteLog::open(&path, &identity("c", 1, &[1]), Creation::Bootstrap).unwrap();
        let plan: Vec<String> = {
            let mut statement = log.conn.prepare(&format!("EXPLAIN QUERY PLAN {CONFIGURATION_ROWS}")).unwrap();
            statement.query_map([1, 10], |row| row.get::<_, String>(3)).unwrap().map(Result::unwrap).collect()
        };
        assert!(plan.iter().any(|step| step.contains("raft_log_configurations")), "{plan:?}");
    }

    /// An overwrite must come with its truncation: the log would otherwise keep both.
    #[test]
    #[should_panic(expected = "entries must be contiguous from 3")]
    fn an_overwrite_without_its_truncation_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.sqlite3");
        let mut log = SqliteLog::open(&path, &identity("c", 1, &[1]), Creation::Bootstrap).unwrap();
        log.persist(Some(HardState { term: 1, vote: Some(1) }), None, &[entry(1, 1, "a"), entry(2, 1, "b")]).unwrap();
        log.persist(Some(HardState { term: 2, vote: None }), None, &[entry(2, 2, "c")]).unwrap();
    }

    #[test]
    fn another_cluster_node_or_membership_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.sqlite3");
        let existing = Creation::MemberOfExisting;
        drop(SqliteLog::open(&path, &identity("alpha", 1, &[1, 2, 3]), Creation::Bootstrap).unwrap());
        assert!(matches!(
            SqliteLog::open(&path, &identity("beta", 1, &[1, 2, 3]), existing),
            Err(LogStoreError::WrongCluster { .. })
        ));
        assert!(matches!(
            SqliteLog::open(&path, &identity("alpha", 2, &[1, 2, 3]), existing),
            Err(LogStoreError::WrongNode { .. })
        ));
        let err = SqliteLog::open(&path, &identity("alpha", 1, &[1, 2, 3, 4, 5]), existing).err().unwrap();
        assert!(matches!(err, LogStoreError::MembershipChanged { .. }), "{err}");
        SqliteLog::open(&path, &identity("alpha", 1, &[1, 2, 3]), existing).unwrap();
    }

    /// A member of a cluster of several starts on an empty log only with --bootstrap (its
    /// data may have been lost: it must not come back as the voter it was), and --bootstrap
    /// is refused once the log holds data (so that it is never left on for good). A cluster
    /// of one needs neither.
    #[test]
    fn an_empty_log_is_initialized_only_when_the_operator_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.sqlite3");
        let member = identity("c", 2, &[1, 2, 3]);
        let error = SqliteLog::open(&path, &member, Creation::MemberOfExisting).err().unwrap();
        assert!(matches!(error, LogStoreError::Uninitialized { node_id: 2, members: 3, .. }), "{error}");
        assert!(error.to_string().contains("--bootstrap"), "{error}");
        let error = SqliteLog::open(&path, &member, Creation::MemberOfExisting).err().unwrap();
        assert!(matches!(error, LogStoreError::Uninitialized { .. }), "a refused start leaves nothing behind: {error}");
        drop(SqliteLog::open(&path, &member, Creation::Bootstrap).unwrap());
        let error = SqliteLog::open(&path, &member, Creation::Bootstrap).err().unwrap();
        assert!(matches!(error, LogStoreError::AlreadyInitialized { .. }), "{error}");
        SqliteLog::open(&path, &member, Creation::MemberOfExisting).unwrap();
        let alone = dir.path().join("single.sqlite3");
        drop(SqliteLog::open(&alone, &identity("one", 1, &[1]), Creation::MemberOfExisting).unwrap());
    }

    #[test]
    fn a_flipped_byte_is_reported_as_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.sqlite3");
        let id = identity("c", 1, &[1]);
        let mut log = SqliteLog::open(&path, &id, Creation::Bootstrap).unwrap();
        log.persist(Some(HardState { term: 1, vote: Some(1) }), None, &[entry(1, 1, "hello")]).unwrap();
        log.conn.execute("UPDATE raft_log SET payload = x'68656c6c70' WHERE log_index = 1", []).unwrap();
        assert!(matches!(log.read_entries(1, 2, usize::MAX), Err(StorageError::Corrupt(_))));
        drop(log);
        let err = SqliteLog::open(&path, &id, Creation::MemberOfExisting).err().unwrap();
        assert!(err.to_string().contains("fails its checksum"), "{err}");
    }

    /// A number no valid log holds (a negative term, index or checksum) is reported as
    /// corruption, not wrapped into a huge value; an entry changed in the memory cache is
    /// caught by the checksum computed when it was written.
    #[test]
    fn negative_numbers_and_a_changed_cached_entry_are_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.sqlite3");
        let id = identity("c", 1, &[1]);
        let mut log = SqliteLog::open(&path, &id, Creation::Bootstrap).unwrap();
        log.persist(Some(HardState { term: 2, vote: Some(1) }), None, &[entry(1, 1, "a"), entry(2, 2, "b")]).unwrap();
        log.recent[1].0.payload = Payload::Command(Bytes::from_static(b"c"));
        let error = log.entries(2, 3, usize::MAX).unwrap_err();
        assert!(matches!(&error, StorageError::Corrupt(detail) if detail.contains("in memory")), "{error}");
        log.conn.execute("UPDATE raft_log SET term = -1 WHERE log_index = 2", []).unwrap();
        drop(log);
        let error = SqliteLog::open(&path, &id, Creation::MemberOfExisting).err().unwrap().to_string();
        assert!(error.contains("an entry's term is -1"), "{error}");
        let damage = Connection::open(&path).unwrap();
        damage.execute("UPDATE raft_log SET term = 2 WHERE log_index = 2", []).unwrap();
        damage.execute("UPDATE raft_hard_state SET vote = -5", []).unwrap();
        drop(damage);
        let error = SqliteLog::open(&path, &id, Creation::MemberOfExisting).err().unwrap().to_string();
        assert!(error.contains("the stored vote is -5"), "{error}");
    }

    /// A bad record older than what the log verifies at open is found by the scrub, which
    /// goes round the whole log from a saved position; once the fault is recorded the log
    /// refuses to open. (Before, only the last 4,096 records were ever checked up front; an
    /// older bad one stopped whichever node led when a lagging follower needed it.)
    #[test]
    fn the_scrub_finds_an_old_bad_record_and_the_fault_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.sqlite3");
        let id = identity("c", 1, &[1]);
        let count = RECENT_ENTRIES_MAX as LogIndex + 500;
        {
            let mut log = SqliteLog::open(&path, &id, Creation::Bootstrap).unwrap();
            let entries: Vec<Entry> = (1..=count).map(|index| entry(index, 1, "payload")).collect();
            log.persist(Some(HardState { term: 1, vote: Some(1) }), None, &entries).unwrap();
            log.conn.execute("UPDATE raft_log SET payload = x'00' WHERE log_index = 300", []).unwrap();
        }
        let mut log = SqliteLog::open(&path, &id, Creation::MemberOfExisting).expect("open checks only the tail");
        let first = log.scrub(256, usize::MAX).unwrap();
        assert_eq!(first.verified_through, 256);
        let error = log.scrub(256, usize::MAX).unwrap_err();
        assert!(matches!(&error, StorageError::Corrupt(detail) if detail.contains("entry 300")), "{error}");
        log.record_fault(&error.to_string()).unwrap();
        drop(log);
        let error = SqliteLog::open(&path, &id, Creation::MemberOfExisting).err().unwrap();
        assert!(matches!(error, LogStoreError::FaultRecorded { .. }), "{error}");
    }

    /// A whole pass goes round again; the position survives a reopen (within a save).
    #[test]
    fn the_scrub_goes_round_and_resumes_where_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.sqlite3");
        let id = identity("c", 1, &[1]);
        let mut log = SqliteLog::open(&path, &id, Creation::Bootstrap).unwrap();
        assert_eq!(log.scrub(300, usize::MAX).unwrap().verified_through, 0, "an empty log is no fault");
        assert_eq!(log.scrub(300, usize::MAX).unwrap().verified_through, 0);
        let entries: Vec<Entry> = (1..=1000).map(|index| entry(index, 1, "x")).collect();
        log.persist(Some(HardState { term: 1, vote: Some(1) }), None, &entries).unwrap();
        let steps: Vec<ScrubProgress> = (0..5).map(|_| log.scrub(300, usize::MAX).unwrap()).collect();
        let through: Vec<LogIndex> = steps.iter().map(|p| p.verified_through).collect();
        assert_eq!(through, [300, 600, 900, 1000, 300]);
        assert!(steps[4].pass_completed && !steps[3].pass_completed);
        drop(log);
        let mut log = SqliteLog::open(&path, &id, Creation::MemberOfExisting).unwrap();
        assert_eq!(log.scrub(300, usize::MAX).unwrap().verified_through, 600, "the end of a pass saved the position");
        let three_records = 3 * entry(1, 1, "x").size_bytes();
        assert_eq!(log.scrub(300, three_records).unwrap().verified_through, 603, "a step reads about its bytes");
        assert_eq!(log.scrub(300, 0).unwrap().verified_through, 604, "and at least one record");
    }
}
