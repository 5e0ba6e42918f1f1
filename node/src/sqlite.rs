//! Opening SQLite databases the way Chorus needs them.
//!
//! Durability: every database runs in WAL mode with `synchronous=FULL`, so a transaction's
//! COMMIT returns only after its WAL frames are fsynced. Code that acknowledges a client
//! after a commit therefore acknowledges only what survives a crash or power loss.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    #[error("cannot open database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("database {path} is not a Chorus database or is corrupt: {source}")]
    NotADatabase { path: PathBuf, source: rusqlite::Error },
    #[error(
        "database {path} has schema version {found}, newer than this build understands ({supported}); run a newer chorus"
    )]
    SchemaTooNew { path: PathBuf, found: i64, supported: i64 },
    #[error("database {path} failed its integrity check: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("database {path}: {detail}")]
    Setting { path: PathBuf, detail: String },
    #[error("cannot upgrade the schema of {path} to version {version}: {source}")]
    Migrate { path: PathBuf, version: i64, source: rusqlite::Error },
}

/// Whether other connections of this process may read a database while its writer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// The writer is the only connection (the replication log): it holds the file lock for
    /// good, which saves two fcntl calls per transaction and keeps the WAL index in the heap.
    Exclusive,
    /// Read-only connections ([`open_read_only`]) read beside the writer (the chat database,
    /// whose client queries must never wait for apply, nor apply for them).
    WithReaders,
}

/// How long a connection waits for a lock another connection of this node holds. Readers
/// and the writer of a WAL database block each other only for moments (a checkpoint, WAL
/// recovery at open); a second process cannot get this far (the data directory is locked).
/// Under simulation every connection runs on one thread, so nothing ever waits.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The size a WAL file is truncated to after a checkpoint, if larger.
const WAL_BYTES_KEPT_MAX: i64 = 64 * 1024 * 1024;

/// Opens (creating if needed) a database with WAL and `synchronous=FULL`, and checks that
/// it is readable SQLite.
pub fn open_database(path: &Path, sharing: Sharing) -> Result<Connection, SqliteError> {
    let conn = Connection::open(path).map_err(|source| SqliteError::Open { path: path.to_owned(), source })?;
    let not_a_database = |source| SqliteError::NotADatabase { path: path.to_owned(), source };
    if sharing == Sharing::Exclusive {
        // Set before WAL is entered, so that the WAL index lives in the heap.
        let mode: String =
            conn.query_row("PRAGMA locking_mode=EXCLUSIVE", [], |row| row.get(0)).map_err(not_a_database)?;
        debug_assert!(mode.eq_ignore_ascii_case("exclusive"));
    }
    // journal_mode is the first statement that reads the file: garbage fails here.
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0)).map_err(not_a_database)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(SqliteError::Corrupt {
            path: path.to_owned(),
            detail: format!("cannot enter WAL mode (got {mode})"),
        });
    }
    // FULL: fsync the WAL at every commit. This is what makes "committed" mean "durable".
    #[cfg(not(madsim))]
    conn.pragma_update(None, "synchronous", "FULL").map_err(not_a_database)?;
    // Under simulation a "crash" kills tasks inside one process whose written pages the OS
    // keeps, so an fsync protects nothing there and costs real time; power loss is
    // simulated by the simulation's own disk for the log.
    #[cfg(madsim)]
    conn.pragma_update(None, "synchronous", "OFF").map_err(not_a_database)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(not_a_database)?;
    plan_once_per_statement(&conn, path)?;
    // A WAL that grew while readers held back checkpoints (a long digest, a burst of
    // queries) is cut back to this once a checkpoint gets through, instead of keeping its
    // largest size on disk for good.
    conn.pragma_update(None, "journal_size_limit", WAL_BYTES_KEPT_MAX).map_err(not_a_database)?;
    let check: String = conn.query_row("PRAGMA quick_check", [], |row| row.get(0)).map_err(not_a_database)?;
    if check != "ok" {
        return Err(SqliteError::Corrupt { path: path.to_owned(), detail: check });
    }
    Ok(conn)
}

/// Opens a read-only connection to a database its writer has already opened (in WAL mode,
/// [`Sharing::WithReaders`]): each of its transactions reads one consistent snapshot, and
/// neither it nor the writer waits for the other.
pub fn open_read_only(path: &Path) -> Result<Connection, SqliteError> {
    use rusqlite::OpenFlags;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|source| SqliteError::Open { path: path.to_owned(), source })?;
    let not_a_database = |source| SqliteError::NotADatabase { path: path.to_owned(), source };
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0)).map_err(not_a_database)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(SqliteError::Corrupt {
            path: path.to_owned(),
            detail: format!("a reader found journal mode {mode}, not WAL: open the writer first"),
        });
    }
    conn.busy_timeout(BUSY_TIMEOUT).map_err(not_a_database)?;
    plan_once_per_statement(&conn, path)?;
    Ok(conn)
}

