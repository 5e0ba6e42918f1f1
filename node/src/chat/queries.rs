//! Queries over the chat state, on any connection to the chat database: the writer's own,
//! or one of the read-only connections that serve clients (SQLite in WAL mode lets them
//! read a consistent snapshot while apply writes, so no client query waits for apply, and
//! apply never waits for a client query).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::limits::PAGE_BYTES_MAX;
use super::outcome::{MessagePage, MessageView};
use super::state_machine::StateMachineError;
use crate::sqlite;

/// The account a session token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionUser {
    pub user_id: u64,
    pub username: String,
    /// When the session expires (by log time; milliseconds since the Unix epoch).
    pub expires_at_ms: u64,
}

/// What is needed to check a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user_id: u64,
    pub password_hash: String,
}

/// Queries over one connection to the chat database.
pub struct ChatReader {
    conn: Connection,
    path: PathBuf,
}

/// Length of a SHA-256 token hash; anything else cannot name a session.
pub(super) const TOKEN_HASH_BYTES: usize = 32;

/// The columns and joins that turn a `messages` row into a [`MessageView`].
macro_rules! message_view_select {
    () => {
        "SELECT m.message_id, s.username, r.username, m.body, m.sent_at_ms, m.read_at_ms IS NOT NULL
         FROM messages m
         JOIN users s ON s.user_id = m.sender_id
         JOIN users r ON r.user_id = m.recipient_id "
    };
}
pub(super) use message_view_select;

// The queries whose cost must stay O(log n + page) as tables grow; `query_plans_use_indices`
// checks each against SQLite's query planner.

/// Live names in [?1, ?2) matching GLOB ?3, first page.
pub(super) const LIST_ACCOUNTS_FROM: &str = "SELECT username FROM users
     WHERE username >= ?1 AND username < ?2 AND username GLOB ?3 AND deleted_at_ms IS NULL
     ORDER BY username LIMIT ?4";
/// Live names in (?1, ?2) matching GLOB ?3, a following page.
pub(super) const LIST_ACCOUNTS_AFTER: &str = "SELECT username FROM users
     WHERE username > ?1 AND username < ?2 AND username GLOB ?3 AND deleted_at_ms IS NULL
     ORDER BY username LIMIT ?4";
/// One conversation, newest first.
pub(super) const HISTORY_WITH_PEER: &str = concat!(
    message_view_select!(),
    "WHERE m.pair_low = ?1 AND m.pair_high = ?2 AND m.message_id < ?3
     ORDER BY m.message_id DESC LIMIT ?4"
);
/// Everything sent or received, newest first: two index range scans, each cut at the
/// page size, merged.
pub(super) const HISTORY_ALL: &str = concat!(
    message_view_select!(),
    "WHERE m.message_id IN (
         SELECT message_id FROM (SELECT message_id FROM messages
             WHERE recipient_id = ?1 AND message_id < ?2 ORDER BY message_id DESC LIMIT ?3)
         UNION
         SELECT message_id FROM (SELECT message_id FROM messages
             WHERE sender_id = ?1 AND message_id < ?2 ORDER BY message_id DESC LIMIT ?3))
     ORDER BY m.message_id DESC LIMIT ?3"
);
/// What a subscription delivers next.
pub(super) const RECEIVED_AFTER: &str = concat!(
    message_view_select!(),
    "WHERE m.recipient_id = ?1 AND m.message_id > ?2
     ORDER BY m.message_id LIMIT ?3"
);
impl ChatReader {
    /// A read-only connection to the chat database at `path`, which the writer has already
    /// opened (and migrated).
    pub fn open_read_only(path: &Path) -> Result<Self, StateMachineError> {
        let conn = sqlite::open_read_only(path)?;
        Ok(Self { conn, path: path.to_owned() })
    }

    /// Queries over the writer's connection (the state machine's own).
    pub(super) fn over(conn: Connection, path: &Path) -> Self {
        Self { conn, path: path.to_owned() }
    }

