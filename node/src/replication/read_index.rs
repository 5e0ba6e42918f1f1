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
        let mut rounds: Vec<u64> = self.progress.values().map(|p| p.acknowledged_round).collect();
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
