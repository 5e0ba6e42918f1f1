//! Elections: the election timer, PreVote (§9.6), votes (§3.4), leader stickiness
//! (§4.2.3), and becoming candidate or leader.

use std::collections::BTreeSet;

use super::leader::LeaderState;
use super::message::{Message, MessageBody};
use super::replica::{Replica, RoleState};
use super::storage::{Storage, StorageError};
use super::types::{LogPosition, NodeId, TERM_MAX, Term};

/// The answers to a (pre-)vote, the candidate's own included.
pub(super) struct Ballot {
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

    fn record(&mut self, voter: NodeId, granted: bool, quorum: usize, voters: usize) -> Tally {
        if granted {
            self.granted.insert(voter);
        } else {
            self.rejected.insert(voter);
        }
        if self.granted.len() >= quorum {
            Tally::Won
        } else if self.rejected.len() > voters - quorum {
            Tally::Lost
        } else {
            Tally::Open
        }
    }

    /// Whether `voter` answered, either way.
    pub(super) fn has_answered(&self, voter: NodeId) -> bool {
        self.granted.contains(&voter) || self.rejected.contains(&voter)
    }
}

impl<S: Storage> Replica<S> {
    /// A follower's or candidate's clock: when no leader was heard from within the
    /// election timeout, ask whether an election could be won. Only a voter asks: a
    /// learner, a node waiting to join and a removed one wait for a leader.
    pub(super) fn tick_election_timer(&mut self) -> Result<(), StorageError> {
        if self.now_ms >= self.election_deadline_ms {
            if !self.may_campaign() {
                self.reset_election_deadline();
                if !matches!(self.role, RoleState::Follower) {
                    // A candidate whose own configuration stopped naming it a voter (an
                    // entry appended meanwhile) gives up.
                    self.become_follower(self.term, None);
                }
                return Ok(());
            }
            self.start_pre_vote(false)?;
        }
        Ok(())
    }

