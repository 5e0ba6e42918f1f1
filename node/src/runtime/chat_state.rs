//! The chat state as the node shares it: the one writer (apply) behind its own lock,
//! read-only connections for client queries, one more for the state digest, a watch of the
//! applied index, and per-user wake-ups for live subscriptions.
//!
//! Nothing a client asks can make apply wait: client queries never take the writer's lock
//! (SQLite in WAL mode lets them read a committed snapshot while apply writes), so the
//! replication loop, which applies inline, keeps ticking, heartbeating and voting whatever
//! the clients do.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use chorus_proto::v1::Command;

use crate::blocking_pool::{BlockingPool, PoolBusy};
use crate::chat::{ChatReader, ChatStateMachine, Outcome, StateMachineError};
use crate::watch::Watch;

/// Read-only connections serving client queries. Each query takes a free one for its
/// duration; with more queries at once than connections, they wait for one another (as
/// futures, holding no thread), never for apply.
const READERS: usize = 4;

/// Client queries waiting for a connection before new ones are refused (OVERLOADED): more
/// than the node's live subscriptions (each fetch is a query) with room for requests.
pub const READS_WAITING_MAX: usize = 8192;

pub struct ChatState {
    writer: Mutex<ChatStateMachine>,
    readers: BlockingPool<ChatReader>,
    /// The state digest's own connection: a digest scans everything, so at most one runs at
    /// a time (another is refused, not queued), and it takes no connection from queries.
    digest_reader: BlockingPool<ChatReader>,
    /// Shared with the digest's computation, which records its own end: a caller that goes
    /// away mid-digest (a short `grpc-timeout`) must not let the next digest start at once.
    digest_pacer: Arc<Mutex<DigestPacer>>,
    /// The connection snapshots are taken on: a read transaction, beside apply and queries.
    snapshot_reader: Mutex<ChatReader>,
    applied: Watch<u64>,
    mailboxes: Mutex<BTreeMap<u64, (Watch<u64>, usize)>>,
}

