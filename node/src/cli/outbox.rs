//! The offline outbox: messages `chorus send` could not deliver because no node of the
//! cluster could take them, kept in SQLite beside the session file until a later command
//! reaches the cluster and delivers them, oldest first.
//!
//! Exactly once: a message whose first attempt may have been stored keeps that attempt's
//! sequence number, and is delivered only by the same session, with the same number, so
//! that the server recognizes a message it already has (it answers `duplicate` and stores
//! nothing). A message that was certainly not stored (never tried, or refused by every
//! node) has no number yet, and takes the next one of whichever session of its sender
//! delivers it.
//!
//! Durability: `synchronous=FULL` (chorus::sqlite), so "queued" is said only after the
//! message is on disk; deliveries run under a lock file, one process at a time, and a
//! message leaves the outbox only after its send was answered, so a delivery killed
//! half-way repeats at most the send the server recognizes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chorus::sqlite::{Sharing, migrate, open_database};
use rusqlite::{Connection, OptionalExtension, params};

// AUTOINCREMENT: an id is never reused, even once the outbox is empty, so that the id a
// person was told ("#3") never comes to name another message.
// IF NOT EXISTS: two commands queuing into a new outbox at once may both run it.
const MIGRATIONS: &[&str] = &["CREATE TABLE IF NOT EXISTS queued (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        username TEXT NOT NULL,
        session_digest TEXT NOT NULL,
        sequence INTEGER,
        recipient TEXT NOT NULL,
        body TEXT NOT NULL,
        queued_unix_ms INTEGER NOT NULL
    ) STRICT;"];

/// One message waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Its place in the outbox: lower ids go first.
    pub id: u64,
    pub username: String,
    /// The session that numbered it (a digest of its token, never the token).
    pub session_digest: String,
    /// The sequence of an attempt that may have been stored; `None`: certainly not stored.
    pub sequence: Option<u64>,
    pub recipient: String,
    pub body: String,
    pub queued_unix_ms: u64,
}

/// A message to queue.
#[derive(Debug, Clone)]
pub struct NewQueued<'a> {
    pub username: &'a str,
    pub token: &'a str,
    pub sequence: Option<u64>,
    pub recipient: &'a str,
    pub body: &'a str,
    pub queued_unix_ms: u64,
}

pub struct Outbox {
    conn: Connection,
    path: PathBuf,
}

/// The outbox of the session kept at `session_path`: `session.json` has
/// `session.outbox.sqlite` beside it.
pub fn path_for(session_path: &Path) -> PathBuf {
    session_path.with_extension("outbox.sqlite")
}

/// A digest of a session token: enough to tell whether a queued message belongs to the
/// session in the session file, and nothing an attacker could use.
pub fn session_digest(token: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(token.as_bytes())[..16])
}

