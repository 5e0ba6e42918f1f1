//! Target `log_record`: a Raft log on disk, damaged. A valid log of eight entries (terms
//! 1, 1, 2, 2, 2, 3, 3, 3; no-ops and commands) and a term and vote is written through
//! [`SqliteLog`]; then the input's edits change it underneath, as a bad disk, a bad
//! restore or a hand edit would: fields set to any value (with or without a checksum
//! that passes), rows removed, values of the wrong SQL type, bytes of the file flipped.
//! The log is then opened and read back whole.
//!
//! Properties: nothing panics; the open either refuses with an error that says what it
//! found, or gives a log whose every read answers (an entry or an error); what it reads
//! is consistent: entries contiguous from the index asked, each of the term that
//! `term()` reports, terms never decreasing and never past the stored term; and damage is
//! detected: an entry read back differs from the one written only where an edit made its
//! checksum pass again, and likewise the term and vote.
//!
//! Input: edits, each an opcode byte, a row byte (which entry, 1-8, modulo) and a `u64`
//! value; payload edits then take a `u16`-sized byte string.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use chorus::replication::{Entry, HardState, LogIndex, Payload, Storage};
use chorus::storage::{ClusterIdentity, Creation, LogStore, SqliteLog, entry_checksum, hard_state_checksum};
use rusqlite::{Connection, params};

use crate::input::Input;
use crate::scratch::{self, Template};

/// Edits per run.
const EDITS_MAX: usize = 16;
/// Scrub steps taken on an opened log: more than a pass over eight entries needs.
const SCRUB_STEPS: usize = 24;

pub const TERMS: [u64; 8] = [1, 1, 2, 2, 2, 3, 3, 3];

fn identity() -> ClusterIdentity {
    ClusterIdentity { cluster_id: "fuzz".to_owned(), node_id: 1, members: BTreeSet::from([1, 2, 3]) }
}

const HARD_STATE: HardState = HardState { term: 3, vote: Some(2) };

/// The entries of the valid log.
fn written() -> Vec<Entry> {
    (1..)
        .zip(TERMS)
        .map(|(index, term): (LogIndex, u64)| {
            let payload =
                if index % 3 == 1 { Payload::Noop } else { Payload::Command(Bytes::from(format!("command {index}"))) };
            Entry { term, index, payload }
        })
        .collect()
}

fn write_valid_log(path: &Path) {
    let mut log = SqliteLog::open(path, &identity(), Creation::Bootstrap).expect("a new log opens");
    log.persist(Some(HARD_STATE), None, &written()).expect("a valid log is written");
}

/// What the edits may legitimately have changed: the entries at indices where an edit
/// made the checksum pass again, and the term and vote if an edit rewrote them so.
#[derive(Default)]
struct Rewritten {
    indices: BTreeSet<i64>,
    hard_state: bool,
}

