//! One member of a Raft group, as a deterministic state machine: inputs are `tick`,
//! `step`, `propose`, `read_index` and `transfer_leadership`; outputs come out of `ready`.
//! It does no I/O and reads no clock: the caller owns time, the network and the disk.
//!
//! This file holds the replica's state, its constructor and accessors, the dispatch of
//! inputs, `ready`/`advance`, and the helpers every role uses. The handlers live beside it,
//! one file per concern (as openraft keeps one handler per concern): `election.rs`
//! (pre-votes, votes, becoming candidate or leader), `follower.rs` (what a follower does
//! with a leader's messages, and the filters every message passes), `leader.rs`
//! (replication and commitment), `read_index.rs` and `transfer.rs`.
//!
//! Section numbers refer to Diego Ongaro's dissertation, "Consensus: Bridging Theory and
//! Practice" (2014).

use std::collections::BTreeMap;

use super::config::{ConfigError, ReplicaConfig};
use super::election::Ballot;
use super::leader::{LeaderState, Leadership};
use super::log::RaftLog;
use super::membership::{Configurations, MemberRole};
use super::message::{Message, MessageBody};
use super::ready::{ReadOutcome, Ready, SoftState};
use super::rng::SplitMix64;
use super::storage::{Storage, StorageError};
use super::types::{
    Entry, HardState, LogIndex, LogPosition, Membership, NodeId, Payload, Role, SnapshotMeta, TERM_MAX, Term,
};

/// Most bytes of committed entries handed out in one `Ready`.
const COMMITTED_BYTES_PER_READY_MAX: usize = 8 * 1024 * 1024;
/// Most committed entries handed out in one `Ready`: the caller applies them in one go, and
/// a node re-applying a long log must get back to its timers between batches.
pub const COMMITTED_ENTRIES_PER_READY_MAX: usize = 1024;
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid initial configuration: {0}")]
    InvalidMembership(&'static str),
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

pub(super) enum RoleState {
    Follower,
    /// `leadership_transfer`: this pre-vote answers a `TimeoutNow` (see [`MessageBody::PreVoteRequest`]).
    PreCandidate {
        ballot: Ballot,
        leadership_transfer: bool,
    },
    Candidate(Ballot),
    Leader(Box<LeaderState>),
}

/// A snapshot of a replica's state, for status pages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    /// The configuration in effect, and this replica's part in it.
    pub membership: Membership,
    pub member_role: MemberRole,
    pub commit_index: LogIndex,
    pub last_index: LogIndex,
    pub persisted_index: LogIndex,
    /// Messages dropped since start because no correct member could have sent them
    /// (misaddressed, from a non-member, or with impossible fields).
    pub messages_refused: u64,
    /// For a leader, what it knows of each follower.
    pub followers: BTreeMap<NodeId, FollowerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerStatus {
    pub match_index: LogIndex,
    pub next_index: LogIndex,
    pub last_contact_ms: Option<u64>,
}

/// What a replica says, accumulated since the last `Ready`. A field of its own so that a
/// leader's handlers can hold it beside the leader state (see `leader::LeaderContext`).
#[derive(Default)]
pub(super) struct Outbox {
    pub messages: Vec<Message>,
    pub messages_after_persist: Vec<Message>,
    pub reads: Vec<ReadOutcome>,
}

impl Outbox {
    /// Queues a message. A leader's replication traffic may leave before its own log is
    /// durable (§10.2.1: the leader counts itself only once durable); everything else a
    /// replica says depends on what it just persisted (a vote, an acknowledged append, its
    /// term) and waits for it.
    pub fn send(&mut self, message: Message, sender_is_leader: bool) {
        let leader_traffic = sender_is_leader
            && matches!(
                message.body,
                MessageBody::AppendRequest { .. }
                    | MessageBody::TimeoutNow { .. }
                    | MessageBody::InstallSnapshot { .. }
            );
        if leader_traffic {
            self.messages.push(message);
        } else {
            self.messages_after_persist.push(message);
        }
    }

    fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.messages_after_persist.is_empty() && self.reads.is_empty()
    }
}

