//! Linearizable reads by ReadIndex (§6.4): the leader records its commit index, waits
//! until an entry of its own term has committed (its no-op), then for a majority to answer
//! a heartbeat round that began after the read; the read may then be served once the state
//! machine has applied through the recorded index.

use super::leader::{LeaderContext, LeaderState};
use super::ready::{ReadAborted, ReadOutcome};
use super::replica::{ProposeError, Replica};
use super::storage::Storage;
use super::types::LogIndex;

/// A read waiting for a majority to acknowledge heartbeat round `round`.
pub(super) struct PendingRead {
    context: u64,
    index: LogIndex,
    round: u64,
}

impl<S: Storage> Replica<S> {
    /// Asks for a linearizable read (ReadIndex, §6.4). The outcome arrives in a later
    /// `Ready` under `context`. Followers refuse; the caller forwards to the leader.
    pub fn read_index(&mut self, context: u64) -> Result<(), ProposeError> {
        let leader_hint = self.leader;
        let Some((leader, mut cx)) = self.leader_parts() else {
            return Err(ProposeError::NotLeader { leader_hint });
        };
        leader.read_index(&mut cx, context);
        Ok(())
    }
}

impl LeaderState {
    pub fn read_index<S: Storage>(&mut self, cx: &mut LeaderContext<'_, S>, context: u64) {
        let commit = cx.log.committed();
        if commit < self.noop_index {
            // Until an entry of its own term commits, a new leader does not know the
            // commit index (§6.4 step 1).
            self.reads_waiting_for_noop.push(context);
            return;
        }
        if cx.quorum == 1 {
            cx.outbox.reads.push(ReadOutcome { context, result: Ok(commit) });
            return;
        }
        // The round starts when the next `Ready` is collected, so that all reads asked
        // for until then share one round of heartbeats.
        let round = self.heartbeat_round + 1;
        self.pending_reads.push(PendingRead { context, index: commit, round });
        self.heartbeat_requested = true;
    }

    /// Releases the reads whose heartbeat round a majority acknowledged.
    pub fn release_confirmed_reads<S: Storage>(&mut self, cx: &mut LeaderContext<'_, S>) {
        let mut rounds: Vec<u64> =
            self.progress.iter().filter(|(id, _)| cx.is_voter(**id)).map(|(_, p)| p.acknowledged_round).collect();
        rounds.push(self.heartbeat_round);
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        let confirmed_round = rounds[cx.quorum - 1];
        let (confirmed, pending): (Vec<_>, Vec<_>) =
            self.pending_reads.drain(..).partition(|read| read.round <= confirmed_round);
        self.pending_reads = pending;
        cx.outbox
            .reads
            .extend(confirmed.into_iter().map(|read| ReadOutcome { context: read.context, result: Ok(read.index) }));
    }

    /// Fails every read this leader was confirming: it is no longer leader.
    pub fn abort_reads(&mut self, reads: &mut Vec<ReadOutcome>) {
        let waiting = self.reads_waiting_for_noop.drain(..);
        let pending = self.pending_reads.drain(..).map(|read| read.context);
        reads.extend(waiting.chain(pending).map(|context| ReadOutcome { context, result: Err(ReadAborted) }));
    }
}

#[cfg(test)]
mod tests {
    use super::super::message::MessageBody;
    use super::super::ready::{Ready, SoftState};
    use super::super::test_support::*;
    use super::super::types::{Entry, HardState, Payload, Role};
    use super::*;

    fn append_in_round(previous: LogIndex, entries: Vec<Entry>, leader_commit: LogIndex, round: u64) -> MessageBody {
        let previous = if previous == 0 { position(0, 0) } else { position(previous, 1) };
        MessageBody::AppendRequest { previous, entries, leader_commit, heartbeat_round: round, transfer_target: None }
    }

    /// §6.4: a new leader's read waits until its no-op has committed (step 1), then for a
    /// majority to acknowledge a heartbeat round started after it (steps 2 and 3); only
    /// then does it come out in `reads`, at the commit index recorded.
    #[test]
    fn read_waits_for_the_noop_then_for_a_heartbeat_round() {
        let mut replica = leader(0, &[]);
        replica.read_index(7).unwrap();
        assert!(!replica.has_ready(), "the no-op has not committed: the commit index may be stale");

        replica.step(message(2, 1, 1, accepted(1, 0))).unwrap();
        let noop = Entry { term: 1, index: 1, payload: Payload::Noop };
        assert_eq!(
            replica.ready().unwrap(),
            Ready {
                messages: vec![
                    message(1, 2, 1, append_in_round(1, vec![], 1, 1)),
                    message(1, 3, 1, append_in_round(0, vec![], 1, 1)),
                    // The heartbeat freed node 3's probe slot: the no-op is sent again.
                    message(1, 3, 1, append_in_round(0, vec![noop.clone()], 1, 1)),
                ],
                committed_entries: vec![noop],
                ..Ready::default()
            },
            "the no-op committed: a heartbeat round starts for the read"
        );
        replica.advance().unwrap();

        replica.step(message(2, 1, 1, accepted(1, 1))).unwrap();
        assert_eq!(
            replica.ready().unwrap(),
            Ready { reads: vec![ReadOutcome { context: 7, result: Ok(1) }], ..Ready::default() }
        );
    }

    /// Only a leader serves ReadIndex; a follower refuses and names its leader.
    #[test]
    fn follower_refuses_a_read_and_names_its_leader() {
        let mut replica = replica(1, 3, 1, &[1]);
        replica.step(message(2, 1, 1, append(position(1, 1), vec![], 0))).unwrap();
        assert_eq!(replica.read_index(1), Err(ProposeError::NotLeader { leader_hint: Some(2) }));
    }

    /// A leader that learns of a higher term before its read is confirmed fails the read:
    /// it may no longer be the leader, so the read may not be linearizable.
    #[test]
    fn read_pending_when_leadership_is_lost_is_aborted() {
        let mut replica = leader_with_followers_caught_up(0, &[]);
        replica.read_index(9).unwrap();
        replica.step(message(2, 1, 5, accepted(1, 0))).unwrap();
        assert_eq!(
            replica.ready().unwrap(),
            Ready {
                hard_state: Some(HardState { term: 5, vote: None }),
                reads: vec![ReadOutcome { context: 9, result: Err(ReadAborted) }],
                soft_state: Some(SoftState { role: Role::Follower, term: 5, leader: None }),
                ..Ready::default()
            }
        );
    }
}
