//! One member of a Raft group, as a deterministic state machine: inputs are `tick`,
//! `step`, `propose`, `read_index` and `transfer_leadership`; outputs come out of `ready`.
//! It does no I/O and reads no clock: the caller owns time, the network and the disk.
//!
//! Section numbers refer to Diego Ongaro's dissertation, "Consensus: Bridging Theory and
//! Practice" (2014).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::config::{ConfigError, ReplicaConfig};
use super::log::RaftLog;
use super::message::{AppendResult, Message, MessageBody};
use super::progress::{Progress, ProgressMode};
use super::ready::{ReadAborted, ReadOutcome, Ready, SoftState};
use super::rng::SplitMix64;
use super::storage::{Storage, StorageError};
use super::types::{Entry, HardState, INDEX_MAX, LogIndex, LogPosition, NodeId, Payload, Role, TERM_MAX, Term};

/// Most bytes of committed entries handed out in one `Ready`.
const COMMITTED_BYTES_PER_READY_MAX: usize = 8 * 1024 * 1024;
/// Most committed entries handed out in one `Ready`: the caller applies them in one go, and
/// a node re-applying a long log must get back to its timers between batches.
pub const COMMITTED_ENTRIES_PER_READY_MAX: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cluster must have 1 to 7 members, got {0}")]
    ClusterSize(usize),
    #[error("node {0} is not a member of the cluster")]
    NotAMember(NodeId),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("leadership is being transferred; retry on the new leader")]
    TransferInProgress,
    #[error("too many uncommitted entries; retry later")]
    Overloaded,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("not the leader (leader: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("node {0} is not a member of the cluster")]
    UnknownMember(NodeId),
    #[error("this node is already the leader")]
    ToSelf,
}

/// Most entries a leader holds uncommitted before refusing proposals (backpressure).
const UNCOMMITTED_ENTRIES_MAX: u64 = 10_000;

enum RoleState {
    Follower,
    /// `leadership_transfer`: this pre-vote answers a `TimeoutNow` (see [`MessageBody::PreVoteRequest`]).
    PreCandidate {
        ballot: Ballot,
        leadership_transfer: bool,
    },
    Candidate(Ballot),
    Leader(Box<LeaderState>),
}

/// The answers to a (pre-)vote, the candidate's own included.
struct Ballot {
    granted: BTreeSet<NodeId>,
    rejected: BTreeSet<NodeId>,
}

enum Tally {
    Won,
    /// So many refused that a majority of grants is impossible.
    Lost,
    Open,
}

impl Ballot {
    fn new(candidate: NodeId) -> Self {
        Self { granted: BTreeSet::from([candidate]), rejected: BTreeSet::new() }
    }

    fn record(&mut self, voter: NodeId, granted: bool, quorum: usize, members: usize) -> Tally {
        if granted {
            self.granted.insert(voter);
        } else {
            self.rejected.insert(voter);
        }
        if self.granted.len() >= quorum {
            Tally::Won
        } else if self.rejected.len() > members - quorum {
            Tally::Lost
        } else {
            Tally::Open
        }
    }
}

struct LeaderState {
    progress: BTreeMap<NodeId, Progress>,
    heartbeat_deadline_ms: u64,
    check_quorum_deadline_ms: u64,
    /// The last heartbeat round started; each ReadIndex waits for a round after it began.
    heartbeat_round: u64,
    /// Index of this term's no-op: until it commits, the commit index may be stale.
    noop_index: LogIndex,
    reads_waiting_for_noop: Vec<u64>,
    pending_reads: Vec<PendingRead>,
    transfer: Option<Transfer>,
    /// Entries or a new commit index may need sending.
    broadcast_needed: bool,
    /// Reads wait for a heartbeat round to start.
    heartbeat_requested: bool,
}

struct PendingRead {
    context: u64,
    index: LogIndex,
    round: u64,
}

struct Transfer {
    target: NodeId,
    deadline_ms: u64,
    timeout_now_sent: bool,
}

/// A snapshot of a replica's state, for status pages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit_index: LogIndex,
    pub last_index: LogIndex,
    pub persisted_index: LogIndex,
    /// For a leader, what it knows of each follower.
    pub followers: BTreeMap<NodeId, FollowerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerStatus {
    pub match_index: LogIndex,
    pub next_index: LogIndex,
    pub last_contact_ms: Option<u64>,
}

pub struct Replica<S: Storage> {
    id: NodeId,
    members: BTreeSet<NodeId>,
    config: ReplicaConfig,
    rng: SplitMix64,
    log: RaftLog<S>,
    term: Term,
    vote: Option<NodeId>,
    role: RoleState,
    leader: Option<NodeId>,
    now_ms: u64,
    election_deadline_ms: u64,
    /// When this replica last heard from a current leader: it refuses to help depose a
    /// leader it heard from within the minimum election timeout (§4.2.3).
    last_leader_contact_ms: Option<u64>,
    /// The transfer target the current leader's last append announced: the only candidate
    /// whose transfer pre-vote this replica grants while it hears from that leader.
    announced_transfer: Option<NodeId>,
    /// The term and vote as last handed to the caller to persist.
    persisted_hard_state: HardState,
    /// Outputs accumulated since the last `ready`.
    messages: Vec<Message>,
    messages_after_persist: Vec<Message>,
    reads: Vec<ReadOutcome>,
    reported_soft_state: SoftState,
    /// The position of the last entry in the outstanding `Ready`, and its hard state,
    /// until the caller calls `advance`.
    outstanding: Option<(Option<LogPosition>, HardState)>,
}

