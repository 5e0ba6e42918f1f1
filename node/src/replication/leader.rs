//! The leader: replication to each follower with flow control (§3.5, `progress.rs`),
//! heartbeats, CheckQuorum (§6.2), and commitment (§3.6.2).
//!
//! A leader's handlers are methods of [`LeaderState`] that take a [`LeaderContext`]: the
//! rest of the replica they use (its log, its outbox, its settings), borrowed apart from
//! the role so that a handler holds both at once and never looks the role up again.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::config::ReplicaConfig;
use super::log::RaftLog;
use super::membership::Configurations;
use super::message::{AppendResult, Message, MessageBody};
use super::progress::{Progress, ProgressMode};
use super::read_index::PendingRead;
use super::replica::{Outbox, ProposeError, Replica, RoleState};
use super::snapshot::SNAPSHOT_ACK_TIMEOUT_MS;
use super::storage::{Storage, StorageError};
use super::transfer::Transfer;
use super::types::{Entry, INDEX_MAX, LogIndex, LogPosition, NodeId, Payload, Term};

/// Most entries a leader holds uncommitted before refusing proposals (backpressure).
const UNCOMMITTED_ENTRIES_MAX: u64 = 10_000;

pub(super) struct LeaderState {
    pub progress: BTreeMap<NodeId, Progress>,
    heartbeat_deadline_ms: u64,
    check_quorum_deadline_ms: u64,
    /// The last heartbeat round started; each ReadIndex waits for a round after it began.
    pub heartbeat_round: u64,
    /// Index of this term's no-op: until it commits, the commit index may be stale.
    pub noop_index: LogIndex,
    pub reads_waiting_for_noop: Vec<u64>,
    pub pending_reads: Vec<PendingRead>,
    pub transfer: Option<Transfer>,
    /// Entries or a new commit index may need sending.
    pub broadcast_needed: bool,
    /// Reads wait for a heartbeat round to start.
    pub heartbeat_requested: bool,
}

/// The parts of a replica a leader's handlers use besides its [`LeaderState`].
pub(super) struct LeaderContext<'a, S> {
    pub id: NodeId,
    pub term: Term,
    pub now_ms: u64,
    pub quorum: usize,
    pub config: &'a ReplicaConfig,
    pub log: &'a mut RaftLog<S>,
    pub outbox: &'a mut Outbox,
    /// The configurations the leader knows; the last is in effect.
    pub configs: &'a Configurations,
}

/// The last entry a leader may send `follower` now. Entries normally leave before the
/// leader's own write is durable (§10.2.1), but a configuration entry is held back in two
/// cases, both because a follower holding a configuration that removes it no longer
/// campaigns. If that follower then held the longest log (which the others cannot
/// outvote), no one could ever be elected:
/// - from everyone until it is durable here, or a leader that crashed and lost it would
///   leave it only on the follower it removes;
/// - from the member it removes until it commits, or a leader lost for good (a dead disk)
///   right after sending it could leave it only there. (With four voters, removing one,
///   the other two could not outvote it.) Once it commits, the removed member is sent it,
///   once (`sync_progress`).
fn sendable_through<S: Storage>(cx: &LeaderContext<'_, S>, follower: NodeId) -> LogIndex {
    let configuration = cx.configs.latest_index();
    let undurable = configuration > cx.log.persisted_index();
    let removes_follower = configuration > cx.log.committed() && !cx.configs.latest().contains(follower);
    if undurable || removes_follower { configuration - 1 } else { cx.log.last_index() }
}

impl<S> LeaderContext<'_, S> {
    /// Whether `id` is a voter of the configuration in effect: only voters are counted.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.configs.latest().is_voter(id)
    }
}

impl<S> LeaderContext<'_, S> {
    /// Queues a leader's message in its term: its appends and `TimeoutNow` leave before
    /// its own log is durable (see [`Outbox::send`]).
    pub fn send(&mut self, to: NodeId, body: MessageBody) {
        self.outbox.send(Message { from: self.id, to, term: self.term, body }, true);
    }
}

/// Whether a leader keeps its role after a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(super) enum Leadership {
    Kept,
    /// CheckQuorum found no majority: the caller steps down.
    Lost,
}

