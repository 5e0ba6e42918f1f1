//! Membership changes (dissertation §4.1-§4.2): one server at a time.
//!
//! A configuration takes effect on every replica the moment its entry is appended to the
//! replica's log, committed or not, and a truncated entry takes its configuration with it.
//! Changing a single server at a time makes any majority of the old configuration overlap
//! any majority of the new one, so no two leaders can be elected in one term across the
//! change. Two rules keep that true (§4.1, and the fix published on raft-dev in 2015): a
//! leader proposes a change only once its previous one committed, and only once an entry
//! of its own term (its no-op) committed.
//!
//! A new member joins as a learner: it receives the log (and a snapshot if the log was
//! compacted) but neither votes nor counts, so adding it costs no availability while it
//! catches up (§4.2.1). It is promoted to voter only once its log is close to the
//! leader's. A leader never removes itself: it hands leadership over first (§4.2.2's
//! stepping down is then never needed). While a removal is uncommitted the leader keeps
//! replicating to the member being removed, so that it normally learns of its removal.

use bytes::Bytes;

use super::leader::LeaderState;
use super::replica::Replica;
use super::storage::{Storage, StorageError};
use super::types::{LogIndex, LogPosition, Membership, NodeId, Payload};

/// How far behind the leader's last entry a learner may be and still be promoted: close
/// enough to catch up within a few appends, so that the new voter does not hold up commits.
pub const PROMOTION_LAG_MAX: LogIndex = 1024;

/// One change to a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipChange {
    /// A new member, as a learner.
    AddLearner(NodeId),
    /// A learner that caught up becomes a voter.
    Promote(NodeId),
    /// A voter or learner leaves.
    Remove(NodeId),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("not the leader (leader: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("leadership is being transferred; retry on the new leader")]
    TransferInProgress,
    #[error("another membership change (or the new leader's first entry) has not committed yet; retry shortly")]
    ChangeInProgress,
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    #[error("node {0} is not a member")]
    NotAMember(NodeId),
    #[error("node {0} is not a learner")]
    NotALearner(NodeId),
    #[error(
        "learner {id} is not caught up (its log matches through {match_index}, the leader's ends at {last_index}); retry once it is"
    )]
    LearnerBehind { id: NodeId, match_index: LogIndex, last_index: LogIndex },
    #[error("node {0} is the leader: transfer leadership to another voter before removing it")]
    RemovingLeader(NodeId),
    #[error("{0}")]
    Invalid(&'static str),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What part a replica plays in the configuration in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRole {
    Voter,
    Learner,
    /// Not a member, and never was as far as this replica knows: waiting to be added.
    Joining,
    /// Removed by a configuration that has not committed yet (it may still be undone).
    Leaving,
    /// Removed by a committed configuration: this replica takes no further part.
    Removed,
}

/// The configurations a replica knows of: the one in effect at the start of its log (its
/// snapshot's, or the cluster's first), and each one its log holds after that.
#[derive(Debug, Clone)]
pub(super) struct Configurations {
    base_index: LogIndex,
    base: Membership,
    logged: Vec<(LogIndex, Membership)>,
    /// Whether some configuration this replica held named it: one that names it no more
    /// means it was removed, not that it is still waiting to join. (A removed replica that
    /// restarts from a snapshot taken after its removal knows no such configuration, and
    /// reports itself as joining: it still never campaigns.)
    was_member: bool,
}

impl Configurations {
    pub fn new(base_index: LogIndex, base: Membership, id: NodeId) -> Self {
        let was_member = base.contains(id);
        Self { base_index, base, logged: Vec::new(), was_member }
    }

    pub fn base_index(&self) -> LogIndex {
        self.base_index
    }

    /// The configuration in effect: the last one appended.
    pub fn latest(&self) -> &Membership {
        self.logged.last().map_or(&self.base, |(_, membership)| membership)
    }

    /// The index of the entry holding [`Configurations::latest`] (the base's index for it).
    pub fn latest_index(&self) -> LogIndex {
        self.logged.last().map_or(self.base_index, |(index, _)| *index)
    }

