//! The replication runtime: one task that owns a [`Replica`] and carries out what it
//! decides. It feeds the replica time, peer messages and client proposals; it persists each
//! `Ready` to the SQLite log (fsync) before releasing what depends on it; it applies
//! committed commands to the chat state and answers the proposals and reads waiting on
//! them.
//!
//! While one `Ready` is being fsynced, new proposals and messages queue up; the next `Ready`
//! carries them all, so a busy node writes many entries per fsync (group commit).
//!
//! Snapshots: once enough entries were applied since the last snapshot, a snapshot of the
//! chat state is written in the background (on a connection of its own, while the loop goes
//! on), then recorded in the log, which drops its entries up to a tail before it. A
//! snapshot the leader sent (staged whole by the transport) is installed with the `Ready`
//! that asks for it: first in the log (the commit point: a crash after it installs the
//! snapshot in the chat state again at start, see `node::run`), then in the chat state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chorus_proto::v1::Command;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};

use super::{ChatState, ProposeError, Proposer};
use crate::chat::{Outcome, StateMachineError, check_snapshot, decode_logged_command};
use crate::replication::{
    self, Entry, FollowerStatus, LogIndex, LogPosition, Membership, NodeId, Payload, Ready, Replica, ReplicaStatus,
    Role, SnapshotMeta, SnapshotTransfer, Storage, StorageError, Term,
};
use crate::seam::{MonotonicClock, NodeClock, run_blocking};
use crate::storage::{SharedLog, SnapshotDir, SnapshotFileError};
use crate::transport::{InboxReceiver, Transport};
use crate::watch::Watch;

/// How long a proposal may wait to be committed and applied before the caller is told the
/// outcome is unknown (it may still commit; a send retried with the same sequence is safe).
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a linearizable read may wait for its confirmation.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a status request waits for the replication loop to answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Client requests waiting for the runtime; beyond this, callers wait to enqueue.
const INPUT_QUEUE_MAX: usize = 4096;
/// Inputs taken in one turn of the loop before the next `Ready` (bounds latency under load).
const INPUTS_PER_TURN_MAX: usize = 1024;
/// How often the background scrub verifies another stretch of the log, and how much: at
/// most 256 records and about 1 MiB a step, so about 10 MiB/s read from the disk at most (a log of a
/// million small entries is verified in about seven minutes), each step a few
/// milliseconds of the loop. Between whole passes it pauses: a small log is not re-read
/// ten times a second.
const SCRUB_INTERVAL: Duration = Duration::from_millis(100);
const SCRUB_RECORDS_PER_STEP: usize = 256;
const SCRUB_BYTES_PER_STEP: usize = 1024 * 1024;
const SCRUB_PAUSE_BETWEEN_PASSES: Duration = Duration::from_secs(10);
/// After a snapshot that could not be written, how long until the next attempt.
const SNAPSHOT_RETRY_PAUSE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    StateMachine(#[from] StateMachineError),
    #[error(transparent)]
    SnapshotFile(#[from] SnapshotFileError),
}

/// When to snapshot the chat state and compact the log behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// A snapshot is taken once this many entries were applied after the last one.
    pub every_entries: u64,
    /// Entries kept in the log before the snapshot's last one, for followers a little
    /// behind.
    pub tail_entries: u64,
}

/// The node's snapshot files, when to take them, and the transport's reports on the ones
/// it sent.
pub struct SnapshotSetup {
    pub dir: SnapshotDir,
    pub policy: SnapshotPolicy,
    pub reports: mpsc::UnboundedReceiver<(NodeId, SnapshotTransfer)>,
}

/// A snapshot being written in the background: its file, and the applied index it holds.
type SnapshotTask = oneshot::Receiver<Result<(PathBuf, LogIndex), RuntimeError>>;

/// Waits for the snapshot being written; a field of its own, borrowed apart in the loop.
async fn snapshot_written(
    task: &mut Option<SnapshotTask>,
) -> Result<Result<(PathBuf, LogIndex), RuntimeError>, oneshot::error::RecvError> {
    task.as_mut().expect("polled only while a snapshot is being written").await
}

/// Watches what one node's replica does: for checkers that see a whole cluster at once
/// (the simulations' global observer). Called on the runtime task: must not block.
pub trait ReplicationObserver: Send + Sync + 'static {
    /// The replica's role or term changed.
    fn role_changed(&self, node: NodeId, term: Term, role: Role);
    /// The replica applied a committed entry (in index order).
    fn entry_applied(&self, node: NodeId, entry: &Entry);
    /// The replica's state was replaced by a leader's snapshot through `index`: the next
    /// entry it applies is `index + 1`.
    fn snapshot_installed(&self, node: NodeId, index: LogIndex);
}

/// What the rest of the node may know about the replica at any moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStatus {
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
    pub last_log_index: LogIndex,
}

enum Input {
    Propose {
        command: Command,
        reply: oneshot::Sender<Result<Outcome, ProposeError>>,
    },
    ReadFence {
        reply: oneshot::Sender<Result<(), ProposeError>>,
    },
    /// Hand leadership to the most up-to-date follower; answers with it, if any.
    HandOver {
        reply: oneshot::Sender<Option<NodeId>>,
    },
    /// Hand leadership to `target` (an operator's request).
    TransferTo {
        target: NodeId,
        reply: oneshot::Sender<Result<(), replication::TransferError>>,
    },
    Status {
        reply: oneshot::Sender<ReplicaStatus>,
    },
}

