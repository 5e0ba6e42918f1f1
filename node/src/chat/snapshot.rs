//! Snapshots of the chat state: a consistent copy of the whole database in a file of its
//! own, taken while apply goes on, and installed in place of the state in one transaction.
//!
//! A snapshot file is an ordinary SQLite database of the chat schema; its `last_applied`
//! says which log entries it holds. Taking one is `VACUUM INTO` on a read-only connection
//! (a read transaction: apply is not held up), then an fsync of the file, which SQLite does
//! not do for `VACUUM INTO`. Installing one is SQLite's online backup from the file into
//! the writer's connection: one write transaction, committed with `synchronous=FULL`, so a
//! crash leaves the old state or the new one, never a mix.

use std::path::Path;

use rusqlite::backup::Backup;
use rusqlite::{Connection, OpenFlags};

use super::queries::ChatReader;
use super::schema::MIGRATIONS;
use super::state_machine::{ChatStateMachine, StateMachineError};
use crate::sqlite::{self, SqliteError};

impl ChatReader {
    /// Writes a copy of the chat state as of now to `path` (which must not exist), makes
    /// it durable, and returns the applied index it holds.
    pub fn write_snapshot(&self, path: &Path) -> Result<u64, StateMachineError> {
        let target = path.to_str().ok_or_else(|| StateMachineError::Snapshot {
            path: path.to_owned(),
            detail: "the path is not valid UTF-8".to_owned(),
        })?;
        self.connection()
            .execute("VACUUM INTO ?1", [target])
            .map_err(|source| StateMachineError::Sqlite { path: path.to_owned(), source })?;
        // VACUUM INTO leaves the file to the OS's write-back: sync it before anyone relies
        // on it (the log is compacted behind it).
        let io =
            |error: std::io::Error| StateMachineError::Snapshot { path: path.to_owned(), detail: error.to_string() };
        std::fs::File::open(path).and_then(|file| file.sync_all()).map_err(io)?;
        snapshot_applied_index(path)
    }
}

/// Opens the snapshot file at `path` read-only, checks it is a sound chat database, and
/// returns the applied index it holds.
fn snapshot_applied_index(path: &Path) -> Result<u64, StateMachineError> {
    let conn = open_snapshot(path)?;
    let sql_error = |source| StateMachineError::Sqlite { path: path.to_owned(), source };
    conn.query_row("SELECT last_applied FROM chat_state WHERE singleton = 1", [], |row| row.get::<_, u64>(0))
        .map_err(sql_error)
}

/// Checks that the snapshot file at `path` can be installed here: a sound chat database
/// whose schema this build understands, holding the state through exactly `index`.
/// Everything installing it could trip over is checked before anything is replaced.
pub fn check_snapshot(path: &Path, index: u64) -> Result<(), StateMachineError> {
    let conn = open_snapshot(path)?;
    let sql_error = |source| StateMachineError::Sqlite { path: path.to_owned(), source };
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(sql_error)?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(SqliteError::SchemaTooNew { path: path.to_owned(), found: version, supported }.into());
    }
    let held: u64 = conn
        .query_row("SELECT last_applied FROM chat_state WHERE singleton = 1", [], |row| row.get(0))
        .map_err(sql_error)?;
    if held != index {
        let detail = format!("it holds the state through entry {held}, not {index}");
        return Err(StateMachineError::Snapshot { path: path.to_owned(), detail });
    }
    Ok(())
}

fn open_snapshot(path: &Path) -> Result<Connection, StateMachineError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|source| SqliteError::Open { path: path.to_owned(), source })?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(|source| SqliteError::NotADatabase { path: path.to_owned(), source })?;
    if check != "ok" {
        return Err(SqliteError::Corrupt { path: path.to_owned(), detail: check }.into());
    }
    Ok(conn)
}

