//! What a replica does with a leader's messages (appends, §3.5; TimeoutNow, §3.10), and
//! the filters every incoming message passes first: malformed messages are dropped, and
//! messages of an older term are answered with the current one.

use super::message::{AppendResult, Message, MessageBody};
use super::replica::{Replica, RoleState};
use super::storage::{Storage, StorageError};
use super::types::{Entry, INDEX_MAX, LogIndex, LogPosition, Membership, NodeId, Payload, TERM_MAX};

impl<S: Storage> Replica<S> {
    /// Why a message cannot have come from a correct replica, if it cannot. Every number
    /// in it came from the network: each is checked before any arithmetic is done with it.
    pub(super) fn malformed(&self, message: &Message) -> Option<&'static str> {
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
                // (Not checked against this replica's configuration, which may lag behind
                // the leader's: the target is a voter of the leader's.)
                if transfer_target.is_some_and(|target| target == message.from || target == 0) {
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
                    if let Payload::Membership(membership) = &entry.payload
                        && let Some(reason) = membership.invalid()
                    {
                        return Some(reason);
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
            MessageBody::InstallSnapshot { snapshot } => {
                if position_malformed(&snapshot.last_included) || snapshot.last_included.index == 0 {
                    Some("snapshot's last entry is inconsistent with the term, or before the log's start")
                } else if let Some(reason) = snapshot.membership.invalid() {
                    Some(reason)
                } else {
                    None
                }
            }
            MessageBody::PreVoteResponse { .. } | MessageBody::VoteResponse { .. } => None,
        }
    }