pub struct Replica<S: Storage> {
    pub(super) id: NodeId,
    /// The configurations this replica knows of; the last is in effect (`membership.rs`).
    pub(super) configs: Configurations,
    pub(super) config: ReplicaConfig,
    pub(super) rng: SplitMix64,
    pub(super) log: RaftLog<S>,
    pub(super) term: Term,
    pub(super) vote: Option<NodeId>,
    pub(super) role: RoleState,
    pub(super) leader: Option<NodeId>,
    pub(super) now_ms: u64,
    pub(super) election_deadline_ms: u64,
    /// When this replica last heard from a current leader: it refuses to help depose a
    /// leader it heard from within the minimum election timeout (§4.2.3).
    pub(super) last_leader_contact_ms: Option<u64>,
    /// The transfer target the current leader's last append announced: the only candidate
    /// whose transfer pre-vote this replica grants while it hears from that leader.
    pub(super) announced_transfer: Option<NodeId>,
    /// The term and vote as last handed to the caller to persist.
    persisted_hard_state: HardState,
    /// Outputs accumulated since the last `ready`.
    pub(super) outbox: Outbox,
    reported_soft_state: SoftState,
    /// The position of the last entry in the outstanding `Ready`, and its hard state,
    /// until the caller calls `advance`.
    outstanding: Option<(Option<LogPosition>, HardState)>,
    /// See [`ReplicaStatus::messages_refused`].
    messages_refused: u64,
    /// The latest snapshot a leader of the current term sent, waiting for the next `Ready`
    /// to be installed (or found unneeded): see `snapshot.rs`.
    pub(super) snapshot_offered: Option<(NodeId, SnapshotMeta)>,
}

