//! Leadership transfer (§3.10): the leader pauses proposals, brings the target up to date
//! and tells it to campaign at once (`TimeoutNow`); the target runs a pre-vote that the
//! others grant only while the leader announces this very transfer.

use super::leader::{LeaderContext, LeaderState};
use super::message::MessageBody;
use super::replica::{Replica, RoleState};
use super::storage::{Storage, StorageError};
use super::types::NodeId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("not the leader (leader: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("node {0} is not a voter of the cluster (only a voter can lead)")]
    NotAVoter(NodeId),
    #[error("this node is already the leader")]
    ToSelf,
}

/// A transfer under way, on its leader.
pub(super) struct Transfer {
    target: NodeId,
    deadline_ms: u64,
    timeout_now_sent: bool,
}

impl<S: Storage> Replica<S> {
    /// Hands leadership to `target` (§3.10): proposals pause, the target is brought up to
    /// date, then told to campaign at once. Gives up after an election timeout.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), TransferError> {
        let leader_hint = self.leader;
        if !matches!(self.role, RoleState::Leader(_)) {
            return Err(TransferError::NotLeader { leader_hint });
        }
        if !self.configs.latest().is_voter(target) {
            return Err(TransferError::NotAVoter(target));
        }
        if target == self.id {
            return Err(TransferError::ToSelf);
        }
        let Some((leader, cx)) = self.leader_parts() else {
            return Err(TransferError::NotLeader { leader_hint });
        };
        let deadline_ms = cx.now_ms + cx.config.election_timeout_min_ms;
        tracing::info!(term = cx.term, target, "transferring leadership");
        leader.transfer = Some(Transfer { target, deadline_ms, timeout_now_sent: false });
        // The followers must hear of the transfer before the target's pre-vote reaches them
        // (they grant it only then): a heartbeat round announcing it leaves with the next
        // `Ready`, one hop ahead of the target's two; the TimeoutNow follows in the same
        // `Ready` if the target is up to date, else once it is.
        leader.heartbeat_requested = true;
        leader.broadcast_needed = true;
        Ok(())
    }

    /// The target of the leadership transfer under way: this leader's own, or the one its
    /// leader announced last.
    pub(super) fn transfer_announced(&self) -> Option<NodeId> {
        match &self.role {
            RoleState::Leader(leader) => leader.transfer_target(),
            _ => self.announced_transfer,
        }
    }

    /// Asks again the voters that have not answered this transfer's pre-vote. A voter that
    /// got it before the leader's announcement of the transfer ignored it without a word
    /// (stickiness); asked once only, the transfer would fail for a heartbeat that came
    /// second. Repeated at each append that announces the transfer, for as long as it runs.
    pub(super) fn repeat_transfer_pre_vote(&mut self) -> Result<(), StorageError> {
        let RoleState::PreCandidate { ballot, leadership_transfer: true } = &self.role else { return Ok(()) };
        let unanswered: Vec<NodeId> =
            self.voting_peers().into_iter().filter(|&peer| !ballot.has_answered(peer)).collect();
        let Some(proposed_term) = self.next_term() else { return Ok(()) };
        let last_log = self.log.last_position()?;
        for peer in unanswered {
            self.send_in_term(peer, proposed_term, MessageBody::PreVoteRequest { last_log, leadership_transfer: true });
        }
        Ok(())
    }
}