impl<S: Storage> Replica<S> {
    /// The role, and everything else a leader's handlers may use, borrowed apart.
    pub(super) fn role_and_leader_context(&mut self) -> (&mut RoleState, LeaderContext<'_, S>) {
        let quorum = self.quorum();
        let cx = LeaderContext {
            id: self.id,
            term: self.term,
            now_ms: self.now_ms,
            quorum,
            config: &self.config,
            log: &mut self.log,
            outbox: &mut self.outbox,
            configs: &self.configs,
        };
        (&mut self.role, cx)
    }

    /// The leader state and its context, if this replica leads.
    pub(super) fn leader_parts(&mut self) -> Option<(&mut LeaderState, LeaderContext<'_, S>)> {
        match self.role_and_leader_context() {
            (RoleState::Leader(leader), cx) => Some((leader, cx)),
            _ => None,
        }
    }

    /// Proposes a command. On the leader it is appended to the log and will be replicated;
    /// the returned position identifies it: the command committed iff the entry committed
    /// at that index has that term.
    pub fn propose(&mut self, command: Bytes) -> Result<LogPosition, ProposeError> {
        let leader_hint = self.leader;
        let Some((leader, mut cx)) = self.leader_parts() else {
            return Err(ProposeError::NotLeader { leader_hint });
        };
        if leader.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        if cx.log.last_index() - cx.log.committed() >= UNCOMMITTED_ENTRIES_MAX {
            return Err(ProposeError::Overloaded);
        }
        Ok(leader.append(&mut cx, Payload::Command(command)))
    }

    pub(super) fn handle_append_response(
        &mut self,
        from: NodeId,
        result: AppendResult,
        heartbeat_round: u64,
    ) -> Result<(), StorageError> {
        let Some((leader, mut cx)) = self.leader_parts() else { return Ok(()) };
        leader.handle_append_response(&mut cx, from, result, heartbeat_round)
    }

    /// Sends each follower what it is missing, as flow control allows, or at least the new
    /// commit index; and the transfer's `TimeoutNow` when it is due. Called with every
    /// `Ready`.
    pub(super) fn flush_broadcast(&mut self) -> Result<(), StorageError> {
        let Some((leader, mut cx)) = self.leader_parts() else { return Ok(()) };
        if leader.heartbeat_requested {
            leader.heartbeat_requested = false;
            leader.broadcast_heartbeat(&mut cx)?;
        }
        if leader.broadcast_needed {
            leader.broadcast_needed = false;
            let followers: Vec<NodeId> = leader.progress.keys().copied().collect();
            for follower in followers {
                leader.send_appends(&mut cx, follower)?;
            }
        }
        leader.maybe_send_timeout_now(&mut cx)
    }
}

impl LeaderState {
    /// The state of a replica that just won an election, with the no-op of its term
    /// appended (§3.6.2 / §6.4): a no-op of the new term lets earlier entries commit and
    /// tells the leader when its commit index is current.
    pub fn new<S: Storage>(cx: &mut LeaderContext<'_, S>) -> Result<Box<Self>, StorageError> {
        let next_index = cx.log.last_index() + 1;
        let mut leader = Box::new(Self {
            progress: BTreeMap::new(),
            heartbeat_deadline_ms: cx.now_ms,
            check_quorum_deadline_ms: cx.now_ms + cx.config.election_timeout_min_ms,
            heartbeat_round: 0,
            noop_index: next_index,
            reads_waiting_for_noop: Vec::new(),
            pending_reads: Vec::new(),
            transfer: None,
            broadcast_needed: true,
            heartbeat_requested: false,
        });
        // Every member it replicates to (see `sync_progress`), starting after its log.
        leader.sync_progress(cx, cx.log.last_index() + 1)?;
        let noop = leader.append(cx, Payload::Noop);
        assert_eq!(noop.index, leader.noop_index, "the no-op is the new leader's first entry");
        Ok(leader)
    }

