//! Where `chorus login` keeps the session token between commands, with the numbering of
//! the session's sends (`SendMessageRequest.sequence`).
//!
//! The file holds a bearer secret, so it is created readable by its owner only (0600) and
//! replaced atomically (write a temporary file, then rename). Every `chorus send` is its
//! own process, and several may run at once on one session: the numbering is read and
//! changed only under an exclusive lock of a sibling `.lock` file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chorus::client::SendSequence;
use serde::{Deserialize, Serialize};

/// How long a send whose outcome stayed unknown is kept awaiting (so that a retry with
/// `--sequence` is still recognized) before the session acknowledges it anyway. Judged by
/// this machine's clock, which can only err safely: acknowledged too early, a late retry
/// is refused (never stored twice). A start time ahead of the clock (the clock was wrong,
/// then corrected) counts as now, so that a send is never kept longer than this from when
/// this machine first saw it kept.
const AWAITING_SEND_KEPT: Duration = Duration::from_secs(24 * 60 * 60);
/// How many newer sends a send may stay awaiting behind: a send left awaiting (its
/// `chorus send` killed mid-call, say) holds back the session's acknowledgement, and the
/// server takes at most 1,024 unacknowledged sends per session. Kept well below that, the
/// session never reaches the server's bound, whatever is left awaiting.
const AWAITING_SEND_NUMBERS_KEPT: u64 = 512;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedSession {
    pub username: String,
    pub token: String,
    /// The server that issued it, for the record (any node of the cluster accepts it).
    pub server: String,
    /// The sequence the session's next new message gets.
    #[serde(default = "first_sequence")]
    pub next_send_sequence: u64,
    /// Sends still awaiting an answer: in flight in another `chorus send`, or whose outcome
    /// stayed unknown.
    #[serde(default)]
    pub sends_awaiting: Vec<AwaitingSend>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AwaitingSend {
    pub sequence: u64,
    pub started_unix_ms: u64,
    /// What the send was (a digest of its recipient and body): a retry with `--sequence`
    /// must be the same message, or it is refused before it reaches the server.
    #[serde(default)]
    pub message_digest: String,
    /// Held by the outbox, which will repeat it: kept awaiting however long or far behind
    /// (the session's acknowledgement stays below it, so the server remembers it and
    /// recognizes the repeat). Nothing new is numbered while it waits in front of the
    /// outbox, so the server's bound on unacknowledged sends is not approached.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
}

/// The digest that ties a sequence to its message: a retry of another message under the
/// same number (a typo in the number, or a number from an earlier session) is refused.
pub fn message_digest(to: &str, body: &str) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(to.to_ascii_lowercase().as_bytes());
    hasher.update([0]);
    hasher.update(body.as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

fn first_sequence() -> u64 {
    1
}

impl SavedSession {
    pub fn new(username: String, token: String, server: String) -> Self {
        Self { username, token, server, next_send_sequence: first_sequence(), sends_awaiting: Vec::new() }
    }

    /// The numbering as the client library keeps it, without sends kept past their time
    /// or too far behind the newest.
    pub fn send_sequence(&self, now_unix_ms: u64) -> SendSequence {
        let awaiting = self.sends_still_awaiting(now_unix_ms).map(|send| send.sequence);
        SendSequence::resume(self.next_send_sequence, awaiting)
    }

    fn sends_still_awaiting(&self, now_unix_ms: u64) -> impl Iterator<Item = &AwaitingSend> {
        let kept_ms = AWAITING_SEND_KEPT.as_millis() as u64;
        let next = self.next_send_sequence;
        self.sends_awaiting.iter().filter(move |send| {
            // Only numbers this session handed out (a damaged file could hold others).
            (1..next).contains(&send.sequence)
                && (send.pinned
                    || (send.started_unix_ms.min(now_unix_ms).saturating_add(kept_ms) > now_unix_ms
                        && next.saturating_sub(send.sequence) <= AWAITING_SEND_NUMBERS_KEPT))
        })
    }

    /// Marks send `sequence` as held by the outbox (see [`AwaitingSend::pinned`]); returns
    /// whether it was still awaiting.
    pub fn pin(&mut self, sequence: u64, now_unix_ms: u64) -> bool {
        if self.awaiting_send(sequence, now_unix_ms).is_none() {
            return false;
        }
        for send in self.sends_awaiting.iter_mut().filter(|send| send.sequence == sequence) {
            send.pinned = true;
        }
        true
    }

    /// The send `sequence` of this session, if it still awaits its answer.
    pub fn awaiting_send(&self, sequence: u64, now_unix_ms: u64) -> Option<&AwaitingSend> {
        self.sends_still_awaiting(now_unix_ms).find(|send| send.sequence == sequence)
    }

    /// Stores `sends` back, keeping what was known of sends that were already awaiting
    /// (their start, clamped to now, and their message); `begun` names the message of a
    /// send just numbered.
    pub fn store_send_sequence(&mut self, sends: &SendSequence, now_unix_ms: u64, begun: Option<(u64, String)>) {
        let known = |sequence: u64| {
            let kept = self.sends_awaiting.iter().find(|send| send.sequence == sequence);
            let started_unix_ms = kept.map_or(now_unix_ms, |send| send.started_unix_ms.min(now_unix_ms));
            let message_digest = match &begun {
                Some((begun, digest)) if *begun == sequence => digest.clone(),
                _ => kept.map(|send| send.message_digest.clone()).unwrap_or_default(),
            };
            let pinned = kept.is_some_and(|send| send.pinned);
            AwaitingSend { sequence, started_unix_ms, message_digest, pinned }
        };
        let awaiting = sends.awaiting().map(known).collect();
        self.next_send_sequence = sends.next();
        self.sends_awaiting = awaiting;
    }
}

/// The session file's path: the flag or `CHORUS_SESSION_FILE`, else
/// `$XDG_CONFIG_HOME/chorus/session.json`, else `~/.config/chorus/session.json`.
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    if let Some(config) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(config).join("chorus").join("session.json"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config").join("chorus").join("session.json")),
        None => bail!("cannot tell where to keep the session: set CHORUS_SESSION_FILE or HOME"),
    }
}

pub fn load(path: &Path) -> Result<SavedSession> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            bail!("not logged in: run `chorus login USERNAME` first")
        }
        Err(error) => return Err(error).with_context(|| format!("cannot read session file {}", path.display())),
    };
    serde_json::from_str(&text).with_context(|| {
        format!("session file {} is damaged: run `chorus login USERNAME` again to replace it", path.display())
    })
}