impl Outbox {
    /// Opens the outbox at `path` if it exists; `None` if nothing was ever queued there.
    pub fn open_existing(path: &Path) -> Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        Self::open(path).map(Some)
    }

    /// Opens the outbox at `path`, creating it (readable by its owner only) if needed.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            // Queued messages are private: the file is made 0600 before SQLite opens it.
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create the outbox {}", path.display()))?;
        }
        let mut conn = open_database(path, Sharing::WithReaders).context("the outbox")?;
        migrate(&mut conn, path, MIGRATIONS).context("the outbox")?;
        Ok(Self { conn, path: path.to_owned() })
    }

    /// Queues a message; returns its id. Durable when this returns.
    pub fn push(&self, message: &NewQueued<'_>) -> Result<u64> {
        self.conn
            .execute(
                "INSERT INTO queued (username, session_digest, sequence, recipient, body, queued_unix_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    message.username,
                    session_digest(message.token),
                    message.sequence,
                    message.recipient,
                    message.body,
                    message.queued_unix_ms
                ],
            )
            .with_context(|| format!("cannot queue the message in {}", self.path.display()))?;
        u64::try_from(self.conn.last_insert_rowid()).context("an outbox id below zero")
    }

    /// Every queued message, oldest first.
    pub fn list(&self) -> Result<Vec<Queued>> {
        let mut statement = self.conn.prepare(
            "SELECT id, username, session_digest, sequence, recipient, body, queued_unix_ms FROM queued ORDER BY id",
        )?;
        let rows = statement.query_map([], |row| {
            Ok(Queued {
                id: row.get(0)?,
                username: row.get(1)?,
                session_digest: row.get(2)?,
                sequence: row.get(3)?,
                recipient: row.get(4)?,
                body: row.get(5)?,
                queued_unix_ms: row.get(6)?,
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>().with_context(|| format!("cannot read the outbox {}", self.path.display()))
    }

    /// Gives message `id` the sequence of an attempt that may have been stored, by the
    /// session of `token`: from then on only that session repeats it, under that number.
    pub fn set_sequence(&self, id: u64, sequence: u64, token: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE queued SET sequence = ?2, session_digest = ?3 WHERE id = ?1",
                params![id, sequence, session_digest(token)],
            )
            .with_context(|| format!("cannot update message {id} in the outbox {}", self.path.display()))?;
        Ok(())
    }

    /// Takes back the sequence of message `id` (its attempt under it was certainly not
    /// stored): any session of its sender may number it again.
    pub fn clear_sequence(&self, id: u64) -> Result<()> {
        self.conn
            .execute("UPDATE queued SET sequence = NULL WHERE id = ?1", params![id])
            .with_context(|| format!("cannot update message {id} in the outbox {}", self.path.display()))?;
        Ok(())
    }

    /// Removes message `id`; returns whether it was there.
    pub fn remove(&self, id: u64) -> Result<bool> {
        let removed = self
            .conn
            .execute("DELETE FROM queued WHERE id = ?1", params![id])
            .with_context(|| format!("cannot remove message {id} from the outbox {}", self.path.display()))?;
        Ok(removed > 0)
    }

    /// Whether any message waits.
    pub fn is_empty(&self) -> Result<bool> {
        let any: Option<i64> = self.conn.query_row("SELECT id FROM queued LIMIT 1", [], |row| row.get(0)).optional()?;
        Ok(any.is_none())
    }
}

/// The outbox's delivery lock, held until dropped: one process delivers at a time, so
/// that a message is never sent by two at once (harmless, the server would recognize the
/// second, but the person would be told twice).
pub fn delivery_lock(outbox_path: &Path) -> Result<std::fs::File> {
    super::session_file::lock_file(&outbox_path.with_extension("sqlite.lock"), "the outbox (delivering it)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_messages_come_back_in_order_survive_a_reopen_and_leave_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("session.json"));
        assert_eq!(path.file_name().unwrap(), "session.outbox.sqlite");
        assert!(Outbox::open_existing(&path).unwrap().is_none(), "nothing queued, no file");
        let outbox = Outbox::open(&path).unwrap();
        let message = |sequence, body| NewQueued {
            username: "bob",
            token: "secret-token",
            sequence,
            recipient: "alice",
            body,
            queued_unix_ms: 1_000,
        };
        let first = outbox.push(&message(Some(7), "first")).unwrap();
        let second = outbox.push(&message(None, "second")).unwrap();
        assert!(first < second);
        drop(outbox);
        let outbox = Outbox::open_existing(&path).unwrap().unwrap();
        let listed = outbox.list().unwrap();
        assert_eq!(listed.iter().map(|q| q.body.as_str()).collect::<Vec<_>>(), ["first", "second"]);
        assert_eq!(listed[0].sequence, Some(7));
        assert_eq!(listed[1].sequence, None);
        assert_eq!(listed[0].session_digest, session_digest("secret-token"));
        assert!(!listed[0].session_digest.contains("secret"), "the token itself is never stored");
        assert!(outbox.remove(first).unwrap());
        assert!(!outbox.remove(first).unwrap(), "removed once");
        assert!(!outbox.is_empty().unwrap());
        assert!(outbox.remove(second).unwrap());
        assert!(outbox.is_empty().unwrap());
        assert!(outbox.push(&message(None, "third")).unwrap() > second, "ids are never reused");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