impl ChatStateMachine {
    /// Replaces the whole chat state with the snapshot at `path`, in one transaction, and
    /// returns the applied index it now holds. The snapshot may come from a build with an
    /// older schema: it is brought up to date after.
    pub fn install_snapshot(&mut self, path: &Path) -> Result<u64, StateMachineError> {
        let source = open_snapshot(path)?;
        let own_path = self.path().to_owned();
        let sql_error = |source| StateMachineError::Sqlite { path: own_path.clone(), source };
        {
            let destination = self.db_mut().connection_mut();
            let backup = Backup::new(&source, destination).map_err(sql_error)?;
            // All pages in one step: one write transaction on this database, committed
            // (fsynced, synchronous=FULL) when the step ends.
            backup.step(-1).map_err(sql_error)?;
        }
        sqlite::migrate(self.db_mut().connection_mut(), &own_path, MIGRATIONS)?;
        self.last_applied()
    }
}

#[cfg(test)]
mod tests {
    use chorus_proto::v1::{Command, CreateAccountCommand, command};

    use super::*;

    fn create(name: &str) -> Command {
        Command {
            proposed_at_ms: 1,
            kind: Some(command::Kind::CreateAccount(CreateAccountCommand {
                username: name.to_owned(),
                password_hash: "h".to_owned(),
                created_at_ms: 1,
            })),
        }
    }

    /// A snapshot holds the state at the index it was taken, whatever is applied after;
    /// installing it elsewhere gives identical state (same digest), and later entries apply
    /// after it.
    #[test]
    fn a_snapshot_taken_here_installs_there_with_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut source = ChatStateMachine::open(&dir.path().join("a.sqlite3")).unwrap();
        source.apply(1, &create("ann")).unwrap();
        source.apply(2, &create("bob")).unwrap();
        let snapshot = dir.path().join("snapshot.sqlite3");
        // On a read-only connection, as a node takes them beside its writer.
        let reader = ChatReader::open_read_only(source.path()).unwrap();
        assert_eq!(reader.write_snapshot(&snapshot).unwrap(), 2);
        source.apply(3, &create("cat")).unwrap();
        assert_eq!(snapshot_applied_index(&snapshot).unwrap(), 2);

        let mut target = ChatStateMachine::open(&dir.path().join("b.sqlite3")).unwrap();
        target.apply(1, &create("zed")).unwrap();
        assert_eq!(target.install_snapshot(&snapshot).unwrap(), 2);
        target.apply(3, &create("cat")).unwrap();
        assert_eq!(
            target.queries().state_digest_at_applied().unwrap(),
            source.queries().state_digest_at_applied().unwrap()
        );
    }

    /// A damaged snapshot is refused before anything of the state is touched.
    #[test]
    fn a_damaged_snapshot_is_refused_and_the_state_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut machine = ChatStateMachine::open(&dir.path().join("a.sqlite3")).unwrap();
        machine.apply(1, &create("ann")).unwrap();
        let snapshot = dir.path().join("snapshot.sqlite3");
        std::fs::write(&snapshot, b"not a database at all, not even close to one").unwrap();
        assert!(check_snapshot(&snapshot, 1).is_err());
        assert!(machine.install_snapshot(&snapshot).is_err());
        assert_eq!(machine.last_applied().unwrap(), 1);
        std::fs::remove_file(&snapshot).unwrap();
        // Sound, but not the index it is said to hold, or from a newer build.
        machine.queries().write_snapshot(&snapshot).unwrap();
        check_snapshot(&snapshot, 1).unwrap();
        let error = check_snapshot(&snapshot, 2).unwrap_err();
        assert!(error.to_string().contains("through entry 1, not 2"), "{error}");
        rusqlite::Connection::open(&snapshot).unwrap().pragma_update(None, "user_version", 999).unwrap();
        let error = check_snapshot(&snapshot, 1).unwrap_err();
        assert!(error.to_string().contains("newer than this build"), "{error}");
    }
}