/// The client side of the runtime: proposes commands, fences reads, reports status.
#[derive(Clone)]
pub struct RaftHandle {
    inputs: mpsc::Sender<Input>,
    status: Watch<NodeStatus>,
    /// Whether this node knows a leader: `status.leader.is_some()`, in a watch of its own
    /// that changes only when that does (the status changes at nearly every step, and every
    /// live stream waits on this).
    leader_known: Watch<bool>,
    /// Why this node takes no part in replication, once its log was found corrupt.
    fault: Watch<Option<String>>,
    clock: MonotonicClock,
}

impl RaftHandle {
    /// The replica's clock, in which `last_contact_ms` of its status is expressed.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn status(&self) -> NodeStatus {
        self.status.get()
    }

    pub fn watch_status(&self) -> Watch<NodeStatus> {
        self.status.clone()
    }

    /// Whether this node knows a leader, to wait on: it changes only when that does.
    pub fn watch_leader_known(&self) -> Watch<bool> {
        self.leader_known.clone()
    }

    /// Why this node takes no part in replication, if it does not (its log was found
    /// corrupt while it ran).
    pub fn fault(&self) -> Option<String> {
        self.fault.get()
    }

    /// The fault, to wait on.
    pub fn watch_fault(&self) -> Watch<Option<String>> {
        self.fault.clone()
    }

    /// The replica's detailed status (per-follower progress on a leader); `None` if the
    /// runtime stopped or did not answer within [`STATUS_TIMEOUT`] (a stalled disk).
    pub async fn replica_status(&self) -> Option<ReplicaStatus> {
        let (reply, answer) = oneshot::channel();
        let asked = async {
            self.inputs.send(Input::Status { reply }).await.ok()?;
            answer.await.ok()
        };
        tokio::time::timeout(STATUS_TIMEOUT, asked).await.ok().flatten()
    }

    /// If leader, hands leadership to the most up-to-date follower, waits (at most `wait`)
    /// until it is gone, and then (at most `wait` again) until another node leads. For a
    /// graceful shutdown; a runtime that does not answer in `wait` (a stalled disk) counts
    /// as nothing to hand over.
    pub async fn hand_over_leadership(&self, wait: Duration) -> HandOver {
        let (reply, answer) = oneshot::channel();
        let asked = async {
            self.inputs.send(Input::HandOver { reply }).await.ok()?;
            answer.await.ok().flatten()
        };
        let Ok(Some(target)) = tokio::time::timeout(wait, asked).await else { return HandOver::NotLeader };
        if tokio::time::timeout(wait, self.status.wait_for(|s| s.role != Role::Leader)).await.is_err() {
            return HandOver::NotTaken { target };
        }
        // Stepping down is when this node grants the target its vote; a node that stopped
        // right then could take the vote response down with it (with one member dead, the
        // vote the target needs). The target's first append says it won, and so that the
        // vote arrived. This node takes no proposals meanwhile: it leads no more.
        let someone_else_leads = |s: &NodeStatus| s.role != Role::Leader && s.leader.is_some();
        match tokio::time::timeout(wait, self.status.wait_for(someone_else_leads)).await {
            Ok(_) => HandOver::Done { target },
            Err(_) => HandOver::NoLeaderSeen { target },
        }
    }
}

/// Why leadership did not move to the node an operator asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferLeaderError {
    #[error(transparent)]
    Refused(#[from] replication::TransferError),
    #[error("node {target} did not take over within {waited_ms} ms; this node still leads (retry)")]
    NotTaken { target: NodeId, waited_ms: u64 },
    #[error(
        "this node stepped down for node {target} but saw no new leader within {waited_ms} ms; ask the cluster who leads"
    )]
    NoLeaderSeen { target: NodeId, waited_ms: u64 },
    #[error("this node's replication loop did not answer (it is stopping, or stalled)")]
    Stalled,
}

impl RaftHandle {
    /// If leader, hands leadership to `target` and waits (at most `wait` for each step)
    /// until this node leads no more and then until it hears of a new leader; answers with
    /// that leader (normally `target`).
    pub async fn transfer_leadership(&self, target: NodeId, wait: Duration) -> Result<NodeId, TransferLeaderError> {
        let (reply, answer) = oneshot::channel();
        let asked = async {
            self.inputs.send(Input::TransferTo { target, reply }).await.ok()?;
            answer.await.ok()
        };
        let Ok(Some(started)) = tokio::time::timeout(wait, asked).await else {
            return Err(TransferLeaderError::Stalled);
        };
        started?;
        let waited_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        if tokio::time::timeout(wait, self.status.wait_for(|s| s.role != Role::Leader)).await.is_err() {
            return Err(TransferLeaderError::NotTaken { target, waited_ms });
        }
        let someone_else_leads = |s: &NodeStatus| s.role != Role::Leader && s.leader.is_some();
        match tokio::time::timeout(wait, self.status.wait_for(someone_else_leads)).await {
            Ok(status) => Ok(status.leader.expect("waited for a leader")),
            Err(_) => Err(TransferLeaderError::NoLeaderSeen { target, waited_ms }),
        }
    }
}

/// What became of a leadership hand-over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOver {
    /// This node did not lead (or had stopped): nothing to hand over.
    NotLeader,
    /// This node is leader no more and knows a new leader: `target` was asked to take
    /// over (and normally is the one that did).
    Done { target: NodeId },
    /// This node is leader no more, but saw no new leader in time (the target may still
    /// win, or the cluster elects one after an election timeout).
    NoLeaderSeen { target: NodeId },
    /// `target` was asked, and this node still led when the wait ended.
    NotTaken { target: NodeId },
}