impl<S: Storage> Replica<S> {
    /// Starts (or restarts) a replica on `storage`. `applied` is the last index the state
    /// machine has applied; `rng_seed` drives the election timeouts; `now_ms` is the
    /// caller's clock.
    pub fn new(
        id: NodeId,
        members: BTreeSet<NodeId>,
        config: ReplicaConfig,
        storage: S,
        applied: LogIndex,
        rng_seed: u64,
        now_ms: u64,
    ) -> Result<Self, ReplicaError> {
        config.validate()?;
        if members.is_empty() || members.len() > 7 {
            return Err(ReplicaError::ClusterSize(members.len()));
        }
        if !members.contains(&id) {
            return Err(ReplicaError::NotAMember(id));
        }
        let hard_state = storage.hard_state()?;
        let log = RaftLog::new(storage, applied)?;
        let mut replica = Self {
            id,
            members,
            config,
            rng: SplitMix64::new(rng_seed ^ id.wrapping_mul(0x2545_f491_4f6c_dd1d)),
            log,
            term: hard_state.term,
            vote: hard_state.vote,
            role: RoleState::Follower,
            leader: None,
            now_ms,
            election_deadline_ms: 0,
            last_leader_contact_ms: None,
            announced_transfer: None,
            persisted_hard_state: hard_state,
            messages: Vec::new(),
            messages_after_persist: Vec::new(),
            reads: Vec::new(),
            reported_soft_state: SoftState { role: Role::Follower, term: hard_state.term, leader: None },
            outstanding: None,
        };
        replica.reset_election_deadline();
        if replica.quorum() == 1 {
            // Alone, there is nobody to wait for: campaign at the first tick.
            replica.election_deadline_ms = now_ms;
        }
        Ok(replica)
    }

    // ---- Accessors -------------------------------------------------------------------

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn term(&self) -> Term {
        self.term
    }