    /// A message from an older term.
    pub(super) fn step_stale(&mut self, message: Message) -> Result<(), StorageError> {
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
            MessageBody::InstallSnapshot { snapshot } => {
                let result = AppendResult::Rejected {
                    rejected_previous: snapshot.last_included.index,
                    conflict_term: None,
                    first_index_of_term: 0,
                };
                self.send(message.from, MessageBody::AppendResponse { result, heartbeat_round: 0 });
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

    pub(super) fn handle_append_request(
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
        let configurations: Vec<(LogIndex, Membership)> = entries
            .iter()
            .filter_map(|entry| match &entry.payload {
                Payload::Membership(membership) => Some((entry.index, membership.clone())),
                _ => None,
            })
            .collect();
        let (match_index, written_from) = self.log.accept(previous, entries)?;
        self.configurations_written(written_from, configurations);
        // Only what is known to match the leader may be committed here (§3.5: commit up
        // to min(leaderCommit, index of last new entry)).
        self.log.commit_to(leader_commit.min(match_index));
        // Sent after persisting: the leader counts this follower toward commitment.
        let result = AppendResult::Accepted { match_index };
        self.send(from, MessageBody::AppendResponse { result, heartbeat_round });
        Ok(())
    }

    pub(super) fn handle_timeout_now(&mut self, from: NodeId, last_log: LogPosition) -> Result<(), StorageError> {
        if !matches!(self.role, RoleState::Follower) || self.leader != Some(from) {
            return Ok(());
        }
        if self.log.last_position()? != last_log {
            // The leader sent this when this log ended where it says; it has moved on since
            // (the transfer was abandoned and proposals resumed), or the message is a stray.
            tracing::info!(term = self.term, from, "ignoring a stale TimeoutNow");
            return Ok(());
        }
        tracing::info!(term = self.term, "asked to take over leadership");
        // A pre-vote the followers grant only while the leader announces this transfer,
        // then an election that passes their stickiness (§3.10).
        self.start_pre_vote(true)
    }
}

#[cfg(test)]
mod tests {
    use super::super::ready::{Ready, SoftState};
    use super::super::test_support::*;
    use super::super::types::{HardState, Role, Term};
    use super::*;

    fn following(leader: NodeId, term: Term) -> Option<SoftState> {
        Some(SoftState { role: Role::Follower, term, leader: Some(leader) })
    }

    fn rejected(
        rejected_previous: LogIndex,
        conflict_term: Option<Term>,
        first_index_of_term: LogIndex,
    ) -> MessageBody {
        let result = AppendResult::Rejected { rejected_previous, conflict_term, first_index_of_term };
        MessageBody::AppendResponse { result, heartbeat_round: 0 }
    }

    /// §3.5, figure 3.1: entries after a matching entry are appended, and acknowledged in
    /// `messages_after_persist`: the leader counts the acknowledgement toward commitment,
    /// so it must not leave before the entries are durable.
    #[test]
    fn append_after_a_matching_entry_is_persisted_then_acknowledged() {
        let mut replica = replica(1, 3, 1, &[1]);
        replica.step(message(2, 1, 1, append(position(1, 1), vec![entry(2, 1)], 0))).unwrap();
        assert_eq!(
            replica.ready().unwrap(),
            Ready {
                entries: vec![entry(2, 1)],
                messages_after_persist: vec![message(1, 2, 1, accepted(2, 0))],
                soft_state: following(2, 1),
                ..Ready::default()
            }
        );
    }

    /// §3.5, figure 3.1 rule 3: entries that agree are kept, the stored suffix from the
    /// first conflicting entry is removed (`truncate_from`), and the leader's entries
    /// replace it.
    #[test]
    fn conflicting_suffix_is_truncated_from_its_first_conflicting_index() {
        let mut replica = replica(1, 3, 1, &[1, 1, 1]);
        replica.step(message(2, 1, 2, append(position(1, 1), vec![entry(2, 1), entry(3, 2)], 0))).unwrap();
        let ready = replica.ready().unwrap();
        assert_eq!(
            ready,
            Ready {
                hard_state: Some(HardState { term: 2, vote: None }),
                truncate_from: Some(3),
                entries: vec![entry(3, 2)],
                messages_after_persist: vec![message(1, 2, 2, accepted(3, 0))],
                soft_state: following(2, 2),
                ..Ready::default()
            }
        );
        persist(&mut replica, &ready);
        assert_eq!(replica.storage().all_entries().cloned().collect::<Vec<_>>(), log(&[1, 1, 2]));
    }

    /// Entries handed out in a `Ready` that a new leader overwrites before `advance` are
    /// stored by then: the next `Ready` removes them from the first entry it writes again.
    #[test]
    fn entries_superseded_before_advance_are_truncated_from_the_first_unstable_index() {
        let mut replica = replica(1, 3, 1, &[]);
        replica.step(message(2, 1, 1, append(position(0, 0), log(&[1, 1, 1]), 0))).unwrap();
        let first = replica.ready().unwrap();
        replica.storage_mut().append(first.truncate_from, &first.entries);
        replica.step(message(3, 1, 2, append(position(1, 1), vec![entry(2, 2)], 0))).unwrap();
        replica.advance().unwrap();
        let ready = replica.ready().unwrap();
        assert_eq!(
            ready,
            Ready {
                hard_state: Some(HardState { term: 2, vote: None }),
                truncate_from: Some(1),
                entries: vec![entry(1, 1), entry(2, 2)],
                messages_after_persist: vec![message(1, 3, 2, accepted(2, 0))],
                soft_state: following(3, 2),
                ..Ready::default()
            }
        );
        persist(&mut replica, &ready);
        assert_eq!(replica.storage().all_entries().cloned().collect::<Vec<_>>(), log(&[1, 2]));
    }

    /// §3.5 (and its optimization in §5.3 of the Raft paper): an append whose previous
    /// entry this log lacks is refused with the term held there and the first index of that
    /// term, and nothing is written.
    #[test]
    fn append_after_a_mismatching_entry_is_refused_with_the_conflict_hint() {
        let mut replica = replica(1, 3, 3, &[1, 1, 2, 2]);
        replica.step(message(2, 1, 3, append(position(4, 3), vec![entry(5, 3)], 0))).unwrap();
        assert_eq!(
            replica.ready().unwrap(),
            Ready {
                messages_after_persist: vec![message(1, 2, 3, rejected(4, Some(2), 3))],
                soft_state: following(2, 3),
                ..Ready::default()
            }
        );
    }

    /// Figure 3.1 rule 1 (§3.3): an append of an older term is refused with the current
    /// term, so that a deposed leader learns of it and steps down.
    #[test]
    fn append_of_an_older_term_is_answered_with_the_current_term() {
        let mut replica = replica(1, 3, 3, &[1]);
        replica.step(message(2, 1, 2, append(position(1, 1), vec![entry(2, 2)], 1))).unwrap();
        assert_eq!(
            replica.ready().unwrap(),
            Ready { messages_after_persist: vec![message(1, 2, 3, rejected(1, None, 0))], ..Ready::default() }
        );
    }

    /// A message no correct replica sends is dropped whole: no answer, no write, not even
    /// its higher term adopted.
    #[test]
    fn malformed_append_is_dropped_with_an_empty_ready() {
        let mut replica = replica(1, 3, 1, &[1]);
        for entries in [vec![entry(3, 5)], vec![entry(2, 6)], vec![entry(2, 4), entry(3, 2)]] {
            replica.step(message(2, 1, 5, append(position(1, 1), entries, 0))).unwrap();
        }
        replica.step(message(2, 1, 5, append(position(1, 6), vec![], 0))).unwrap();
        assert!(!replica.has_ready());
        assert_eq!(replica.ready().unwrap(), Ready::default());
        assert_eq!(replica.term(), 1);
        // Counted, for `cluster status`.
        assert_eq!(replica.status().messages_refused, 4);
    }

    /// §3.5: a follower learns the commit index from the leader and hands the newly
    /// committed entries out to be applied.
    #[test]
    fn leader_commit_hands_out_the_newly_committed_entries() {
        let mut replica = replica(1, 3, 1, &[1, 1]);
        replica.step(message(2, 1, 1, append(position(2, 1), vec![], 2))).unwrap();
        assert_eq!(
            replica.ready().unwrap(),
            Ready {
                messages_after_persist: vec![message(1, 2, 1, accepted(2, 0))],
                committed_entries: log(&[1, 1]),
                soft_state: following(2, 1),
                ..Ready::default()
            }
        );
    }

    /// §3.5 (commit up to min(leaderCommit, index of last new entry)): entries this append
    /// does not show to match the leader's log stay uncommitted, whatever the leader's
    /// commit index.
    #[test]
    fn commit_stops_at_what_the_append_shows_to_match() {
        let mut replica = replica(1, 3, 1, &[1, 1]);
        replica.step(message(2, 1, 1, append(position(1, 1), vec![], 2))).unwrap();
        assert_eq!(
            replica.ready().unwrap(),
            Ready {
                messages_after_persist: vec![message(1, 2, 1, accepted(1, 0))],
                committed_entries: log(&[1]),
                soft_state: following(2, 1),
                ..Ready::default()
            }
        );
    }

    /// §3.10: a `TimeoutNow` from the leader, naming where this log ends, starts a
    /// transfer pre-vote at once; the replica keeps following that leader meanwhile.
    #[test]
    fn timeout_now_from_the_leader_starts_a_transfer_pre_vote() {
        let mut replica = replica(1, 3, 1, &[1]);
        replica.step(message(2, 1, 1, append(position(1, 1), vec![], 0))).unwrap();
        handle_ready(&mut replica);
        replica.step(message(2, 1, 1, MessageBody::TimeoutNow { last_log: position(1, 1) })).unwrap();
        let request = MessageBody::PreVoteRequest { last_log: position(1, 1), leadership_transfer: true };
        assert_eq!(
            replica.ready().unwrap(),
            Ready {
                messages_after_persist: vec![message(1, 2, 2, request.clone()), message(1, 3, 2, request)],
                soft_state: Some(SoftState { role: Role::PreCandidate, term: 1, leader: Some(2) }),
                ..Ready::default()
            }
        );
    }

    /// A `TimeoutNow` naming a log end this log no longer has belongs to an abandoned
    /// transfer: it changes nothing.
    #[test]
    fn timeout_now_for_another_log_end_is_ignored() {
        let mut replica = replica(1, 3, 1, &[1]);
        replica.step(message(2, 1, 1, append(position(1, 1), vec![], 0))).unwrap();
        handle_ready(&mut replica);
        replica.step(message(2, 1, 1, MessageBody::TimeoutNow { last_log: position(2, 1) })).unwrap();
        assert!(!replica.has_ready());
        assert_eq!(replica.role(), Role::Follower);
    }
}