impl<S: Storage> Replica<S> {
    /// Starts (or restarts) a replica on `storage`. `initial` is the cluster's first
    /// configuration, in effect until the snapshot or the log says otherwise (a node that
    /// is not in it waits to be added). `applied` is the last index the state machine has
    /// applied; `rng_seed` drives the election timeouts; `now_ms` is the caller's clock.
    pub fn new(
        id: NodeId,
        initial: Membership,
        config: ReplicaConfig,
        storage: S,
        applied: LogIndex,
        rng_seed: u64,
        now_ms: u64,
    ) -> Result<Self, ReplicaError> {
        config.validate()?;
        if let Some(reason) = initial.invalid() {
            return Err(ReplicaError::InvalidMembership(reason));
        }
        let hard_state = storage.hard_state()?;
        let configs = configurations_in(&storage, id, initial)?;
        let log = RaftLog::new(storage, applied)?;
        let mut replica = Self {
            id,
            configs,
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
            outbox: Outbox::default(),
            reported_soft_state: SoftState { role: Role::Follower, term: hard_state.term, leader: None },
            outstanding: None,
            messages_refused: 0,
            snapshot_offered: None,
        };
        replica.reset_election_deadline();
        if replica.quorum() == 1 && replica.may_campaign() {
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

    /// Entries of this replica's log (durable and not yet durable) in `low..high`, from
    /// its first index if `low` was compacted.
    pub fn entries(&self, low: LogIndex, high: LogIndex) -> Result<Vec<Entry>, StorageError> {
        self.log.entries(low.max(self.log.first_index()?), high, usize::MAX)
    }

    /// The first index this replica's log holds (1 unless compacted).
    pub fn first_index(&self) -> Result<LogIndex, StorageError> {
        self.log.first_index()
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
            membership: self.configs.latest().clone(),
            member_role: self.member_role(),
            commit_index: self.log.committed(),
            last_index: self.log.last_index(),
            persisted_index: self.log.persisted_index(),
            messages_refused: self.messages_refused,
            followers,
        }
    }

    /// How many voters of the configuration in effect make a majority.
    pub(super) fn quorum(&self) -> usize {
        self.configs.latest().quorum()
    }

    // ---- Inputs ----------------------------------------------------------------------

    /// Advances the replica's clock: elections, heartbeats, CheckQuorum and transfer
    /// deadlines fire from here.
    pub fn tick(&mut self, now_ms: u64) -> Result<(), StorageError> {
        assert!(now_ms >= self.now_ms, "time went backwards: {now_ms} < {}", self.now_ms);
        self.now_ms = now_ms;
        if let Some((leader, mut cx)) = self.leader_parts() {
            if leader.tick(&mut cx)? == Leadership::Lost {
                let term = self.term;
                self.become_follower(term, None);
            }
            return Ok(());
        }
        self.tick_election_timer()
    }

    /// Handles a message from another replica. Messages addressed to another node are
    /// ignored. Messages from nodes outside the configuration are handled like any other
    /// (§4.1: a replica may lag behind the configuration that made the sender a member);
    /// answers from them count for nothing, since only members' answers are tallied.
    pub fn step(&mut self, message: Message) -> Result<(), StorageError> {
        if message.to != self.id || message.from == self.id || message.from == 0 {
            tracing::warn!(from = message.from, to = message.to, "ignoring misaddressed message");
            self.messages_refused += 1;
            return Ok(());
        }
        if let Some(reason) = self.malformed(&message) {
            // A peer with a bug (or not a peer at all) must not be able to crash this replica
            // or corrupt its log: drop the message and say why.
            tracing::warn!(from = message.from, kind = message.body.kind(), reason, "ignoring malformed message");
            self.messages_refused += 1;
            return Ok(());
        }
        if message.term > self.term {
            if self.disrupts_a_heard_leader(&message) {
                // §4.2.3: while a leader is heard from, a disruptive candidate gets nothing,
                // not even a term change.
                return Ok(());
            }
            match message.body {
                // A pre-vote request carries a term the sender has not adopted; so does a
                // granted pre-vote response (§9.6). Neither changes ours.
                MessageBody::PreVoteRequest { .. } | MessageBody::PreVoteResponse { granted: true } => {}
                MessageBody::AppendRequest { .. }
                | MessageBody::TimeoutNow { .. }
                | MessageBody::InstallSnapshot { .. } => self.become_follower(message.term, Some(message.from)),
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
            MessageBody::InstallSnapshot { snapshot } => self.handle_install_snapshot(from, snapshot),
        }
    }

    // ---- Outputs ---------------------------------------------------------------------

    /// Whether `ready` has anything to hand out.
    pub fn has_ready(&self) -> bool {
        if self.outstanding.is_some() {
            return false;
        }
        let broadcast = matches!(&self.role, RoleState::Leader(l) if l.broadcast_needed || l.heartbeat_requested);
        broadcast
            || self.snapshot_offered.is_some()
            || !self.outbox.is_empty()
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
        let snapshot = self.take_snapshot_to_install()?;
        let hard_state = self.hard_state();
        let soft_state = self.soft_state();
        // The one step that can fail comes first: if it does, nothing was taken, and the
        // next `ready` hands out the same work (no messages lost, no storage end assumed).
        let committed_entries =
            self.log.take_committed(COMMITTED_ENTRIES_PER_READY_MAX, COMMITTED_BYTES_PER_READY_MAX)?;
        let outbox = std::mem::take(&mut self.outbox);
        let (truncate_from, entries) = self.log.take_to_persist();
        let ready = Ready {
            snapshot,
            hard_state: (hard_state != self.persisted_hard_state).then_some(hard_state),
            truncate_from,
            entries,
            messages: outbox.messages,
            messages_after_persist: outbox.messages_after_persist,
            committed_entries,
            reads: outbox.reads,
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
        let persisted_before = self.log.persisted_index();
        self.log.stable_to(last_entry)?;
        let configuration = self.configs.latest_index();
        let configuration_persisted = persisted_before < configuration && configuration <= self.log.persisted_index();
        // The leader's own log counts toward the quorum only once durable.
        if let Some((leader, mut cx)) = self.leader_parts() {
            if configuration_persisted {
                leader.configuration_persisted();
            }
            leader.maybe_commit(&mut cx)?;
        }
        Ok(())
    }

    fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote }
    }

    fn soft_state(&self) -> SoftState {
        SoftState { role: self.role(), term: self.term, leader: self.leader }
    }

    // ---- Helpers of every role -------------------------------------------------------

    /// Queues a message in the current term (see [`Outbox::send`] for when it may leave).
    pub(super) fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_in_term(to, self.term, body);
    }

