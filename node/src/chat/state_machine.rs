//! The chat state machine: applies `Command`s to a SQLite database and answers queries.
//!
//! `apply` is deterministic: it reads no clock, draws no randomness, and every query it
//! runs has a total order, so replicas that apply the same commands hold the same rows.
//! Each apply is one transaction that also records `last_applied`, so a crash never applies
//! a command twice or loses one that was acknowledged.

use std::path::{Path, PathBuf};

use chorus_proto::v1::{Command, command};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use sha2::{Digest, Sha256};

use super::limits::{PAGE_BYTES_MAX, SENDS_UNACKNOWLEDGED_PER_SESSION_MAX, SESSIONS_PER_USER_MAX};
use super::outcome::{MessagePage, MessageView, Outcome, Rejection};
use super::schema::MIGRATIONS;
use super::validate;
use crate::storage::{self, SqliteError};

#[derive(Debug, thiserror::Error)]
pub enum StateMachineError {
    #[error(transparent)]
    Open(#[from] SqliteError),
    #[error("chat database {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
}

/// The account a session token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionUser {
    pub user_id: u64,
    pub username: String,
}

/// What is needed to check a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user_id: u64,
    pub password_hash: String,
}

pub struct ChatStateMachine {
    conn: Connection,
    path: PathBuf,
}

/// Length of a SHA-256 token hash; anything else cannot name a session.
const TOKEN_HASH_BYTES: usize = 32;

/// The columns and joins that turn a `messages` row into a [`MessageView`].
macro_rules! message_view_select {
    () => {
        "SELECT m.message_id, s.username, r.username, m.body, m.sent_at_ms, m.read_at_ms IS NOT NULL
         FROM messages m
         JOIN users s ON s.user_id = m.sender_id
         JOIN users r ON r.user_id = m.recipient_id "
    };
}

// The queries whose cost must stay O(log n + page) as tables grow; `query_plans_use_indices`
// checks each against SQLite's query planner.

/// Live names in [?1, ?2) matching GLOB ?3, first page.
const LIST_ACCOUNTS_FROM: &str = "SELECT username FROM users
     WHERE username >= ?1 AND username < ?2 AND username GLOB ?3 AND deleted_at_ms IS NULL
     ORDER BY username LIMIT ?4";
/// Live names in (?1, ?2) matching GLOB ?3, a following page.
const LIST_ACCOUNTS_AFTER: &str = "SELECT username FROM users
     WHERE username > ?1 AND username < ?2 AND username GLOB ?3 AND deleted_at_ms IS NULL
     ORDER BY username LIMIT ?4";