    pub(super) fn connection_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    pub(super) fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql_error(&self) -> impl Fn(rusqlite::Error) -> StateMachineError + '_ {
        |source| StateMachineError::Sqlite { path: self.path.clone(), source }
    }

    /// The index of the last command applied; 0 for a new database.
    pub fn last_applied(&self) -> Result<u64, StateMachineError> {
        self.conn
            .query_row("SELECT last_applied FROM chat_state WHERE singleton = 1", [], |row| row.get::<_, u64>(0))
            .map_err(self.sql_error())
    }

    /// The account and password hash of a live user, for checking a password.
    pub fn credentials(&self, username: &str) -> Result<Option<Credentials>, StateMachineError> {
        self.conn
            .query_row(
                "SELECT user_id, password_hash FROM users WHERE username = ?1 AND deleted_at_ms IS NULL",
                [username],
                |row| Ok(Credentials { user_id: row.get::<_, u64>(0)?, password_hash: row.get(1)? }),
            )
            .optional()
            .map_err(self.sql_error())
    }

    /// The live account a session token hash belongs to, if the session has not expired
    /// by `now_ms` (the caller's clock) nor by the log time.
    pub fn session_user(&self, token_hash: &[u8], now_ms: u64) -> Result<Option<SessionUser>, StateMachineError> {
        session_user(&self.conn, token_hash, now_ms).map_err(self.sql_error())
    }

    /// The id of any account ever created under `username`, deleted or not.
    pub fn user_id(&self, username: &str) -> Result<Option<u64>, StateMachineError> {
        self.conn
            .query_row("SELECT user_id FROM users WHERE username = ?1", [username], |row| row.get::<_, u64>(0))
            .optional()
            .map_err(self.sql_error())
    }

    /// Live account names matching the SQLite GLOB `pattern` (made by
    /// [`validate::account_pattern`]), sorted, strictly after `after`, at most `limit`.
    pub fn list_accounts(
        &self,
        pattern: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, StateMachineError> {
        // The literal prefix of the pattern bounds an index range scan, so a prefix search
        // touches only the matching names; GLOB then filters inside that range.
        let prefix: String = pattern.chars().take_while(|&c| c != '*' && c != '?').collect();
        let upper = prefix_upper_bound(&prefix);
        // Resume strictly after the last name served, or start at the prefix itself.
        let (sql, lower) = match after {
            Some(after) if after >= prefix.as_str() => (LIST_ACCOUNTS_AFTER, after),
            _ => (LIST_ACCOUNTS_FROM, prefix.as_str()),
        };
        let mut statement = self.conn.prepare_cached(sql).map_err(self.sql_error())?;
        let rows =
            statement.query_map(params![lower, upper, pattern, limit], |row| row.get(0)).map_err(self.sql_error())?;
        rows.collect::<Result<_, _>>().map_err(self.sql_error())
    }

    /// Messages sent or received by `user_id` (only those exchanged with `peer_id`, if given)
    /// with id < `before_id`, newest first, at most `limit` and `PAGE_BYTES_MAX`.
    pub fn history(
        &self,
        user_id: u64,
        peer_id: Option<u64>,
        before_id: u64,
        limit: u32,
    ) -> Result<MessagePage, StateMachineError> {
        let user = user_id;
        let before = before_id.min(i64::MAX as u64);
        let sql_error = self.sql_error();
        let page = match peer_id {
            Some(peer_id) => {
                let peer = peer_id;
                let mut statement = self.conn.prepare_cached(HISTORY_WITH_PEER).map_err(&sql_error)?;
                let rows = statement
                    .query_map(params![user.min(peer), user.max(peer), before, limit], message_view)
                    .map_err(&sql_error)?;
                bounded_page(rows, limit, PAGE_BYTES_MAX)
            }
            None => {
                let mut statement = self.conn.prepare_cached(HISTORY_ALL).map_err(&sql_error)?;
                let rows = statement.query_map(params![user, before, limit], message_view).map_err(&sql_error)?;
                bounded_page(rows, limit, PAGE_BYTES_MAX)
            }
        };
        page.map_err(sql_error)
    }

    /// Messages received by `user_id` with id > `after_id`, oldest first, at most `limit`
    /// and `bytes_max` (at least one): what a subscription delivers next.
    pub fn received_after(
        &self,
        user_id: u64,
        after_id: u64,
        limit: u32,
        bytes_max: usize,
    ) -> Result<MessagePage, StateMachineError> {
        let mut statement = self.conn.prepare_cached(RECEIVED_AFTER).map_err(self.sql_error())?;
        let after = after_id.min(i64::MAX as u64);
        let rows = statement.query_map(params![user_id, after, limit], message_view).map_err(self.sql_error())?;
        bounded_page(rows, limit, bytes_max).map_err(self.sql_error())
    }

    /// A SHA-256 over the whole chat state, table by table in key order: equal on replicas
    /// that applied the same prefix of the log. A full scan, for checks rather than polling.
    pub fn state_digest(&self) -> Result<[u8; 32], StateMachineError> {
        const TABLES: [(&str, &str); 5] = [
            ("chat_state", "singleton"),
            ("users", "user_id"),
            ("sessions", "token_hash"),
            ("messages", "message_id"),
            ("session_sends", "token_hash, sequence"),
        ];
        let mut hasher = Sha256::new();
        for (table, key) in TABLES {
            hasher.update(table.as_bytes());
            let mut statement =
                self.conn.prepare(&format!("SELECT * FROM {table} ORDER BY {key}")).map_err(self.sql_error())?;
            let columns = statement.column_count();
            let mut rows = statement.query([]).map_err(self.sql_error())?;
            while let Some(row) = rows.next().map_err(self.sql_error())? {
                for column in 0..columns {
                    use rusqlite::types::ValueRef;
                    match row.get_ref(column).map_err(self.sql_error())? {
                        ValueRef::Null => hasher.update([0]),
                        ValueRef::Integer(value) => {
                            hasher.update([1]);
                            hasher.update(value.to_be_bytes());
                        }
                        ValueRef::Real(value) => {
                            hasher.update([2]);
                            hasher.update(value.to_be_bytes());
                        }
                        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => {
                            hasher.update([3]);
                            hasher.update((bytes.len() as u64).to_be_bytes());
                            hasher.update(bytes);
                        }
                    }
                }
            }
        }
        Ok(hasher.finalize().into())
    }

    /// The applied index and the state digest, read in one transaction: the digest is the
    /// state's at exactly that index, even while apply writes beside this connection.
    pub fn state_digest_at_applied(&self) -> Result<(u64, [u8; 32]), StateMachineError> {
        let snapshot = self.conn.unchecked_transaction().map_err(self.sql_error())?;
        let applied = self.last_applied()?;
        let digest = self.state_digest()?;
        snapshot.commit().map_err(self.sql_error())?;
        Ok((applied, digest))
    }

    /// How many messages wait unread in the mailbox of `user_id`.
    pub fn unread_count(&self, user_id: u64) -> Result<u64, StateMachineError> {
        self.conn
            .query_row("SELECT unread_count FROM users WHERE user_id = ?1", [user_id], |row| row.get::<_, u64>(0))
            .optional()
            .map(|count| count.unwrap_or(0))
            .map_err(self.sql_error())
    }
}