    /// Appends an entry of this leader's term. Client proposals pass the backpressure check
    /// first; the new leader's no-op must not (a leader that inherits a long uncommitted
    /// tail commits it only through its no-op).
    pub(super) fn append<S: Storage>(&mut self, cx: &mut LeaderContext<'_, S>, payload: Payload) -> LogPosition {
        let position = LogPosition { term: cx.term, index: cx.log.last_index() + 1 };
        assert!(position.index <= INDEX_MAX, "the log reached the largest index");
        cx.log.append_new(Entry { term: position.term, index: position.index, payload });
        self.broadcast_needed = true;
        position
    }

    /// The leader's clock: CheckQuorum, the transfer's deadline, heartbeats.
    pub fn tick<S: Storage>(&mut self, cx: &mut LeaderContext<'_, S>) -> Result<Leadership, StorageError> {
        let now = cx.now_ms;
        if now >= self.check_quorum_deadline_ms {
            // CheckQuorum (§6.2): a leader that has not heard from a majority within an
            // election timeout may be on the minority side of a partition; it steps down
            // so that clients look for the real leader.
            let active = 1 + self.progress.iter().filter(|(id, p)| p.recently_active && cx.is_voter(**id)).count();
            if active < cx.quorum {
                tracing::info!(term = cx.term, active, "lost contact with a majority; stepping down");
                return Ok(Leadership::Lost);
            }
            for progress in self.progress.values_mut() {
                progress.recently_active = false;
            }
            self.check_quorum_deadline_ms = now + cx.config.election_timeout_min_ms;
        }
        self.expire_transfer(cx);
        if now >= self.heartbeat_deadline_ms {
            self.heartbeat_deadline_ms = now + cx.config.heartbeat_interval_ms;
            // A pipeline whose match index has not moved for half an election timeout,
            // while entries are outstanding, lost appends (the follower only answers what
            // arrives): probe again from what is known to match.
            let last_index = cx.log.last_index();
            let stall_ms = cx.config.election_timeout_min_ms / 2;
            for (&follower, progress) in self.progress.iter_mut() {
                if matches!(progress.mode, ProgressMode::Snapshot { .. }) && now >= progress.snapshot_deadline_ms {
                    tracing::info!(follower, "no acknowledgement of the snapshot sent; probing again");
                    progress.restart_probing();
                    progress.last_progress_ms = now;
                    continue;
                }
                let stalled = progress.mode == ProgressMode::Replicate
                    && progress.match_index < last_index
                    && now.saturating_sub(progress.last_progress_ms) >= stall_ms;
                if stalled {
                    tracing::debug!(follower, "replication stalled; probing again");
                    progress.restart_probing();
                    progress.last_progress_ms = now;
                }
            }
            self.broadcast_heartbeat(cx)?;
        }
        Ok(Leadership::Kept)
    }