    pub fn role(&self) -> Role {
        match self.role {
            RoleState::Follower => Role::Follower,
            RoleState::PreCandidate { .. } => Role::PreCandidate,
            RoleState::Candidate(_) => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    pub fn commit_index(&self) -> LogIndex {
        self.log.committed()
    }

    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }

    pub fn members(&self) -> &BTreeSet<NodeId> {
        &self.members
    }

    pub fn storage(&self) -> &S {
        self.log.storage()
    }

    /// The caller writes what a `Ready` asks to persist through this.
    pub fn storage_mut(&mut self) -> &mut S {
        self.log.storage_mut()
    }

    /// Gives the storage back, dropping everything not yet durable: what a crash does.
    pub fn into_storage(self) -> S {
        self.log.into_storage()
    }

    /// Entries of this replica's log (durable and not yet durable) in `low..high`.
    pub fn entries(&self, low: LogIndex, high: LogIndex) -> Result<Vec<Entry>, StorageError> {
        self.log.entries(low, high, usize::MAX)
    }

    pub fn config(&self) -> &ReplicaConfig {
        &self.config
    }

    pub fn status(&self) -> ReplicaStatus {
        let followers = match &self.role {
            RoleState::Leader(leader) => leader
                .progress
                .iter()
                .map(|(&id, p)| {
                    (
                        id,
                        FollowerStatus {
                            match_index: p.match_index,
                            next_index: p.next_index,
                            last_contact_ms: p.last_contact_ms,
                        },
                    )
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        ReplicaStatus {
            id: self.id,
            role: self.role(),
            term: self.term,
            leader: self.leader,
            commit_index: self.log.committed(),
            last_index: self.log.last_index(),
            persisted_index: self.log.persisted_index(),
            followers,
        }
    }

    fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }

    // ---- Inputs ----------------------------------------------------------------------

    /// Advances the replica's clock: elections, heartbeats, CheckQuorum and transfer
    /// deadlines fire from here.
    pub fn tick(&mut self, now_ms: u64) -> Result<(), StorageError> {
        assert!(now_ms >= self.now_ms, "time went backwards: {now_ms} < {}", self.now_ms);
        self.now_ms = now_ms;
        if let RoleState::Leader(_) = self.role {
            return self.tick_leader();
        }
        if self.now_ms >= self.election_deadline_ms {
            self.start_pre_vote(false)?;
        }
        Ok(())
    }

    fn tick_leader(&mut self) -> Result<(), StorageError> {
        let now = self.now_ms;
        let quorum = self.quorum();
        let RoleState::Leader(leader) = &mut self.role else { unreachable!() };
        if now >= leader.check_quorum_deadline_ms {
            // CheckQuorum (§6.2): a leader that has not heard from a majority within an
            // election timeout may be on the minority side of a partition; it steps down
            // so that clients look for the real leader.
            let active = 1 + leader.progress.values().filter(|p| p.recently_active).count();
            if active < quorum {
                tracing::info!(node = self.id, term = self.term, active, "lost contact with a majority; stepping down");
                let term = self.term;
                self.become_follower(term, None);
                return Ok(());
            }
            for progress in leader.progress.values_mut() {
                progress.recently_active = false;
            }
            leader.check_quorum_deadline_ms = now + self.config.election_timeout_min_ms;
        }
        if let Some(transfer) = &leader.transfer
            && now >= transfer.deadline_ms
        {
            tracing::info!(node = self.id, target = transfer.target, "leadership transfer timed out");
            leader.transfer = None;
        }
        if now >= leader.heartbeat_deadline_ms {
            leader.heartbeat_deadline_ms = now + self.config.heartbeat_interval_ms;
            // A pipeline whose match index has not moved for half an election timeout,
            // while entries are outstanding, lost appends (the follower only answers what
            // arrives): probe again from what is known to match.
            let last_index = self.log.last_index();
            let stall_ms = self.config.election_timeout_min_ms / 2;
            for (&follower, progress) in leader.progress.iter_mut() {
                let stalled = progress.mode == ProgressMode::Replicate
                    && progress.match_index < last_index
                    && now.saturating_sub(progress.last_progress_ms) >= stall_ms;
                if stalled {
                    tracing::debug!(node = self.id, follower, "replication stalled; probing again");
                    progress.restart_probing();
                    progress.last_progress_ms = now;
                }
            }
            self.broadcast_heartbeat()?;
        }
        Ok(())
    }

    /// Handles a message from another replica. Messages from non-members, or addressed to
    /// another node, are ignored.
    pub fn step(&mut self, message: Message) -> Result<(), StorageError> {
        if message.to != self.id || message.from == self.id || !self.members.contains(&message.from) {
            tracing::warn!(node = self.id, from = message.from, to = message.to, "ignoring misaddressed message");
            return Ok(());
        }
        if let Some(reason) = self.malformed(&message) {
            // A peer with a bug (or not a peer at all) must not be able to crash this replica
            // or corrupt its log: drop the message and say why.
            tracing::warn!(
                node = self.id,
                from = message.from,
                kind = message.body.kind(),
                reason,
                "ignoring malformed message"
            );
            return Ok(());
        }
        if message.term > self.term {
            let sticky = match message.body {
                MessageBody::VoteRequest { leadership_transfer, .. } => !leadership_transfer,
                // A transfer's pre-vote passes only while the leader announces that very
                // transfer (the leader itself: while it runs it): a late TimeoutNow of an
                // abandoned one is refused here. The leader's grant counts like any other,
                // so a transfer needs no majority without it (3 nodes, 1 down).
                MessageBody::PreVoteRequest { leadership_transfer, .. } => {
                    !leadership_transfer || self.transfer_announced() != Some(message.from)
                }
                _ => false,
            };
            if sticky && self.hears_from_leader() {
                // §4.2.3: while a leader is heard from, a disruptive candidate gets nothing,
                // not even a term change.
                return Ok(());
            }
            match message.body {
                // A pre-vote request carries a term the sender has not adopted; so does a
                // granted pre-vote response (§9.6). Neither changes ours.
                MessageBody::PreVoteRequest { .. } | MessageBody::PreVoteResponse { granted: true } => {}
                MessageBody::AppendRequest { .. } | MessageBody::TimeoutNow { .. } => {
                    self.become_follower(message.term, Some(message.from))
                }
                _ => self.become_follower(message.term, None),
            }
        } else if message.term < self.term {
            return self.step_stale(message);
        }
        let from = message.from;
        let term = message.term;
        match message.body {
            MessageBody::PreVoteRequest { last_log, .. } => self.handle_pre_vote_request(from, term, last_log),
            MessageBody::VoteRequest { last_log, .. } => self.handle_vote_request(from, last_log),
            MessageBody::PreVoteResponse { granted } => self.handle_pre_vote_response(from, term, granted),
            MessageBody::VoteResponse { granted } => self.handle_vote_response(from, granted),
            MessageBody::AppendRequest { previous, entries, leader_commit, heartbeat_round, transfer_target } => {
                self.handle_append_request(from, previous, entries, leader_commit, heartbeat_round, transfer_target)
            }
            MessageBody::AppendResponse { result, heartbeat_round } => {
                self.handle_append_response(from, result, heartbeat_round)
            }
            MessageBody::TimeoutNow { last_log } => self.handle_timeout_now(from, last_log),
        }
    }

    /// Why a message cannot have come from a correct replica, if it cannot. Every number
    /// in it came from the network: each is checked before any arithmetic is done with it.
    fn malformed(&self, message: &Message) -> Option<&'static str> {
        if message.term > TERM_MAX {
            return Some("term beyond the largest a replica uses");
        }
        let position_malformed = |position: &LogPosition| {
            position.index > INDEX_MAX || position.term > message.term || (position.index == 0) != (position.term == 0)
        };
        match &message.body {
            MessageBody::AppendRequest { previous, entries, leader_commit, transfer_target, .. } => {
                if position_malformed(previous) {
                    return Some("previous entry is inconsistent with the term");
                }
                // INDEX_MAX is far below u64::MAX, so this sum cannot overflow.
                if previous.index + entries.len() as LogIndex > INDEX_MAX || *leader_commit > INDEX_MAX {
                    return Some("entries or commit index beyond the largest index");
                }
                if transfer_target.is_some_and(|target| target == message.from || !self.members.contains(&target)) {
                    return Some("announces a transfer to a node that cannot take over");
                }
                let mut last_term = previous.term;
                for (expected_index, entry) in (previous.index + 1..).zip(entries) {
                    if entry.index != expected_index {
                        return Some("entries are not contiguous after the previous entry");
                    }
                    if entry.term < last_term || entry.term > message.term {
                        return Some("entry terms go backwards or exceed the leader's term");
                    }
                    last_term = entry.term;
                }
                None
            }
            MessageBody::AppendResponse { result, heartbeat_round } => {
                let RoleState::Leader(leader) = &self.role else { return None };
                if message.term != self.term {
                    return None;
                }
                if *heartbeat_round > leader.heartbeat_round {
                    return Some("acknowledges a heartbeat round that was never sent");
                }
                let last_index = self.log.last_index();
                match *result {
                    AppendResult::Accepted { match_index } if match_index > last_index => {
                        Some("claims to match entries the leader does not have")
                    }
                    // A correct follower rejects only an append this leader sent (after an
                    // entry it has, never after index 0), and hints at a point no later than
                    // the one rejected, in a term no later than the current one.
                    AppendResult::Rejected { rejected_previous, conflict_term, first_index_of_term }
                        if rejected_previous == 0
                            || rejected_previous > last_index
                            || first_index_of_term == 0
                            || first_index_of_term > rejected_previous
                            || conflict_term.is_some_and(|term| term == 0 || term > message.term) =>
                    {
                        Some("rejects an append this leader never sent, or hints past it")
                    }
                    _ => None,
                }
            }
            MessageBody::PreVoteRequest { last_log, .. }
            | MessageBody::VoteRequest { last_log, .. }
            | MessageBody::TimeoutNow { last_log } => {
                if position_malformed(last_log) {
                    Some("last log entry is inconsistent with the term")
                } else {
                    None
                }
            }
            MessageBody::PreVoteResponse { .. } | MessageBody::VoteResponse { .. } => None,
        }
    }

    /// A message from an older term.
    fn step_stale(&mut self, message: Message) -> Result<(), StorageError> {
        match message.body {
            // A deposed leader still sending: answer with our term so it steps down (it may
            // not hear from anyone else, and CheckQuorum alone would take a while).
            MessageBody::AppendRequest { previous, heartbeat_round, .. } => {
                let result = AppendResult::Rejected {
                    rejected_previous: previous.index,
                    conflict_term: None,
                    first_index_of_term: 0,
                };
                self.send(message.from, MessageBody::AppendResponse { result, heartbeat_round });
            }
            // Tell a pre-candidate with an old term that it cannot win, and what the term is.
            MessageBody::PreVoteRequest { .. } => {
                self.send(message.from, MessageBody::PreVoteResponse { granted: false })
            }
            MessageBody::VoteRequest { .. } => self.send(message.from, MessageBody::VoteResponse { granted: false }),
            _ => {}
        }
        Ok(())
    }

    /// Proposes a command. On the leader it is appended to the log and will be replicated;
    /// the returned position identifies it: the command committed iff the entry committed
    /// at that index has that term.
    pub fn propose(&mut self, command: Bytes) -> Result<LogPosition, ProposeError> {
        let RoleState::Leader(leader) = &self.role else {
            return Err(ProposeError::NotLeader { leader_hint: self.leader });
        };
        if leader.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        if self.log.last_index() - self.log.committed() >= UNCOMMITTED_ENTRIES_MAX {
            return Err(ProposeError::Overloaded);
        }
        Ok(self.append_as_leader(Payload::Command(command)))
    }

    /// Appends an entry of this leader's term. Client proposals pass the backpressure check
    /// first; the new leader's no-op must not (a leader that inherits a long uncommitted
    /// tail commits it only through its no-op).
    fn append_as_leader(&mut self, payload: Payload) -> LogPosition {
        let RoleState::Leader(leader) = &mut self.role else { unreachable!("only a leader appends") };
        let position = LogPosition { term: self.term, index: self.log.last_index() + 1 };
        assert!(position.index <= INDEX_MAX, "the log reached the largest index");
        self.log.append_new(Entry { term: position.term, index: position.index, payload });
        leader.broadcast_needed = true;
        position
    }

    /// Asks for a linearizable read (ReadIndex, §6.4). The outcome arrives in a later
    /// `Ready` under `context`. Followers refuse; the caller forwards to the leader.
    pub fn read_index(&mut self, context: u64) -> Result<(), ProposeError> {
        let quorum = self.quorum();
        let commit = self.log.committed();
        let RoleState::Leader(leader) = &mut self.role else {
            return Err(ProposeError::NotLeader { leader_hint: self.leader });
        };
        if commit < leader.noop_index {
            // Until an entry of its own term commits, a new leader does not know the
            // commit index (§6.4 step 1).
            leader.reads_waiting_for_noop.push(context);
            return Ok(());
        }
        if quorum == 1 {
            self.reads.push(ReadOutcome { context, result: Ok(commit) });
            return Ok(());
        }
        // The round starts when the next `Ready` is collected, so that all reads asked
        // for until then share one round of heartbeats.
        let round = leader.heartbeat_round + 1;
        leader.pending_reads.push(PendingRead { context, index: commit, round });
        leader.heartbeat_requested = true;
        Ok(())
    }

    /// Hands leadership to `target` (§3.10): proposals pause, the target is brought up to
    /// date, then told to campaign at once. Gives up after an election timeout.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), TransferError> {
        if !self.members.contains(&target) {
            return Err(TransferError::UnknownMember(target));
        }
        if target == self.id {
            return Err(TransferError::ToSelf);
        }
        let deadline_ms = self.now_ms + self.config.election_timeout_min_ms;
        let RoleState::Leader(leader) = &mut self.role else {
            return Err(TransferError::NotLeader { leader_hint: self.leader });
        };
        tracing::info!(node = self.id, term = self.term, target, "transferring leadership");
        leader.transfer = Some(Transfer { target, deadline_ms, timeout_now_sent: false });
        // The followers must hear of the transfer before the target's pre-vote reaches them
        // (they grant it only then): a heartbeat round announcing it leaves with the next
        // `Ready`, one hop ahead of the target's two; the TimeoutNow follows in the same
        // `Ready` if the target is up to date, else once it is.
        leader.heartbeat_requested = true;
        leader.broadcast_needed = true;
        Ok(())
    }

    // ---- Outputs ---------------------------------------------------------------------

    /// Whether `ready` has anything to hand out.
    pub fn has_ready(&self) -> bool {
        if self.outstanding.is_some() {
            return false;
        }
        let broadcast = matches!(&self.role, RoleState::Leader(l) if l.broadcast_needed || l.heartbeat_requested);
        broadcast
            || !self.messages.is_empty()
            || !self.messages_after_persist.is_empty()
            || !self.reads.is_empty()
            || !self.log.unstable_entries().is_empty()
            || self.hard_state() != self.persisted_hard_state
            || self.soft_state() != self.reported_soft_state
            || self.log.has_committed_to_hand_out()
    }

    /// Collects what the caller must do (see [`Ready`]). The caller must call `advance`
    /// after handling it and before asking for the next one.
    pub fn ready(&mut self) -> Result<Ready, StorageError> {
        assert!(self.outstanding.is_none(), "ready() called again before advance()");
        self.flush_broadcast()?;
        let hard_state = self.hard_state();
        let soft_state = self.soft_state();
        let ready = Ready {
            hard_state: (hard_state != self.persisted_hard_state).then_some(hard_state),
            entries: self.log.unstable_entries().to_vec(),
            messages: std::mem::take(&mut self.messages),
            messages_after_persist: std::mem::take(&mut self.messages_after_persist),
            committed_entries: self
                .log
                .take_committed(COMMITTED_ENTRIES_PER_READY_MAX, COMMITTED_BYTES_PER_READY_MAX)?,
            reads: std::mem::take(&mut self.reads),
            soft_state: (soft_state != self.reported_soft_state).then_some(soft_state),
        };
        self.reported_soft_state = soft_state;
        self.outstanding = Some((ready.entries.last().map(Entry::position), hard_state));
        Ok(ready)
    }

    /// The caller has made the last `Ready`'s hard state and entries durable (and sent its
    /// messages).
    pub fn advance(&mut self) -> Result<(), StorageError> {
        let (last_entry, hard_state) = self.outstanding.take().expect("advance() without an outstanding ready()");
        self.persisted_hard_state = hard_state;
        if let Some(position) = last_entry {
            self.log.stable_to(position)?;
        }
        // The leader's own log counts toward the quorum only once durable.
        if let RoleState::Leader(_) = self.role {
            self.maybe_commit()?;
        }
        Ok(())
    }

    fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote }
    }

    fn soft_state(&self) -> SoftState {
        SoftState { role: self.role(), term: self.term, leader: self.leader }
    }

    /// Queues a message. A leader's replication traffic may leave before its own log is
    /// durable (§10.2.1: the leader counts itself only once durable); everything else a
    /// replica says depends on what it just persisted (a vote, an acknowledged append, its
    /// term) and waits for it.
    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_in_term(to, self.term, body);
    }

    /// [`Replica::send`] with a term other than the current one: a pre-vote proposes the
    /// next term, and a granted pre-vote answers in it.
    fn send_in_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        let leader_traffic = matches!(self.role, RoleState::Leader(_))
            && matches!(body, MessageBody::AppendRequest { .. } | MessageBody::TimeoutNow { .. });
        let message = Message { from: self.id, to, term, body };
        if leader_traffic {
            self.messages.push(message);
        } else {
            self.messages_after_persist.push(message);
        }
    }

    // ---- Role changes ----------------------------------------------------------------

    fn reset_election_deadline(&mut self) {
        let timeout = self.rng.in_range(self.config.election_timeout_min_ms, self.config.election_timeout_max_ms);
        self.election_deadline_ms = self.now_ms + timeout;
    }

    /// The target of the leadership transfer under way: this leader's own, or the one its
    /// leader announced last.
    fn transfer_announced(&self) -> Option<NodeId> {
        match &self.role {
            RoleState::Leader(leader) => leader.transfer.as_ref().map(|transfer| transfer.target),
            _ => self.announced_transfer,
        }
    }

    fn hears_from_leader(&self) -> bool {
        match self.role {
            RoleState::Leader(_) => true,
            _ => {
                self.leader.is_some()
                    && self
                        .last_leader_contact_ms
                        .is_some_and(|contact| self.now_ms < contact + self.config.election_timeout_min_ms)
            }
        }
    }

    fn set_term(&mut self, term: Term) {
        assert!(term >= self.term, "term went backwards: {} -> {term}", self.term);
        assert!(term <= TERM_MAX, "term {term} beyond the largest allowed");
        if term > self.term {
            self.term = term;
            self.vote = None;
            self.announced_transfer = None;
        }
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        let was = self.role();
        self.abort_leader_state();
        self.set_term(term);
        self.role = RoleState::Follower;
        if self.leader != leader {
            self.announced_transfer = None;
        }
        self.leader = leader;
        if leader.is_some() {
            self.last_leader_contact_ms = Some(self.now_ms);
        }
        self.reset_election_deadline();
        if was != Role::Follower {
            tracing::info!(node = self.id, term, ?leader, from = ?was, "became follower");
        }
    }

    /// Fails the reads a leader was confirming when it stops being leader.
    fn abort_leader_state(&mut self) {
        if let RoleState::Leader(leader) = &mut self.role {
            let waiting = leader.reads_waiting_for_noop.drain(..);
            let pending = leader.pending_reads.drain(..).map(|read| read.context);
            let aborted: Vec<u64> = waiting.chain(pending).collect();
            self.reads.extend(aborted.into_iter().map(|context| ReadOutcome { context, result: Err(ReadAborted) }));
        }
    }

    /// PreVote (§9.6): ask whether an election could be won before disturbing anyone with
    /// a new term. A node cut off from the cluster never wins one, so its term stays put
    /// and it does not depose a healthy leader when it comes back. A transfer's pre-vote
    /// (`leadership_transfer`) keeps following the leader that asked for it meanwhile.
    fn start_pre_vote(&mut self, leadership_transfer: bool) -> Result<(), StorageError> {
        self.reset_election_deadline();
        self.abort_leader_state();
        let Some(proposed_term) = self.next_term() else { return Ok(()) };
        if !leadership_transfer {
            self.leader = None;
        }
        self.role = RoleState::PreCandidate { ballot: Ballot::new(self.id), leadership_transfer };
        tracing::debug!(node = self.id, term = self.term, leadership_transfer, "starting pre-vote");
        if self.quorum() == 1 {
            return self.start_election(leadership_transfer);
        }
        let last_log = self.log.last_position()?;
        for peer in self.peers() {
            self.send_in_term(peer, proposed_term, MessageBody::PreVoteRequest { last_log, leadership_transfer });
        }
        Ok(())
    }

    /// Asks again the voters that have not answered this transfer's pre-vote. A voter that
    /// got it before the leader's announcement of the transfer ignored it without a word
    /// (stickiness); asked once only, the transfer would fail for a heartbeat that came
    /// second. Repeated at each append that announces the transfer, for as long as it runs.
    fn repeat_transfer_pre_vote(&mut self) -> Result<(), StorageError> {
        let RoleState::PreCandidate { ballot, leadership_transfer: true } = &self.role else { return Ok(()) };
        let unanswered: Vec<NodeId> =
            self.peers().filter(|peer| !ballot.granted.contains(peer) && !ballot.rejected.contains(peer)).collect();
        let Some(proposed_term) = self.next_term() else { return Ok(()) };
        let last_log = self.log.last_position()?;
        for peer in unanswered {
            self.send_in_term(peer, proposed_term, MessageBody::PreVoteRequest { last_log, leadership_transfer: true });
        }
        Ok(())
    }

    /// The term after this one, unless this one is the last a replica may use (which only
    /// a long run of forged frames could bring about): then this replica cannot campaign,
    /// and says so.
    fn next_term(&self) -> Option<Term> {
        let next = self.term.checked_add(1).filter(|&next| next <= TERM_MAX);
        if next.is_none() {
            tracing::error!(node = self.id, term = self.term, "at the largest term: cannot campaign");
        }
        next
    }

    fn start_election(&mut self, leadership_transfer: bool) -> Result<(), StorageError> {
        let Some(term) = self.next_term() else { return Ok(()) };
        self.set_term(term);
        self.vote = Some(self.id);
        self.leader = None;
        self.role = RoleState::Candidate(Ballot::new(self.id));
        self.reset_election_deadline();
        tracing::info!(node = self.id, term, leadership_transfer, "starting election");
        if self.quorum() == 1 {
            return self.become_leader();
        }
        let last_log = self.log.last_position()?;
        for peer in self.peers() {
            self.send(peer, MessageBody::VoteRequest { last_log, leadership_transfer });
        }
        Ok(())
    }

    fn become_leader(&mut self) -> Result<(), StorageError> {
        assert!(matches!(self.role, RoleState::Candidate(_)), "only a candidate becomes leader");
        assert_eq!(self.vote, Some(self.id), "a leader voted for itself");
        let next_index = self.log.last_index() + 1;
        let now = self.now_ms;
        let progress = self.peers().map(|peer| (peer, Progress::new(next_index, now))).collect();
        self.role = RoleState::Leader(Box::new(LeaderState {
            progress,
            heartbeat_deadline_ms: self.now_ms,
            check_quorum_deadline_ms: self.now_ms + self.config.election_timeout_min_ms,
            heartbeat_round: 0,
            noop_index: next_index,
            reads_waiting_for_noop: Vec::new(),
            pending_reads: Vec::new(),
            transfer: None,
            broadcast_needed: true,
            heartbeat_requested: false,
        }));
        self.leader = Some(self.id);
        tracing::info!(node = self.id, term = self.term, "became leader");
        // §3.6.2 / §6.4: a no-op of the new term lets earlier entries commit and tells the
        // leader when its commit index is current.
        self.append_as_leader(Payload::Noop);
        Ok(())
    }

    fn peers(&self) -> impl Iterator<Item = NodeId> + use<S> {
        let id = self.id;
        self.members.clone().into_iter().filter(move |&member| member != id)
    }

    // ---- Elections -------------------------------------------------------------------

    fn candidate_log_ok(&self, last_log: LogPosition) -> Result<bool, StorageError> {
        Ok(last_log.at_least_as_up_to_date_as(&self.log.last_position()?))
    }

    fn handle_pre_vote_request(&mut self, from: NodeId, term: Term, last_log: LogPosition) -> Result<(), StorageError> {
        // Would we vote for `from` in `term`? Only for a future term (or the current one if
        // our vote there is free), and only for an up-to-date log.
        let could_vote = term > self.term || self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none());
        let granted = could_vote && self.candidate_log_ok(last_log)?;
        // A granted answer carries the proposed term so the pre-candidate can match it; a
        // refusal carries ours so a pre-candidate that is behind catches up.
        let reply_term = if granted { term } else { self.term };
        self.send_in_term(from, reply_term, MessageBody::PreVoteResponse { granted });
        Ok(())
    }

    fn handle_vote_request(&mut self, from: NodeId, last_log: LogPosition) -> Result<(), StorageError> {
        let vote_free = self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none());
        let granted = vote_free && self.candidate_log_ok(last_log)?;
        if granted {
            assert!(self.vote.is_none_or(|v| v == from), "voting twice in term {}", self.term);
            self.vote = Some(from);
            // Granting a vote resets the election timer (§3.4), so this replica does not
            // compete with the candidate it just backed.
            self.reset_election_deadline();
        }
        // Sent only after the vote is durable: a vote forgotten in a crash could be cast
        // again for someone else in the same term.
        self.send(from, MessageBody::VoteResponse { granted });
        Ok(())
    }

    fn handle_pre_vote_response(&mut self, from: NodeId, term: Term, granted: bool) -> Result<(), StorageError> {
        let (quorum, members) = (self.quorum(), self.members.len());
        let RoleState::PreCandidate { ballot, leadership_transfer } = &mut self.role else { return Ok(()) };
        let leadership_transfer = *leadership_transfer;
        // A grant counts only for the term this pre-vote proposed (our term is below
        // TERM_MAX while we campaign, so the sum cannot overflow).
        if granted && term != self.term + 1 {
            return Ok(());
        }
        match ballot.record(from, granted, quorum, members) {
            Tally::Won => self.start_election(leadership_transfer),
            Tally::Lost => {
                // A refused transfer goes back to following the leader that asked for it.
                let leader = if leadership_transfer { self.leader } else { None };
                self.become_follower(self.term, leader);
                Ok(())
            }
            Tally::Open => Ok(()),
        }
    }

    fn handle_vote_response(&mut self, from: NodeId, granted: bool) -> Result<(), StorageError> {
        let (quorum, members) = (self.quorum(), self.members.len());
        let RoleState::Candidate(ballot) = &mut self.role else { return Ok(()) };
        match ballot.record(from, granted, quorum, members) {
            Tally::Won => self.become_leader(),
            Tally::Lost => {
                self.become_follower(self.term, None);
                Ok(())
            }
            Tally::Open => Ok(()),
        }
    }

    fn handle_timeout_now(&mut self, from: NodeId, last_log: LogPosition) -> Result<(), StorageError> {
        if !matches!(self.role, RoleState::Follower) || self.leader != Some(from) {
            return Ok(());
        }
        if self.log.last_position()? != last_log {
            // The leader sent this when this log ended where it says; it has moved on since
            // (the transfer was abandoned and proposals resumed), or the message is a stray.
            tracing::info!(node = self.id, term = self.term, from, "ignoring a stale TimeoutNow");
            return Ok(());
        }
        tracing::info!(node = self.id, term = self.term, "asked to take over leadership");
        // A pre-vote the followers grant only while the leader announces this transfer,
        // then an election that passes their stickiness (§3.10).
        self.start_pre_vote(true)
    }

    // ---- Replication: follower side --------------------------------------------------

    fn handle_append_request(
        &mut self,
        from: NodeId,
        previous: LogPosition,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
        heartbeat_round: u64,
        transfer_target: Option<NodeId>,
    ) -> Result<(), StorageError> {
        if matches!(self.role, RoleState::Leader(_)) {
            // Election Safety says this cannot come from a correct replica: this node won
            // the term. Accepting would let two leaders write one log; refusing is safe.
            tracing::error!(
                node = self.id,
                term = self.term,
                from,
                "received an append from another leader of this node's own term; ignoring it"
            );
            return Ok(());
        }
        // The target of this leader's transfer keeps its pre-vote going while the leader
        // goes on replicating to it; anything else that hears a leader follows it.
        let transfer_under_way = transfer_target == Some(self.id)
            && self.leader == Some(from)
            && matches!(self.role, RoleState::PreCandidate { leadership_transfer: true, .. });
        if !transfer_under_way && (!matches!(self.role, RoleState::Follower) || self.leader != Some(from)) {
            self.become_follower(self.term, Some(from));
        }
        self.last_leader_contact_ms = Some(self.now_ms);
        self.announced_transfer = transfer_target;
        self.reset_election_deadline();
        if transfer_under_way {
            self.repeat_transfer_pre_vote()?;
        }

        if previous.index < self.log.committed() {
            // Already committed here: that part matches by definition. Acknowledge what is
            // committed and skip the entries below it (a delayed duplicate append).
            let committed = self.log.committed();
            let skip = (committed - previous.index) as usize;
            if skip >= entries.len() {
                let result = AppendResult::Accepted { match_index: committed };
                self.send(from, MessageBody::AppendResponse { result, heartbeat_round });
                return Ok(());
            }
            let term = entries[skip - 1].term;
            let previous = LogPosition { term, index: committed };
            let entries = entries.into_iter().skip(skip).collect();
            return self.accept_entries(from, previous, entries, leader_commit, heartbeat_round);
        }
        if !self.log.matches(previous)? {
            let (conflict_term, first_index_of_term) = self.log.conflict_hint(previous)?;
            let result =
                AppendResult::Rejected { rejected_previous: previous.index, conflict_term, first_index_of_term };
            self.send(from, MessageBody::AppendResponse { result, heartbeat_round });
            return Ok(());
        }
        self.accept_entries(from, previous, entries, leader_commit, heartbeat_round)
    }

    fn accept_entries(
        &mut self,
        from: NodeId,
        previous: LogPosition,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
        heartbeat_round: u64,
    ) -> Result<(), StorageError> {
        let match_index = self.log.accept(previous, entries)?;
        // Only what is known to match the leader may be committed here (§3.5: commit up
        // to min(leaderCommit, index of last new entry)).
        self.log.commit_to(leader_commit.min(match_index));
        // Sent after persisting: the leader counts this follower toward commitment.
        let result = AppendResult::Accepted { match_index };
        self.send(from, MessageBody::AppendResponse { result, heartbeat_round });
        Ok(())
    }

    // ---- Replication: leader side ----------------------------------------------------

    fn handle_append_response(
        &mut self,
        from: NodeId,
        result: AppendResult,
        heartbeat_round: u64,
    ) -> Result<(), StorageError> {
        let now = self.now_ms;
        let RoleState::Leader(leader) = &mut self.role else { return Ok(()) };
        let Some(progress) = leader.progress.get_mut(&from) else { return Ok(()) };
        progress.recently_active = true;
        progress.last_contact_ms = Some(now);
        progress.acknowledged_round = progress.acknowledged_round.max(heartbeat_round);
        match result {
            AppendResult::Accepted { match_index } => {
                if progress.accepted(match_index, now) {
                    self.maybe_commit()?;
                } else if progress.mode == ProgressMode::Replicate
                    && progress.inflight.len() >= self.config.inflight_appends_max
                {
                    // An answer that is no news while the pipeline is full: appends may have
                    // been lost. Free one slot, so the next append either fills the gap or
                    // is rejected and sends the follower back to probing (etcd does the same).
                    progress.inflight.pop_front();
                }
            }
            AppendResult::Rejected { rejected_previous, conflict_term, first_index_of_term } => {
                let new_next = match conflict_term {
                    None => first_index_of_term,
                    Some(term) => {
                        // If the leader has entries of the follower's conflicting term, resume
                        // after its last one; otherwise skip the follower's whole term.
                        let (index, found) = self.log.last_at_or_below_with_term_at_most(rejected_previous, term)?;
                        if found == term { index + 1 } else { first_index_of_term }
                    }
                };
                let RoleState::Leader(leader) = &mut self.role else { unreachable!() };
                let progress = leader.progress.get_mut(&from).expect("checked above");
                if progress.rejected(rejected_previous, new_next) {
                    tracing::debug!(node = self.id, follower = from, next = progress.next_index, "probing follower");
                }
            }
        }
        let RoleState::Leader(leader) = &mut self.role else { return Ok(()) };
        leader.broadcast_needed = true;
        self.release_confirmed_reads();
        Ok(())
    }

    /// Commits the highest index stored on a majority, if it is of the current term
    /// (§3.6.2, figure 3.7: entries of older terms commit only indirectly).
    fn maybe_commit(&mut self) -> Result<(), StorageError> {
        let quorum = self.quorum();
        let persisted = self.log.persisted_index();
        let RoleState::Leader(leader) = &mut self.role else { return Ok(()) };
        let mut matched: Vec<LogIndex> = leader.progress.values().map(|p| p.match_index).collect();
        matched.push(persisted);
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let needed = if crate::bugs::active(crate::bugs::Bug::CommitWithoutQuorum) {
            quorum.saturating_sub(1).max(1)
        } else {
            quorum
        };
        let majority_index = matched[needed - 1];
        if majority_index <= self.log.committed() || self.log.term(majority_index)? != Some(self.term) {
            return Ok(());
        }
        self.log.commit_to(majority_index);
        let noop_committed = majority_index >= leader.noop_index;
        leader.broadcast_needed = true;
        if noop_committed && !leader.reads_waiting_for_noop.is_empty() {
            let waiting = std::mem::take(&mut leader.reads_waiting_for_noop);
            for context in waiting {
                self.read_index(context).expect("still the leader");
            }
        }
        Ok(())
    }

    /// Tells the transfer target to campaign, once it holds the leader's whole log (it
    /// would lose the election otherwise). Called with every `Ready`.
    fn maybe_send_timeout_now(&mut self) -> Result<(), StorageError> {
        let last_log = self.log.last_position()?;
        let RoleState::Leader(leader) = &mut self.role else { return Ok(()) };
        let Some(transfer) = leader.transfer.as_mut() else { return Ok(()) };
        if transfer.timeout_now_sent || leader.progress[&transfer.target].match_index != last_log.index {
            return Ok(());
        }
        transfer.timeout_now_sent = true;
        let target = transfer.target;
        self.send(target, MessageBody::TimeoutNow { last_log });
        Ok(())
    }

    /// Sends each follower what it is missing, as flow control allows, or at least the new
    /// commit index.
    fn flush_broadcast(&mut self) -> Result<(), StorageError> {
        let RoleState::Leader(leader) = &mut self.role else { return Ok(()) };
        if leader.heartbeat_requested {
            leader.heartbeat_requested = false;
            self.broadcast_heartbeat()?;
        }
        let RoleState::Leader(leader) = &mut self.role else { return Ok(()) };
        if leader.broadcast_needed {
            leader.broadcast_needed = false;
            let followers: Vec<NodeId> = leader.progress.keys().copied().collect();
            for follower in followers {
                self.send_appends(follower)?;
            }
        }
        self.maybe_send_timeout_now()
    }

    fn send_appends(&mut self, follower: NodeId) -> Result<(), StorageError> {
        let last_index = self.log.last_index();
        let commit = self.log.committed();
        loop {
            let RoleState::Leader(leader) = &self.role else { return Ok(()) };
            let progress = &leader.progress[&follower];
            let round = leader.heartbeat_round;
            let transfer_target = leader.transfer.as_ref().map(|t| t.target);
            let has_entries = progress.next_index <= last_index;
            if !progress.can_send(self.config.inflight_appends_max) {
                return Ok(());
            }
            if !has_entries {
                if progress.commit_sent < commit {
                    self.send_heartbeat_to(follower, round)?;
                }
                return Ok(());
            }
            let previous_index = progress.next_index - 1;
            let previous_term = self.log.term(previous_index)?.expect("previous index is within the leader's log");
            let entries = self.log.entries(
                previous_index + 1,
                (previous_index + 1 + self.config.append_entries_max as LogIndex).min(last_index + 1),
                self.config.append_bytes_max,
            )?;
            let sent_through = entries.last().map_or(previous_index, |e| e.index);
            let RoleState::Leader(leader) = &mut self.role else { unreachable!() };
            let progress = leader.progress.get_mut(&follower).expect("follower has progress");
            progress.sent(sent_through);
            progress.commit_sent = commit;
            let probing = progress.mode == ProgressMode::Probe;
            self.send(
                follower,
                MessageBody::AppendRequest {
                    previous: LogPosition { term: previous_term, index: previous_index },
                    entries,
                    leader_commit: commit,
                    heartbeat_round: round,
                    transfer_target,
                },
            );
            if probing {
                return Ok(());
            }
        }
    }

    /// An empty append after what the follower is known to hold: it always matches, so it
    /// never disturbs pipelined appends, and it carries the commit index and the round.
    fn send_heartbeat_to(&mut self, follower: NodeId, round: u64) -> Result<(), StorageError> {
        let commit = self.log.committed();
        let RoleState::Leader(leader) = &mut self.role else { return Ok(()) };
        let transfer_target = leader.transfer.as_ref().map(|t| t.target);
        let progress = leader.progress.get_mut(&follower).expect("follower has progress");
        let previous_index = progress.match_index;
        progress.commit_sent = commit;
        let previous_term = self.log.term(previous_index)?.expect("match index is within the leader's log");
        self.send(
            follower,
            MessageBody::AppendRequest {
                previous: LogPosition { term: previous_term, index: previous_index },
                entries: Vec::new(),
                leader_commit: commit,
                heartbeat_round: round,
                transfer_target,
            },
        );
        Ok(())
    }

    /// Starts a new heartbeat round to every follower.
    fn broadcast_heartbeat(&mut self) -> Result<(), StorageError> {
        let RoleState::Leader(leader) = &mut self.role else { return Ok(()) };
        leader.heartbeat_round += 1;
        let round = leader.heartbeat_round;
        let followers: Vec<NodeId> = leader.progress.keys().copied().collect();
        for follower in followers {
            let RoleState::Leader(leader) = &mut self.role else { unreachable!() };
            // A probing follower with an append outstanding gets the heartbeat anyway: it
            // is how a lost probe is retried.
            leader.progress.get_mut(&follower).expect("follower has progress").probe_outstanding = false;
            self.send_heartbeat_to(follower, round)?;
        }
        let RoleState::Leader(leader) = &mut self.role else { unreachable!() };
        leader.broadcast_needed = true;
        Ok(())
    }

    /// Releases the reads whose heartbeat round a majority acknowledged.
    fn release_confirmed_reads(&mut self) {
        let quorum = self.quorum();
        let RoleState::Leader(leader) = &mut self.role else { return };
        let mut rounds: Vec<u64> = leader.progress.values().map(|p| p.acknowledged_round).collect();
        rounds.push(leader.heartbeat_round);
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        let confirmed_round = rounds[quorum - 1];
        let (confirmed, pending): (Vec<_>, Vec<_>) =
            leader.pending_reads.drain(..).partition(|read| read.round <= confirmed_round);
        leader.pending_reads = pending;
        self.reads
            .extend(confirmed.into_iter().map(|read| ReadOutcome { context: read.context, result: Ok(read.index) }));
    }
}
