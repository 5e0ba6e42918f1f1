//! The chat state machine: applies `Command`s to a SQLite database and answers queries.
//!
//! `apply` is deterministic: it reads no clock, draws no randomness, and every query it
//! runs has a total order, so replicas that apply the same commands hold the same rows.
//! Each apply is one transaction that also records `last_applied`, so a crash never applies
//! a command twice or loses one that was acknowledged.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chorus_proto::v1::{Command, command};
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use sha2::{Digest, Sha256};

use super::limits::{
    PAGE_BYTES_MAX, SENDS_UNACKNOWLEDGED_PER_SESSION_MAX, SESSION_LIFETIME_LEGACY_MS, SESSIONS_PER_USER_MAX,
};
use super::outcome::{MessagePage, Outcome, Rejection};
use super::queries::{
    ChatReader, SessionUser, TOKEN_HASH_BYTES, bounded_page, message_view, message_view_select, session_user,
};
use super::schema::MIGRATIONS;
use super::validate;
use crate::sqlite::{self, SqliteError};

#[derive(Debug, thiserror::Error)]
pub enum StateMachineError {
    #[error(transparent)]
    Open(#[from] SqliteError),
    #[error("chat database {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("chat snapshot {path}: {detail}")]
    Snapshot { path: PathBuf, detail: String },
}

/// The chat database's one writer: it applies commands, and answers queries over its own
/// connection (through [`ChatStateMachine::queries`]) where no read-only one is at hand.
pub struct ChatStateMachine {
    db: ChatReader,
}

/// What applying a batch produced: one outcome per command, and the users whose mailbox or
/// sessions changed (a message arrived, a session ended), whose live subscriptions must look.
#[derive(Debug, Default)]
pub struct AppliedBatch {
    pub outcomes: Vec<Option<Outcome>>,
    pub mailboxes_touched: BTreeSet<u64>,
}

/// The oldest unread messages of a mailbox.
pub(super) const UNREAD_OLDEST: &str = concat!(
    message_view_select!(),
    "WHERE m.recipient_id = ?1 AND m.read_at_ms IS NULL
     ORDER BY m.message_id LIMIT ?2"
);

impl ChatStateMachine {
    /// Opens (creating if needed) the chat database at `path` and brings its schema up to
    /// date. Read-only connections ([`ChatReader::open_read_only`]) may be opened beside it.
    pub fn open(path: &Path) -> Result<Self, StateMachineError> {
        let mut conn = sqlite::open_database(path, sqlite::Sharing::WithReaders)?;
        sqlite::migrate(&mut conn, path, MIGRATIONS)?;
        Ok(Self { db: ChatReader::over(conn, path) })
    }

    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// Queries over the writer's own connection.
    pub fn queries(&self) -> &ChatReader {
        &self.db
    }

    pub(super) fn db_mut(&mut self) -> &mut ChatReader {
        &mut self.db
    }

    /// The index of the last command applied; 0 for a new database.
    pub fn last_applied(&self) -> Result<u64, StateMachineError> {
        self.db.last_applied()
    }

    /// Applies the command at log position `index` and records `index` as applied, in one
    /// transaction. `index` must be greater than every index applied before: the log hands
    /// each command over exactly once, in order.
    ///
    /// An `Err` is a storage failure (disk full, I/O error): nothing was applied and the
    /// node cannot go on applying. Whatever the command holds, apply never panics on it.
    pub fn apply(&mut self, index: u64, command: &Command) -> Result<Outcome, StateMachineError> {
        let mut applied = self.apply_batch(&[(index, Some(command))])?;
        Ok(applied.outcomes.pop().flatten().expect("one command, one outcome"))
    }