/// The upper end of the index range for names starting with `prefix`: names that start
/// with it sort below `prefix` followed by a character above every username character.
fn prefix_upper_bound(prefix: &str) -> String {
    // '~' (0x7e) sorts after every username character ('-', '.', '0'-'9', '_', 'a'-'z').
    format!("{prefix}~")
}

/// The live account of a session that has not expired by `now_ms` or by the log time,
/// whichever is later. Apply passes its own log time (its decision is the same on every
/// replica); queries pass the node's clock, so that a session past its time is refused even
/// when nothing has been applied since.
pub(super) fn session_user(
    conn: &Connection,
    token_hash: &[u8],
    now_ms: u64,
) -> Result<Option<SessionUser>, rusqlite::Error> {
    if token_hash.len() != TOKEN_HASH_BYTES {
        return Ok(None);
    }
    // Clocks beyond SQLite's integers are no later than its largest.
    let now_ms = now_ms.min(super::validate::SQL_INTEGER_MAX);
    conn.prepare_cached(
        "SELECT u.user_id, u.username, s.expires_at_ms FROM sessions s JOIN users u ON u.user_id = s.user_id, chat_state c
         WHERE s.token_hash = ?1 AND u.deleted_at_ms IS NULL AND s.expires_at_ms > max(?2, c.log_time_ms)",
    )?
    .query_row(params![token_hash, now_ms], |row| {
        Ok(SessionUser { user_id: row.get::<_, u64>(0)?, username: row.get(1)?, expires_at_ms: row.get(2)? })
    })
    .optional()
}