/// Turns on SQLite's query planner stability guarantee: a cached statement keeps the plan
/// it was prepared with, whatever values are later bound to it. Without it, a statement
/// whose plan could depend on a bound value (`username GLOB ?`, where SQLite would derive
/// a range from the pattern) is marked expired at every bind and compiled again at its next
/// step, so that listing accounts re-parsed and re-planned its query on every call: half the
/// CPU of a query-heavy run. The queries bound their ranges themselves, so the value-derived
/// plans bought nothing.
fn plan_once_per_statement(conn: &Connection, path: &Path) -> Result<(), SqliteError> {
    use rusqlite::config::DbConfig;
    let refused = |detail: String| SqliteError::Setting { path: path.to_owned(), detail };
    match conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true) {
        Ok(true) => Ok(()),
        Ok(false) => Err(refused("SQLite left the query planner stability guarantee off".to_owned())),
        Err(error) => Err(refused(format!("cannot turn on the query planner stability guarantee: {error}"))),
    }
}

/// Brings a database's schema up to `migrations.len()`, running `migrations[v]` to go from
/// version `v` to `v + 1`, each in its own transaction together with the new
/// `user_version`. Refuses a database from a newer build.
pub fn migrate(conn: &mut Connection, path: &Path, migrations: &[&str]) -> Result<(), SqliteError> {
    let supported = i64::try_from(migrations.len()).expect("migration count fits i64");
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|source| SqliteError::NotADatabase { path: path.to_owned(), source })?;
    if found > supported {
        return Err(SqliteError::SchemaTooNew { path: path.to_owned(), found, supported });
    }
    if found < 0 {
        // No build writes a negative version: the header was damaged or edited.
        let detail = format!("its schema version is {found}, which no Chorus build writes");
        return Err(SqliteError::Corrupt { path: path.to_owned(), detail });
    }
    for version in found..supported {
        let step = migrations[usize::try_from(version).expect("schema version is non-negative")];
        let migrate_error = |source| SqliteError::Migrate { path: path.to_owned(), version: version + 1, source };
        let tx = conn.transaction().map_err(migrate_error)?;
        tx.execute_batch(step).map_err(migrate_error)?;
        tx.pragma_update(None, "user_version", version + 1).map_err(migrate_error)?;
        tx.commit().map_err(migrate_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_in_wal_with_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_database(&dir.path().join("x.db"), Sharing::Exclusive).unwrap();
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2, "synchronous=FULL");
    }

    /// A reader sees what the writer committed, never what it has not, and neither waits
    /// for the other: a reader's open snapshot does not stop the writer committing.
    #[test]
    fn readers_read_committed_snapshots_beside_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let mut writer = open_database(&path, Sharing::WithReaders).unwrap();
        writer.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);").unwrap();
        let reader = open_read_only(&path).unwrap();
        let count = |conn: &Connection| conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(count(&reader), 1);
        let snapshot = reader.unchecked_transaction().unwrap();
        let uncommitted = writer.transaction().unwrap();
        uncommitted.execute("INSERT INTO t VALUES (2)", []).unwrap();
        assert_eq!(count(&snapshot), 1, "uncommitted writes are invisible");
        uncommitted.commit().unwrap();
        assert_eq!(count(&snapshot), 1, "a snapshot stays what it was");
        drop(snapshot);
        assert_eq!(count(&reader), 2);
        assert!(reader.execute("INSERT INTO t VALUES (3)", []).is_err(), "readers cannot write");
    }

    /// A cached statement is compiled once, whatever is bound to it later, on writer and
    /// reader connections alike: a `GLOB ?` pattern used to recompile it at every bind.
    #[test]
    fn statements_are_not_recompiled_for_new_bound_values() {
        use rusqlite::StatementStatus;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let writer = open_database(&path, Sharing::WithReaders).unwrap();
        writer
            .execute_batch("CREATE TABLE t (name TEXT PRIMARY KEY); INSERT INTO t VALUES ('alice'), ('bob'), ('al');")
            .unwrap();
        let reader = open_read_only(&path).unwrap();
        for conn in [&writer, &reader] {
            let query = "SELECT count(*) FROM t WHERE name >= ?1 AND name GLOB ?2";
            for (from, pattern, expected) in [("a", "a*", 2), ("", "*b", 1), ("b", "?o?", 1), ("", "zz*", 0)] {
                let mut statement = conn.prepare_cached(query).unwrap();
                let count: i64 = statement.query_row((from, pattern), |r| r.get(0)).unwrap();
                assert_eq!(count, expected, "{pattern}");
                assert_eq!(statement.get_status(StatementStatus::RePrepare), 0, "recompiled for {pattern}");
            }
        }
    }

    #[test]
    fn garbage_file_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = open_database(&path, Sharing::Exclusive).unwrap_err();
        assert!(matches!(err, SqliteError::NotADatabase { .. }), "{err}");
    }

    #[test]
    fn migrations_run_once_and_newer_schemas_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let mut conn = open_database(&path, Sharing::Exclusive).unwrap();
        let steps = ["CREATE TABLE a (x INTEGER);", "CREATE TABLE b (y INTEGER);"];
        migrate(&mut conn, &path, &steps).unwrap();
        migrate(&mut conn, &path, &steps).unwrap();
        let err = migrate(&mut conn, &path, &steps[..1]).unwrap_err();
        assert!(matches!(err, SqliteError::SchemaTooNew { found: 2, supported: 1, .. }), "{err}");
        // A damaged header's negative version is refused, not a panic (found by fuzzing).
        conn.pragma_update(None, "user_version", -3).unwrap();
        let err = migrate(&mut conn, &path, &steps).unwrap_err();
        assert!(err.to_string().contains("schema version is -3"), "{err}");
    }
}