/// Recomputes the checksum of entry `row` from what the row now holds.
fn fix_entry_checksum(conn: &Connection, row: i64) -> rusqlite::Result<usize> {
    let (index, term, kind, payload): (i64, i64, i64, Vec<u8>) = conn.query_row(
        "SELECT log_index, term, payload_kind, payload FROM raft_log WHERE log_index = ?1",
        [row],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let checksum = entry_checksum(index as u64, term as u64, kind, &payload);
    conn.execute("UPDATE raft_log SET checksum = ?1 WHERE log_index = ?2", params![i64::from(checksum), row])
}

/// Applies one edit; an edit the database refuses (a duplicate index, say) is no edit.
fn edit(path: &Path, conn: &Connection, input: &mut Input<'_>, rewritten: &mut Rewritten) {
    let opcode = input.u8() % 16;
    let row = i64::from(input.u8() % 8) + 1;
    let raw = input.u64();
    let value = raw as i64;
    let column = ["term", "log_index", "payload_kind", "checksum"][usize::from(opcode % 4)];
    let _ = match opcode {
        // A number column set to any value, its checksum left as it was...
        0..=3 => conn.execute(&format!("UPDATE raft_log SET {column} = ?1 WHERE log_index = ?2"), params![value, row]),
        // ...or recomputed, so the damage passes the checksum and meets the other checks.
        4..=7 => {
            rewritten.indices.extend([row, value]);
            conn.execute(&format!("UPDATE raft_log SET {column} = ?1 WHERE log_index = ?2"), params![value, row])
                .and_then(|_| fix_entry_checksum(conn, if column == "log_index" { value } else { row }))
        }
        8 => conn.execute("UPDATE raft_log SET payload = ?1 WHERE log_index = ?2", params![input.sized_bytes(), row]),
        9 => {
            rewritten.indices.insert(row);
            conn.execute("UPDATE raft_log SET payload = ?1 WHERE log_index = ?2", params![input.sized_bytes(), row])
                .and_then(|_| fix_entry_checksum(conn, row))
        }
        10 => conn.execute("DELETE FROM raft_log WHERE log_index = ?1", [row]),
        // A value of another SQL type where a number or a blob belongs.
        11 => conn.execute(
            &format!(
                "UPDATE raft_log SET {} = ?1 WHERE log_index = ?2",
                ["term", "payload", "checksum", "payload_kind"][(raw % 4) as usize]
            ),
            params![String::from_utf8_lossy(input.sized_bytes()).into_owned(), row],
        ),
        // The term and vote, with a checksum that passes or not.
        12 => {
            let hard_state = HardState { term: raw >> 8, vote: (raw & 0x80 != 0).then_some(raw & 0x7f) };
            let checksum = if raw & 0x40 != 0 { raw as u32 } else { hard_state_checksum(&hard_state) };
            rewritten.hard_state |= raw & 0x40 == 0;
            conn.execute(
                "UPDATE raft_hard_state SET term = ?1, vote = ?2, checksum = ?3",
                params![hard_state.term as i64, hard_state.vote.map(|v| v as i64), i64::from(checksum)],
            )
        }
        13 => conn.execute("UPDATE raft_scrub SET next_index = ?1", [value]),
        14 => {
            // Without its record, the term and vote read as a new log's.
            rewritten.hard_state |= raw.is_multiple_of(4);
            conn.execute(
                [
                    "DELETE FROM raft_hard_state",
                    "DELETE FROM raft_identity",
                    "UPDATE raft_identity SET members = '1,2'",
                    "UPDATE raft_scrub SET fault = 'damaged'",
                ][(raw % 4) as usize],
                [],
            )
        }
        // A byte of the database file itself flipped.
        _ => {
            let mut bytes = std::fs::read(path).expect("the log file reads");
            if !bytes.is_empty() {
                let at = (raw >> 8) as usize % bytes.len();
                bytes[at] ^= (raw as u8).max(1);
                std::fs::write(path, bytes).expect("the log file writes");
            }
            Ok(0)
        }
    };
}

pub fn run(data: &[u8]) {
    let _ = open_after_edits(data);
}

/// Edits the valid log as `data` says, opens it and reads it back: the last index of the
/// opened log, or why it was refused.
pub fn open_after_edits(data: &[u8]) -> Result<LogIndex, String> {
    static VALID: OnceLock<Template> = OnceLock::new();
    let scratch = scratch::directory();
    let path = scratch.path().join("raft.db");
    Template::get(&VALID, write_valid_log).copy_to(&path);
    let mut rewritten = Rewritten::default();
    {
        let conn = Connection::open(&path).expect("the log opens for editing");
        let mut input = Input::new(data);
        for _ in 0..EDITS_MAX {
            if input.is_empty() {
                break;
            }
            edit(&path, &conn, &mut input, &mut rewritten);
        }
    }
    let mut log = match SqliteLog::open(&path, &identity(), Creation::MemberOfExisting) {
        Ok(log) => log,
        Err(error) => {
            let reason = error.to_string();
            assert!(!reason.is_empty(), "a log refused without saying why");
            return Err(reason);
        }
    };
    read_back(&log, &rewritten);
    for _ in 0..SCRUB_STEPS {
        if let Err(error) = log.scrub(2, 64 * 1024) {
            assert!(!error.to_string().is_empty(), "a scrub failed without saying why");
            break;
        }
    }
    Ok(log.last_index().expect("in memory"))
}

/// Reads the whole opened log, checking what it answers for consistency, and that only
/// what an edit rewrote with a passing checksum differs from what was written.
fn read_back(log: &SqliteLog, rewritten: &Rewritten) {
    let hard_state = log.hard_state().expect("the term and vote are held in memory");
    assert!(rewritten.hard_state || hard_state == HARD_STATE, "a damaged term and vote read as {hard_state:?}");
    let written = written();
    let last = log.last_index().expect("the last index is held in memory");
    assert!(last <= TERMS.len() as LogIndex, "a log of eight entries opened with {last}");
    let mut previous_term = 0;
    for index in 1..=last {
        let term = log.term(index).expect("terms are held in memory").expect("every index up to the last has a term");
        assert!(term >= previous_term && term <= hard_state.term, "entry {index} of term {term} was let through");
        previous_term = term;
    }
    assert_eq!(log.term(last + 1).expect("terms are held in memory"), None, "a term past the end");
    for low in 1..=last {
        match log.entries(low, last + 1, usize::MAX) {
            Ok(entries) => {
                for (index, entry) in (low..).zip(&entries) {
                    assert_eq!(entry.index, index, "entries read out of order");
                    assert_eq!(Some(entry.term), log.term(index).expect("in memory"), "an entry and its term disagree");
                    if !rewritten.indices.contains(&(index as i64)) {
                        assert_eq!(entry, &written[index as usize - 1], "a damaged entry was read as valid");
                    }
                }
            }
            Err(error) => assert!(!error.to_string().is_empty(), "a read failed without saying why"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeds;

    fn seed(name: &str) -> Vec<u8> {
        seeds::named("log_record", name)
    }

    /// The harness reaches both sides: the untouched log opens whole, and each kind of
    /// damage is refused at the open, with a reason that names it.
    #[test]
    fn an_untouched_log_opens_and_damage_is_refused() {
        assert_eq!(open_after_edits(&seed("untouched")), Ok(8));
        for (name, found) in [
            ("term-past-stored", "after the stored term"),
            ("term-backwards", "below the entry before it"),
            ("payload-changed", "fails its checksum"),
            ("payload-kind-unknown", "unknown payload kind"),
            ("row-missing", "a gap"),
            ("negative-checksum", "no valid log holds"),
        ] {
            let refused = open_after_edits(&seed(name)).expect_err(name);
            assert!(refused.contains(found), "{name}: {refused}");
        }
    }
}