/// One conversation, newest first.
const HISTORY_WITH_PEER: &str = concat!(
    message_view_select!(),
    "WHERE m.pair_low = ?1 AND m.pair_high = ?2 AND m.message_id < ?3
     ORDER BY m.message_id DESC LIMIT ?4"
);
/// Everything sent or received, newest first: two index range scans, each cut at the
/// page size, merged.
const HISTORY_ALL: &str = concat!(
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
const RECEIVED_AFTER: &str = concat!(
    message_view_select!(),
    "WHERE m.recipient_id = ?1 AND m.message_id > ?2
     ORDER BY m.message_id LIMIT ?3"
);
/// The oldest unread messages of a mailbox.
const UNREAD_OLDEST: &str = concat!(
    message_view_select!(),
    "WHERE m.recipient_id = ?1 AND m.read_at_ms IS NULL
     ORDER BY m.message_id LIMIT ?2"
);

impl ChatStateMachine {
    /// Opens (creating if needed) the chat database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StateMachineError> {
        let mut conn = storage::open_database(path)?;
        storage::migrate(&mut conn, path, MIGRATIONS)?;
        Ok(Self { conn, path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql_error(&self) -> impl Fn(rusqlite::Error) -> StateMachineError + '_ {
        |source| StateMachineError::Sqlite { path: self.path.clone(), source }
    }

    /// The index of the last command applied; 0 for a new database.
    pub fn last_applied(&self) -> Result<u64, StateMachineError> {
        let index: i64 = self
            .conn
            .query_row("SELECT last_applied FROM chat_state WHERE singleton = 1", [], |row| row.get(0))
            .map_err(self.sql_error())?;
        Ok(to_u64(index))
    }

    /// Applies the command at log position `index` and records `index` as applied, in one
    /// transaction. `index` must be greater than every index applied before: the log hands
    /// each command over exactly once, in order.
    ///
    /// An `Err` is a storage failure (disk full, I/O error): nothing was applied and the
    /// node cannot go on applying. Whatever the command holds, apply never panics on it.
    pub fn apply(&mut self, index: u64, command: &Command) -> Result<Outcome, StateMachineError> {
        let mut outcomes = self.apply_batch(&[(index, Some(command))])?;
        Ok(outcomes.pop().flatten().expect("one command, one outcome"))
    }

    /// Applies committed log entries in order, in one transaction that ends by recording
    /// the last index as applied: all of them take effect or none. `None` stands for a log
    /// entry that is not a chat command (the replication log's own no-ops); it only
    /// advances the applied index. Returns one outcome per command.
    pub fn apply_batch(
        &mut self,
        batch: &[(u64, Option<&Command>)],
    ) -> Result<Vec<Option<Outcome>>, StateMachineError> {
        let Some(&(last_index, _)) = batch.last() else { return Ok(Vec::new()) };
        let path = self.path.clone();
        let sql_error = |source| StateMachineError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql_error)?;
        let last_applied: i64 = tx
            .query_row("SELECT last_applied FROM chat_state WHERE singleton = 1", [], |row| row.get(0))
            .map_err(sql_error)?;
        let mut previous = to_u64(last_applied);
        let mut outcomes = Vec::with_capacity(batch.len());
        for &(index, command) in batch {
            assert!(index > previous, "apply out of order: index {index} after {previous} in {}", path.display());
            previous = index;
            let outcome = match command {
                Some(command) => Some(Apply { tx: &tx, index }.command(command).map_err(sql_error)?),
                None => None,
            };
            outcomes.push(outcome);
        }
        tx.prepare_cached("UPDATE chat_state SET last_applied = ?1 WHERE singleton = 1")
            .and_then(|mut statement| statement.execute([to_i64(last_index)]))
            .map_err(sql_error)?;
        // COMMIT under synchronous=FULL returns after the WAL is fsynced: from here on the
        // outcomes survive a crash, and only now may anyone be told about them.
        tx.commit().map_err(sql_error)?;
        Ok(outcomes)
    }

    /// The account and password hash of a live user, for checking a password.
    pub fn credentials(&self, username: &str) -> Result<Option<Credentials>, StateMachineError> {
        self.conn
            .query_row(
                "SELECT user_id, password_hash FROM users WHERE username = ?1 AND deleted_at_ms IS NULL",
                [username],
                |row| Ok(Credentials { user_id: to_u64(row.get(0)?), password_hash: row.get(1)? }),
            )
            .optional()
            .map_err(self.sql_error())
    }

    /// The live account a session token hash belongs to.
    pub fn session_user(&self, token_hash: &[u8]) -> Result<Option<SessionUser>, StateMachineError> {
        session_user(&self.conn, token_hash).map_err(self.sql_error())
    }

    /// The id of any account ever created under `username`, deleted or not.
    pub fn user_id(&self, username: &str) -> Result<Option<u64>, StateMachineError> {
        self.conn
            .query_row("SELECT user_id FROM users WHERE username = ?1", [username], |row| row.get::<_, i64>(0))
            .optional()
            .map(|id| id.map(to_u64))
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
        let user = to_i64(user_id);
        let before = to_i64(before_id.min(i64::MAX as u64));
        let sql_error = self.sql_error();
        let page = match peer_id {
            Some(peer_id) => {
                let peer = to_i64(peer_id);
                let mut statement = self.conn.prepare_cached(HISTORY_WITH_PEER).map_err(&sql_error)?;
                let rows = statement
                    .query_map(params![user.min(peer), user.max(peer), before, limit], message_view)
                    .map_err(&sql_error)?;
                bounded_page(rows, limit)
            }
            None => {
                let mut statement = self.conn.prepare_cached(HISTORY_ALL).map_err(&sql_error)?;
                let rows = statement.query_map(params![user, before, limit], message_view).map_err(&sql_error)?;
                bounded_page(rows, limit)
            }
        };
        page.map_err(sql_error)
    }

    /// Messages received by `user_id` with id > `after_id`, oldest first, at most `limit`
    /// and `PAGE_BYTES_MAX`: what a subscription delivers next.
    pub fn received_after(&self, user_id: u64, after_id: u64, limit: u32) -> Result<MessagePage, StateMachineError> {
        let mut statement = self.conn.prepare_cached(RECEIVED_AFTER).map_err(self.sql_error())?;
        let after = to_i64(after_id.min(i64::MAX as u64));
        let rows =
            statement.query_map(params![to_i64(user_id), after, limit], message_view).map_err(self.sql_error())?;
        bounded_page(rows, limit).map_err(self.sql_error())
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

    /// How many messages wait unread in the mailbox of `user_id`.
    pub fn unread_count(&self, user_id: u64) -> Result<u64, StateMachineError> {
        self.conn
            .query_row("SELECT unread_count FROM users WHERE user_id = ?1", [to_i64(user_id)], |row| {
                row.get::<_, i64>(0)
            })
            .optional()
            .map(|count| count.map_or(0, to_u64))
            .map_err(self.sql_error())
    }
}

/// The upper end of the index range for names starting with `prefix`: names that start
/// with it sort below `prefix` followed by a character above every username character.
fn prefix_upper_bound(prefix: &str) -> String {
    // '~' (0x7e) sorts after every username character ('-', '.', '0'-'9', '_', 'a'-'z').
    format!("{prefix}~")
}

/// One application of one command inside the apply transaction.
struct Apply<'a> {
    tx: &'a Transaction<'a>,
    index: u64,
}

/// The result type of a lookup inside apply: the outer `Err` is a storage failure, the
/// inner one a reason to reject the command.
type Applied<T> = Result<Result<T, Rejection>, rusqlite::Error>;

/// Unwraps a check inside apply; a failed check becomes the command's outcome.
macro_rules! check {
    ($e:expr) => {
        match $e {
            Ok(value) => value,
            Err(rejection) => return Ok(Outcome::Rejected(rejection.into())),
        }
    };
}

impl Apply<'_> {
    fn command(&self, command: &Command) -> Result<Outcome, rusqlite::Error> {
        match &command.kind {
            Some(command::Kind::CreateAccount(c)) => self.create_account(c),
            Some(command::Kind::OpenSession(c)) => self.open_session(c),
            Some(command::Kind::CloseSession(c)) => self.close_session(c),
            Some(command::Kind::SendMessage(c)) => self.send_message(c),
            Some(command::Kind::ReadMessages(c)) => self.read_messages(c),
            Some(command::Kind::DeleteMessages(c)) => self.delete_messages(c),
            Some(command::Kind::DeleteAccount(c)) => self.delete_account(c),
            None => Ok(Outcome::Rejected(Rejection::UnknownCommand)),
        }
    }

    fn create_account(&self, c: &chorus_proto::v1::CreateAccountCommand) -> Result<Outcome, rusqlite::Error> {
        let username = check!(canonical_exactly(&c.username));
        if c.password_hash.is_empty() {
            // Forming nodes always hash; an empty hash would make an account anyone can
            // take over, so it is refused rather than stored.
            return Ok(Outcome::Rejected(Rejection::MalformedCommand("account without a password hash")));
        }
        let existing: Option<Option<i64>> = self
            .tx
            .query_row("SELECT deleted_at_ms FROM users WHERE username = ?1", [&username], |row| row.get(0))
            .optional()?;
        match existing {
            Some(None) => return Ok(Outcome::Rejected(Rejection::UsernameTaken { username })),
            Some(Some(_)) => return Ok(Outcome::Rejected(Rejection::UsernameRetired { username })),
            None => {}
        }
        let user_id: i64 =
            self.tx.prepare_cached("SELECT next_user_id FROM chat_state")?.query_row([], |row| row.get(0))?;
        self.tx
            .prepare_cached(
                "INSERT INTO users (user_id, username, password_hash, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![user_id, username, c.password_hash, to_i64(c.created_at_ms)])?;
        self.tx.prepare_cached("UPDATE chat_state SET next_user_id = next_user_id + 1")?.execute([])?;
        Ok(Outcome::AccountCreated { user_id: to_u64(user_id), username })
    }

    fn open_session(&self, c: &chorus_proto::v1::OpenSessionCommand) -> Result<Outcome, rusqlite::Error> {
        if c.token_hash.len() != TOKEN_HASH_BYTES {
            return Ok(Outcome::Rejected(Rejection::SessionInvalid));
        }
        let user: Option<(String, i64)> = self
            .tx
            .query_row(
                "SELECT username, unread_count FROM users WHERE user_id = ?1 AND deleted_at_ms IS NULL",
                [to_i64(c.user_id)],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let Some((username, unread_count)) = user else {
            return Ok(Outcome::Rejected(Rejection::AccountGone));
        };
        let inserted = self.tx.prepare_cached("INSERT OR IGNORE INTO sessions (token_hash, user_id, opened_index, opened_at_ms) VALUES (?1, ?2, ?3, ?4)")?.execute(
            params![c.token_hash, to_i64(c.user_id), to_i64(self.index), to_i64(c.opened_at_ms)],
        )?;
        if inserted == 0 {
            return Ok(Outcome::Rejected(Rejection::TokenCollision));
        }
        // Keep the newest SESSIONS_PER_USER_MAX sessions; the oldest logins are closed.
        const BEYOND_THE_CAP: &str = "user_id = ?1 AND opened_index NOT IN (
                 SELECT opened_index FROM sessions WHERE user_id = ?1 ORDER BY opened_index DESC LIMIT ?2)";
        let cap = params![to_i64(c.user_id), to_i64(SESSIONS_PER_USER_MAX)];
        self.forget_sends_of_sessions(BEYOND_THE_CAP, cap)?;
        self.tx.prepare_cached(&format!("DELETE FROM sessions WHERE {BEYOND_THE_CAP}"))?.execute(cap)?;
        Ok(Outcome::SessionOpened { username, unread_count: to_u64(unread_count) })
    }

    fn close_session(&self, c: &chorus_proto::v1::CloseSessionCommand) -> Result<Outcome, rusqlite::Error> {
        self.forget_sends_of_sessions("token_hash = ?1", [&c.token_hash])?;
        let deleted = self.tx.prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?.execute([&c.token_hash])?;
        Ok(if deleted == 0 { Outcome::Rejected(Rejection::SessionInvalid) } else { Outcome::SessionClosed })
    }

    /// Stores a message exactly once per (session, sequence). No clock takes part: a send
    /// is remembered until its session acknowledges the answer or ends, and the number
    /// remembered per session is bounded because the client acknowledges what it received
    /// (the Raft dissertation's client sessions, §6.3).
    fn send_message(&self, c: &chorus_proto::v1::SendMessageCommand) -> Result<Outcome, rusqlite::Error> {
        let sender = check!(self.session(&c.token_hash)?);
        let to = check!(canonical_exactly(&c.to));
        check!(validate::message_body(&c.body));
        check!(validate::send_sequence(c.sequence, c.acknowledged_through));
        let (mut acknowledged_through, mut remembered) = self.session_sends(&c.token_hash)?;
        if c.acknowledged_through > acknowledged_through {
            // The client has the answers through this point and will not retry them.
            let forgotten = self
                .tx
                .prepare_cached("DELETE FROM session_sends WHERE token_hash = ?1 AND sequence <= ?2")?
                .execute(params![c.token_hash, to_i64(c.acknowledged_through)])? as u64;
            assert!(forgotten <= remembered, "forgot {forgotten} sends of a session that remembered {remembered}");
            acknowledged_through = c.acknowledged_through;
            remembered -= forgotten;
            self.tx
                .prepare_cached(
                    "UPDATE sessions SET sends_acknowledged_through = ?1, sends_remembered = ?2 WHERE token_hash = ?3",
                )?
                .execute(params![to_i64(acknowledged_through), to_i64(remembered), c.token_hash])?;
        }
        let digest = request_digest(&to, &c.body);
        let first: Option<(i64, Vec<u8>)> = self
            .tx
            .prepare_cached(
                "SELECT message_id, request_digest FROM session_sends WHERE token_hash = ?1 AND sequence = ?2",
            )?
            .query_row(params![c.token_hash, to_i64(c.sequence)], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        let first = if crate::bugs::active(crate::bugs::Bug::ForgetDedup) { None } else { first };
        if let Some((message_id, first_digest)) = first {
            let message_id = to_u64(message_id);
            return Ok(if first_digest == digest {
                Outcome::MessageSent { message_id, duplicate: true }
            } else {
                Outcome::Rejected(Rejection::SequenceReused { sequence: c.sequence, message_id })
            });
        }
        if c.sequence <= acknowledged_through {
            // Forgotten at the client's word: it may be a late retry of a stored message, so
            // it is refused rather than stored a second time.
            return Ok(Outcome::Rejected(Rejection::SequenceAcknowledged {
                sequence: c.sequence,
                acknowledged_through,
            }));
        }
        if remembered >= SENDS_UNACKNOWLEDGED_PER_SESSION_MAX {
            return Ok(Outcome::Rejected(Rejection::TooManyUnacknowledgedSends { count: remembered }));
        }
        let recipient: Option<i64> = self
            .tx
            .query_row("SELECT user_id FROM users WHERE username = ?1 AND deleted_at_ms IS NULL", [&to], |row| {
                row.get(0)
            })
            .optional()?;
        let Some(recipient) = recipient else {
            return Ok(Outcome::Rejected(Rejection::RecipientNotFound { username: to }));
        };
        let sender_id = to_i64(sender.user_id);
        let message_id: i64 =
            self.tx.prepare_cached("SELECT next_message_id FROM chat_state")?.query_row([], |row| row.get(0))?;
        self.tx
            .prepare_cached(
                "INSERT INTO messages (message_id, sender_id, recipient_id, pair_low, pair_high, body, sent_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                message_id,
                sender_id,
                recipient,
                sender_id.min(recipient),
                sender_id.max(recipient),
                c.body,
                to_i64(c.sent_at_ms)
            ])?;
        self.tx
            .prepare_cached("UPDATE users SET unread_count = unread_count + 1 WHERE user_id = ?1")?
            .execute([recipient])?;
        // Under the planted ForgetDedup bug the record may exist already; otherwise a
        // conflict here would be a bug to fail loudly on.
        let insert = if crate::bugs::active(crate::bugs::Bug::ForgetDedup) { "INSERT OR REPLACE" } else { "INSERT" };
        self.tx
            .prepare_cached(&format!(
                "{insert} INTO session_sends (token_hash, sequence, message_id, request_digest) VALUES (?1, ?2, ?3, ?4)"
            ))?
            .execute(params![c.token_hash, to_i64(c.sequence), message_id, digest])?;
        self.tx
            .prepare_cached("UPDATE sessions SET sends_remembered = sends_remembered + 1 WHERE token_hash = ?1")?
            .execute([&c.token_hash])?;
        self.tx.prepare_cached("UPDATE chat_state SET next_message_id = next_message_id + 1")?.execute([])?;
        Ok(Outcome::MessageSent { message_id: to_u64(message_id), duplicate: false })
    }

    /// A session's acknowledged point and how many of its sends are remembered.
    fn session_sends(&self, token_hash: &[u8]) -> Result<(u64, u64), rusqlite::Error> {
        self.tx
            .prepare_cached("SELECT sends_acknowledged_through, sends_remembered FROM sessions WHERE token_hash = ?1")?
            .query_row([token_hash], |row| Ok((to_u64(row.get(0)?), to_u64(row.get(1)?))))
    }

    /// Forgets the remembered sends of the sessions that `sessions_where` selects, before
    /// those sessions are deleted: a session's memory ends with it.
    fn forget_sends_of_sessions(
        &self,
        sessions_where: &str,
        params: impl rusqlite::Params,
    ) -> Result<(), rusqlite::Error> {
        self.tx
            .prepare_cached(&format!(
                "DELETE FROM session_sends WHERE token_hash IN (SELECT token_hash FROM sessions WHERE {sessions_where})"
            ))?
            .execute(params)?;
        Ok(())
    }

    fn read_messages(&self, c: &chorus_proto::v1::ReadMessagesCommand) -> Result<Outcome, rusqlite::Error> {
        let reader = check!(self.session(&c.token_hash)?);
        check!(validate::request_id(&c.request_id));
        let limit = validate::page_size(c.limit);
        let user_id = to_i64(reader.user_id);
        if !c.request_id.is_empty() {
            let last: (Option<String>, Option<Vec<u8>>) = self
                .tx
                .prepare_cached("SELECT last_read_request_id, last_read_ids FROM sessions WHERE token_hash = ?1")?
                .query_row([&c.token_hash], |row| Ok((row.get(0)?, row.get(1)?)))?;
            // (An empty batch may come back as NULL ids: SQLite stores an empty blob so.)
            if let (Some(last_id), ids) = last
                && last_id == c.request_id
            {
                // A retry of the session's last read: the same batch again (what is left of
                // it), nothing more marked read.
                return self.repeat_read(user_id, &ids.unwrap_or_default());
            }
        }
        // Cut at the page's byte bound here, in apply, so that every replica marks the same
        // messages read and the reply fits what the client accepts: a batch marked read that
        // cannot be delivered would leave the unread flow for good.
        let MessagePage { mut messages, .. } = {
            let mut statement = self.tx.prepare_cached(UNREAD_OLDEST)?;
            bounded_page(statement.query_map(params![user_id, limit], message_view)?, limit)?
        };
        if let Some(last) = messages.last() {
            let marked = self
                .tx
                .prepare_cached(
                    "UPDATE messages SET read_at_ms = ?1
                 WHERE recipient_id = ?2 AND read_at_ms IS NULL AND message_id <= ?3",
                )?
                .execute(params![to_i64(c.read_at_ms), user_id, to_i64(last.message_id)])?;
            assert_eq!(marked, messages.len(), "read marked a different set of messages than it selected");
            self.tx
                .prepare_cached("UPDATE users SET unread_count = unread_count - ?1 WHERE user_id = ?2")?
                .execute(params![to_i64(marked as u64), user_id])?;
        }
        for message in &mut messages {
            message.read = true;
        }
        if !c.request_id.is_empty() {
            let ids: Vec<u8> = messages.iter().flat_map(|m| m.message_id.to_be_bytes()).collect();
            self.tx
                .prepare_cached(
                    "UPDATE sessions SET last_read_request_id = ?1, last_read_ids = ?2 WHERE token_hash = ?3",
                )?
                .execute(params![c.request_id, ids, c.token_hash])?;
        }
        Ok(Outcome::MessagesRead { messages, unread_remaining: self.unread_remaining(user_id)? })
    }

    fn unread_remaining(&self, user_id: i64) -> Result<u64, rusqlite::Error> {
        let count: i64 = self
            .tx
            .prepare_cached("SELECT unread_count FROM users WHERE user_id = ?1")?
            .query_row([user_id], |row| row.get(0))?;
        Ok(to_u64(count))
    }

    /// The messages of an earlier read (`ids`: big-endian u64s) that still exist.
    fn repeat_read(&self, user_id: i64, ids: &[u8]) -> Result<Outcome, rusqlite::Error> {
        let sql = concat!(message_view_select!(), "WHERE m.message_id = ?1 AND m.recipient_id = ?2");
        let mut statement = self.tx.prepare_cached(sql)?;
        let mut messages = Vec::new();
        for chunk in ids.chunks_exact(8) {
            let id = u64::from_be_bytes(chunk.try_into().expect("chunks of 8 bytes"));
            if let Some(message) = statement.query_row(params![to_i64(id), user_id], message_view).optional()? {
                messages.push(message);
            }
        }
        Ok(Outcome::MessagesRead { messages, unread_remaining: self.unread_remaining(user_id)? })
    }

    fn delete_messages(&self, c: &chorus_proto::v1::DeleteMessagesCommand) -> Result<Outcome, rusqlite::Error> {
        let caller = check!(self.session(&c.token_hash)?);
        let ids = check!(validate::message_ids(&c.ids));
        let caller_id = to_i64(caller.user_id);
        // Check every id before deleting any, so the request is all or nothing.
        let mut doomed = Vec::with_capacity(ids.len());
        for &message_id in &ids {
            let row: Option<(i64, i64, bool)> = self
                .tx
                .query_row(
                    "SELECT sender_id, recipient_id, read_at_ms IS NULL FROM messages WHERE message_id = ?1",
                    [to_i64(message_id)],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()?;
            match row {
                Some((_, recipient, unread)) if recipient == caller_id => doomed.push((message_id, recipient, unread)),
                Some((sender, recipient, true)) if sender == caller_id => doomed.push((message_id, recipient, true)),
                Some((sender, _, false)) if sender == caller_id => {
                    return Ok(Outcome::Rejected(Rejection::MessageAlreadyRead { message_id }));
                }
                // Someone else's message is indistinguishable from a missing one.
                _ => return Ok(Outcome::Rejected(Rejection::MessageNotFound { message_id })),
            }
        }
        for &(message_id, recipient, unread) in &doomed {
            self.tx.prepare_cached("DELETE FROM messages WHERE message_id = ?1")?.execute([to_i64(message_id)])?;
            if unread {
                self.tx
                    .prepare_cached("UPDATE users SET unread_count = unread_count - 1 WHERE user_id = ?1")?
                    .execute([recipient])?;
            }
        }
        Ok(Outcome::MessagesDeleted { count: doomed.len() as u64 })
    }

    fn delete_account(&self, c: &chorus_proto::v1::DeleteAccountCommand) -> Result<Outcome, rusqlite::Error> {
        let user = check!(self.session(&c.token_hash)?);
        let user_id = to_i64(user.user_id);
        let stored: Option<String> = self
            .tx
            .prepare_cached("SELECT password_hash FROM users WHERE user_id = ?1")?
            .query_row([user_id], |row| row.get(0))?;
        if stored.as_deref() != Some(c.password_hash.as_str()) {
            return Ok(Outcome::Rejected(Rejection::PasswordChanged));
        }
        // Withdraw what the account sent that is still unread: it leaves with its sender.
        self.tx
            .prepare_cached(
                "UPDATE users SET unread_count = unread_count - (
                 SELECT count(*) FROM messages
                 WHERE sender_id = ?1 AND recipient_id = users.user_id AND read_at_ms IS NULL)
             WHERE user_id IN (SELECT recipient_id FROM messages WHERE sender_id = ?1 AND read_at_ms IS NULL)",
            )?
            .execute([user_id])?;
        self.tx
            .prepare_cached("DELETE FROM messages WHERE sender_id = ?1 AND read_at_ms IS NULL")?
            .execute([user_id])?;
        // Its own mailbox goes entirely.
        self.tx.prepare_cached("DELETE FROM messages WHERE recipient_id = ?1")?.execute([user_id])?;
        self.forget_sends_of_sessions("user_id = ?1", [user_id])?;
        self.tx.prepare_cached("DELETE FROM sessions WHERE user_id = ?1")?.execute([user_id])?;
        // The row stays as a tombstone: the name is retired and read messages it sent keep
        // their sender's name.
        self.tx
            .prepare_cached(
                "UPDATE users SET password_hash = NULL, deleted_at_ms = ?1, unread_count = 0 WHERE user_id = ?2",
            )?
            .execute(params![to_i64(c.deleted_at_ms), user_id])?;
        Ok(Outcome::AccountDeleted)
    }

    fn session(&self, token_hash: &[u8]) -> Applied<SessionUser> {
        Ok(session_user(self.tx, token_hash)?.ok_or(Rejection::SessionInvalid))
    }
}

fn session_user(conn: &Connection, token_hash: &[u8]) -> Result<Option<SessionUser>, rusqlite::Error> {
    if token_hash.len() != TOKEN_HASH_BYTES {
        return Ok(None);
    }
    conn.prepare_cached(
        "SELECT u.user_id, u.username FROM sessions s JOIN users u ON u.user_id = s.user_id
         WHERE s.token_hash = ?1 AND u.deleted_at_ms IS NULL",
    )?
    .query_row([token_hash], |row| Ok(SessionUser { user_id: to_u64(row.get(0)?), username: row.get(1)? }))
    .optional()
}

/// A username inside a command must already be canonical: the forming node canonicalized it.
fn canonical_exactly(username: &str) -> Result<String, Rejection> {
    let canonical = validate::canonical_username(username)?;
    if canonical != username {
        return Err(Rejection::Invalid(validate::InvalidInput::UsernameBadCharacter {
            name: username.to_owned(),
            found: username.chars().find(|c| c.is_ascii_uppercase()).unwrap_or('?'),
        }));
    }
    Ok(canonical)
}

/// Identifies what a send asked for, to tell a retry from a client_msg_id reused for a
/// different message.
fn request_digest(to: &str, body: &str) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update((to.len() as u64).to_be_bytes());
    hasher.update(to.as_bytes());
    hasher.update(body.as_bytes());
    hasher.finalize().to_vec()
}