pub fn save(path: &Path, session: &SavedSession) -> Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    // A temporary file of its own (readable by this user only, 0600), renamed over the
    // session file: a reader sees the old session or the new one, never half of one, and
    // two writers never share a temporary file.
    let mut file = tempfile::Builder::new()
        .prefix(".session-")
        .suffix(".tmp")
        .tempfile_in(parent)
        .with_context(|| format!("cannot write a session file in {}", parent.display()))?;
    file.write_all(serde_json::to_string_pretty(session)?.as_bytes())?;
    file.as_file().sync_all()?;
    file.persist(path).with_context(|| format!("cannot write session file {}", path.display()))?;
    Ok(())
}

/// The session's lock, held until dropped: every change of the session file is made
/// under it, so that concurrent `chorus` commands never hand out one sequence twice nor
/// write over one another's changes.
fn lock(path: &Path) -> Result<std::fs::File> {
    lock_file(&path.with_extension("json.lock"), "the session")
}

/// An exclusive lock of the file at `lock_path` (made if missing), held until dropped;
/// when another process holds it, says that this one waits for `what`.
pub fn lock_file(lock_path: &Path, what: &str) -> Result<std::fs::File> {
    let parent = lock_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .with_context(|| format!("cannot open the lock {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        eprintln!("waiting for another chorus command that holds {what} ({})", lock_path.display());
        lock.lock().with_context(|| format!("cannot lock {}", lock_path.display()))?;
    }
    Ok(lock)
}

/// Saves a new session (a login), under the session's lock.
pub fn replace(path: &Path, session: &SavedSession) -> Result<()> {
    let lock = lock(path)?;
    save(path, session)?;
    drop(lock);
    Ok(())
}

/// Loads the session, lets `change` change it, and saves it, all under the session's lock.
pub fn update<R>(path: &Path, change: impl FnOnce(&mut SavedSession) -> R) -> Result<R> {
    let lock = lock(path)?;
    let mut session = load(path)?;
    let result = change(&mut session);
    save(path, &session)?;
    drop(lock);
    Ok(result)
}

/// Like [`update`], but only if the file still holds the session of `token`: a command
/// that finishes after a logout, or after a login as someone (or something) else, leaves
/// the new session alone. Returns whether it changed it.
pub fn update_if_still(path: &Path, token: &str, change: impl FnOnce(&mut SavedSession)) -> Result<bool> {
    let lock = lock(path)?;
    let mut session = match load(path) {
        Ok(session) if session.token == token => session,
        // Logged out (no file), logged in again, or a damaged file: not this session's.
        _ => return Ok(false),
    };
    change(&mut session);
    save(path, &session)?;
    drop(lock);
    Ok(true)
}

/// Removes the session file if it still holds the session of `token` (a logout, an
/// account deletion), under the session's lock: one that finishes after a new login
/// leaves the new session alone. Returns whether it removed it.
pub fn remove_if_still(path: &Path, token: &str) -> Result<bool> {
    let lock = lock(path)?;
    if !load(path).is_ok_and(|session| session.token == token) {
        return Ok(false);
    }
    remove(path)?;
    drop(lock);
    Ok(true)
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("cannot remove session file {}", path.display())),
    }
}