    /// Applies committed log entries in order, in one transaction that ends by recording
    /// the last index as applied: all of them take effect or none. `None` stands for a log
    /// entry that is not a chat command (the replication log's own no-ops); it only
    /// advances the applied index. Returns one outcome per command.
    pub fn apply_batch(&mut self, batch: &[(u64, Option<&Command>)]) -> Result<AppliedBatch, StateMachineError> {
        let Some(&(last_index, _)) = batch.last() else { return Ok(AppliedBatch::default()) };
        let path = self.db.path().to_owned();
        let sql_error = |source| StateMachineError::Sqlite { path: path.clone(), source };
        let tx =
            self.db.connection_mut().transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql_error)?;
        let (mut previous, mut log_time_ms): (u64, u64) = tx
            .query_row("SELECT last_applied, log_time_ms FROM chat_state WHERE singleton = 1", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .map_err(sql_error)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        let touched = RefCell::new(BTreeSet::new());
        for &(index, command) in batch {
            assert!(index > previous, "apply out of order: index {index} after {previous} in {}", path.display());
            previous = index;
            let outcome = match command {
                Some(command) => {
                    // The log's time moves to the latest proposal time it has seen, and never
                    // back: a leader with a slow clock cannot bring an expired session back.
                    if command.proposed_at_ms <= validate::SQL_INTEGER_MAX {
                        log_time_ms = log_time_ms.max(command.proposed_at_ms);
                    }
                    let apply = Apply { tx: &tx, index, log_time_ms, touched: &touched };
                    Some(apply.command(command).map_err(sql_error)?)
                }
                None => None,
            };
            outcomes.push(outcome);
        }
        tx.prepare_cached("UPDATE chat_state SET last_applied = ?1, log_time_ms = ?2 WHERE singleton = 1")
            .and_then(|mut statement| statement.execute([last_index, log_time_ms]))
            .map_err(sql_error)?;
        // COMMIT under synchronous=FULL returns after the WAL is fsynced: from here on the
        // outcomes survive a crash, and only now may anyone be told about them.
        tx.commit().map_err(sql_error)?;
        assert_eq!(outcomes.len(), batch.len(), "one outcome per log entry");
        Ok(AppliedBatch { outcomes, mailboxes_touched: touched.into_inner() })
    }
}

/// One application of one command inside the apply transaction.
struct Apply<'a> {
    tx: &'a Transaction<'a>,
    index: u64,
    /// The log's time at this command (see `Command.proposed_at_ms`): what expiry is
    /// decided by.
    log_time_ms: u64,
    /// Users whose live subscriptions must look again (see [`AppliedBatch`]).
    touched: &'a RefCell<BTreeSet<u64>>,
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

/// Whether every number of `command` fits an SQLite integer.
fn numbers_fit_in_sql(command: &Command) -> bool {
    let fit = |numbers: &[u64]| numbers.iter().all(|&n| n <= validate::SQL_INTEGER_MAX);
    fit(&[command.proposed_at_ms])
        && match &command.kind {
            Some(command::Kind::CreateAccount(c)) => fit(&[c.created_at_ms]),
            Some(command::Kind::OpenSession(c)) => fit(&[c.user_id, c.opened_at_ms, c.expires_at_ms]),
            Some(command::Kind::CloseSession(_) | command::Kind::ChangePassword(_)) | None => true,
            Some(command::Kind::SendMessage(c)) => fit(&[c.sent_at_ms, c.sequence, c.acknowledged_through]),
            Some(command::Kind::ReadMessages(c)) => fit(&[c.read_at_ms]),
            Some(command::Kind::DeleteMessages(c)) => fit(&c.ids),
            Some(command::Kind::DeleteAccount(c)) => fit(&[c.deleted_at_ms]),
        }
}

impl Apply<'_> {
    fn command(&self, command: &Command) -> Result<Outcome, rusqlite::Error> {
        // SQLite refuses a parameter above i64::MAX with an error, and an error here stops
        // every replica at this entry, for good. A command holding such a number (which
        // no correct leader forms) is refused like any other malformed command.
        if !numbers_fit_in_sql(command) {
            return Ok(Outcome::Rejected(Rejection::MalformedCommand("a number beyond what the chat state can store")));
        }
        match &command.kind {
            Some(command::Kind::CreateAccount(c)) => self.create_account(c),
            Some(command::Kind::OpenSession(c)) => self.open_session(c),
            Some(command::Kind::CloseSession(c)) => self.close_session(c),
            Some(command::Kind::SendMessage(c)) => self.send_message(c),
            Some(command::Kind::ReadMessages(c)) => self.read_messages(c),
            Some(command::Kind::DeleteMessages(c)) => self.delete_messages(c),
            Some(command::Kind::DeleteAccount(c)) => self.delete_account(c),
            Some(command::Kind::ChangePassword(c)) => self.change_password(c),
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
        let user_id: u64 =
            self.tx.prepare_cached("SELECT next_user_id FROM chat_state")?.query_row([], |row| row.get(0))?;
        self.tx
            .prepare_cached(
                "INSERT INTO users (user_id, username, password_hash, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![user_id, username, c.password_hash, c.created_at_ms])?;
        self.tx.prepare_cached("UPDATE chat_state SET next_user_id = next_user_id + 1")?.execute([])?;
        Ok(Outcome::AccountCreated { user_id, username })
    }

    fn open_session(&self, c: &chorus_proto::v1::OpenSessionCommand) -> Result<Outcome, rusqlite::Error> {
        if c.token_hash.len() != TOKEN_HASH_BYTES {
            return Ok(Outcome::Rejected(Rejection::SessionInvalid));
        }
        let user: Option<(String, u64)> = self
            .tx
            .query_row(
                "SELECT username, unread_count FROM users WHERE user_id = ?1 AND deleted_at_ms IS NULL",
                [c.user_id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let Some((username, unread_count)) = user else {
            return Ok(Outcome::Rejected(Rejection::AccountGone));
        };
        // A login made while the password was being changed is refused: whoever knew the
        // old password must not come out of the change with a session. (A command from
        // before this check carries no hash.)
        if !c.password_hash.is_empty() {
            check!(self.password_is_still(c.user_id, &c.password_hash)?);
        }
        // The lifetime the login asked for (a command from before sessions expired: the
        // default), counted from the later of its opening and the log's time: a log time
        // that a leader's clock once pushed ahead cannot make new sessions stillborn.
        let lifetime_ms = match c.expires_at_ms {
            0 => SESSION_LIFETIME_LEGACY_MS,
            expires_at_ms => expires_at_ms.saturating_sub(c.opened_at_ms),
        };
        let expires_at_ms =
            c.opened_at_ms.max(self.log_time_ms).saturating_add(lifetime_ms).min(validate::SQL_INTEGER_MAX);
        // The account's expired sessions go first: they could never be used again.
        const EXPIRED: &str = "user_id = ?1 AND expires_at_ms <= ?2";
        let expired = params![c.user_id, self.log_time_ms];
        self.forget_sends_of_sessions(EXPIRED, expired)?;
        self.tx.prepare_cached(&format!("DELETE FROM sessions WHERE {EXPIRED}"))?.execute(expired)?;
        let inserted = self
            .tx
            .prepare_cached(
                "INSERT OR IGNORE INTO sessions (token_hash, user_id, opened_index, opened_at_ms, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![c.token_hash, c.user_id, self.index, c.opened_at_ms, expires_at_ms])?;
        if inserted == 0 {
            return Ok(Outcome::Rejected(Rejection::TokenCollision));
        }
        // Keep the newest SESSIONS_PER_USER_MAX sessions; the oldest logins are closed.
        const BEYOND_THE_CAP: &str = "user_id = ?1 AND opened_index NOT IN (
                 SELECT opened_index FROM sessions WHERE user_id = ?1 ORDER BY opened_index DESC LIMIT ?2)";
        let cap = params![c.user_id, SESSIONS_PER_USER_MAX];
        self.forget_sends_of_sessions(BEYOND_THE_CAP, cap)?;
        let closed = self.tx.prepare_cached(&format!("DELETE FROM sessions WHERE {BEYOND_THE_CAP}"))?.execute(cap)?;
        if closed > 0 {
            // A subscription of a closed session must end.
            self.touch(c.user_id);
        }
        Ok(Outcome::SessionOpened { username, unread_count, expires_at_ms })
    }

    fn close_session(&self, c: &chorus_proto::v1::CloseSessionCommand) -> Result<Outcome, rusqlite::Error> {
        let owner: Option<u64> = self
            .tx
            .prepare_cached("SELECT user_id FROM sessions WHERE token_hash = ?1")?
            .query_row([&c.token_hash], |row| row.get(0))
            .optional()?;
        if let Some(owner) = owner {
            self.touch(owner);
        }
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
                .execute(params![c.token_hash, c.acknowledged_through])? as u64;
            assert!(forgotten <= remembered, "forgot {forgotten} sends of a session that remembered {remembered}");
            acknowledged_through = c.acknowledged_through;
            remembered -= forgotten;
            self.tx
                .prepare_cached(
                    "UPDATE sessions SET sends_acknowledged_through = ?1, sends_remembered = ?2 WHERE token_hash = ?3",
                )?
                .execute(params![acknowledged_through, remembered, c.token_hash])?;
        }
        let digest = request_digest(&to, &c.body);
        let first: Option<(u64, Vec<u8>)> = self
            .tx
            .prepare_cached(
                "SELECT message_id, request_digest FROM session_sends WHERE token_hash = ?1 AND sequence = ?2",
            )?
            .query_row(params![c.token_hash, c.sequence], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        let first = if crate::bugs::active(crate::bugs::Bug::ForgetDedup) { None } else { first };
        if let Some((message_id, first_digest)) = first {
            return Ok(if first_digest == digest {
                Outcome::MessageSent { message_id, duplicate: true, sender_id: sender.user_id }
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
        let recipient: Option<u64> = self
            .tx
            .query_row("SELECT user_id FROM users WHERE username = ?1 AND deleted_at_ms IS NULL", [&to], |row| {
                row.get(0)
            })
            .optional()?;
        let Some(recipient) = recipient else {
            return Ok(Outcome::Rejected(Rejection::RecipientNotFound { username: to }));
        };
        let sender_id = sender.user_id;
        let message_id: u64 =
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
                c.sent_at_ms
            ])?;
        self.tx
            .prepare_cached("UPDATE users SET unread_count = unread_count + 1 WHERE user_id = ?1")?
            .execute([recipient])?;
        self.touch(recipient);
        // Under the planted ForgetDedup bug the record may exist already; otherwise a
        // conflict here would be a bug to fail loudly on.
        let insert = if crate::bugs::active(crate::bugs::Bug::ForgetDedup) { "INSERT OR REPLACE" } else { "INSERT" };
        self.tx
            .prepare_cached(&format!(
                "{insert} INTO session_sends (token_hash, sequence, message_id, request_digest) VALUES (?1, ?2, ?3, ?4)"
            ))?
            .execute(params![c.token_hash, c.sequence, message_id, digest])?;
        self.tx
            .prepare_cached("UPDATE sessions SET sends_remembered = sends_remembered + 1 WHERE token_hash = ?1")?
            .execute([&c.token_hash])?;
        self.tx.prepare_cached("UPDATE chat_state SET next_message_id = next_message_id + 1")?.execute([])?;
        Ok(Outcome::MessageSent { message_id, duplicate: false, sender_id: sender.user_id })
    }

    /// A session's acknowledged point and how many of its sends are remembered.
    fn session_sends(&self, token_hash: &[u8]) -> Result<(u64, u64), rusqlite::Error> {
        self.tx
            .prepare_cached("SELECT sends_acknowledged_through, sends_remembered FROM sessions WHERE token_hash = ?1")?
            .query_row([token_hash], |row| Ok((row.get::<_, u64>(0)?, row.get::<_, u64>(1)?)))
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
        let user_id = reader.user_id;
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
            bounded_page(statement.query_map(params![user_id, limit], message_view)?, limit, PAGE_BYTES_MAX)?
        };
        if let Some(last) = messages.last() {
            let marked = self
                .tx
                .prepare_cached(
                    "UPDATE messages SET read_at_ms = ?1
                 WHERE recipient_id = ?2 AND read_at_ms IS NULL AND message_id <= ?3",
                )?
                .execute(params![c.read_at_ms, user_id, last.message_id])?;
            assert_eq!(marked, messages.len(), "read marked a different set of messages than it selected");
            self.tx
                .prepare_cached("UPDATE users SET unread_count = unread_count - ?1 WHERE user_id = ?2")?
                .execute(params![marked as u64, user_id])?;
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

    fn unread_remaining(&self, user_id: u64) -> Result<u64, rusqlite::Error> {
        self.tx
            .prepare_cached("SELECT unread_count FROM users WHERE user_id = ?1")?
            .query_row([user_id], |row| row.get(0))
    }

    /// The messages of an earlier read (`ids`: big-endian u64s) that still exist.
    fn repeat_read(&self, user_id: u64, ids: &[u8]) -> Result<Outcome, rusqlite::Error> {
        let sql = concat!(message_view_select!(), "WHERE m.message_id = ?1 AND m.recipient_id = ?2");
        let mut statement = self.tx.prepare_cached(sql)?;
        let mut messages = Vec::new();
        for chunk in ids.chunks_exact(8) {
            let id = u64::from_be_bytes(chunk.try_into().expect("chunks of 8 bytes"));
            if let Some(message) = statement.query_row(params![id, user_id], message_view).optional()? {
                messages.push(message);
            }
        }
        Ok(Outcome::MessagesRead { messages, unread_remaining: self.unread_remaining(user_id)? })
    }

    fn delete_messages(&self, c: &chorus_proto::v1::DeleteMessagesCommand) -> Result<Outcome, rusqlite::Error> {
        let caller = check!(self.session(&c.token_hash)?);
        let ids = check!(validate::message_ids(&c.ids));
        let caller_id = caller.user_id;
        // Check every id before deleting any, so the request is all or nothing.
        let mut doomed = Vec::with_capacity(ids.len());
        for &message_id in &ids {
            let row: Option<(u64, u64, bool)> = self
                .tx
                .query_row(
                    "SELECT sender_id, recipient_id, read_at_ms IS NULL FROM messages WHERE message_id = ?1",
                    [message_id],
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
            self.tx.prepare_cached("DELETE FROM messages WHERE message_id = ?1")?.execute([message_id])?;
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
        let user_id = user.user_id;
        check!(self.password_is_still(user_id, &c.password_hash)?);
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
        self.touch(user.user_id);
        // The row stays as a tombstone: the name is retired and read messages it sent keep
        // their sender's name.
        self.tx
            .prepare_cached(
                "UPDATE users SET password_hash = NULL, deleted_at_ms = ?1, unread_count = 0 WHERE user_id = ?2",
            )?
            .execute(params![c.deleted_at_ms, user_id])?;
        Ok(Outcome::AccountDeleted)
    }

    /// Replaces the password (if it is still the one the proposing node verified) and ends
    /// every other session of the account: whoever knew the old password is logged out.
    fn change_password(&self, c: &chorus_proto::v1::ChangePasswordCommand) -> Result<Outcome, rusqlite::Error> {
        let user = check!(self.session(&c.token_hash)?);
        if c.new_password_hash.is_empty() {
            // As at account creation: an empty hash would let anyone in.
            return Ok(Outcome::Rejected(Rejection::MalformedCommand("password change without a new password hash")));
        }
        check!(self.password_is_still(user.user_id, &c.old_password_hash)?);
        self.tx
            .prepare_cached("UPDATE users SET password_hash = ?1 WHERE user_id = ?2")?
            .execute(params![c.new_password_hash, user.user_id])?;
        const OTHERS: &str = "user_id = ?1 AND token_hash != ?2";
        let others = params![user.user_id, c.token_hash];
        self.forget_sends_of_sessions(OTHERS, others)?;
        let ended = self.tx.prepare_cached(&format!("DELETE FROM sessions WHERE {OTHERS}"))?.execute(others)?;
        if ended > 0 {
            // Their subscriptions must end.
            self.touch(user.user_id);
        }
        Ok(Outcome::PasswordChanged { sessions_ended: ended as u64 })
    }

    /// Whether account `user_id`'s password hash is still `verified`, the one the proposing
    /// node checked a password against: if it changed while the command was in flight, the
    /// command is refused (login, password change and account deletion alike).
    fn password_is_still(&self, user_id: u64, verified: &str) -> Applied<()> {
        let stored: Option<String> = self
            .tx
            .prepare_cached("SELECT password_hash FROM users WHERE user_id = ?1")?
            .query_row([user_id], |row| row.get(0))?;
        Ok(if stored.as_deref() == Some(verified) { Ok(()) } else { Err(Rejection::PasswordChanged) })
    }

    /// Notes that `user_id`'s subscriptions must look again when this batch is applied.
    fn touch(&self, user_id: u64) {
        self.touched.borrow_mut().insert(user_id);
    }

    fn session(&self, token_hash: &[u8]) -> Applied<SessionUser> {
        Ok(session_user(self.tx, token_hash, self.log_time_ms)?.ok_or(Rejection::SessionInvalid))
    }
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

/// Identifies what a send asked for, to tell a retry from a session sequence reused for a
/// different message.
fn request_digest(to: &str, body: &str) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update((to.len() as u64).to_be_bytes());
    hasher.update(to.as_bytes());
    hasher.update(body.as_bytes());
    hasher.finalize().to_vec()
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
            let mut conn = sqlite::open_database(&path, sqlite::Sharing::WithReaders).unwrap();
            sqlite::migrate(&mut conn, &path, &MIGRATIONS[..3]).unwrap();
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
        let queries = machine.queries();
        assert_eq!(queries.session_user(&token_hash, 0).unwrap().map(|u| u.username), Some("al".to_owned()));
        assert_eq!(queries.received_after(2, 0, 10, PAGE_BYTES_MAX).unwrap().messages.len(), 1);
        let send = chorus_proto::v1::SendMessageCommand {
            token_hash: token_hash.clone(),
            to: "bo".to_owned(),
            body: "new".to_owned(),
            sent_at_ms: 10,
            sequence: 1,
            acknowledged_through: 0,
        };
        let command = Command { kind: Some(command::Kind::SendMessage(send)), proposed_at_ms: 0 };
        assert_eq!(
            machine.apply(11, &command).unwrap(),
            Outcome::MessageSent { message_id: 2, duplicate: false, sender_id: 1 }
        );
        assert_eq!(
            machine.apply(12, &command).unwrap(),
            Outcome::MessageSent { message_id: 2, duplicate: true, sender_id: 1 }
        );
        let digest_before = machine.queries().state_digest().unwrap();
        let reader = ChatReader::open_read_only(&path).unwrap();
        assert_eq!(reader.state_digest_at_applied().unwrap(), (12, digest_before), "readers see what was applied");
        let tables: i64 = reader
            .connection()
            .query_row("SELECT count(*) FROM sqlite_schema WHERE name = 'sent_dedup'", [], |row| row.get(0))
            .unwrap();
        assert_eq!(tables, 0);
    }

    /// A command holding a number SQLite cannot store (which only a broken or forged
    /// leader forms: the server refuses such requests) is refused on every replica alike;
    /// before, binding it failed the apply, and every replica stopped at that entry.
    #[test]
    fn numbers_beyond_sqlite_are_refused_not_failed() {
        let dir = tempfile::tempdir().unwrap();
        let mut machine = ChatStateMachine::open(&dir.path().join("chat.sqlite3")).unwrap();
        let commands = [
            command::Kind::DeleteMessages(chorus_proto::v1::DeleteMessagesCommand {
                token_hash: vec![7; TOKEN_HASH_BYTES],
                ids: vec![1, 1 << 63],
            }),
            command::Kind::CreateAccount(chorus_proto::v1::CreateAccountCommand {
                username: "al".to_owned(),
                password_hash: "x".to_owned(),
                created_at_ms: u64::MAX,
            }),
            command::Kind::OpenSession(chorus_proto::v1::OpenSessionCommand {
                user_id: 1 << 63,
                token_hash: vec![7; TOKEN_HASH_BYTES],
                opened_at_ms: 1,
                expires_at_ms: 2,
                password_hash: String::new(),
            }),
        ];
        for (index, kind) in (1..).zip(commands) {
            let outcome = machine.apply(index, &Command { kind: Some(kind), proposed_at_ms: 0 }).unwrap();
            assert!(matches!(outcome, Outcome::Rejected(Rejection::MalformedCommand(_))), "{outcome:?}");
        }
        assert_eq!(machine.last_applied().unwrap(), 3, "the entries are applied, as refusals");
    }

    /// Applies commands at consecutive indexes, each proposed at the time given.
    struct Script {
        machine: ChatStateMachine,
        index: u64,
    }

    impl Script {
        fn new(dir: &Path) -> Self {
            Self { machine: ChatStateMachine::open(&dir.join("chat.sqlite3")).unwrap(), index: 0 }
        }

        fn apply(&mut self, at_ms: u64, kind: command::Kind) -> Outcome {
            self.index += 1;
            self.machine.apply(self.index, &Command { kind: Some(kind), proposed_at_ms: at_ms }).unwrap()
        }

        fn account(&mut self, name: &str, hash: &str) {
            let create = chorus_proto::v1::CreateAccountCommand {
                username: name.to_owned(),
                password_hash: hash.to_owned(),
                created_at_ms: 0,
            };
            assert!(matches!(self.apply(0, command::Kind::CreateAccount(create)), Outcome::AccountCreated { .. }));
        }

        fn open(&mut self, at_ms: u64, user_id: u64, token: u8, expires_at_ms: u64) -> Outcome {
            self.apply(
                at_ms,
                command::Kind::OpenSession(chorus_proto::v1::OpenSessionCommand {
                    user_id,
                    token_hash: vec![token; TOKEN_HASH_BYTES],
                    opened_at_ms: at_ms,
                    expires_at_ms,
                    password_hash: String::new(),
                }),
            )
        }

        fn send(&mut self, at_ms: u64, token: u8, sequence: u64) -> Outcome {
            self.apply(
                at_ms,
                command::Kind::SendMessage(chorus_proto::v1::SendMessageCommand {
                    token_hash: vec![token; TOKEN_HASH_BYTES],
                    to: "bo".to_owned(),
                    body: "hi".to_owned(),
                    sent_at_ms: at_ms,
                    sequence,
                    acknowledged_through: 0,
                }),
            )
        }

        fn live(&self, token: u8, now_ms: u64) -> bool {
            self.machine.queries().session_user(&[token; TOKEN_HASH_BYTES], now_ms).unwrap().is_some()
        }
    }

    /// A session ends when the log's time passes its expiry, whatever the applying node's
    /// clock says; the log's time never goes back (a leader with a slow clock brings no
    /// session back); queries also refuse a session their own clock says has expired.
    #[test]
    fn sessions_expire_by_log_time_which_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut script = Script::new(dir.path());
        script.account("al", "h");
        script.account("bo", "h");
        assert!(matches!(script.open(1_000, 1, 7, 5_000), Outcome::SessionOpened { expires_at_ms: 5_000, .. }));
        assert!(matches!(script.send(4_999, 7, 1), Outcome::MessageSent { .. }));
        assert!(script.live(7, 0) && script.live(7, 4_999));
        assert!(!script.live(7, 5_000), "a query whose clock is past the expiry refuses the session");
        assert_eq!(script.send(5_000, 7, 2), Outcome::Rejected(Rejection::SessionInvalid), "expired by log time");
        // A command proposed by a node whose clock is behind does not move the log's time back.
        assert_eq!(script.send(10, 7, 3), Outcome::Rejected(Rejection::SessionInvalid));
        assert!(!script.live(7, 0), "the log's time alone has passed the expiry");

        // A leader whose clock ran a year ahead moved the log's time there: a login by a
        // node with the right clock still gets its full lifetime, from the log's time.
        let year_ms = 365 * 24 * 3600 * 1000;
        script.send(year_ms, 7, 4);
        assert!(matches!(
            script.open(5_500, 1, 6, 9_500),
            Outcome::SessionOpened { expires_at_ms, .. } if expires_at_ms == year_ms + 4_000
        ));
        assert!(script.live(6, 0));

        // A command without an expiry (an older log) lasts a week.
        assert!(matches!(
            script.open(6_000, 1, 8, 0),
            Outcome::SessionOpened { expires_at_ms, .. } if expires_at_ms == year_ms + SESSION_LIFETIME_LEGACY_MS
        ));
        // Opening a session clears the account's expired ones.
        let sessions: i64 = script
            .machine
            .queries()
            .connection()
            .query_row("SELECT count(*) FROM sessions WHERE user_id = 1", [], |row| row.get(0))
            .unwrap();
        assert_eq!(sessions, 2, "the expired session is gone, the two live ones stay");
    }

    /// A password change needs a live session and the hash the proposing node verified;
    /// it replaces the hash and ends every other session of the account, not the caller's
    /// and not another account's.
    #[test]
    fn a_password_change_ends_the_accounts_other_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let mut script = Script::new(dir.path());
        script.account("al", "old");
        script.account("bo", "h");
        for token in [1, 2, 3] {
            script.open(10, 1, token, 1_000_000);
        }
        script.open(10, 2, 9, 1_000_000);
        let change = |token: u8, old: &str, new: &str| {
            command::Kind::ChangePassword(chorus_proto::v1::ChangePasswordCommand {
                token_hash: vec![token; TOKEN_HASH_BYTES],
                old_password_hash: old.to_owned(),
                new_password_hash: new.to_owned(),
            })
        };
        assert_eq!(script.apply(20, change(1, "stale", "new")), Outcome::Rejected(Rejection::PasswordChanged));
        assert!(matches!(script.apply(20, change(1, "old", "")), Outcome::Rejected(Rejection::MalformedCommand(_))));
        assert_eq!(script.apply(20, change(4, "old", "new")), Outcome::Rejected(Rejection::SessionInvalid));
        assert!(script.live(2, 0), "nothing changed yet");
        assert_eq!(script.apply(20, change(1, "old", "new")), Outcome::PasswordChanged { sessions_ended: 2 });
        assert!(script.live(1, 0) && !script.live(2, 0) && !script.live(3, 0) && script.live(9, 0));
        let credentials = script.machine.queries().credentials("al").unwrap().unwrap();
        assert_eq!(credentials.password_hash, "new");
        // The old hash no longer changes anything, nor opens a session: a login that checked
        // the old password while the change committed is refused.
        assert_eq!(script.apply(30, change(1, "old", "other")), Outcome::Rejected(Rejection::PasswordChanged));
        let login = |hash: &str| {
            command::Kind::OpenSession(chorus_proto::v1::OpenSessionCommand {
                user_id: 1,
                token_hash: vec![5; TOKEN_HASH_BYTES],
                opened_at_ms: 30,
                expires_at_ms: 1_000_000,
                password_hash: hash.to_owned(),
            })
        };
        assert_eq!(script.apply(30, login("old")), Outcome::Rejected(Rejection::PasswordChanged));
        assert!(matches!(script.apply(30, login("new")), Outcome::SessionOpened { .. }));
    }
}