/// The rows of a page, in order, while they fit in `PAGE_BYTES_MAX` (always at least one,
/// and a message is at most 64 KiB): stops reading the rows as soon as one does not fit.
fn bounded_page(
    rows: impl Iterator<Item = rusqlite::Result<MessageView>>,
    limit: u32,
) -> rusqlite::Result<MessagePage> {
    let mut messages = Vec::new();
    let mut bytes = 0;
    for row in rows {
        let message = row?;
        bytes += message.page_bytes();
        if !messages.is_empty() && bytes > PAGE_BYTES_MAX {
            return Ok(MessagePage { messages, more: true });
        }
        messages.push(message);
    }
    let more = messages.len() >= limit as usize;
    Ok(MessagePage { messages, more })
}

fn message_view(row: &rusqlite::Row<'_>) -> rusqlite::Result<MessageView> {
    Ok(MessageView {
        message_id: to_u64(row.get(0)?),
        from: row.get(1)?,
        to: row.get(2)?,
        body: row.get(3)?,
        sent_at_ms: to_u64(row.get(4)?),
        read: row.get(5)?,
    })
}

/// SQLite integers are i64; ids, indices and timestamps are u64 below 2^63.
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-3 database (clock-based dedup) upgrades to version 4: accounts, sessions
    /// and messages stay, the old dedup records go, and its sessions send with sequences.
    #[test]
    fn schema_v3_upgrades_to_v4_keeping_accounts_sessions_and_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.sqlite3");
        let token_hash = vec![7u8; TOKEN_HASH_BYTES];
        {
            let mut conn = storage::open_database(&path).unwrap();
            storage::migrate(&mut conn, &path, &MIGRATIONS[..3]).unwrap();
            conn.execute_batch(
                "INSERT INTO users (user_id, username, password_hash, created_at_ms, dedup_records) VALUES (1, 'al', 'h', 5, 1);
                 INSERT INTO users (user_id, username, password_hash, created_at_ms) VALUES (2, 'bo', 'h', 5);
                 INSERT INTO messages VALUES (1, 1, 2, 1, 2, 'old', 9, NULL);
                 INSERT INTO sent_dedup VALUES (1, '1234-old', 1, x'00', 1234);
                 UPDATE chat_state SET last_applied = 10, next_user_id = 3, next_message_id = 2;",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO sessions (token_hash, user_id, opened_index, opened_at_ms) VALUES (?1, 1, 3, 5)",
                [&token_hash],
            )
            .unwrap();
        }
        let mut machine = ChatStateMachine::open(&path).unwrap();
        assert_eq!(machine.session_user(&token_hash).unwrap().map(|u| u.username), Some("al".to_owned()));
        assert_eq!(machine.received_after(2, 0, 10).unwrap().messages.len(), 1);
        let send = chorus_proto::v1::SendMessageCommand {
            token_hash: token_hash.clone(),
            to: "bo".to_owned(),
            body: "new".to_owned(),
            sent_at_ms: 10,
            sequence: 1,
            acknowledged_through: 0,
        };
        let command = Command { kind: Some(command::Kind::SendMessage(send)) };
        assert_eq!(machine.apply(11, &command).unwrap(), Outcome::MessageSent { message_id: 2, duplicate: false });
        assert_eq!(machine.apply(12, &command).unwrap(), Outcome::MessageSent { message_id: 2, duplicate: true });
        let tables: i64 = machine
            .conn
            .query_row("SELECT count(*) FROM sqlite_schema WHERE name = 'sent_dedup'", [], |row| row.get(0))
            .unwrap();
        assert_eq!(tables, 0);
    }

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
            let mut statement = machine.conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
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
}