    /// The configuration in effect once every entry through `index` is applied. `index`
    /// must not be before the base (earlier ones are forgotten).
    pub fn at(&self, index: LogIndex) -> &Membership {
        assert!(index >= self.base_index, "configuration at {index} asked, before the known start {}", self.base_index);
        self.logged.iter().rev().find(|(at, _)| *at <= index).map_or(&self.base, |(_, membership)| membership)
    }

    /// Whether a configuration entry lies in `after + 1..=through`.
    pub fn logged_between(&self, after: LogIndex, through: LogIndex) -> bool {
        self.logged.iter().any(|(at, _)| *at > after && *at <= through)
    }

    pub fn appended(&mut self, index: LogIndex, membership: Membership, id: NodeId) {
        assert!(index > self.latest_index(), "configuration at {index} appended after one at {}", self.latest_index());
        self.was_member |= membership.contains(id);
        self.logged.push((index, membership));
    }

    /// The log lost every entry from `index` on (a conflicting suffix): so do they.
    pub fn truncated_from(&mut self, index: LogIndex) {
        assert!(index > self.base_index, "truncation at {index} into the snapshot at {}", self.base_index);
        self.logged.retain(|(at, _)| *at < index);
    }

    /// The log was replaced by a snapshot through `index`.
    pub fn reset(&mut self, index: LogIndex, membership: Membership, id: NodeId) {
        self.was_member |= membership.contains(id);
        self.base_index = index;
        self.base = membership;
        self.logged.clear();
    }

    pub fn role_of(&self, id: NodeId, committed: LogIndex) -> MemberRole {
        let latest = self.latest();
        if latest.is_voter(id) {
            MemberRole::Voter
        } else if latest.learners.contains(&id) {
            MemberRole::Learner
        } else if !self.was_member {
            MemberRole::Joining
        } else if self.latest_index() <= committed {
            MemberRole::Removed
        } else {
            MemberRole::Leaving
        }
    }
}

impl<S: Storage> Replica<S> {
    /// The configuration in effect (the last appended, committed or not).
    pub fn membership(&self) -> &Membership {
        self.configs.latest()
    }

    /// The configuration in effect once everything through `index` is applied: what a
    /// snapshot through `index` records. None if `index` precedes the start of what this
    /// replica knows (its last installed snapshot).
    pub fn membership_at(&self, index: LogIndex) -> Option<Membership> {
        (index >= self.configs.base_index()).then(|| self.configs.at(index).clone())
    }

    /// What part this replica plays in the configuration in effect.
    pub fn member_role(&self) -> MemberRole {
        self.configs.role_of(self.id, self.log.committed())
    }

    /// Proposes one change to the configuration, with the `context` the new configuration
    /// carries (see [`Membership::context`]). The change is in effect as soon as it is
    /// appended; it is done when the returned position commits.
    pub fn propose_membership(
        &mut self,
        change: MembershipChange,
        context: Bytes,
    ) -> Result<LogPosition, MembershipError> {
        let leader_hint = self.leader;
        let own_id = self.id;
        let latest_index = self.configs.latest_index();
        let mut membership = self.configs.latest().clone();
        let Some((leader, mut cx)) = self.leader_parts() else {
            return Err(MembershipError::NotLeader { leader_hint });
        };
        if leader.transfer.is_some() {
            return Err(MembershipError::TransferInProgress);
        }
        // §4.1: one change at a time, each committed before the next; and (raft-dev, 2015)
        // none before this leader's no-op commits, or a change appended by a deposed leader
        // and never committed could combine with this one into two disjoint majorities.
        let committed = cx.log.committed();
        if latest_index > committed || leader.noop_index > committed {
            return Err(MembershipError::ChangeInProgress);
        }
        match change {
            MembershipChange::AddLearner(id) => {
                if membership.contains(id) {
                    return Err(MembershipError::AlreadyMember(id));
                }
                membership.learners.insert(id);
            }
            MembershipChange::Promote(id) => {
                if !membership.learners.contains(&id) {
                    return Err(MembershipError::NotALearner(id));
                }
                let match_index = leader.progress.get(&id).map_or(0, |progress| progress.match_index);
                let last_index = cx.log.last_index();
                if match_index + PROMOTION_LAG_MAX < last_index {
                    return Err(MembershipError::LearnerBehind { id, match_index, last_index });
                }
                membership.learners.remove(&id);
                membership.voters.insert(id);
            }
            MembershipChange::Remove(id) => {
                if id == own_id {
                    return Err(MembershipError::RemovingLeader(id));
                }
                if !membership.voters.remove(&id) && !membership.learners.remove(&id) {
                    return Err(MembershipError::NotAMember(id));
                }
            }
        }
        membership.context = context;
        if let Some(reason) = membership.invalid() {
            return Err(MembershipError::Invalid(reason));
        }
        tracing::info!(term = cx.term, ?change, voters = ?membership.voters, learners = ?membership.learners, "proposing a membership change");
        let position = leader.append(&mut cx, Payload::Membership(membership.clone()));
        self.configs.appended(position.index, membership, own_id);
        if let Some((leader, mut cx)) = self.leader_parts() {
            // A member added now is first sent this very entry: the consistency check on
            // the one before it tells the leader where the new member's log ends (there
            // must be an entry to refuse, or a new member with an empty log would only
            // ever be sent heartbeats).
            leader.sync_progress(&mut cx, position.index)?;
        }
        Ok(position)
    }