/// Why a client query did not run.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("chat queries on this node: {0}")]
    Busy(#[from] PoolBusy),
    #[error(transparent)]
    Storage(#[from] StateMachineError),
}

/// A state digest is being computed on this node, or one just was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a state digest is being computed on this node, or just was; ask again shortly")]
pub struct DigestBusy;

/// Keeps digests to at most half of the time: after a digest that took `d`, the next may
/// start `d` after it ended. A digest is a read transaction over the whole state, and
/// while one is open SQLite cannot checkpoint past it; back-to-back digests (any client
/// may ask for one) would let the chat database's WAL grow without bound.
#[derive(Debug)]
struct DigestPacer {
    not_before: Option<tokio::time::Instant>,
}

impl DigestPacer {
    fn admits(&self, now: tokio::time::Instant) -> bool {
        self.not_before.is_none_or(|not_before| now >= not_before)
    }

    fn finished(&mut self, started: tokio::time::Instant, now: tokio::time::Instant) {
        self.not_before = Some(now + now.saturating_duration_since(started));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock is an invariant failure inside apply or a query; the
    // process is going down anyway, and the database rolled the transaction back.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ChatState {
    /// Shares `machine`, opening the read-only connections beside it.
    pub fn new(machine: ChatStateMachine) -> Result<Arc<Self>, StateMachineError> {
        let last_applied = machine.last_applied()?;
        let path = machine.path().to_owned();
        let readers = (0..READERS).map(|_| ChatReader::open_read_only(&path)).collect::<Result<_, _>>()?;
        Ok(Arc::new(Self {
            writer: Mutex::new(machine),
            readers: BlockingPool::new(readers, READS_WAITING_MAX),
            digest_reader: BlockingPool::new(vec![ChatReader::open_read_only(&path)?], 0),
            digest_pacer: Arc::new(Mutex::new(DigestPacer { not_before: None })),
            snapshot_reader: Mutex::new(ChatReader::open_read_only(&path)?),
            applied: Watch::new(last_applied),
            mailboxes: Mutex::new(BTreeMap::new()),
        }))
    }

    /// Runs a query against the applied state on a read-only connection, off the async
    /// workers. It reads everything applied before it started.
    pub async fn read<T, F>(&self, query: F) -> Result<T, ReadError>
    where
        F: FnOnce(&ChatReader) -> Result<T, StateMachineError> + Send + 'static,
        T: Send + 'static,
    {
        Ok(self.readers.run(move |reader| query(reader)).await??)
    }

    /// The applied index and a SHA-256 of the whole chat state at it, on the digest's own
    /// connection; refused while another digest runs, or too soon after one.
    pub async fn digest(&self) -> Result<Result<(u64, [u8; 32]), StateMachineError>, DigestBusy> {
        let started = crate::seam::monotonic_now();
        if !lock(&self.digest_pacer).admits(started) {
            return Err(DigestBusy);
        }
        let pacer = Arc::clone(&self.digest_pacer);
        self.digest_reader
            .run(move |reader| {
                let digest = reader.state_digest_at_applied();
                lock(&pacer).finished(started, crate::seam::monotonic_now());
                digest
            })
            .await
            .map_err(|_| DigestBusy)
    }

    /// Applies committed log entries (`None`: an entry that is not a chat command) in one
    /// transaction, then wakes the subscriptions of the users it touched and everyone
    /// watching the applied index. Blocking: call it from a blocking context.
    pub fn apply_blocking(&self, batch: &[(u64, Option<Command>)]) -> Result<Vec<Option<Outcome>>, StateMachineError> {
        let Some(&(last_index, _)) = batch.last() else { return Ok(Vec::new()) };
        let applied_before = self.applied.get();
        assert!(last_index > applied_before, "the applied index only grows: {applied_before} to {last_index}");
        let borrowed: Vec<(u64, Option<&Command>)> = batch.iter().map(|(index, c)| (*index, c.as_ref())).collect();
        let applied = lock(&self.writer).apply_batch(&borrowed)?;
        self.applied.set(last_index);
        let mailboxes = lock(&self.mailboxes);
        for user_id in &applied.mailboxes_touched {
            if let Some((watch, _)) = mailboxes.get(user_id) {
                watch.set_if(|changes| {
                    *changes += 1;
                    true
                });
            }
        }
        Ok(applied.outcomes)
    }

    /// Writes a snapshot of the applied state to `path` (which must not exist) on the
    /// snapshot's own connection, while apply goes on; returns the applied index it holds.
    /// Blocking: call it from a blocking context.
    pub fn write_snapshot_blocking(&self, path: &std::path::Path) -> Result<u64, StateMachineError> {
        lock(&self.snapshot_reader).write_snapshot(path)
    }

    /// Replaces the whole state with the snapshot at `path` (see
    /// [`ChatStateMachine::install_snapshot`]) and wakes every subscription: any mailbox may
    /// have changed. Returns the applied index it now holds. Blocking.
    pub fn install_snapshot_blocking(&self, path: &std::path::Path) -> Result<u64, StateMachineError> {
        let applied_before = self.applied.get();
        let index = lock(&self.writer).install_snapshot(path)?;
        assert!(index > applied_before, "a snapshot through {index} installed over applied {applied_before}");
        self.applied.set(index);
        for (watch, _) in lock(&self.mailboxes).values() {
            watch.set_if(|changes| {
                *changes += 1;
                true
            });
        }
        Ok(index)
    }

    /// The index of the last applied command.
    pub fn last_applied(&self) -> u64 {
        self.applied.get()
    }

    /// The applied index, to wait on: it changes whenever commands are applied.
    pub fn watch_applied(&self) -> Watch<u64> {
        self.applied.clone()
    }

    /// Changes to `user_id`'s mailbox or sessions, to wait on: set by every apply that
    /// stores a message for the user or ends one of its sessions, and by no other.
    pub fn watch_mailbox(self: &Arc<Self>, user_id: u64) -> MailboxWatch {
        let mut mailboxes = lock(&self.mailboxes);
        let (watch, watchers) = mailboxes.entry(user_id).or_insert_with(|| (Watch::new(0), 0));
        *watchers += 1;
        MailboxWatch { state: Arc::clone(self), user_id, watch: watch.clone() }
    }
}

/// A subscription's view of one user's mailbox changes; unregisters itself when dropped.
pub struct MailboxWatch {
    state: Arc<ChatState>,
    user_id: u64,
    watch: Watch<u64>,
}

impl MailboxWatch {
    pub fn watch(&self) -> &Watch<u64> {
        &self.watch
    }
}

impl Drop for MailboxWatch {
    fn drop(&mut self) {
        let mut mailboxes = lock(&self.state.mailboxes);
        let entry = mailboxes.get_mut(&self.user_id).expect("a watched mailbox is registered");
        assert!(entry.1 > 0, "mailbox watchers went below zero");
        entry.1 -= 1;
        if entry.1 == 0 {
            mailboxes.remove(&self.user_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chorus_proto::v1::{CreateAccountCommand, command};

    use super::*;

    fn create(username: &str) -> Option<Command> {
        Some(Command {
            kind: Some(command::Kind::CreateAccount(CreateAccountCommand {
                username: username.to_owned(),
                password_hash: "h".to_owned(),
                created_at_ms: 1,
            })),
            proposed_at_ms: 0,
        })
    }

    /// Apply goes on while a client query is in the middle of its work, and while a state
    /// digest holds its connection; a second digest meanwhile is refused, not queued. (With
    /// one connection behind one lock, apply waited for each query in turn, inline in the
    /// replication loop.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn apply_never_waits_for_a_client_query_or_a_digest() {
        let dir = tempfile::tempdir().unwrap();
        let state = ChatState::new(ChatStateMachine::open(&dir.path().join("chat.sqlite3")).unwrap()).unwrap();
        let (started, query_started) = std::sync::mpsc::channel();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let query = tokio::task::spawn({
            let state = Arc::clone(&state);
            async move {
                state
                    .read(move |reader| {
                        let before = reader.user_id("alice").unwrap();
                        started.send(()).unwrap();
                        held.recv().unwrap();
                        Ok(before)
                    })
                    .await
            }
        });
        query_started.recv_timeout(Duration::from_secs(10)).unwrap();
        // The digest's connection held, as a long digest would.
        let (digest_started, digest_running) = std::sync::mpsc::channel();
        let (digest_release, digest_held) = std::sync::mpsc::channel::<()>();
        let digest = tokio::task::spawn({
            let state = Arc::clone(&state);
            async move {
                state
                    .digest_reader
                    .run(move |_| {
                        digest_started.send(()).unwrap();
                        digest_held.recv().unwrap();
                    })
                    .await
            }
        });
        digest_running.recv_timeout(Duration::from_secs(10)).unwrap();
        let apply = tokio::task::spawn_blocking({
            let state = Arc::clone(&state);
            move || state.apply_blocking(&[(1, create("alice"))]).unwrap()
        });
        let outcomes = tokio::time::timeout(Duration::from_secs(10), apply)
            .await
            .expect("apply finished while a query and a digest were under way")
            .unwrap();
        assert!(matches!(outcomes[..], [Some(Outcome::AccountCreated { .. })]));
        assert!(matches!(state.digest().await, Err(DigestBusy)), "one digest at a time");
        digest_release.send(()).unwrap();
        digest.await.unwrap().unwrap();
        release.send(()).unwrap();
        assert_eq!(query.await.unwrap().unwrap(), None, "the query read the state as of its start");
        let after = state.read(|reader| reader.user_id("alice")).await.unwrap();
        assert!(after.is_some(), "a query started after the apply sees it");
        let (applied, _) = state.digest().await.unwrap().unwrap();
        assert_eq!(applied, 1);
    }

    /// Queries waiting for a connection hold no thread of the blocking pool, which the
    /// replication loop's writes and apply share: with every connection busy and many more
    /// queries waiting, other blocking work still runs at once. (Before, each waiting query sat in a blocking thread on a
    /// connection's lock: a few hundred filled the pool and the loop's next fsync queued.)
    #[test]
    fn waiting_queries_hold_no_blocking_thread() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(READERS + 2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let state = ChatState::new(ChatStateMachine::open(&dir.path().join("chat.sqlite3")).unwrap()).unwrap();
            let (release, held) = std::sync::mpsc::channel::<()>();
            let held = Arc::new(Mutex::new(held));
            let hold = |state: &Arc<ChatState>| {
                let (state, held) = (Arc::clone(state), Arc::clone(&held));
                tokio::task::spawn(async move {
                    state
                        .read(move |reader| {
                            let _ = lock(&held).recv();
                            reader.user_id("alice")
                        })
                        .await
                })
            };
            let queries: Vec<_> = (0..READERS + 100).map(|_| hold(&state)).collect();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while state.readers.waiting() < 100 {
                assert!(tokio::time::Instant::now() < deadline, "the queries never queued");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let other_work = crate::seam::run_blocking(|| 7);
            let done = tokio::time::timeout(Duration::from_secs(10), other_work).await;
            assert_eq!(done, Ok(7), "blocking work waited behind queued queries");
            for _ in 0..queries.len() {
                release.send(()).unwrap();
            }
            for query in queries {
                assert_eq!(query.await.unwrap().unwrap(), None);
            }
        });
    }

    /// After a digest that took `d`, the next is refused until `d` after it ended.
    #[test]
    fn digests_take_at_most_half_of_the_time() {
        let start = tokio::time::Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut pacer = DigestPacer { not_before: None };
        assert!(pacer.admits(at(0)));
        pacer.finished(at(0), at(300));
        assert!(!pacer.admits(at(300)) && !pacer.admits(at(599)));
        assert!(pacer.admits(at(600)));
        pacer.finished(at(600), at(601));
        assert!(pacer.admits(at(602)));
    }

    /// An apply wakes the subscriptions of the users it touched, and no one else's.
    #[tokio::test]
    async fn an_apply_wakes_only_the_mailboxes_it_touched() {
        use chorus_proto::v1::{OpenSessionCommand, SendMessageCommand};
        let dir = tempfile::tempdir().unwrap();
        let state = ChatState::new(ChatStateMachine::open(&dir.path().join("chat.sqlite3")).unwrap()).unwrap();
        let token_hash = vec![1u8; 32];
        let open = Command {
            kind: Some(command::Kind::OpenSession(OpenSessionCommand {
                user_id: 1,
                token_hash: token_hash.clone(),
                opened_at_ms: 1,
                expires_at_ms: 0,
                password_hash: String::new(),
            })),
            proposed_at_ms: 0,
        };
        state
            .apply_blocking(&[(1, create("alice")), (2, create("bob")), (3, create("carol")), (4, Some(open))])
            .unwrap();
        let (alice, bob, carol) = (state.watch_mailbox(1), state.watch_mailbox(2), state.watch_mailbox(3));
        let versions = |watches: [&MailboxWatch; 3]| watches.map(|w| w.watch().version());
        let before = versions([&alice, &bob, &carol]);
        let send = Command {
            kind: Some(command::Kind::SendMessage(SendMessageCommand {
                token_hash,
                to: "bob".to_owned(),
                body: "hi".to_owned(),
                sent_at_ms: 1,
                sequence: 1,
                acknowledged_through: 0,
            })),
            proposed_at_ms: 0,
        };
        state.apply_blocking(&[(5, Some(send))]).unwrap();
        let after = versions([&alice, &bob, &carol]);
        assert_eq!((after[0], after[2]), (before[0], before[2]), "alice's and carol's streams stay asleep");
        assert!(after[1] > before[1], "bob's streams wake");
        drop((alice, bob, carol));
        assert!(state.mailboxes.lock().unwrap().is_empty(), "watches unregister when dropped");
    }
}