/// The rows of a page, in order, while they fit in `bytes_max` (always at least one, and a
/// message is at most 64 KiB): stops reading the rows as soon as one does not fit.
pub(super) fn bounded_page(
    rows: impl Iterator<Item = rusqlite::Result<MessageView>>,
    limit: u32,
    bytes_max: usize,
) -> rusqlite::Result<MessagePage> {
    let mut messages = Vec::new();
    let mut bytes = 0;
    for row in rows {
        let message = row?;
        bytes += message.page_bytes();
        if !messages.is_empty() && bytes > bytes_max {
            return Ok(MessagePage { messages, more: true });
        }
        messages.push(message);
    }
    let more = messages.len() >= limit as usize;
    Ok(MessagePage { messages, more })
}

pub(super) fn message_view(row: &rusqlite::Row<'_>) -> rusqlite::Result<MessageView> {
    Ok(MessageView {
        message_id: row.get::<_, u64>(0)?,
        from: row.get(1)?,
        to: row.get(2)?,
        body: row.get(3)?,
        sent_at_ms: row.get::<_, u64>(4)?,
        read: row.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::state_machine::{ChatStateMachine, UNREAD_OLDEST};
    use super::*;

    /// The queries that grow with the data are index range scans: no full scan of a table,
    /// and (but for the merge of two bounded scans) no sort of the whole result.
    #[test]
    fn query_plans_use_indices() {
        let dir = tempfile::tempdir().unwrap();
        let machine = ChatStateMachine::open(&dir.path().join("chat.sqlite3")).unwrap();
        let range_scans = [
            ("list from", LIST_ACCOUNTS_FROM, true),
            ("list after", LIST_ACCOUNTS_AFTER, true),
            ("history with peer", HISTORY_WITH_PEER, true),
            ("history", HISTORY_ALL, false),
            ("received after", RECEIVED_AFTER, true),
            ("unread", UNREAD_OLDEST, true),
        ];
        for (name, sql, ordered_by_index) in range_scans {
            let mut statement = machine.queries().connection().prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let nulls = vec![rusqlite::types::Null; statement.parameter_count()];
            let plan: Vec<String> = statement
                .query_map(rusqlite::params_from_iter(nulls), |row| row.get::<_, String>(3))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let text = plan.join("\n");
            for line in &plan {
                let full_scan =
                    line.starts_with("SCAN ") && !line.contains("SUBQUERY") && !line.starts_with("SCAN (subquery");
                assert!(!full_scan, "{name} scans a whole table:\n{text}");
            }
            if ordered_by_index {
                assert!(!text.contains("TEMP B-TREE FOR ORDER BY"), "{name} sorts its result:\n{text}");
            }
        }
    }

    /// A stored number that no valid state holds (a negative index, id or time: damage,
    /// or a bug) is an error, never read as 0 or a huge value.
    #[test]
    fn a_negative_stored_number_is_an_error_not_a_clamped_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.sqlite3");
        let machine = ChatStateMachine::open(&path).unwrap();
        let damage = Connection::open(&path).unwrap();
        damage.execute("UPDATE chat_state SET last_applied = -3", []).unwrap();
        let error = machine.queries().last_applied().unwrap_err().to_string();
        assert!(error.contains("out of range"), "{error}");
        damage
            .execute(
                "INSERT INTO users (user_id, username, password_hash, created_at_ms) VALUES (-7, 'ghost', 'x', 0)",
                [],
            )
            .unwrap();
        assert!(machine.queries().user_id("ghost").is_err());
        assert!(machine.queries().credentials("ghost").is_err());
    }
}