    /// Notes the configurations among entries this replica's log now holds from index
    /// `written_from` on (the entries the leader sent, `entries` starting anywhere before).
    pub(super) fn configurations_written(
        &mut self,
        written_from: Option<LogIndex>,
        configurations: Vec<(LogIndex, Membership)>,
    ) {
        let Some(from) = written_from else { return };
        self.configs.truncated_from(from);
        for (index, membership) in configurations.into_iter().filter(|(index, _)| *index >= from) {
            self.configs.appended(index, membership, self.id);
        }
    }

    /// Whether this replica may stand for election: only a voter of the configuration in
    /// effect (a learner, a node waiting to join and a removed one never do).
    pub(super) fn may_campaign(&self) -> bool {
        self.configs.latest().is_voter(self.id)
    }

    /// The voters other than this replica: whom a candidate asks for votes.
    pub(super) fn voting_peers(&self) -> Vec<NodeId> {
        self.configs.latest().voters.iter().copied().filter(|&voter| voter != self.id).collect()
    }
}

impl LeaderState {
    /// Keeps a progress entry for every member this leader replicates to: each member of
    /// the configuration in effect, and each member of the committed one, so that a member
    /// being removed hears of it. A member whose removal committed is sent it once (it was
    /// held back until then: see `leader::sendable_through`) with the commit index, or a
    /// heartbeat if it cannot take it now; with that it normally learns that it was
    /// removed. Then nothing more. A
    /// member new to this leader is next sent entry `next_index`.
    pub fn sync_progress<S: Storage>(
        &mut self,
        cx: &mut super::leader::LeaderContext<'_, S>,
        next_index: LogIndex,
    ) -> Result<(), StorageError> {
        let committed = cx.log.committed();
        let latest = cx.configs.latest();
        let committed_config = cx.configs.at(committed.max(cx.configs.base_index()));
        let mut wanted: Vec<NodeId> = latest.members().chain(committed_config.members()).collect();
        wanted.retain(|&member| member != cx.id);
        wanted.sort_unstable();
        wanted.dedup();
        let gone: Vec<NodeId> = self.progress.keys().copied().filter(|id| !wanted.contains(id)).collect();
        for member in gone {
            self.send_appends(cx, member)?;
            let sent_removal = self.progress.get(&member).is_some_and(|p| p.next_index > cx.configs.latest_index());
            if !sent_removal {
                let round = self.heartbeat_round;
                self.send_heartbeat_to(cx, member, round)?;
            }
            tracing::info!(member, "member removed; no longer replicating to it");
            self.progress.remove(&member);
        }
        for member in wanted {
            self.progress.entry(member).or_insert_with(|| {
                tracing::info!(member, "replicating to a new member");
                super::progress::Progress::new(next_index, cx.now_ms)
            });
        }
        self.broadcast_needed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::message::MessageBody;
    use super::super::ready::Ready;
    use super::super::test_support::*;
    use super::super::types::{Entry, HardState, Role};
    use super::*;
    use crate::replication::MemoryStorage;

    fn change(replica: &mut Replica<MemoryStorage>, change: MembershipChange) -> Result<LogPosition, MembershipError> {
        replica.propose_membership(change, Bytes::new())
    }

    fn configuration(index: LogIndex, term: u64, membership: Membership) -> Entry {
        Entry { term, index, payload: Payload::Membership(membership) }
    }

    /// Whether `ready` sends `to` an append carrying a configuration.
    fn sends_configuration_to(ready: &Ready, to: NodeId) -> bool {
        ready.messages.iter().chain(&ready.messages_after_persist).any(|m| {
            m.to == to
                && matches!(&m.body, MessageBody::AppendRequest { entries, .. }
                    if entries.iter().any(|e| matches!(e.payload, Payload::Membership(_))))
        })
    }

    /// A leader's configuration entry leaves only once durable on the leader (other
    /// entries leave at once): see `leader::sendable_through`.
    #[test]
    fn a_configuration_leaves_the_leader_only_once_durable() {
        let mut leader = leader_with_followers_caught_up(1, &[1]);
        change(&mut leader, MembershipChange::Remove(3)).unwrap();
        let command = leader.propose(Bytes::from_static(b"after")).unwrap();
        let ready = handle_ready(&mut leader);
        assert!(ready.entries.iter().any(|e| matches!(e.payload, Payload::Membership(_))));
        for follower in [2, 3] {
            assert!(!sends_configuration_to(&ready, follower), "sent before it was durable: {ready:?}");
        }
        let ready = handle_ready(&mut leader);
        assert!(sends_configuration_to(&ready, 2), "not sent once durable: {ready:?}");
        // (Node 3, the member it removes, is sent it once it commits.)
        assert!(!sends_configuration_to(&ready, 3), "{ready:?}");
        let sent_command = ready.messages.iter().any(|m| {
            matches!(&m.body, MessageBody::AppendRequest { entries, .. } if entries.iter().any(|e| e.index == command.index))
        });
        assert!(sent_command, "the entries after it follow: {ready:?}");
    }

    /// The leader's `Ready` once `follower` acknowledged everything through `index`.
    fn ack(replica: &mut Replica<MemoryStorage>, follower: NodeId, index: LogIndex) -> Ready {
        let term = replica.term();
        replica.step(message(follower, 1, term, accepted(index, 0))).unwrap();
        handle_ready(replica)
    }

    /// §4.1 and the raft-dev fix of 2015: no change before the leader's no-op commits, and
    /// one change at a time, each committed before the next.
    #[test]
    fn changes_wait_for_the_noop_and_for_each_other() {
        let mut leader = leader(1, &[1]);
        assert_eq!(change(&mut leader, MembershipChange::AddLearner(4)), Err(MembershipError::ChangeInProgress));
        let noop = leader.last_index();
        ack(&mut leader, 2, noop);
        let added = change(&mut leader, MembershipChange::AddLearner(4)).unwrap();
        assert_eq!(leader.membership().learners, [4].into(), "in effect as soon as appended");
        assert_eq!(change(&mut leader, MembershipChange::AddLearner(5)), Err(MembershipError::ChangeInProgress));
        handle_ready(&mut leader);
        ack(&mut leader, 2, added.index);
        assert_eq!(leader.commit_index(), added.index);
        assert_eq!(change(&mut leader, MembershipChange::AddLearner(4)), Err(MembershipError::AlreadyMember(4)));
        assert!(change(&mut leader, MembershipChange::AddLearner(5)).is_ok());
    }

    /// What cannot be done is refused with the reason, and nothing is appended.
    #[test]
    fn impossible_changes_are_refused() {
        let mut leader = leader_with_followers_caught_up(1, &[1]);
        let last = leader.last_index();
        assert_eq!(change(&mut leader, MembershipChange::Remove(1)), Err(MembershipError::RemovingLeader(1)));
        assert_eq!(change(&mut leader, MembershipChange::Remove(9)), Err(MembershipError::NotAMember(9)));
        assert_eq!(change(&mut leader, MembershipChange::Promote(2)), Err(MembershipError::NotALearner(2)));
        assert_eq!(
            change(&mut leader, MembershipChange::AddLearner(0)),
            Err(MembershipError::Invalid("a configuration naming node 0 (ids start at 1)"))
        );
        assert_eq!(leader.last_index(), last);
        let mut follower = replica(2, 3, 1, &[1]);
        assert_eq!(
            change(&mut follower, MembershipChange::AddLearner(4)),
            Err(MembershipError::NotLeader { leader_hint: None })
        );
    }

    /// A learner receives the log but is not counted: its acknowledgement alone commits
    /// nothing, a voter's does.
    #[test]
    fn a_learner_is_replicated_to_but_not_counted() {
        let mut leader = leader_with_followers_caught_up(1, &[1]);
        let added = change(&mut leader, MembershipChange::AddLearner(4)).unwrap();
        let ready = handle_ready(&mut leader);
        let to_learner =
            ready.messages.iter().any(|m| m.to == 4 && matches!(m.body, MessageBody::AppendRequest { .. }));
        assert!(to_learner, "the new learner is contacted: {ready:?}");
        ack(&mut leader, 4, added.index);
        assert!(leader.commit_index() < added.index, "a learner's acknowledgement counted");
        ack(&mut leader, 3, added.index);
        assert_eq!(leader.commit_index(), added.index);
        assert_eq!(leader.membership().quorum(), 2);
    }

    /// A learner is promoted only once its log is within PROMOTION_LAG_MAX of the leader's.
    #[test]
    fn promotion_waits_for_the_learner_to_catch_up() {
        let long_log = vec![1; PROMOTION_LAG_MAX as usize + 50];
        let mut leader = leader_with_followers_caught_up(1, &long_log);
        let added = change(&mut leader, MembershipChange::AddLearner(4)).unwrap();
        handle_ready(&mut leader);
        ack(&mut leader, 2, added.index);
        let behind = change(&mut leader, MembershipChange::Promote(4));
        assert_eq!(behind, Err(MembershipError::LearnerBehind { id: 4, match_index: 0, last_index: added.index }));
        ack(&mut leader, 4, added.index - PROMOTION_LAG_MAX);
        let promoted = change(&mut leader, MembershipChange::Promote(4)).unwrap();
        assert_eq!(leader.membership().voters, [1, 2, 3, 4].into());
        assert_eq!(leader.membership().quorum(), 3);
        handle_ready(&mut leader);
        ack(&mut leader, 2, promoted.index);
        assert!(leader.commit_index() < promoted.index, "two of four voters made a majority");
        ack(&mut leader, 4, promoted.index);
        assert_eq!(leader.commit_index(), promoted.index);
    }

    /// While its removal is uncommitted the member being removed still gets the log; once
    /// it commits, the member gets one last heartbeat (carrying the commit) and no more.
    #[test]
    fn a_removed_member_hears_of_its_removal_and_then_nothing() {
        let mut leader = leader_with_followers_caught_up(1, &[1]);
        let removal = change(&mut leader, MembershipChange::Remove(3)).unwrap();
        assert_eq!(leader.membership().voters, [1, 2].into());
        handle_ready(&mut leader);
        let ready = handle_ready(&mut leader);
        assert!(sends_configuration_to(&ready, 2), "{ready:?}");
        assert!(!sends_configuration_to(&ready, 3), "the removal reached the member it removes uncommitted: {ready:?}");
        let ready = ack(&mut leader, 2, removal.index);
        assert_eq!(leader.commit_index(), removal.index);
        let last_word = ready.messages.iter().find(|m| m.to == 3).expect("a last append to the removed member");
        let MessageBody::AppendRequest { entries, leader_commit, .. } = &last_word.body else {
            panic!("{last_word:?}")
        };
        assert_eq!(*leader_commit, removal.index);
        assert_eq!(entries.last().map(|e| e.index), Some(removal.index), "it carries the removal: {last_word:?}");
        assert!(!leader.status().followers.contains_key(&3));
        for now_ms in (ELECTION_TIMEOUT_MAX_MS..ELECTION_TIMEOUT_MAX_MS + 500).step_by(HEARTBEAT_INTERVAL_MS as usize) {
            leader.tick(now_ms).unwrap();
            let ready = handle_ready(&mut leader);
            assert!(ready.messages.iter().chain(&ready.messages_after_persist).all(|m| m.to != 3), "{ready:?}");
            // Node 2 keeps answering, so the leader keeps its majority of two.
            leader.step(message(2, 1, 2, accepted(removal.index, 0))).unwrap();
        }
        assert_eq!(leader.role(), Role::Leader);
    }

    /// A follower's configuration follows its log: in effect when appended, gone when the
    /// entry is truncated by a newer leader's conflicting one.
    #[test]
    fn a_configuration_is_in_effect_when_appended_and_undone_by_truncation() {
        let mut follower = replica(2, 3, 1, &[1]);
        let with_learner = Membership { learners: [4].into(), ..Membership::with_voters([1, 2, 3]) };
        let entries = vec![configuration(2, 1, with_learner.clone())];
        follower.step(message(1, 2, 1, append(position(1, 1), entries, 1))).unwrap();
        assert_eq!(follower.membership(), &with_learner);
        handle_ready(&mut follower);
        // Node 3 leads term 2 without the change, and its entry 2 replaces it.
        follower.step(message(3, 2, 2, append(position(1, 1), vec![entry(2, 2)], 1))).unwrap();
        assert_eq!(follower.membership(), &Membership::with_voters([1, 2, 3]));
        handle_ready(&mut follower);
        assert_eq!(follower.member_role(), MemberRole::Voter);
    }

    /// A learner and a removed member never campaign, however long no leader is heard;
    /// a removed member knows it was removed once its removal commits.
    #[test]
    fn learners_and_removed_members_do_not_campaign() {
        let mut learner =
            Replica::new(4, Membership::with_voters([1, 2, 3]), config(), MemoryStorage::new(), 0, 1, 0).unwrap();
        assert_eq!(learner.member_role(), MemberRole::Joining);
        let with_learner = Membership { learners: [4].into(), ..Membership::with_voters([1, 2, 3]) };
        let entries = vec![configuration(1, 1, with_learner)];
        learner.step(message(1, 4, 1, append(position(0, 0), entries, 1))).unwrap();
        handle_ready(&mut learner);
        assert_eq!(learner.member_role(), MemberRole::Learner);

        let mut removed = replica(3, 3, 1, &[1]);
        let entries = vec![configuration(2, 1, Membership::with_voters([1, 2]))];
        removed.step(message(1, 3, 1, append(position(1, 1), entries, 1))).unwrap();
        handle_ready(&mut removed);
        assert_eq!(removed.member_role(), MemberRole::Leaving, "removed by an entry not yet committed");
        removed.step(message(1, 3, 1, append(position(2, 1), vec![], 2))).unwrap();
        handle_ready(&mut removed);
        assert_eq!(removed.member_role(), MemberRole::Removed);

        for replica in [&mut learner, &mut removed] {
            for now_ms in (0..10 * ELECTION_TIMEOUT_MAX_MS).step_by(HEARTBEAT_INTERVAL_MS as usize) {
                replica.tick(now_ms).unwrap();
                let ready = handle_ready(replica);
                assert!(ready.messages.is_empty() && ready.messages_after_persist.is_empty(), "{ready:?}");
            }
            assert_eq!((replica.role(), replica.term()), (Role::Follower, 1));
        }
    }

    /// A restarted replica finds the configurations its log holds after its snapshot.
    #[test]
    fn a_restart_finds_the_configurations_in_the_log() {
        let with_learner = Membership { learners: [4].into(), ..Membership::with_voters([1, 2, 3]) };
        let promoted = Membership::with_voters([1, 2, 3, 4]);
        let log = vec![
            entry(1, 1),
            configuration(2, 1, with_learner.clone()),
            entry(3, 1),
            configuration(4, 1, promoted.clone()),
        ];
        let storage = MemoryStorage::with_log(HardState { term: 1, vote: None }, log);
        let replica = Replica::new(2, Membership::with_voters([1, 2, 3]), config(), storage, 0, 1, 0).unwrap();
        assert_eq!(replica.membership(), &promoted);
        assert_eq!(replica.membership_at(3), Some(with_learner));
        assert_eq!(replica.membership_at(1), Some(Membership::with_voters([1, 2, 3])));
        assert_eq!(replica.quorum(), 3);
    }
}