    /// Whether `message`, of a higher term than ours, is a (pre-)vote request that a
    /// replica still hearing from its leader ignores (§4.2.3), so that a node coming back
    /// from a partition cannot depose a healthy leader.
    pub(super) fn disrupts_a_heard_leader(&self, message: &Message) -> bool {
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
        sticky && self.hears_from_leader()
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

    /// PreVote (§9.6): ask whether an election could be won before disturbing anyone with
    /// a new term. A node cut off from the cluster never wins one, so its term stays put
    /// and it does not depose a healthy leader when it comes back. A transfer's pre-vote
    /// (`leadership_transfer`) keeps following the leader that asked for it meanwhile.
    pub(super) fn start_pre_vote(&mut self, leadership_transfer: bool) -> Result<(), StorageError> {
        self.reset_election_deadline();
        if !self.may_campaign() {
            return Ok(());
        }
        self.abort_leader_state();
        let Some(proposed_term) = self.next_term() else { return Ok(()) };
        if !leadership_transfer {
            self.leader = None;
        }
        self.role = RoleState::PreCandidate { ballot: Ballot::new(self.id), leadership_transfer };
        tracing::debug!(term = self.term, leadership_transfer, "starting pre-vote");
        if self.quorum() == 1 {
            return self.start_election(leadership_transfer);
        }
        let last_log = self.log.last_position()?;
        for peer in self.voting_peers() {
            self.send_in_term(peer, proposed_term, MessageBody::PreVoteRequest { last_log, leadership_transfer });
        }
        Ok(())
    }

    /// The term after this one, unless this one is the last a replica may use (which only
    /// a long run of forged frames could bring about): then this replica cannot campaign,
    /// and says so.
    pub(super) fn next_term(&self) -> Option<Term> {
        let next = self.term.checked_add(1).filter(|&next| next <= TERM_MAX);
        if next.is_none() {
            tracing::error!(term = self.term, "at the largest term: cannot campaign");
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
        tracing::info!(term, leadership_transfer, "starting election");
        if self.quorum() == 1 {
            return self.become_leader();
        }
        let last_log = self.log.last_position()?;
        for peer in self.voting_peers() {
            // Queued after the persist, like every message but a leader's: no grant can
            // come back before the term and self-vote are durable, so a candidate that wins
            // cannot crash, forget its vote and vote for a rival in the same term.
            self.send(peer, MessageBody::VoteRequest { last_log, leadership_transfer });
        }
        Ok(())
    }

    fn become_leader(&mut self) -> Result<(), StorageError> {
        assert!(matches!(self.role, RoleState::Candidate(_)), "only a candidate becomes leader");
        assert_eq!(self.vote, Some(self.id), "a leader voted for itself");
        assert!(self.may_campaign(), "only a voter becomes leader");
        let (_, mut cx) = self.role_and_leader_context();
        let leader = LeaderState::new(&mut cx)?;
        self.role = RoleState::Leader(leader);
        self.leader = Some(self.id);
        tracing::info!(term = self.term, "became leader");
        Ok(())
    }

    fn candidate_log_ok(&self, last_log: LogPosition) -> Result<bool, StorageError> {
        Ok(last_log.at_least_as_up_to_date_as(&self.log.last_position()?))
    }

    pub(super) fn handle_pre_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        last_log: LogPosition,
    ) -> Result<(), StorageError> {
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

    pub(super) fn handle_vote_request(&mut self, from: NodeId, last_log: LogPosition) -> Result<(), StorageError> {
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

    pub(super) fn handle_pre_vote_response(
        &mut self,
        from: NodeId,
        term: Term,
        granted: bool,
    ) -> Result<(), StorageError> {
        let (quorum, voters) = (self.quorum(), self.configs.latest().voters.len());
        if !self.configs.latest().is_voter(from) {
            // Only the voters of the configuration in effect are counted.
            return Ok(());
        }
        let RoleState::PreCandidate { ballot, leadership_transfer } = &mut self.role else { return Ok(()) };
        let leadership_transfer = *leadership_transfer;
        // A grant counts only for the term this pre-vote proposed (our term is below
        // TERM_MAX while we campaign, so the sum cannot overflow).
        if granted && term != self.term + 1 {
            return Ok(());
        }
        match ballot.record(from, granted, quorum, voters) {
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

    pub(super) fn handle_vote_response(&mut self, from: NodeId, granted: bool) -> Result<(), StorageError> {
        let (quorum, voters) = (self.quorum(), self.configs.latest().voters.len());
        if !self.configs.latest().is_voter(from) {
            return Ok(());
        }
        let RoleState::Candidate(ballot) = &mut self.role else { return Ok(()) };
        match ballot.record(from, granted, quorum, voters) {
            Tally::Won => self.become_leader(),
            Tally::Lost => {
                self.become_follower(self.term, None);
                Ok(())
            }
            Tally::Open => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ready::{Ready, SoftState};
    use super::super::test_support::*;
    use super::super::types::{HardState, Role};
    use super::*;

    fn pre_vote_request(last_log: LogPosition) -> MessageBody {
        MessageBody::PreVoteRequest { last_log, leadership_transfer: false }
    }

    fn vote_request(last_log: LogPosition) -> MessageBody {
        MessageBody::VoteRequest { last_log, leadership_transfer: false }
    }

    /// §9.6: a replica whose election timer fires asks every peer for a pre-vote in the
    /// term it would campaign in, without adopting that term (nothing to persist).
    #[test]
    fn election_timeout_asks_every_peer_for_a_pre_vote_without_changing_term() {
        let mut replica = replica(1, 3, 1, &[1, 1]);
        replica.tick(ELECTION_TIMEOUT_MAX_MS).unwrap();
        let request = pre_vote_request(position(2, 1));
        assert_eq!(
            replica.ready().unwrap(),
            Ready {
                messages_after_persist: vec![message(1, 2, 2, request.clone()), message(1, 3, 2, request)],
                soft_state: Some(SoftState { role: Role::PreCandidate, term: 1, leader: None }),
                ..Ready::default()
            }
        );
    }

    /// §9.6 then §3.4: a majority of pre-votes (the candidate's own and one more of three)
    /// starts the real election: term + 1 and the self-vote go to disk, and the vote
    /// requests wait in `messages_after_persist` until they are durable. That order is what
    /// makes the self-vote safe: no grant can come back, and so no election be won, on a
    /// vote that a crash could make the candidate forget and cast again for a rival.
    #[test]
    fn pre_vote_majority_persists_term_and_self_vote_before_the_vote_requests_leave() {
        let mut replica = replica(1, 3, 1, &[1, 1]);
        replica.tick(ELECTION_TIMEOUT_MAX_MS).unwrap();
        handle_ready(&mut replica);
        replica.step(message(2, 1, 2, MessageBody::PreVoteResponse { granted: true })).unwrap();
        let request = vote_request(position(2, 1));
        assert_eq!(
            replica.ready().unwrap(),
            Ready {
                hard_state: Some(HardState { term: 2, vote: Some(1) }),
                messages_after_persist: vec![message(1, 2, 2, request.clone()), message(1, 3, 2, request)],
                soft_state: Some(SoftState { role: Role::Candidate, term: 2, leader: None }),
                ..Ready::default()
            }
        );
    }

    /// §9.6: a pre-candidate refused by a majority goes back to following, still in its
    /// term: a partitioned node that keeps timing out never raises it.
    #[test]
    fn pre_vote_refused_by_a_majority_returns_to_follower_in_the_same_term() {
        let mut replica = replica(1, 3, 1, &[1]);
        replica.tick(ELECTION_TIMEOUT_MAX_MS).unwrap();
        handle_ready(&mut replica);
        replica.step(message(2, 1, 1, MessageBody::PreVoteResponse { granted: false })).unwrap();
        assert!(!replica.has_ready(), "one refusal of three decides nothing");
        replica.step(message(3, 1, 1, MessageBody::PreVoteResponse { granted: false })).unwrap();
        assert_eq!(
            replica.ready().unwrap(),
            Ready { soft_state: Some(SoftState { role: Role::Follower, term: 1, leader: None }), ..Ready::default() }
        );
    }

    /// §9.6: granting a pre-vote changes nothing here: the grant answers in the proposed
    /// term, which the voter does not adopt.
    #[test]
    fn pre_vote_grant_answers_in_the_proposed_term_without_adopting_it() {
        let mut replica = replica(1, 3, 1, &[1]);
        replica.step(message(2, 1, 2, pre_vote_request(position(1, 1)))).unwrap();
        assert_eq!(
            replica.ready().unwrap(),
            Ready {
                messages_after_persist: vec![message(1, 2, 2, MessageBody::PreVoteResponse { granted: true })],
                ..Ready::default()
            }
        );
    }

    /// Figure 3.1 ("updated on stable storage before responding"): a vote is granted in
    /// `messages_after_persist`, with the new term and the vote persisted in the same
    /// `Ready`, so it never leaves before it is durable.
    #[test]
    fn vote_grant_leaves_after_the_vote_it_promises_is_persisted() {
        let mut replica = replica(1, 3, 1, &[1]);
        replica.step(message(2, 1, 2, vote_request(position(1, 1)))).unwrap();
        assert_eq!(
            replica.ready().unwrap(),
            Ready {
                hard_state: Some(HardState { term: 2, vote: Some(2) }),
                messages_after_persist: vec![message(1, 2, 2, MessageBody::VoteResponse { granted: true })],
                soft_state: Some(SoftState { role: Role::Follower, term: 2, leader: None }),
                ..Ready::default()
            }
        );
    }

    /// §3.6.1: a candidate whose log is less up to date is refused, even with a longer log:
    /// last terms are compared first. The voter still adopts the candidate's term.
    #[test]
    fn candidate_with_a_less_up_to_date_log_is_refused() {
        let mut replica = replica(1, 3, 2, &[1, 2]);
        replica.step(message(2, 1, 3, vote_request(position(3, 1)))).unwrap();
        assert_eq!(
            replica.ready().unwrap(),
            Ready {
                hard_state: Some(HardState { term: 3, vote: None }),
                messages_after_persist: vec![message(1, 2, 3, MessageBody::VoteResponse { granted: false })],
                soft_state: Some(SoftState { role: Role::Follower, term: 3, leader: None }),
                ..Ready::default()
            }
        );
    }

    /// §4.2.3: a replica that heard from its leader within the minimum election timeout
    /// ignores a vote request of a higher term entirely: no answer, no term change.
    #[test]
    fn vote_request_is_ignored_while_the_leader_is_heard_from() {
        let mut replica = replica(1, 3, 1, &[1]);
        replica.step(message(2, 1, 1, append(position(1, 1), vec![], 0))).unwrap();
        handle_ready(&mut replica);
        replica.step(message(3, 1, 2, vote_request(position(1, 1)))).unwrap();
        assert!(!replica.has_ready());
        assert_eq!(replica.term(), 1);
    }
}