/// What is left of `budget` since `started`.
fn time_left(started: tokio::time::Instant, budget: Duration) -> Duration {
    budget.saturating_sub(crate::seam::monotonic_now().saturating_duration_since(started))
}

impl Proposer for RaftHandle {
    async fn propose(&self, command: Command) -> Result<Outcome, ProposeError> {
        let (reply, answer) = oneshot::channel();
        // One deadline for the queue and the commit: a runtime too busy to take inputs
        // does not hold the caller longer than one that took it and could not commit.
        let started = crate::seam::monotonic_now();
        match tokio::time::timeout(PROPOSAL_TIMEOUT, self.inputs.send(Input::Propose { command, reply })).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ProposeError::ShuttingDown),
            // Never taken: certainly not applied.
            Err(_) => return Err(ProposeError::Overloaded),
        }
        match tokio::time::timeout(time_left(started, PROPOSAL_TIMEOUT), answer).await {
            Ok(Ok(result)) => result,
            // The runtime took the command, then stopped: it may be in the log.
            Ok(Err(_)) => Err(ProposeError::OutcomeUnknown(
                "this node stopped before the command was known to commit; it may or may not take effect".to_owned(),
            )),
            Err(_) => Err(ProposeError::OutcomeUnknown(format!(
                "not committed within {} s (a busy node, or no quorum?); it may or may not take effect, and a send retried with the same sequence is stored once",
                PROPOSAL_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn read_fence(&self) -> Result<(), ProposeError> {
        let (reply, answer) = oneshot::channel();
        let started = crate::seam::monotonic_now();
        match tokio::time::timeout(READ_TIMEOUT, self.inputs.send(Input::ReadFence { reply })).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ProposeError::ShuttingDown),
            Err(_) => return Err(ProposeError::Overloaded),
        }
        match tokio::time::timeout(time_left(started, READ_TIMEOUT), answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ProposeError::ShuttingDown),
            Err(_) => Err(ProposeError::ReadUnconfirmed(format!(
                "could not confirm leadership within {} s (no quorum?)",
                READ_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// Everything the runtime task owns.
pub struct RaftRuntime<T> {
    replica: Replica<SharedLog>,
    log: SharedLog,
    chat: Arc<ChatState>,
    transport: T,
    clock: MonotonicClock,
    tick_interval: Duration,
    inbox: InboxReceiver,
    inputs: mpsc::Receiver<Input>,
    status: Watch<NodeStatus>,
    leader_known: Watch<bool>,
    fault: Watch<Option<String>>,
    /// When the background scrub takes its next step.
    next_scrub: tokio::time::Instant,
    /// Proposals waiting for their entry to be applied: index -> (term, reply).
    proposals: BTreeMap<LogIndex, (Term, oneshot::Sender<Result<Outcome, ProposeError>>)>,
    /// Reads waiting for the leader to confirm them, by context.
    reads_unconfirmed: BTreeMap<u64, oneshot::Sender<Result<(), ProposeError>>>,
    /// Confirmed reads waiting for the state machine to apply through their index.
    reads_confirmed: Vec<(LogIndex, oneshot::Sender<Result<(), ProposeError>>)>,
    next_read_context: u64,
    observer: Option<Arc<dyn ReplicationObserver>>,
    snapshots: SnapshotDir,
    snapshot_policy: SnapshotPolicy,
    snapshot_reports: mpsc::UnboundedReceiver<(NodeId, SnapshotTransfer)>,
    /// The snapshot being written, if one is.
    snapshot_task: Option<SnapshotTask>,
    /// No snapshot is started before this (after one that failed).
    snapshot_not_before: tokio::time::Instant,
}

/// Who the replica is: its id, the members, the protocol settings and its random seed.
pub struct ReplicaSetup {
    pub node_id: NodeId,
    pub members: BTreeSet<NodeId>,
    pub config: replication::ReplicaConfig,
    pub rng_seed: u64,
    pub observer: Option<Arc<dyn ReplicationObserver>>,
    /// The node's clocks; the replica is ticked by its monotonic one.
    pub clock: NodeClock,
    pub snapshots: SnapshotSetup,
}

/// Builds the runtime around an opened log and chat state; returns the task's body and its
/// handle. The replica starts from what the chat state has applied.
pub fn start_runtime<T: Transport>(
    setup: ReplicaSetup,
    log: SharedLog,
    chat: Arc<ChatState>,
    transport: T,
    inbox: InboxReceiver,
) -> Result<(RaftRuntime<T>, RaftHandle), replication::ReplicaError> {
    let ReplicaSetup { node_id, members, config, rng_seed, observer, clock, snapshots } = setup;
    let clock = clock.monotonic();
    let tick_interval = Duration::from_millis((config.heartbeat_interval_ms / 5).clamp(1, 20));
    let applied = chat.last_applied();
    let initial_membership = Membership::with_voters(members);
    let mut replica =
        Replica::new(node_id, initial_membership, config, log.clone(), applied, rng_seed, clock.now_ms())?;
    // A first tick right away: a cluster of one elects itself before serving anyone.
    replica.tick(clock.now_ms()).map_err(replication::ReplicaError::Storage)?;
    let (inputs_tx, inputs) = mpsc::channel(INPUT_QUEUE_MAX);
    let initial = NodeStatus {
        role: replica.role(),
        term: replica.term(),
        leader: replica.leader(),
        commit_index: replica.commit_index(),
        applied_index: applied,
        last_log_index: replica.last_index(),
    };
    let leader_known = Watch::new(initial.leader.is_some());
    let status = Watch::new(initial);
    let fault = Watch::new(None);
    let runtime = RaftRuntime {
        replica,
        log,
        chat,
        transport,
        clock: clock.clone(),
        tick_interval,
        inbox,
        inputs,
        status: status.clone(),
        leader_known: leader_known.clone(),
        fault: fault.clone(),
        next_scrub: crate::seam::monotonic_now() + SCRUB_INTERVAL,
        proposals: BTreeMap::new(),
        reads_unconfirmed: BTreeMap::new(),
        reads_confirmed: Vec::new(),
        next_read_context: 1,
        observer,
        snapshots: snapshots.dir,
        snapshot_policy: snapshots.policy,
        snapshot_reports: snapshots.reports,
        snapshot_task: None,
        snapshot_not_before: crate::seam::monotonic_now(),
    };
    Ok((runtime, RaftHandle { inputs: inputs_tx, status, leader_known, fault, clock }))
}

impl<T: Transport> RaftRuntime<T> {
    /// Runs until `stopping` turns true or storage fails (the node must stop then: it
    /// cannot go on without its disk). A log found corrupt (a record failing its checksum,
    /// read to serve a follower, to apply, or by the background scrub) is not such a
    /// failure: the node stops taking part, records the fault so that it refuses to start
    /// again, says why in its status, and answers every request with a refusal, so that
    /// the others elect a leader without it instead of it leading and crashing in a loop.
    pub async fn run(mut self, stopping: Watch<bool>) -> Result<(), RuntimeError> {
        match self.serve(&stopping).await {
            Err(RuntimeError::Storage(StorageError::Corrupt(detail))) => {
                self.quarantine(detail, &stopping).await;
                Ok(())
            }
            other => other,
        }
    }

    async fn serve(&mut self, stopping: &Watch<bool>) -> Result<(), RuntimeError> {
        let mut next_tick = crate::seam::monotonic_now() + self.tick_interval;
        // A closed channel answers `None` at once, every time: its branch is switched off
        // rather than polled in a busy loop. The node keeps its part in the cluster
        // without local callers (inputs) or without peers' messages (inbox).
        let (mut inputs_open, mut inbox_open, mut reports_open) = (true, true, true);
        loop {
            // One `Ready` per turn at most (its committed entries are bounded too), and
            // when more is ready the next turn does not wait: it goes round again at once,
            // ticking first if a tick is due. A node applying a long backlog thus keeps
            // heartbeating, voting and answering between batches.
            let more_ready = self.replica.has_ready();
            // `biased`: tokio's select! otherwise polls branches in a random order drawn
            // from a thread-local generator, which a simulation cannot replay. Ticks come
            // first so that a flood of messages or a long backlog cannot starve the clock.
            tokio::select! {
                biased;
                _ = stopping.wait_for(|stopping| *stopping) => return Ok(()),
                () = tokio::time::sleep_until(next_tick) => {
                    self.replica.tick(self.clock.now_ms())?;
                    next_tick = crate::seam::monotonic_now() + self.tick_interval;
                    if crate::seam::monotonic_now() >= self.next_scrub {
                        self.scrub_step().await?;
                    }
                }
                input = self.inputs.recv(), if inputs_open => match input {
                    Some(input) => self.handle_input(input),
                    None => inputs_open = false,
                },
                message = self.inbox.recv(), if inbox_open => match message {
                    Some(message) => self.replica.step(message)?,
                    None => inbox_open = false,
                },
                report = self.snapshot_reports.recv(), if reports_open => match report {
                    Some((peer, transfer)) => self.replica.report_snapshot(peer, transfer),
                    None => reports_open = false,
                },
                taken = snapshot_written(&mut self.snapshot_task), if self.snapshot_task.is_some() => {
                    self.snapshot_task = None;
                    // A sender dropped without an answer: the blocking work panicked, which
                    // run_blocking re-raises; nothing to record here.
                    match taken {
                        Ok(Ok(taken)) => self.record_snapshot(taken).await?,
                        // A snapshot that could not be written (a full disk, say) changes
                        // nothing: the log keeps its entries. Tried again later, not at once.
                        Ok(Err(error)) => {
                            tracing::warn!(%error, "could not take a snapshot; trying again in a minute");
                            self.snapshot_not_before = crate::seam::monotonic_now() + SNAPSHOT_RETRY_PAUSE;
                        }
                        Err(_) => self.snapshot_not_before = crate::seam::monotonic_now() + SNAPSHOT_RETRY_PAUSE,
                    }
                }
                () = std::future::ready(()), if more_ready => {}
            }
            self.take_queued_inputs()?;
            if self.replica.has_ready() {
                let ready = self.replica.ready()?;
                self.handle_ready(ready).await?;
                self.replica.advance()?;
                self.publish_status();
            }
            self.maybe_start_snapshot()?;
        }
    }

    /// Starts writing a snapshot in the background once enough was applied since the last.
    fn maybe_start_snapshot(&mut self) -> Result<(), StorageError> {
        if self.snapshot_task.is_some() {
            return Ok(());
        }
        if crate::seam::monotonic_now() < self.snapshot_not_before {
            return Ok(());
        }
        let taken = self.log.snapshot()?.map_or(0, |s| s.last_included.index);
        if self.chat.last_applied() < taken.saturating_add(self.snapshot_policy.every_entries) {
            return Ok(());
        }
        let (reply, task) = oneshot::channel();
        let (chat, snapshots) = (Arc::clone(&self.chat), self.snapshots.clone());
        let write = async move {
            let written = run_blocking(move || -> Result<(PathBuf, LogIndex), RuntimeError> {
                let partial = snapshots.partial("taking")?;
                let index = chat.write_snapshot_blocking(&partial)?;
                Ok((partial, index))
            })
            .await;
            let _ = reply.send(written);
        };
        tokio::task::spawn(tracing::Instrument::in_current_span(write));
        self.snapshot_task = Some(task);
        Ok(())
    }

    /// A snapshot written in the background is durable: name it, record it in the log and
    /// compact the log behind it, and delete older snapshots.
    async fn record_snapshot(&mut self, (partial, index): (PathBuf, LogIndex)) -> Result<(), RuntimeError> {
        let taken = self.log.snapshot()?.map_or(0, |s| s.last_included.index);
        if index <= taken {
            // A leader's snapshot was installed meanwhile, covering this one.
            let _ = std::fs::remove_file(&partial);
            return Ok(());
        }
        // Applied entries are committed and still in the log: compaction never goes past
        // the last snapshot, which is behind `index`.
        let term = self.log.term(index)?.expect("an entry applied after the last snapshot is in the log");
        let position = LogPosition { term, index };
        let Some(membership) = self.replica.membership_at(index) else {
            // A leader's snapshot past this one was installed meanwhile: it covers it.
            let _ = std::fs::remove_file(&partial);
            return Ok(());
        };
        let meta = SnapshotMeta { last_included: position, membership };
        let compact_through = index.saturating_sub(self.snapshot_policy.tail_entries);
        let (log, snapshots) = (self.log.clone(), self.snapshots.clone());
        let cleanup = snapshots.clone();
        run_blocking(move || -> Result<(), RuntimeError> {
            snapshots.publish(&partial, position)?;
            // Durable before the log drops the entries it covers (publish fsynced the file
            // when it was written, and the directory now).
            log.lock().record_snapshot(&meta, compact_through)?;
            Ok(())
        })
        .await?;
        // Deleting big files may take a while: not in the loop. What a failure leaves is
        // deleted with the next snapshot.
        let delete = run_blocking(move || {
            if let Err(error) = cleanup.remove_older_than(position) {
                tracing::warn!(%error, "could not delete older snapshots");
            }
        });
        tokio::task::spawn(tracing::Instrument::in_current_span(delete));
        tracing::info!(index, compact_through, "took a snapshot and compacted the log");
        Ok(())
    }

    /// Installs the leader's snapshot the `Ready` asks for: in the log, then in the chat
    /// state (see the module's comment for why in this order).
    async fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), RuntimeError> {
        let position = meta.last_included;
        let (log, chat, snapshots) = (self.log.clone(), Arc::clone(&self.chat), self.snapshots.clone());
        // The transport checked the staged file before the replica saw its message; checked
        // again (a disk can fail meanwhile) before the log gives up anything for it, and
        // given its complete name: from here on it is this node's snapshot.
        let promoting = snapshots.clone();
        let path = run_blocking(move || -> Result<PathBuf, RuntimeError> {
            // Renamed first, then checked: the file checked is the file installed, whatever
            // the transport stages meanwhile.
            let path = promoting.promote(position)?;
            check_snapshot(&path, position.index)?;
            Ok(path)
        })
        .await?;
        run_blocking(move || log.lock().install_snapshot(&meta)).await?;
        // A crash may strike between the two installs (under simulation, this yield is
        // where it can): the node then installs the snapshot in the chat state at start.
        tokio::task::yield_now().await;
        run_blocking(move || chat.install_snapshot_blocking(&path)).await?;
        let delete = run_blocking(move || {
            if let Err(error) = snapshots.remove_older_than(position) {
                tracing::warn!(%error, "could not delete older snapshots");
            }
        });
        tokio::task::spawn(tracing::Instrument::in_current_span(delete));
        tracing::info!(index = position.index, term = position.term, "installed a snapshot from the leader");
        if let Some(observer) = &self.observer {
            observer.snapshot_installed(self.replica.id(), position.index);
        }
        Ok(())
    }

    /// Verifies another stretch of the log (see [`crate::storage::LogStore::scrub`]).
    async fn scrub_step(&mut self) -> Result<(), StorageError> {
        let log = self.log.clone();
        let progress = run_blocking(move || log.lock().scrub(SCRUB_RECORDS_PER_STEP, SCRUB_BYTES_PER_STEP)).await?;
        let pause = if progress.pass_completed {
            tracing::debug!("the scrub verified the whole log once more");
            SCRUB_PAUSE_BETWEEN_PASSES
        } else {
            SCRUB_INTERVAL
        };
        self.next_scrub = crate::seam::monotonic_now() + pause;
        Ok(())
    }

    /// Takes no more part in replication: see [`RaftRuntime::run`].
    async fn quarantine(&mut self, detail: String, stopping: &Watch<bool>) {
        tracing::error!(
            %detail,
            "the replication log is corrupt: this node stops leading and voting, takes no part until its data directory is replaced, and will refuse to start"
        );
        let log = self.log.clone();
        let record = detail.clone();
        if let Err(error) = run_blocking(move || log.lock().record_fault(&record)).await {
            tracing::error!(%error, "could not record the fault; the log may open again after a restart");
        }
        let refusal = format!("this node's replication log is corrupt ({detail}); it takes no part");
        self.fault.set(Some(refusal.clone()));
        let last_log_index = self.replica.last_index();
        let status = NodeStatus {
            role: Role::Follower,
            term: self.replica.term(),
            leader: None,
            commit_index: self.replica.commit_index(),
            applied_index: self.chat.last_applied(),
            last_log_index,
        };
        self.status.set(status);
        self.leader_known.set_if(|known| std::mem::replace(known, false));
        for (_, (_, reply)) in std::mem::take(&mut self.proposals) {
            let _ = reply.send(Err(ProposeError::OutcomeUnknown(refusal.clone())));
        }
        let reads = std::mem::take(&mut self.reads_unconfirmed).into_values();
        for reply in reads.chain(std::mem::take(&mut self.reads_confirmed).into_iter().map(|(_, reply)| reply)) {
            let _ = reply.send(Err(ProposeError::ReadUnconfirmed(refusal.clone())));
        }
        let mut inbox_open = true;
        loop {
            // `biased`: a fixed polling order keeps simulations replayable.
            tokio::select! {
                biased;
                _ = stopping.wait_for(|stopping| *stopping) => return,
                input = self.inputs.recv() => match input {
                    Some(Input::Propose { reply, .. }) => {
                        let _ = reply.send(Err(ProposeError::Quarantined(refusal.clone())));
                    }
                    Some(Input::ReadFence { reply }) => {
                        let _ = reply.send(Err(ProposeError::Quarantined(refusal.clone())));
                    }
                    Some(Input::TransferTo { reply, .. }) => {
                        let _ = reply.send(Err(replication::TransferError::NotLeader { leader_hint: None }));
                    }
                    Some(Input::HandOver { reply }) => {
                        let _ = reply.send(None);
                    }
                    Some(Input::Status { reply }) => {
                        let _ = reply.send(ReplicaStatus {
                            id: self.replica.id(),
                            role: Role::Follower,
                            term: status.term,
                            leader: None,
                            membership: self.replica.membership().clone(),
                            member_role: self.replica.member_role(),
                            commit_index: status.commit_index,
                            last_index: last_log_index,
                            persisted_index: last_log_index,
                            messages_refused: 0,
                            followers: BTreeMap::new(),
                        });
                    }
                    None => return,
                },
                // Peers' messages are dropped unread: this node takes no part.
                // A closed inbox only means no more messages to drop; the node still
                // answers its callers until it is stopped.
                message = self.inbox.recv(), if inbox_open => if message.is_none() { inbox_open = false },
            }
        }
    }

    /// Everything already waiting goes into the same `Ready`.
    fn take_queued_inputs(&mut self) -> Result<(), StorageError> {
        for _ in 0..INPUTS_PER_TURN_MAX {
            let mut progressed = false;
            if let Some(message) = self.inbox.try_recv() {
                self.replica.step(message)?;
                progressed = true;
            }
            if let Ok(input) = self.inputs.try_recv() {
                self.handle_input(input);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        Ok(())
    }

    fn handle_input(&mut self, input: Input) {
        match input {
            Input::Propose { command, reply } => {
                let bytes = Bytes::from(command.encode_to_vec());
                match self.replica.propose(bytes) {
                    Ok(position) => {
                        // Waiters are failed whenever this node stops leading, and a leader
                        // appends each index once: an index still awaited is a bug.
                        let replaced = self.proposals.insert(position.index, (position.term, reply));
                        assert!(replaced.is_none(), "a proposal waiter at index {} was replaced", position.index);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(propose_error(error)));
                    }
                }
            }
            Input::ReadFence { reply } if crate::bugs::active(crate::bugs::Bug::SkipReadIndex) => {
                let _ = reply.send(Ok(()));
            }
            Input::ReadFence { reply } => {
                let context = self.next_read_context;
                self.next_read_context += 1;
                match self.replica.read_index(context) {
                    Ok(()) => {
                        self.reads_unconfirmed.insert(context, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(propose_error(error)));
                    }
                }
            }
            Input::TransferTo { target, reply } => {
                let _ = reply.send(self.replica.transfer_leadership(target));
            }
            Input::HandOver { reply } => {
                // The most up-to-date of the followers heard from lately (a down one, even
                // as up to date, would only make the cluster wait out the transfer).
                let status = self.replica.status();
                let now = self.clock.now_ms();
                let recent = self.replica.config().election_timeout_min_ms;
                let heard = |f: &FollowerStatus| f.last_contact_ms.is_some_and(|t| now.saturating_sub(t) < recent);
                let target = status
                    .followers
                    .iter()
                    // Only a voter can lead (learners and members being removed are
                    // replicated to as well).
                    .filter(|(id, _)| status.membership.is_voter(**id))
                    .max_by_key(|(id, f)| (heard(f), f.match_index, f.last_contact_ms, **id))
                    .map(|(id, _)| *id);
                let target = target.filter(|&id| self.replica.transfer_leadership(id).is_ok());
                let _ = reply.send(target);
            }
            Input::Status { reply } => {
                let _ = reply.send(self.replica.status());
            }
        }
    }

    async fn handle_ready(&mut self, mut ready: Ready) -> Result<(), RuntimeError> {
        self.transport.send(std::mem::take(&mut ready.messages));
        if let Some(snapshot) = ready.snapshot.take() {
            if let Some(hard_state) = ready.hard_state.take() {
                // The term first: the log's compaction point must never be of a term after
                // the stored one, whichever step a crash falls after.
                let log = self.log.clone();
                run_blocking(move || -> Result<(), StorageError> {
                    let mut log = log.lock();
                    log.write(Some(hard_state), None, &[])?;
                    log.sync()
                })
                .await?;
            }
            self.install_snapshot(snapshot).await?;
        }
        if ready.hard_state.is_some() || ready.truncate_from.is_some() || !ready.entries.is_empty() {
            let log = self.log.clone();
            let hard_state = ready.hard_state;
            let truncate_from = ready.truncate_from;
            let entries = ready.entries.clone();
            run_blocking(move || log.lock().write(hard_state, truncate_from, &entries)).await?;
            // A power loss may strike between the write and its sync; under simulation this
            // yield is where it can.
            tokio::task::yield_now().await;
            // Durability: only after sync() returns (for SQLite, the COMMIT that fsynced the
            // WAL) do votes and acknowledgements leave, and only then is anything applied.
            if !crate::bugs::active(crate::bugs::Bug::SkipFsync) {
                let log = self.log.clone();
                run_blocking(move || log.lock().sync()).await?;
            }
        }
        self.transport.send(std::mem::take(&mut ready.messages_after_persist));
        if !ready.committed_entries.is_empty() {
            self.apply(std::mem::take(&mut ready.committed_entries)).await?;
        }
        for read in ready.reads {
            let Some(reply) = self.reads_unconfirmed.remove(&read.context) else { continue };
            match read.result {
                Ok(index) => self.reads_confirmed.push((index, reply)),
                Err(_) => {
                    let _ = reply.send(Err(ProposeError::ReadUnconfirmed(
                        "leadership changed before the read was confirmed; retry".to_owned(),
                    )));
                }
            }
        }
        self.release_applied_reads();
        if let Some(soft) = ready.soft_state {
            tracing::info!(role = ?soft.role, term = soft.term, leader = ?soft.leader, "replica state changed");
            if let Some(observer) = &self.observer {
                observer.role_changed(self.replica.id(), soft.term, soft.role);
            }
            if soft.role != Role::Leader && !self.proposals.is_empty() {
                // Waiting would only end at the proposal timeout. Say now that the outcome is
                // unknown, so the client retries on the new leader at once (a retried send
                // is deduplicated by its session and sequence).
                for (_, (_, reply)) in std::mem::take(&mut self.proposals) {
                    let _ = reply.send(Err(ProposeError::OutcomeUnknown(
                        "leadership was lost before the command was known to commit; it may or may not take effect"
                            .to_owned(),
                    )));
                }
            }
        }
        Ok(())
    }

    /// Applies committed entries to the chat state in one transaction and answers the
    /// proposals waiting on them.
    async fn apply(&mut self, entries: Vec<Entry>) -> Result<(), RuntimeError> {
        let applied = self.chat.last_applied();
        for (offset, entry) in (1..).zip(&entries) {
            assert_eq!(
                entry.index,
                applied + offset,
                "committed entries must arrive in order from applied index {applied} + 1, without gaps"
            );
        }
        let batch: Vec<(LogIndex, Option<Command>)> = entries
            .iter()
            .map(|entry| {
                let command = match &entry.payload {
                    // A configuration is the replica's (in effect since it was appended);
                    // for the chat state it is an index applied.
                    Payload::Noop | Payload::Membership(_) => None,
                    Payload::Command(bytes) => Some(decode_logged_command(bytes)),
                };
                (entry.index, command)
            })
            .collect();
        let chat = Arc::clone(&self.chat);
        let outcomes = run_blocking(move || chat.apply_blocking(&batch)).await?;
        if let Some(observer) = &self.observer {
            for entry in &entries {
                observer.entry_applied(self.replica.id(), entry);
            }
        }
        for (entry, outcome) in entries.iter().zip(outcomes) {
            let Some((term, reply)) = self.proposals.remove(&entry.index) else { continue };
            let result = match outcome {
                Some(outcome) if term == entry.term => Ok(outcome),
                // Another entry holds the proposal's index: the command is not in the log.
                _ => Err(ProposeError::Superseded),
            };
            let _ = reply.send(result);
        }
        Ok(())
    }

    fn release_applied_reads(&mut self) {
        let applied = self.chat.last_applied();
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.reads_confirmed).into_iter().partition(|(index, _)| *index <= applied);
        self.reads_confirmed = waiting;
        for (_, reply) in ready {
            let _ = reply.send(Ok(()));
        }
    }

    fn publish_status(&self) {
        let status = NodeStatus {
            role: self.replica.role(),
            term: self.replica.term(),
            leader: self.replica.leader(),
            commit_index: self.replica.commit_index(),
            applied_index: self.chat.last_applied(),
            last_log_index: self.replica.last_index(),
        };
        let leader_known = status.leader.is_some();
        self.status.set_if(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
        self.leader_known.set_if(|known| std::mem::replace(known, leader_known) != leader_known);
    }
}

fn propose_error(error: replication::ProposeError) -> ProposeError {
    match error {
        replication::ProposeError::NotLeader { leader_hint } => ProposeError::NotLeader { leader: leader_hint },
        replication::ProposeError::TransferInProgress => ProposeError::TransferInProgress,
        replication::ProposeError::Overloaded => ProposeError::Overloaded,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use chorus_proto::v1::{CreateAccountCommand, command};

    use super::*;
    use crate::chat::ChatStateMachine;
    use crate::replication::{COMMITTED_ENTRIES_PER_READY_MAX, HardState, Message, ReplicaConfig};
    use crate::storage::{ClusterIdentity, Creation, LogStoreError, SqliteLog};
    use crate::transport::peer_inbox;

    /// A cluster of one has no peers to send to.
    struct NoPeers;

    impl Transport for NoPeers {
        fn send(&self, messages: Vec<Message>) {
            assert!(messages.is_empty(), "a cluster of one sends nothing");
        }
    }

    fn identity() -> ClusterIdentity {
        ClusterIdentity { cluster_id: "c".into(), node_id: 1, members: BTreeSet::from([1]) }
    }

    /// A log in `dir` holding `count` no-ops of term 1, with `damage` done to it (SQL run
    /// on the closed file), then reopened.
    fn log_of_noops(dir: &std::path::Path, count: u64, damage: Option<&str>) -> SqliteLog {
        let path = dir.join("raft.sqlite3");
        {
            let mut log = SqliteLog::open(&path, &identity(), Creation::Bootstrap).unwrap();
            let entries: Vec<Entry> =
                (1..=count).map(|index| Entry { term: 1, index, payload: Payload::Noop }).collect();
            log.persist(Some(HardState { term: 1, vote: Some(1) }), None, &entries).unwrap();
        }
        if let Some(damage) = damage {
            rusqlite::Connection::open(&path).unwrap().execute_batch(damage).unwrap();
        }
        SqliteLog::open(&path, &identity(), Creation::MemberOfExisting).unwrap()
    }

    /// A running single-node runtime, with a fresh chat state.
    struct SingleNode {
        handle: RaftHandle,
        chat: Arc<ChatState>,
        /// The switch that stops it.
        stopping: Watch<bool>,
        task: tokio::task::JoinHandle<Result<(), RuntimeError>>,
    }

    fn run_single_node(dir: &std::path::Path, log: SqliteLog) -> SingleNode {
        let chat = ChatState::new(ChatStateMachine::open(&dir.join("chat.sqlite3")).unwrap()).unwrap();
        let setup = ReplicaSetup {
            node_id: 1,
            members: BTreeSet::from([1]),
            config: ReplicaConfig::default(),
            rng_seed: 1,
            observer: None,
            clock: NodeClock::system(),
            snapshots: SnapshotSetup {
                dir: SnapshotDir::open(dir).unwrap(),
                policy: SnapshotPolicy { every_entries: u64::MAX, tail_entries: 0 },
                reports: tokio::sync::mpsc::unbounded_channel().1,
            },
        };
        let (_inbox_sender, inbox) = peer_inbox();
        let (runtime, handle) =
            start_runtime(setup, SharedLog::new(Box::new(log)), Arc::clone(&chat), NoPeers, inbox).unwrap();
        let stopping = Watch::new(false);
        let task = tokio::task::spawn(runtime.run(stopping.clone()));
        SingleNode { handle, chat, stopping, task }
    }

    /// A node with a long committed backlog to apply (a restart whose chat database lags
    /// its log, say) answers in between the batches, instead of draining the whole backlog
    /// first, during which it would not tick, heartbeat or vote.
    #[tokio::test(flavor = "current_thread")]
    async fn a_long_backlog_is_applied_in_turns_that_leave_room_for_the_clock_and_requests() {
        let dir = tempfile::tempdir().unwrap();
        const BACKLOG: u64 = 40 * COMMITTED_ENTRIES_PER_READY_MAX as u64;
        let SingleNode { handle, chat, stopping, task } =
            run_single_node(dir.path(), log_of_noops(dir.path(), BACKLOG, None));
        // The first answer comes at the first turn; the second one must come at most a turn
        // later, while most of the backlog is still to apply.
        handle.replica_status().await.expect("the runtime answers");
        let status = handle.replica_status().await.expect("the runtime answers");
        assert!(status.commit_index > BACKLOG, "the new term's no-op committed the backlog");
        let applied = chat.last_applied();
        assert!(
            applied < BACKLOG / 2,
            "applied {applied} of {BACKLOG} before answering a request that waited one turn"
        );
        handle.status.wait_for(|status| status.applied_index > BACKLOG).await;
        stopping.set(true);
        task.await.unwrap().unwrap();
    }

    /// A bad record found while running (here: to apply it) quarantines the node instead of
    /// stopping it with an error: it reports the fault, refuses proposals and reads as
    /// certainly not applied, keeps running until told to stop, and its log refuses to open
    /// afterwards. (Before, the error stopped the node, and a restarted node that opened
    /// fine, the bad record being old, led again and crashed again.)
    #[tokio::test(flavor = "current_thread")]
    async fn a_bad_record_found_while_running_quarantines_the_node() {
        let dir = tempfile::tempdir().unwrap();
        // A bit flips in an old record, outside what the log verifies at open.
        let damage = "UPDATE raft_log SET checksum = checksum + 1 WHERE log_index = 7";
        let log = log_of_noops(dir.path(), 6000, Some(damage));
        let SingleNode { handle, chat, stopping, task } = run_single_node(dir.path(), log);
        let fault = tokio::time::timeout(Duration::from_secs(10), handle.watch_fault().wait_for(Option::is_some))
            .await
            .expect("the node reports the fault")
            .unwrap();
        assert!(fault.contains("entry 7"), "{fault}");
        let create = Command {
            kind: Some(command::Kind::CreateAccount(CreateAccountCommand {
                username: "alice".into(),
                password_hash: "h".into(),
                created_at_ms: 1,
            })),
            proposed_at_ms: 0,
        };
        assert!(matches!(handle.propose(create).await, Err(ProposeError::Quarantined(_))));
        assert!(matches!(handle.read_fence().await, Err(ProposeError::Quarantined(_))));
        let status = handle.replica_status().await.expect("a quarantined node still answers status");
        assert_eq!((status.role, status.leader), (Role::Follower, None), "it leads no more");
        assert!(chat.last_applied() < 7, "nothing from the bad record on was applied");
        stopping.set(true);
        task.await.unwrap().expect("a quarantine is not an error that stops the node");
        let path = dir.path().join("raft.sqlite3");
        let error = SqliteLog::open(&path, &identity(), Creation::MemberOfExisting).err().unwrap();
        assert!(matches!(error, LogStoreError::FaultRecorded { .. }), "{error}");
    }
}
