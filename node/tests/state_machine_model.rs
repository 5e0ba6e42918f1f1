//! Model-based test of the chat state machine: random command sequences are applied both to
//! the SQLite state machine and to a plain in-memory model of the documented semantics;
//! after every step, every query must answer the same on both. Some sequences close and
//! reopen the database in the middle, which must change nothing.
//!
//! Cases: `PROPTEST_CASES` (default 96).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chorus::chat::limits::PAGE_BYTES_MAX;
use chorus::chat::limits::{SENDS_UNACKNOWLEDGED_PER_SESSION_MAX, SESSION_LIFETIME_LEGACY_MS, SESSIONS_PER_USER_MAX};
use chorus::chat::validate;
use chorus::chat::{ChatReader, ChatStateMachine, Credentials, MessageView, Outcome, Rejection, SessionUser};
use chorus_proto::v1::{
    ChangePasswordCommand, CloseSessionCommand, Command, CreateAccountCommand, DeleteAccountCommand,
    DeleteMessagesCommand, OpenSessionCommand, ReadMessagesCommand, SendMessageCommand, command,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

const NAMES: &[&str] = &["alice", "bob", "carol", "al", "bo.b", "Alice", "x_1", "", "bad name"];
const PASSWORD_HASHES: &[&str] = &["hash-a", "hash-b", ""];
const BODIES: &[&str] = &["hi", "hello there", "", "ünïcödé"];
/// Sequence choices (0 is invalid): few enough that retries and reuses are common.
const SEQUENCES: u64 = 8;
/// Log time at the first step, and how much passes per step.
const START_MS: u64 = 1_000 * 24 * 3600 * 1000;
const STEP_MS: u64 = 3600 * 1000;
/// How wrong the forming node's clock may be, per send: none of it may change an outcome.
const CLOCK_ERRORS_MS: &[i64] = &[0, 0, 60_000, -60_000, 2 * 24 * 3600 * 1000, -2 * 24 * 3600 * 1000];
const TOKENS: usize = 6;
const USER_IDS: u64 = 7;
const PATTERNS: &[&str] = &["*", "a*", "?o*", "*l*", "b?.b", "al", "zz*", "*e"];

/// One step of a generated schedule.
#[derive(Debug, Clone)]
enum Step {
    CreateAccount {
        name: usize,
        hash: usize,
    },
    OpenSession {
        user_id: u64,
        token: usize,
    },
    /// A login whose node verified the password against hash `hash` (an empty one is
    /// a command from before that check).
    OpenSessionChecked {
        user_id: u64,
        token: usize,
        hash: usize,
    },
    CloseSession {
        token: usize,
    },
    Send {
        token: usize,
        to: usize,
        body: usize,
        sequence: u64,
        acknowledged_through: u64,
        /// Index into CLOCK_ERRORS_MS: the forming leader's clock is this far off.
        clock_error: usize,
    },
    Read {
        token: usize,
        limit: u32,
        /// "" (no id), "r0".."r2", or one with a space (invalid).
        request_id: usize,
    },
    /// Deletes the messages sent `back` sends ago (1 = the latest one).
    Delete {
        token: usize,
        back: Vec<u64>,
    },
    DeleteAccount {
        token: usize,
        hash: usize,
    },
    ChangePassword {
        token: usize,
        old: usize,
        new: usize,
    },
    /// Garbage a buggy or newer node might have put in the log.
    Malformed {
        variant: u8,
    },
    /// Close the database and open it again.
    Reopen,
}

/// Mostly the three accounts and sessions the prelude makes, sometimes anything.
fn likely(common: usize, all: usize) -> impl Strategy<Value = usize> {
    prop_oneof![6 => 0..common, 1 => 0..all]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let token = || likely(3, TOKENS + 1);
    prop_oneof![
        2 => (0..NAMES.len(), 0..PASSWORD_HASHES.len()).prop_map(|(name, hash)| Step::CreateAccount { name, hash }),
        3 => (likely(3, USER_IDS as usize), 0..TOKENS)
            .prop_map(|(user, token)| Step::OpenSession { user_id: user as u64 + 1, token }),
        1 => (likely(3, USER_IDS as usize), 0..TOKENS, 0..PASSWORD_HASHES.len())
            .prop_map(|(user, token, hash)| Step::OpenSessionChecked { user_id: user as u64 + 1, token, hash }),
        1 => token().prop_map(|token| Step::CloseSession { token }),
        12 => (
            token(),
            likely(3, NAMES.len()),
            likely(2, BODIES.len()),
            prop_oneof![9 => 1..SEQUENCES, 1 => Just(0)],
            0..SEQUENCES,
            0..CLOCK_ERRORS_MS.len(),
        )
            .prop_map(|(token, to, body, sequence, acknowledged_through, clock_error)| Step::Send {
                token,
                to,
                body,
                sequence,
                // Mostly a valid acknowledgement (below the sequence), sometimes not.
                acknowledged_through: if acknowledged_through < sequence || sequence == 0 {
                    acknowledged_through
                } else {
                    acknowledged_through % sequence.max(1)
                },
                clock_error,
            }),
        1 => (token(), 1..SEQUENCES, 1..=SEQUENCES).prop_map(|(token, sequence, acknowledged_through)| Step::Send {
            token,
            to: 1,
            body: 0,
            sequence,
            acknowledged_through,
            clock_error: 0,
        }),
        3 => (token(), 0..4u32, 0..5usize).prop_map(|(token, limit, request_id)| Step::Read { token, limit, request_id }),
        4 => (token(), prop::collection::vec(1..8u64, 1..3)).prop_map(|(token, back)| Step::Delete { token, back }),
        1 => (token(), 0..PASSWORD_HASHES.len()).prop_map(|(token, hash)| Step::DeleteAccount { token, hash }),
        1 => (token(), 0..PASSWORD_HASHES.len(), 0..PASSWORD_HASHES.len())
            .prop_map(|(token, old, new)| Step::ChangePassword { token, old, new }),
        1 => (0..5u8).prop_map(|variant| Step::Malformed { variant }),
        1 => Just(Step::Reopen),
    ]
}

/// Every schedule starts with three accounts (alice, bob, carol: ids 1-3) logged in with
/// tokens 0-2, so that the random steps mostly do something rather than get rejected.
fn prelude() -> Vec<Step> {
    vec![
        Step::CreateAccount { name: 0, hash: 0 },
        Step::CreateAccount { name: 1, hash: 1 },
        Step::CreateAccount { name: 2, hash: 0 },
        Step::OpenSession { user_id: 1, token: 0 },
        Step::OpenSession { user_id: 2, token: 1 },
        Step::OpenSession { user_id: 3, token: 2 },
    ]
}

/// The token with index `TOKENS` is malformed (wrong length), the others are well-formed hashes.
fn token_hash(token: usize) -> Vec<u8> {
    if token == TOKENS { vec![1, 2, 3] } else { Sha256::digest([token as u8]).to_vec() }
}

fn command_of(step: &Step, time_ms: u64, next_message_id: u64) -> Option<Command> {
    let kind = match step {
        Step::CreateAccount { name, hash } => command::Kind::CreateAccount(CreateAccountCommand {
            username: canonical_or_raw(NAMES[*name]),
            password_hash: PASSWORD_HASHES[*hash].to_owned(),
            created_at_ms: time_ms,
        }),
        Step::OpenSession { user_id, token } => command::Kind::OpenSession(OpenSessionCommand {
            user_id: *user_id,
            token_hash: token_hash(*token),
            opened_at_ms: time_ms,
            expires_at_ms: 0,
            password_hash: String::new(),
        }),
        Step::OpenSessionChecked { user_id, token, hash } => command::Kind::OpenSession(OpenSessionCommand {
            user_id: *user_id,
            token_hash: token_hash(*token),
            opened_at_ms: time_ms,
            expires_at_ms: time_ms + 1000,
            password_hash: PASSWORD_HASHES[*hash].to_owned(),
        }),
        Step::CloseSession { token } => {
            command::Kind::CloseSession(CloseSessionCommand { token_hash: token_hash(*token) })
        }
        Step::Send { token, to, body, sequence, acknowledged_through, clock_error } => {
            command::Kind::SendMessage(SendMessageCommand {
                token_hash: token_hash(*token),
                to: canonical_or_raw(NAMES[*to]),
                body: BODIES[*body].to_owned(),
                sent_at_ms: time_ms.saturating_add_signed(CLOCK_ERRORS_MS[*clock_error]),
                sequence: *sequence,
                acknowledged_through: *acknowledged_through,
            })
        }
        Step::Read { token, limit, request_id } => command::Kind::ReadMessages(ReadMessagesCommand {
            token_hash: token_hash(*token),
            limit: *limit,
            read_at_ms: time_ms,
            request_id: match request_id {
                0 => String::new(),
                4 => "r x".to_owned(),
                n => format!("r{n}"),
            },
        }),
        Step::Delete { token, back } => command::Kind::DeleteMessages(DeleteMessagesCommand {
            token_hash: token_hash(*token),
            ids: back.iter().map(|back| next_message_id.saturating_sub(*back)).collect(),
        }),
        Step::DeleteAccount { token, hash } => command::Kind::DeleteAccount(DeleteAccountCommand {
            token_hash: token_hash(*token),
            password_hash: PASSWORD_HASHES[*hash].to_owned(),
            deleted_at_ms: time_ms,
        }),
        Step::ChangePassword { token, old, new } => command::Kind::ChangePassword(ChangePasswordCommand {
            token_hash: token_hash(*token),
            old_password_hash: PASSWORD_HASHES[*old].to_owned(),
            new_password_hash: PASSWORD_HASHES[*new].to_owned(),
        }),
        Step::Malformed { variant: 0 } => return Some(Command { kind: None, proposed_at_ms: 0 }),
        Step::Malformed { variant: 1 } => command::Kind::CreateAccount(CreateAccountCommand {
            username: "Upper".to_owned(),
            password_hash: "h".to_owned(),
            created_at_ms: time_ms,
        }),
        Step::Malformed { variant: 2 } => command::Kind::SendMessage(SendMessageCommand {
            token_hash: token_hash(0),
            to: "alice".to_owned(),
            body: "x".repeat(64 * 1024 + 1),
            sent_at_ms: time_ms,
            sequence: 1,
            acknowledged_through: 0,
        }),
        Step::Malformed { variant: 3 } => {
            command::Kind::DeleteMessages(DeleteMessagesCommand { token_hash: token_hash(0), ids: vec![0, 1] })
        }
        // A number SQLite cannot store, in a command otherwise valid.
        Step::Malformed { .. } => command::Kind::SendMessage(SendMessageCommand {
            token_hash: token_hash(0),
            to: "alice".to_owned(),
            body: "x".to_owned(),
            sent_at_ms: u64::MAX,
            sequence: 1,
            acknowledged_through: 0,
        }),
        Step::Reopen => return None,
    };
    Some(Command { kind: Some(kind), proposed_at_ms: 0 })
}

/// Commands carry canonical names; an invalid name is passed through to test rejection.
fn canonical_or_raw(name: &str) -> String {
    validate::canonical_username(name).unwrap_or_else(|_| name.to_owned())
}

// ---------------------------------------------------------------------------------------
// The model: the documented semantics in plain collections.

#[derive(Debug, Clone)]
struct ModelUser {
    user_id: u64,
    username: String,
    password_hash: Option<String>,
    deleted: bool,
}

#[derive(Debug, Clone)]
struct ModelMessage {
    sender: u64,
    recipient: u64,
    body: String,
    sent_at_ms: u64,
    read: bool,
}

/// A session's sends as the documented semantics keep them: acknowledged through a point,
/// and every later stored send by sequence (message id, recipient, body).
#[derive(Debug, Clone, Default)]
struct ModelSends {
    acknowledged_through: u64,
    remembered: BTreeMap<u64, (u64, String, String)>,
}

#[derive(Debug, Default)]
struct Model {
    users: BTreeMap<u64, ModelUser>,
    /// token hash → (user id, log index of the login)
    sessions: BTreeMap<Vec<u8>, (u64, u64)>,
    /// When each session opened so far expires (commands say nothing: a week after opening).
    expiries: BTreeMap<Vec<u8>, u64>,
    /// token hash → (request id, message ids) of the session's last identified read.
    last_reads: BTreeMap<Vec<u8>, (String, Vec<u64>)>,
    messages: BTreeMap<u64, ModelMessage>,
    /// token hash → what the session remembers of its sends.
    sends: BTreeMap<Vec<u8>, ModelSends>,
    next_message_id: u64,
    last_applied: u64,
}

impl Model {
    fn new() -> Self {
        Self { next_message_id: 1, ..Self::default() }
    }

    fn by_name(&self, name: &str) -> Option<&ModelUser> {
        self.users.values().find(|u| u.username == name)
    }

    fn session(&self, token_hash: &[u8]) -> Option<u64> {
        let (user_id, _) = self.sessions.get(token_hash)?;
        (!self.users[user_id].deleted).then_some(*user_id)
    }

    fn name(&self, user_id: u64) -> String {
        self.users[&user_id].username.clone()
    }

    fn unread(&self, user_id: u64) -> u64 {
        self.messages.values().filter(|m| m.recipient == user_id && !m.read).count() as u64
    }

    fn view(&self, id: u64, m: &ModelMessage) -> MessageView {
        MessageView {
            message_id: id,
            from: self.name(m.sender),
            to: self.name(m.recipient),
            body: m.body.clone(),
            sent_at_ms: m.sent_at_ms,
            read: m.read,
        }
    }

    fn apply(&mut self, index: u64, command: &Command) -> Outcome {
        assert!(index > self.last_applied);
        self.last_applied = index;
        match self.apply_kind(index, command) {
            Ok(outcome) => outcome,
            Err(rejection) => Outcome::Rejected(rejection),
        }
    }

    fn apply_kind(&mut self, index: u64, command: &Command) -> Result<Outcome, Rejection> {
        // First of all: a number SQLite cannot store (above i64::MAX) refuses the command.
        let numbers: Vec<u64> = match &command.kind {
            Some(command::Kind::CreateAccount(c)) => vec![c.created_at_ms],
            Some(command::Kind::OpenSession(c)) => vec![c.user_id, c.opened_at_ms, c.expires_at_ms],
            Some(command::Kind::SendMessage(c)) => vec![c.sent_at_ms, c.sequence, c.acknowledged_through],
            Some(command::Kind::ReadMessages(c)) => vec![c.read_at_ms],
            Some(command::Kind::DeleteMessages(c)) => c.ids.clone(),
            Some(command::Kind::DeleteAccount(c)) => vec![c.deleted_at_ms],
            Some(command::Kind::CloseSession(_) | command::Kind::ChangePassword(_)) | None => Vec::new(),
        };
        if numbers.iter().any(|&n| n > i64::MAX as u64) {
            return Err(Rejection::MalformedCommand("a number beyond what the chat state can store"));
        }
        match command.kind.as_ref().ok_or(Rejection::UnknownCommand)? {
            command::Kind::CreateAccount(c) => {
                let username = canonical_exactly(&c.username)?;
                if c.password_hash.is_empty() {
                    return Err(Rejection::MalformedCommand("account without a password hash"));
                }
                if let Some(existing) = self.by_name(&username) {
                    return Err(if existing.deleted {
                        Rejection::UsernameRetired { username }
                    } else {
                        Rejection::UsernameTaken { username }
                    });
                }
                let user_id = self.users.len() as u64 + 1;
                self.users.insert(
                    user_id,
                    ModelUser {
                        user_id,
                        username: username.clone(),
                        password_hash: Some(c.password_hash.clone()),
                        deleted: false,
                    },
                );
                Ok(Outcome::AccountCreated { user_id, username })
            }
            command::Kind::OpenSession(c) => {
                if c.token_hash.len() != 32 {
                    return Err(Rejection::SessionInvalid);
                }
                let user = self.users.get(&c.user_id).filter(|u| !u.deleted).ok_or(Rejection::AccountGone)?.clone();
                if !c.password_hash.is_empty() && user.password_hash.as_deref() != Some(c.password_hash.as_str()) {
                    return Err(Rejection::PasswordChanged);
                }
                if self.sessions.contains_key(&c.token_hash) {
                    return Err(Rejection::TokenCollision);
                }
                self.sessions.insert(c.token_hash.clone(), (user.user_id, index));
                // The log's time stays 0 in these schedules (no command carries a proposal
                // time), so the lifetime counts from the opening.
                let lifetime_ms = match c.expires_at_ms {
                    0 => SESSION_LIFETIME_LEGACY_MS,
                    at => at.saturating_sub(c.opened_at_ms),
                };
                let expires_at_ms = c.opened_at_ms.saturating_add(lifetime_ms).min(i64::MAX as u64);
                self.expiries.insert(c.token_hash.clone(), expires_at_ms);
                let mut mine: Vec<(u64, Vec<u8>)> = self
                    .sessions
                    .iter()
                    .filter(|(_, (u, _))| *u == user.user_id)
                    .map(|(hash, (_, opened))| (*opened, hash.clone()))
                    .collect();
                mine.sort();
                while mine.len() as u64 > SESSIONS_PER_USER_MAX {
                    let (_, oldest) = mine.remove(0);
                    self.sessions.remove(&oldest);
                    self.last_reads.remove(&oldest);
                    self.sends.remove(&oldest);
                }
                Ok(Outcome::SessionOpened {
                    username: user.username,
                    unread_count: self.unread(user.user_id),
                    expires_at_ms,
                })
            }
            command::Kind::CloseSession(c) => {
                self.sessions.remove(&c.token_hash).ok_or(Rejection::SessionInvalid)?;
                // A session's memory of its last read and of its sends ends with it.
                self.last_reads.remove(&c.token_hash);
                self.sends.remove(&c.token_hash);
                Ok(Outcome::SessionClosed)
            }
            command::Kind::SendMessage(c) => {
                let sender = self.session(&c.token_hash).ok_or(Rejection::SessionInvalid)?;
                let to = canonical_exactly(&c.to)?;
                validate::message_body(&c.body)?;
                validate::send_sequence(c.sequence, c.acknowledged_through)?;
                // No clock appears below: `sent_at_ms` is shown, never consulted.
                let sends = self.sends.entry(c.token_hash.clone()).or_default();
                if c.acknowledged_through > sends.acknowledged_through {
                    sends.acknowledged_through = c.acknowledged_through;
                    sends.remembered.retain(|sequence, _| *sequence > c.acknowledged_through);
                }
                if let Some((message_id, first_to, first_body)) = sends.remembered.get(&c.sequence) {
                    return if *first_to == to && *first_body == c.body {
                        Ok(Outcome::MessageSent { message_id: *message_id, duplicate: true, sender_id: sender })
                    } else {
                        Err(Rejection::SequenceReused { sequence: c.sequence, message_id: *message_id })
                    };
                }
                if c.sequence <= sends.acknowledged_through {
                    return Err(Rejection::SequenceAcknowledged {
                        sequence: c.sequence,
                        acknowledged_through: sends.acknowledged_through,
                    });
                }
                let remembered = sends.remembered.len() as u64;
                if remembered >= SENDS_UNACKNOWLEDGED_PER_SESSION_MAX {
                    return Err(Rejection::TooManyUnacknowledgedSends { count: remembered });
                }
                let recipient = self
                    .by_name(&to)
                    .filter(|u| !u.deleted)
                    .ok_or(Rejection::RecipientNotFound { username: to.clone() })?
                    .user_id;
                let message_id = self.next_message_id;
                self.next_message_id += 1;
                self.messages.insert(
                    message_id,
                    ModelMessage { sender, recipient, body: c.body.clone(), sent_at_ms: c.sent_at_ms, read: false },
                );
                let sends = self.sends.get_mut(&c.token_hash).expect("created above");
                sends.remembered.insert(c.sequence, (message_id, to, c.body.clone()));
                Ok(Outcome::MessageSent { message_id, duplicate: false, sender_id: sender })
            }
            command::Kind::ReadMessages(c) => {
                let reader = self.session(&c.token_hash).ok_or(Rejection::SessionInvalid)?;
                validate::request_id(&c.request_id)?;
                if let Some((last_id, ids)) = self.last_reads.get(&c.token_hash)
                    && !c.request_id.is_empty()
                    && *last_id == c.request_id
                {
                    let messages = ids
                        .iter()
                        .filter_map(|id| {
                            self.messages.get(id).filter(|m| m.recipient == reader).map(|m| self.view(*id, m))
                        })
                        .collect();
                    return Ok(Outcome::MessagesRead { messages, unread_remaining: self.unread(reader) });
                }
                let limit = validate::page_size(c.limit) as usize;
                let ids: Vec<u64> = self
                    .messages
                    .iter()
                    .filter(|(_, m)| m.recipient == reader && !m.read)
                    .map(|(id, _)| *id)
                    .take(limit)
                    .collect();
                let mut messages = Vec::new();
                for id in ids {
                    let message = self.messages.get_mut(&id).unwrap();
                    message.read = true;
                    let message = message.clone();
                    messages.push(self.view(id, &message));
                }
                if !c.request_id.is_empty() {
                    let ids = messages.iter().map(|m: &MessageView| m.message_id).collect();
                    self.last_reads.insert(c.token_hash.clone(), (c.request_id.clone(), ids));
                }
                Ok(Outcome::MessagesRead { messages, unread_remaining: self.unread(reader) })
            }
            command::Kind::DeleteMessages(c) => {
                let caller = self.session(&c.token_hash).ok_or(Rejection::SessionInvalid)?;
                let ids = validate::message_ids(&c.ids)?;
                for &message_id in &ids {
                    match self.messages.get(&message_id) {
                        Some(m) if m.recipient == caller => {}
                        Some(m) if m.sender == caller && !m.read => {}
                        Some(m) if m.sender == caller => return Err(Rejection::MessageAlreadyRead { message_id }),
                        _ => return Err(Rejection::MessageNotFound { message_id }),
                    }
                }
                for id in &ids {
                    self.messages.remove(id);
                }
                Ok(Outcome::MessagesDeleted { count: ids.len() as u64 })
            }
            command::Kind::DeleteAccount(c) => {
                let user_id = self.session(&c.token_hash).ok_or(Rejection::SessionInvalid)?;
                if self.users[&user_id].password_hash.as_deref() != Some(c.password_hash.as_str()) {
                    return Err(Rejection::PasswordChanged);
                }
                // Her mailbox goes, and so does what she sent that is still unread.
                let withdrawn = |m: &ModelMessage| m.sender == user_id && !m.read;
                self.messages.retain(|_, m| m.recipient != user_id && !withdrawn(m));
                self.sessions.retain(|_, (u, _)| *u != user_id);
                let sessions = &self.sessions;
                self.last_reads.retain(|token, _| sessions.contains_key(token));
                self.sends.retain(|token, _| sessions.contains_key(token));
                let user = self.users.get_mut(&user_id).unwrap();
                user.deleted = true;
                user.password_hash = None;
                Ok(Outcome::AccountDeleted)
            }
            command::Kind::ChangePassword(c) => {
                let user_id = self.session(&c.token_hash).ok_or(Rejection::SessionInvalid)?;
                if c.new_password_hash.is_empty() {
                    return Err(Rejection::MalformedCommand("password change without a new password hash"));
                }
                if self.users[&user_id].password_hash.as_deref() != Some(c.old_password_hash.as_str()) {
                    return Err(Rejection::PasswordChanged);
                }
                self.users.get_mut(&user_id).unwrap().password_hash = Some(c.new_password_hash.clone());
                // Every other session of the account ends, with what it remembered.
                let before = self.sessions.len();
                self.sessions.retain(|token, (u, _)| *u != user_id || *token == c.token_hash);
                let sessions_ended = (before - self.sessions.len()) as u64;
                let sessions = &self.sessions;
                self.last_reads.retain(|token, _| sessions.contains_key(token));
                self.sends.retain(|token, _| sessions.contains_key(token));
                Ok(Outcome::PasswordChanged { sessions_ended })
            }
        }
    }

    fn list_accounts(&self, pattern: &str, after: Option<&str>, limit: u32) -> Vec<String> {
        let mut names: Vec<String> = self
            .users
            .values()
            .filter(|u| !u.deleted && glob_matches(pattern, &u.username))
            .filter(|u| after.is_none_or(|after| u.username.as_str() > after))
            .map(|u| u.username.clone())
            .collect();
        names.sort();
        names.truncate(limit as usize);
        names
    }

    fn history(&self, user_id: u64, peer: Option<u64>, before_id: u64, limit: u32) -> Vec<MessageView> {
        self.messages
            .iter()
            .rev()
            .filter(|(id, _)| **id < before_id)
            .filter(|(_, m)| match peer {
                None => m.sender == user_id || m.recipient == user_id,
                Some(peer) => {
                    (m.sender == user_id && m.recipient == peer) || (m.sender == peer && m.recipient == user_id)
                }
            })
            .take(limit as usize)
            .map(|(id, m)| self.view(*id, m))
            .collect()
    }

    fn received_after(&self, user_id: u64, after_id: u64, limit: u32) -> Vec<MessageView> {
        self.messages
            .range(after_id + 1..)
            .filter(|(_, m)| m.recipient == user_id)
            .take(limit as usize)
            .map(|(id, m)| self.view(*id, m))
            .collect()
    }
}

fn canonical_exactly(name: &str) -> Result<String, Rejection> {
    let canonical = validate::canonical_username(name)?;
    if canonical != name {
        return Err(Rejection::Invalid(validate::InvalidInput::UsernameBadCharacter {
            name: name.to_owned(),
            found: name.chars().find(|c| c.is_ascii_uppercase()).unwrap_or('?'),
        }));
    }
    Ok(canonical)
}

/// `*` matches any run of characters, `?` exactly one.
fn glob_matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

// ---------------------------------------------------------------------------------------
// The comparison.

fn assert_same_answers(sm: &ChatReader, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(sm.last_applied().unwrap(), model.last_applied);
    for token in 0..=TOKENS {
        let hash = token_hash(token);
        let expected = model.session(&hash).map(|user_id| SessionUser {
            user_id,
            username: model.name(user_id),
            expires_at_ms: model.expiries[&hash],
        });
        prop_assert_eq!(sm.session_user(&hash, 0).unwrap(), expected, "session of token {}", token);
    }
    for name in NAMES {
        let canonical = canonical_or_raw(name);
        let user = model.by_name(&canonical);
        let expected = user
            .filter(|u| !u.deleted)
            .map(|u| Credentials { user_id: u.user_id, password_hash: u.password_hash.clone().unwrap() });
        prop_assert_eq!(sm.credentials(&canonical).unwrap(), expected, "credentials of {}", canonical);
        prop_assert_eq!(sm.user_id(&canonical).unwrap(), user.map(|u| u.user_id));
    }
    for pattern in PATTERNS {
        let glob = validate::account_pattern(pattern).unwrap();
        prop_assert_eq!(sm.list_accounts(&glob, None, 1000).unwrap(), model.list_accounts(&glob, None, 1000));
        // Walk the pages two names at a time, as a client following page tokens would.
        let mut after: Option<String> = None;
        loop {
            let page = sm.list_accounts(&glob, after.as_deref(), 2).unwrap();
            prop_assert_eq!(
                &page,
                &model.list_accounts(&glob, after.as_deref(), 2),
                "pattern {} after {:?}",
                glob,
                after
            );
            match page.last() {
                Some(last) if page.len() == 2 => after = Some(last.clone()),
                _ => break,
            }
        }
    }
    for user_id in 1..=USER_IDS {
        prop_assert_eq!(
            sm.unread_count(user_id).unwrap(),
            if model.users.contains_key(&user_id) && !model.users[&user_id].deleted {
                model.unread(user_id)
            } else {
                0
            }
        );
        for peer in std::iter::once(None).chain((1..=USER_IDS).map(Some)) {
            for (before_id, limit) in [(0, 1000), (u64::MAX, 2), (5, 3)] {
                let before = if before_id == 0 { u64::MAX } else { before_id };
                prop_assert_eq!(
                    sm.history(user_id, peer, before, limit).unwrap().messages,
                    model.history(user_id, peer, before, limit),
                    "history of {} with {:?} before {} limit {}",
                    user_id,
                    peer,
                    before,
                    limit
                );
            }
        }
        for (after_id, limit) in [(0, 1000), (3, 2)] {
            prop_assert_eq!(
                sm.received_after(user_id, after_id, limit, PAGE_BYTES_MAX).unwrap().messages,
                model.received_after(user_id, after_id, limit)
            );
        }
    }
    Ok(())
}

fn run_schedule(dir: &Path, steps: &[Step]) -> Result<(), TestCaseError> {
    let path: PathBuf = dir.join("chat.sqlite3");
    let mut sm = ChatStateMachine::open(&path).unwrap();
    // Clients read through read-only connections beside the writer: they must see exactly
    // what the writer's own queries see, after every apply.
    let mut reader = ChatReader::open_read_only(&path).unwrap();
    let mut model = Model::new();
    let mut index = 0;
    for (n, step) in steps.iter().enumerate() {
        let time_ms = START_MS + STEP_MS * n as u64;
        match command_of(step, time_ms, model.next_message_id) {
            None => {
                drop(reader);
                drop(sm);
                sm = ChatStateMachine::open(&path).unwrap();
                reader = ChatReader::open_read_only(&path).unwrap();
            }
            Some(command) => {
                // Gaps in the index happen when the log holds entries that are not chat
                // commands (Raft's no-ops); apply must accept them.
                index += 1 + u64::from((n as u64).is_multiple_of(3));
                let got = sm.apply(index, &command).unwrap();
                let expected = model.apply(index, &command);
                prop_assert_eq!(got, expected, "step {}: {:?}", n, step);
            }
        }
        assert_same_answers(sm.queries(), &model)?;
        assert_same_answers(&reader, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn state_machine_matches_model(steps in prop::collection::vec(step_strategy(), 1..80)) {
        let dir = tempfile::tempdir().unwrap();
        let schedule: Vec<Step> = prelude().into_iter().chain(steps).collect();
        run_schedule(dir.path(), &schedule)?;
    }
}

/// The session cap closes the oldest login first, and only that user's.
#[test]
fn oldest_sessions_are_closed_beyond_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mut steps = vec![Step::CreateAccount { name: 0, hash: 0 }, Step::CreateAccount { name: 1, hash: 0 }];
    steps.push(Step::OpenSession { user_id: 2, token: 5 });
    // Tokens beyond the small pool: open SESSIONS_PER_USER_MAX + 2 sessions for alice.
    let path = dir.path().join("chat.sqlite3");
    let mut sm = ChatStateMachine::open(&path).unwrap();
    let mut model = Model::new();
    let mut index = 0;
    for step in &steps {
        index += 1;
        let command = command_of(step, index, 1).unwrap();
        assert_eq!(sm.apply(index, &command).unwrap(), model.apply(index, &command));
    }
    let extra_token = |i: u64| Sha256::digest(i.to_be_bytes()).to_vec();
    for i in 0..SESSIONS_PER_USER_MAX + 2 {
        index += 1;
        let command = Command {
            kind: Some(command::Kind::OpenSession(OpenSessionCommand {
                user_id: 1,
                token_hash: extra_token(i),
                opened_at_ms: 5,
                expires_at_ms: 0,
                password_hash: String::new(),
            })),
            proposed_at_ms: 0,
        };
        assert_eq!(sm.apply(index, &command).unwrap(), model.apply(index, &command));
    }
    assert_eq!(sm.queries().session_user(&extra_token(0), 0).unwrap(), None);
    assert_eq!(sm.queries().session_user(&extra_token(1), 0).unwrap(), None);
    assert!(sm.queries().session_user(&extra_token(2), 0).unwrap().is_some());
    assert!(sm.queries().session_user(&token_hash(5), 0).unwrap().is_some(), "bob's session is untouched");
}

/// Applying an index at or below last_applied is a bug in the log, and must be loud.
#[test]
#[should_panic(expected = "apply out of order")]
fn applying_an_old_index_panics() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = ChatStateMachine::open(&dir.path().join("chat.sqlite3")).unwrap();
    let command = command_of(&Step::CreateAccount { name: 0, hash: 0 }, 1, 1).unwrap();
    sm.apply(5, &command).unwrap();
    sm.apply(5, &command).unwrap();
}

/// Runs `steps` (after nothing: the caller includes any prelude) against both the state
/// machine and the model; a pinned schedule from a past failure.
fn run_pinned(steps: &[Step]) {
    let dir = tempfile::tempdir().unwrap();
    let schedule: Vec<Step> = prelude().into_iter().chain(steps.iter().cloned()).collect();
    if let Err(failure) = run_schedule(dir.path(), &schedule) {
        panic!("{failure}");
    }
}

fn send_step(token: usize, to: usize, sequence: u64) -> Step {
    Step::Send { token, to, body: 0, sequence, acknowledged_through: 0, clock_error: 0 }
}

/// Regression (found by the model test, 2026-11-24): deleting a message that a retried send
/// points at, then retrying, must not bring it back or count it twice.
#[test]
fn regression_delete_after_a_retried_send() {
    run_pinned(&[
        Step::CreateAccount { name: 0, hash: 0 },
        send_step(1, 0, 1),
        send_step(0, 0, 1),
        Step::Delete { token: 0, back: vec![1] },
    ]);
}

/// Regression (found by the model test, 2026-11-24): deleting an account withdraws its
/// unread sent messages, and forgets its sessions' sends with them.
#[test]
fn regression_delete_account_after_a_send() {
    run_pinned(&[send_step(0, 1, 1), Step::DeleteAccount { token: 0, hash: 0 }]);
}

/// Regression (found by the model test, 2026-11-24, in the model): a session's memory of
/// its last read ends with the session; a new session under the same token hash starts
/// afresh, so reusing the request id reads anew.
#[test]
fn regression_a_closed_sessions_last_read_does_not_outlive_it() {
    run_pinned(&[
        send_step(0, 1, 1),
        Step::Read { token: 1, limit: 1, request_id: 1 },
        Step::CloseSession { token: 1 },
        Step::OpenSession { user_id: 2, token: 1 },
        send_step(0, 1, 2),
        Step::Read { token: 1, limit: 1, request_id: 1 },
    ]);
}

/// One leader's clock a day ahead (or behind) changes nothing: every send before and after
/// it is accepted, and a retry formed by a leader with another clock gets the first id.
/// (Under the clock-based dedup this was refused for a day: the floor rose with the fast
/// clock and never came down; and a retry formed by a slower clock was refused as
/// "from the future" before its record was even looked up.)
#[test]
fn no_leader_clock_decides_whether_a_send_is_stored() {
    let day_ms = 24 * 3600 * 1000i64;
    run_pinned(&[
        Step::Send { token: 0, to: 1, body: 0, sequence: 1, acknowledged_through: 0, clock_error: 4 },
        Step::Send { token: 0, to: 1, body: 1, sequence: 2, acknowledged_through: 1, clock_error: 0 },
        // The retry of 2 formed by a leader whose clock is two days behind.
        Step::Send { token: 0, to: 1, body: 1, sequence: 2, acknowledged_through: 1, clock_error: 5 },
        Step::Send { token: 0, to: 1, body: 0, sequence: 3, acknowledged_through: 2, clock_error: 1 },
    ]);
    assert_eq!(CLOCK_ERRORS_MS[4], 2 * day_ms);
    assert_eq!(CLOCK_ERRORS_MS[5], -2 * day_ms);
    let dir = tempfile::tempdir().unwrap();
    let mut sm = ChatStateMachine::open(&dir.path().join("chat.sqlite3")).unwrap();
    let mut index = 0;
    let mut apply = |sm: &mut ChatStateMachine, step: &Step, time_ms: u64| {
        index += 1;
        sm.apply(index, &command_of(step, time_ms, 1).unwrap()).unwrap()
    };
    for step in prelude() {
        apply(&mut sm, &step, START_MS);
    }
    let first = apply(&mut sm, &send_step(0, 1, 1), START_MS + 2 * day_ms as u64);
    let later = apply(&mut sm, &send_step(0, 1, 2), START_MS);
    let retry = apply(&mut sm, &send_step(0, 1, 1), START_MS - day_ms as u64);
    assert_eq!(first, Outcome::MessageSent { message_id: 1, duplicate: false, sender_id: 1 });
    assert_eq!(later, Outcome::MessageSent { message_id: 2, duplicate: false, sender_id: 1 });
    assert_eq!(retry, Outcome::MessageSent { message_id: 1, duplicate: true, sender_id: 1 });
}

/// A retry is recognized for as long as its session lives and the client has not
/// acknowledged it, however much log time passes and however many sends follow (up to the
/// bound); beyond the bound of unacknowledged sends, new ones are refused, not stored
/// unprotected, until the client acknowledges.
#[test]
fn unacknowledged_sends_are_remembered_until_acknowledged_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = ChatStateMachine::open(&dir.path().join("chat.sqlite3")).unwrap();
    let mut index = 0;
    for step in prelude() {
        index += 1;
        sm.apply(index, &command_of(&step, START_MS, 1).unwrap()).unwrap();
    }
    let send = |sequence: u64, acknowledged_through: u64, sent_at_ms: u64| Command {
        kind: Some(command::Kind::SendMessage(SendMessageCommand {
            token_hash: token_hash(0),
            to: "bob".to_owned(),
            body: format!("message {sequence}"),
            sent_at_ms,
            sequence,
            acknowledged_through,
        })),
        proposed_at_ms: 0,
    };
    let max = SENDS_UNACKNOWLEDGED_PER_SESSION_MAX;
    let commands: Vec<Command> = (1..=max).map(|n| send(n, 0, START_MS + n)).collect();
    let batch: Vec<(u64, Option<&Command>)> =
        commands.iter().enumerate().map(|(n, c)| (index + 1 + n as u64, Some(c))).collect();
    index += max;
    let applied = sm.apply_batch(&batch).unwrap();
    assert!(applied.outcomes.iter().all(|o| matches!(o, Some(Outcome::MessageSent { duplicate: false, .. }))));
    assert_eq!(applied.mailboxes_touched, [2].into(), "bob's subscriptions, and only his, must look");
    let year_later = START_MS + 365 * 24 * 3600 * 1000;
    index += 1;
    let retry = sm.apply(index, &send(1, 0, year_later)).unwrap();
    assert_eq!(
        retry,
        Outcome::MessageSent { message_id: 1, duplicate: true, sender_id: 1 },
        "a year later, still recognized"
    );
    index += 1;
    let over = sm.apply(index, &send(max + 1, 0, year_later)).unwrap();
    assert_eq!(over, Outcome::Rejected(Rejection::TooManyUnacknowledgedSends { count: max }));
    index += 1;
    let acknowledged = sm.apply(index, &send(max + 1, max - 1, year_later)).unwrap();
    assert!(matches!(acknowledged, Outcome::MessageSent { duplicate: false, .. }), "{acknowledged:?}");
    index += 1;
    let late = sm.apply(index, &send(5, 0, year_later)).unwrap();
    assert_eq!(late, Outcome::Rejected(Rejection::SequenceAcknowledged { sequence: 5, acknowledged_through: max - 1 }));
    let mut received = 0;
    let mut after = 0;
    loop {
        let page = sm.queries().received_after(2, after, u32::MAX, PAGE_BYTES_MAX).unwrap();
        received += page.messages.len() as u64;
        match page.messages.last() {
            Some(last) if page.more => after = last.message_id,
            _ => break,
        }
    }
    assert_eq!(received, max + 1, "no second copies");
}