    fn handle_append_response<S: Storage>(
        &mut self,
        cx: &mut LeaderContext<'_, S>,
        from: NodeId,
        result: AppendResult,
        heartbeat_round: u64,
    ) -> Result<(), StorageError> {
        let now = cx.now_ms;
        let Some(progress) = self.progress.get_mut(&from) else { return Ok(()) };
        progress.recently_active = true;
        progress.last_contact_ms = Some(now);
        progress.acknowledged_round = progress.acknowledged_round.max(heartbeat_round);
        if let (ProgressMode::Snapshot { index }, Some(delivered_round), AppendResult::Accepted { match_index }) =
            (progress.mode, progress.snapshot_delivered_round, result)
            && heartbeat_round >= delivered_round
            && match_index < index
        {
            // See `Progress::snapshot_delivered_round`: send it again.
            tracing::info!(follower = from, "follower lost the snapshot before installing it; probing again");
            progress.restart_probing();
        }
        match result {
            AppendResult::Accepted { match_index } => {
                if progress.accepted(match_index, now) {
                    self.maybe_commit(cx)?;
                } else if progress.mode == ProgressMode::Replicate
                    && progress.inflight.len() >= cx.config.inflight_appends_max
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
                        let (index, found) = cx.log.last_at_or_below_with_term_at_most(rejected_previous, term)?;
                        if found == term { index + 1 } else { first_index_of_term }
                    }
                };
                if progress.rejected(rejected_previous, new_next) {
                    tracing::debug!(follower = from, next = progress.next_index, "probing follower");
                }
            }
        }
        self.broadcast_needed = true;
        self.release_confirmed_reads(cx);
        Ok(())
    }

    /// Commits the highest index stored on a majority, if it is of the current term
    /// (§3.6.2, figure 3.7: entries of older terms commit only indirectly).
    pub fn maybe_commit<S: Storage>(&mut self, cx: &mut LeaderContext<'_, S>) -> Result<(), StorageError> {
        assert!(cx.is_voter(cx.id), "a leader is a voter of its configuration (it never removes itself)");
        let mut matched: Vec<LogIndex> =
            self.progress.iter().filter(|(id, _)| cx.is_voter(**id)).map(|(_, p)| p.match_index).collect();
        matched.push(cx.log.persisted_index());
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let needed = if crate::bugs::active(crate::bugs::Bug::CommitWithoutQuorum) {
            cx.quorum.saturating_sub(1).max(1)
        } else {
            cx.quorum
        };
        let majority_index = matched[needed - 1];
        if majority_index <= cx.log.committed() || cx.log.term(majority_index)? != Some(cx.term) {
            return Ok(());
        }
        let previous_commit = cx.log.committed();
        cx.log.commit_to(majority_index);
        if cx.configs.logged_between(previous_commit, majority_index) {
            // A configuration committed: members it removed are no longer replicated to.
            self.sync_progress(cx, cx.log.last_index() + 1)?;
        }
        let noop_committed = majority_index >= self.noop_index;
        self.broadcast_needed = true;
        if noop_committed && !self.reads_waiting_for_noop.is_empty() {
            let waiting = std::mem::take(&mut self.reads_waiting_for_noop);
            for context in waiting {
                self.read_index(cx, context);
            }
        }
        Ok(())
    }

    pub(super) fn send_appends<S: Storage>(
        &mut self,
        cx: &mut LeaderContext<'_, S>,
        follower: NodeId,
    ) -> Result<(), StorageError> {
        let last_index = sendable_through(cx, follower);
        let commit = cx.log.committed();
        let round = self.heartbeat_round;
        let transfer_target = self.transfer_target();
        loop {
            let progress = self.progress.get_mut(&follower).expect("follower has progress");
            if !progress.can_send(cx.config.inflight_appends_max) {
                return Ok(());
            }
            if progress.next_index > last_index {
                if progress.commit_sent < commit {
                    self.send_heartbeat_to(cx, follower, round)?;
                }
                return Ok(());
            }
            if progress.next_index < cx.log.first_index()? {
                // What the follower needs next (or the entry before it, for the consistency
                // check) was compacted away: only a snapshot can bring it up to date.
                return self.send_snapshot(cx, follower);
            }
            let previous_index = progress.next_index - 1;
            let previous_term = cx.log.term(previous_index)?.expect("previous index is within the leader's log");
            let entries = cx.log.entries(
                previous_index + 1,
                (previous_index + 1 + cx.config.append_entries_max as LogIndex).min(last_index + 1),
                cx.config.append_bytes_max,
            )?;
            let sent_through = entries.last().map_or(previous_index, |e| e.index);
            progress.sent(sent_through);
            progress.commit_sent = commit;
            let probing = progress.mode == ProgressMode::Probe;
            cx.send(
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

    /// The leader's own configuration entry became durable: what waited for it may go.
    pub(super) fn configuration_persisted(&mut self) {
        self.broadcast_needed = true;
    }

    /// An empty append after what the follower is known to hold: it always matches, so it
    /// never disturbs pipelined appends, and it carries the commit index and the round.
    pub(super) fn send_heartbeat_to<S: Storage>(
        &mut self,
        cx: &mut LeaderContext<'_, S>,
        follower: NodeId,
        round: u64,
    ) -> Result<(), StorageError> {
        let commit = cx.log.committed();
        let transfer_target = self.transfer_target();
        let progress = self.progress.get_mut(&follower).expect("follower has progress");
        progress.commit_sent = commit;
        // After what the follower is known to hold, if the leader still knows that entry's
        // term; else after the start of the log, which every log matches (the follower
        // answers with its commit index). Either way it never disturbs what is in flight.
        let previous = match cx.log.term(progress.match_index)? {
            Some(term) => LogPosition { term, index: progress.match_index },
            None => LogPosition::ZERO,
        };
        cx.send(
            follower,
            MessageBody::AppendRequest {
                previous,
                entries: Vec::new(),
                leader_commit: commit,
                heartbeat_round: round,
                transfer_target,
            },
        );
        Ok(())
    }

    /// Sends `follower` the latest snapshot, which covers everything compacted, and waits
    /// for its acknowledgement before sending it anything but heartbeats.
    fn send_snapshot<S: Storage>(
        &mut self,
        cx: &mut LeaderContext<'_, S>,
        follower: NodeId,
    ) -> Result<(), StorageError> {
        let first = cx.log.first_index()?;
        let snapshot = cx.log.storage().snapshot()?.expect("a compacted log has a snapshot covering what it dropped");
        assert!(
            snapshot.last_included.index + 1 >= first,
            "the snapshot through {} does not cover the log compacted before {first}",
            snapshot.last_included.index
        );
        let progress = self.progress.get_mut(&follower).expect("follower has progress");
        progress.snapshot_sent(snapshot.last_included.index, cx.now_ms + SNAPSHOT_ACK_TIMEOUT_MS);
        tracing::info!(follower, index = snapshot.last_included.index, "sending a snapshot");
        cx.send(follower, MessageBody::InstallSnapshot { snapshot });
        Ok(())
    }

    /// Starts a new heartbeat round to every follower.
    fn broadcast_heartbeat<S: Storage>(&mut self, cx: &mut LeaderContext<'_, S>) -> Result<(), StorageError> {
        self.heartbeat_round += 1;
        let round = self.heartbeat_round;
        let followers: Vec<NodeId> = self.progress.keys().copied().collect();
        for follower in followers {
            // A probing follower with an append outstanding gets the heartbeat anyway: it
            // is how a lost probe is retried.
            self.progress.get_mut(&follower).expect("follower has progress").probe_outstanding = false;
            self.send_heartbeat_to(cx, follower, round)?;
        }
        self.broadcast_needed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::ready::{Ready, SoftState};
    use super::super::test_support::*;
    use super::super::types::Role;
    use super::*;

    fn noop(index: LogIndex, term: Term) -> Entry {
        Entry { term, index, payload: Payload::Noop }
    }

    /// §3.6.2 and §6.4: a candidate that wins appends a no-op of its term and sends it to
    /// every follower at once, in `messages`: a leader's appends need nothing of its own
    /// durable (it counts its own log toward commitment only once durable, §10.2.1).
    #[test]
    fn new_leader_appends_a_noop_and_sends_it_before_persisting() {
        let mut replica = replica(1, 3, 1, &[1]);
        replica.tick(ELECTION_TIMEOUT_MAX_MS).unwrap();
        handle_ready(&mut replica);
        replica.step(message(2, 1, 2, MessageBody::PreVoteResponse { granted: true })).unwrap();
        handle_ready(&mut replica);
        replica.step(message(2, 1, 2, MessageBody::VoteResponse { granted: true })).unwrap();
        let append = append(position(1, 1), vec![noop(2, 2)], 0);
        assert_eq!(
            replica.ready().unwrap(),
            Ready {
                entries: vec![noop(2, 2)],
                messages: vec![message(1, 2, 2, append.clone()), message(1, 3, 2, append)],
                soft_state: Some(SoftState { role: Role::Leader, term: 2, leader: Some(1) }),
                ..Ready::default()
            }
        );
    }

    /// §3.6.2, figure 3.7: an entry of an earlier term stored on a majority is not
    /// committed by counting; it commits with the first entry of the current term that
    /// reaches a majority.
    #[test]
    fn earlier_term_entries_commit_only_with_a_current_term_entry() {
        let mut replica = leader(2, &[1, 2]);
        replica.step(message(2, 1, 3, accepted(2, 0))).unwrap();
        assert_eq!(
            replica.ready().unwrap(),
            Ready { messages: vec![message(1, 2, 3, append(position(2, 2), vec![noop(3, 3)], 0))], ..Ready::default() },
            "entry 2 (term 2) is on a majority, but not committed"
        );
        replica.advance().unwrap();
        replica.step(message(2, 1, 3, accepted(3, 0))).unwrap();
        assert_eq!(
            replica.ready().unwrap(),
            Ready {
                messages: vec![message(1, 2, 3, append(position(3, 3), vec![], 3))],
                committed_entries: vec![entry(1, 1), entry(2, 2), noop(3, 3)],
                ..Ready::default()
            }
        );
    }

    /// §3.5 (the optimization of §5.3 of the Raft paper): a rejection naming the
    /// follower's conflicting term, which the leader does not have, sends the next probe
    /// to the first index of that term: the whole term is skipped in one round trip. (Here
    /// the follower holds term 2 from index 2 on; the leader's last entry of a term up to 2
    /// is entry 2, so resuming after it would send one entry too few.)
    #[test]
    fn rejection_hint_skips_the_followers_whole_conflicting_term() {
        let mut replica = leader(3, &[1, 1, 3, 3]);
        let result = AppendResult::Rejected { rejected_previous: 4, conflict_term: Some(2), first_index_of_term: 2 };
        replica.step(message(2, 1, 4, MessageBody::AppendResponse { result, heartbeat_round: 0 })).unwrap();
        let entries = vec![entry(2, 1), entry(3, 3), entry(4, 3), noop(5, 4)];
        assert_eq!(
            replica.ready().unwrap(),
            Ready { messages: vec![message(1, 2, 4, append(position(1, 1), entries, 0))], ..Ready::default() }
        );
    }

    /// §3.5: when the leader does hold entries of the follower's conflicting term, the
    /// next probe resumes right after its last one, where the two logs may still agree.
    #[test]
    fn rejection_hint_resumes_after_the_leaders_last_entry_of_the_conflicting_term() {
        let mut replica = leader(3, &[1, 2, 2, 3]);
        let result = AppendResult::Rejected { rejected_previous: 4, conflict_term: Some(2), first_index_of_term: 2 };
        replica.step(message(2, 1, 4, MessageBody::AppendResponse { result, heartbeat_round: 0 })).unwrap();
        let entries = vec![entry(4, 3), noop(5, 4)];
        assert_eq!(
            replica.ready().unwrap(),
            Ready { messages: vec![message(1, 2, 4, append(position(3, 2), entries, 0))], ..Ready::default() }
        );
    }

    /// §3.4: a leader sends a round of heartbeats every heartbeat interval, each after the
    /// follower's known match point and carrying the commit index and the round number.
    #[test]
    fn heartbeats_go_to_every_follower_each_interval() {
        let mut replica = leader_with_followers_caught_up(1, &[1]);
        let now = ELECTION_TIMEOUT_MAX_MS;
        replica.tick(now).unwrap();
        handle_ready(&mut replica);
        replica.tick(now + HEARTBEAT_INTERVAL_MS - 1).unwrap();
        assert!(!replica.has_ready(), "no heartbeat before the interval is up");
        replica.tick(now + HEARTBEAT_INTERVAL_MS).unwrap();
        let heartbeat = MessageBody::AppendRequest {
            previous: position(2, 2),
            entries: vec![],
            leader_commit: 2,
            heartbeat_round: 2,
            transfer_target: None,
        };
        assert_eq!(
            replica.ready().unwrap(),
            Ready {
                messages: vec![message(1, 2, 2, heartbeat.clone()), message(1, 3, 2, heartbeat)],
                ..Ready::default()
            }
        );
    }

    /// §6.2 (CheckQuorum): a leader that heard from no majority within an election timeout
    /// steps down, in its term, knowing no leader.
    #[test]
    fn leader_that_hears_from_no_majority_steps_down() {
        let mut replica = leader(1, &[1]);
        replica.tick(ELECTION_TIMEOUT_MAX_MS + ELECTION_TIMEOUT_MIN_MS).unwrap();
        assert_eq!(
            replica.ready().unwrap(),
            Ready { soft_state: Some(SoftState { role: Role::Follower, term: 2, leader: None }), ..Ready::default() }
        );
    }
}