    /// [`Replica::send`] with a term other than the current one: a pre-vote proposes the
    /// next term, and a granted pre-vote answers in it.
    pub(super) fn send_in_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        let sender_is_leader = matches!(self.role, RoleState::Leader(_));
        self.outbox.send(Message { from: self.id, to, term, body }, sender_is_leader);
    }

    pub(super) fn reset_election_deadline(&mut self) {
        let timeout = self.rng.in_range(self.config.election_timeout_min_ms, self.config.election_timeout_max_ms);
        self.election_deadline_ms = self.now_ms + timeout;
    }

    pub(super) fn set_term(&mut self, term: Term) {
        assert!(term >= self.term, "term went backwards: {} -> {term}", self.term);
        assert!(term <= TERM_MAX, "term {term} beyond the largest allowed");
        if term > self.term {
            self.term = term;
            self.vote = None;
            self.announced_transfer = None;
            // Offered by a leader of an older term: whatever this replica accepts in the new
            // term must not be wiped out by installing it.
            self.snapshot_offered = None;
        }
    }

    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
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
            tracing::info!(term, ?leader, from = ?was, "became follower");
        }
    }

    /// Fails the reads a leader was confirming when it stops being leader.
    pub(super) fn abort_leader_state(&mut self) {
        if let RoleState::Leader(leader) = &mut self.role {
            leader.abort_reads(&mut self.outbox.reads);
        }
    }
}

/// The configurations `storage` holds: its snapshot's (or `initial`), then each one in the
/// log after the snapshot.
fn configurations_in<S: Storage>(storage: &S, id: NodeId, initial: Membership) -> Result<Configurations, StorageError> {
    let (base_index, base) = match storage.snapshot()? {
        Some(snapshot) => (snapshot.last_included.index, snapshot.membership),
        None => (0, initial),
    };
    let mut configs = Configurations::new(base_index, base, id);
    let mut previous = base_index;
    for entry in storage.configuration_entries(base_index)? {
        let Payload::Membership(membership) = entry.payload else {
            return Err(StorageError::Corrupt(format!("entry {} was listed as a configuration", entry.index)));
        };
        if entry.index <= previous {
            return Err(StorageError::Corrupt(format!("configuration entry {} is out of order", entry.index)));
        }
        if let Some(reason) = membership.invalid() {
            return Err(StorageError::Corrupt(format!("entry {} holds {reason}", entry.index)));
        }
        previous = entry.index;
        configs.appended(entry.index, membership, id);
    }
    Ok(configs)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    /// A replica that was given nothing to do hands out an empty `Ready`.
    #[test]
    fn a_replica_with_no_inputs_has_nothing_to_hand_out() {
        let mut replica = replica(1, 3, 1, &[1]);
        assert!(!replica.has_ready());
        assert_eq!(replica.ready().unwrap(), Ready::default());
    }

    /// Messages to another node, from this node itself or from node 0 are ignored before
    /// anything else looks at them; one from outside the configuration is handled (its
    /// sender may belong to a configuration this replica has not heard of yet).
    #[test]
    fn misaddressed_messages_are_ignored() {
        let mut replica = replica(1, 3, 1, &[1]);
        let request = MessageBody::VoteRequest { last_log: position(1, 1), leadership_transfer: false };
        for (from, to) in [(2, 3), (1, 1), (0, 1)] {
            replica.step(message(from, to, 2, request.clone())).unwrap();
        }
        assert!(!replica.has_ready());
        assert_eq!(replica.term(), 1);
        replica.step(message(4, 1, 2, request)).unwrap();
        assert_eq!(replica.term(), 2, "a newer term from a node outside the configuration is adopted");
        let ready = replica.ready().unwrap();
        assert!(
            ready
                .messages_after_persist
                .iter()
                .any(|m| m.to == 4 && m.body == MessageBody::VoteResponse { granted: true }),
            "{ready:?}"
        );
    }

    /// One `Ready` at a time: asking for the next before `advance` is a caller's bug.
    #[test]
    #[should_panic(expected = "ready() called again before advance()")]
    fn ready_again_before_advance_panics() {
        let mut replica = replica(1, 3, 1, &[1]);
        replica.ready().unwrap();
        replica.ready().unwrap();
    }

    /// `advance` checks that the storage holds what the `Ready` asked it to write: a caller
    /// that acknowledged unwritten entries would let the leader count them.
    #[test]
    #[should_panic(expected = "not where the last Ready left it")]
    fn advance_without_writing_the_entries_panics() {
        let mut replica = replica(1, 3, 1, &[1]);
        replica.step(message(2, 1, 1, append(position(1, 1), vec![entry(2, 1)], 0))).unwrap();
        replica.ready().unwrap();
        replica.advance().unwrap();
    }
}