impl LeaderState {
    /// The member leadership is being handed to, while it is.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer.as_ref().map(|transfer| transfer.target)
    }

    /// Abandons the transfer once its deadline has passed: proposals resume.
    pub fn expire_transfer<S: Storage>(&mut self, cx: &LeaderContext<'_, S>) {
        if let Some(transfer) = &self.transfer
            && cx.now_ms >= transfer.deadline_ms
        {
            tracing::info!(target = transfer.target, "leadership transfer timed out");
            self.transfer = None;
        }
    }

    /// Tells the transfer target to campaign, once it holds the leader's whole log (it
    /// would lose the election otherwise). Called with every `Ready`.
    pub fn maybe_send_timeout_now<S: Storage>(&mut self, cx: &mut LeaderContext<'_, S>) -> Result<(), StorageError> {
        let last_log = cx.log.last_position()?;
        let Some(transfer) = self.transfer.as_mut() else { return Ok(()) };
        if transfer.timeout_now_sent || self.progress[&transfer.target].match_index != last_log.index {
            return Ok(());
        }
        transfer.timeout_now_sent = true;
        cx.send(transfer.target, MessageBody::TimeoutNow { last_log });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::ready::Ready;
    use super::super::replica::ProposeError;
    use super::super::test_support::*;
    use super::super::types::{Entry, LogIndex, LogPosition, Payload};
    use super::*;

    /// An append of round `round` announcing a transfer to `target`.
    fn announcing(
        previous: LogPosition,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
        round: u64,
        target: NodeId,
    ) -> MessageBody {
        MessageBody::AppendRequest {
            previous,
            entries,
            leader_commit,
            heartbeat_round: round,
            transfer_target: Some(target),
        }
    }

    /// §3.10: a transfer to a target that holds the whole log announces itself in a
    /// heartbeat round and sends `TimeoutNow` in the same `Ready`, once only.
    #[test]
    fn timeout_now_goes_to_a_caught_up_target_once() {
        let mut replica = leader_with_followers_caught_up(0, &[]);
        replica.transfer_leadership(2).unwrap();
        let heartbeat = announcing(position(1, 1), vec![], 1, 1, 2);
        assert_eq!(
            handle_ready(&mut replica),
            Ready {
                messages: vec![
                    message(1, 2, 1, heartbeat.clone()),
                    message(1, 3, 1, heartbeat),
                    message(1, 2, 1, MessageBody::TimeoutNow { last_log: position(1, 1) }),
                ],
                ..Ready::default()
            }
        );
        replica.tick(ELECTION_TIMEOUT_MAX_MS).unwrap();
        let heartbeat = announcing(position(1, 1), vec![], 1, 2, 2);
        assert_eq!(
            replica.ready().unwrap(),
            Ready {
                messages: vec![message(1, 2, 1, heartbeat.clone()), message(1, 3, 1, heartbeat)],
                ..Ready::default()
            },
            "the next round announces the transfer again, without a second TimeoutNow"
        );
    }

    /// §3.10: a target that lacks entries is brought up to date first; `TimeoutNow`
    /// follows the acknowledgement that it holds the leader's whole log.
    #[test]
    fn timeout_now_waits_until_the_target_holds_the_whole_log() {
        let mut replica = leader(0, &[]);
        replica.transfer_leadership(2).unwrap();
        let noop = Entry { term: 1, index: 1, payload: Payload::Noop };
        assert_eq!(
            handle_ready(&mut replica),
            Ready {
                messages: vec![
                    message(1, 2, 1, announcing(position(0, 0), vec![], 0, 1, 2)),
                    message(1, 3, 1, announcing(position(0, 0), vec![], 0, 1, 2)),
                    message(1, 2, 1, announcing(position(0, 0), vec![noop.clone()], 0, 1, 2)),
                    message(1, 3, 1, announcing(position(0, 0), vec![noop.clone()], 0, 1, 2)),
                ],
                ..Ready::default()
            },
            "no TimeoutNow to a target that lacks the no-op"
        );
        replica.step(message(2, 1, 1, accepted(1, 1))).unwrap();
        assert_eq!(
            replica.ready().unwrap(),
            Ready {
                messages: vec![
                    message(1, 2, 1, announcing(position(1, 1), vec![], 1, 1, 2)),
                    message(1, 2, 1, MessageBody::TimeoutNow { last_log: position(1, 1) }),
                ],
                committed_entries: vec![noop],
                ..Ready::default()
            }
        );
    }

    /// §3.10: proposals are refused while a transfer runs (the target must catch up with
    /// a log that stops growing), and accepted again once it is abandoned after an
    /// election timeout.
    #[test]
    fn proposals_are_refused_while_a_transfer_runs() {
        let mut replica = leader_with_followers_caught_up(0, &[]);
        replica.transfer_leadership(3).unwrap();
        handle_ready(&mut replica);
        assert_eq!(replica.propose("during".into()), Err(ProposeError::TransferInProgress));
        replica.tick(ELECTION_TIMEOUT_MAX_MS + ELECTION_TIMEOUT_MIN_MS).unwrap();
        assert_eq!(replica.propose("after".into()), Ok(position(2, 1)));
    }

    /// Only a leader transfers, and only to another member.
    #[test]
    fn transfer_is_refused_to_self_to_a_stranger_and_by_a_follower() {
        let mut leader = leader(0, &[]);
        assert_eq!(leader.transfer_leadership(1), Err(TransferError::ToSelf));
        assert_eq!(leader.transfer_leadership(4), Err(TransferError::NotAVoter(4)));
        let mut follower = replica(2, 3, 1, &[]);
        assert_eq!(follower.transfer_leadership(3), Err(TransferError::NotLeader { leader_hint: None }));
    }

    /// §3.10 with §4.2.3: while it hears from its leader, a follower grants a transfer
    /// pre-vote only to the target that leader announces; a `TimeoutNow` that outlived its
    /// transfer gets nothing.
    #[test]
    fn follower_grants_a_transfer_pre_vote_only_to_the_announced_target() {
        let request = MessageBody::PreVoteRequest { last_log: position(0, 0), leadership_transfer: true };
        let mut replica = replica(1, 3, 1, &[]);
        replica.step(message(2, 1, 1, append(position(0, 0), vec![], 0))).unwrap();
        handle_ready(&mut replica);
        replica.step(message(3, 1, 2, request.clone())).unwrap();
        assert!(!replica.has_ready(), "no transfer announced");

        replica.step(message(2, 1, 1, announcing(position(0, 0), vec![], 0, 1, 3))).unwrap();
        handle_ready(&mut replica);
        replica.step(message(3, 1, 2, request)).unwrap();
        assert_eq!(
            replica.ready().unwrap(),
            Ready {
                messages_after_persist: vec![message(1, 3, 2, MessageBody::PreVoteResponse { granted: true })],
                ..Ready::default()
            }
        );
    }
}
