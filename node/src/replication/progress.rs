//! What a leader knows about one follower's log, and how much it may send it (flow control).

use std::collections::VecDeque;

use super::types::LogIndex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// The leader does not know where the follower's log matches its own: one append at a
    /// time, each waiting for its answer (or the next heartbeat).
    Probe,
    /// The follower's log matches through `match_index`: appends are pipelined, up to the
    /// in-flight bound, optimistically advancing `next_index`.
    Replicate,
    /// The follower needs entries the leader's log no longer holds: a snapshot through
    /// `index` was sent, and nothing more is until the follower acknowledges it (or
    /// `snapshot_deadline_ms` passes). Heartbeats still go out.
    Snapshot { index: LogIndex },
}

#[derive(Debug, Clone)]
pub struct Progress {
    /// Highest index known to match the leader's log (and be durable on the follower).
    pub match_index: LogIndex,
    /// Next index to send.
    pub next_index: LogIndex,
    pub mode: ProgressMode,
    /// In Probe mode, whether an append is awaiting its answer.
    pub probe_outstanding: bool,
    /// Last index of each append in flight, oldest first (Replicate mode).
    pub inflight: VecDeque<LogIndex>,
    /// Whether the follower answered anything since the last CheckQuorum look.
    pub recently_active: bool,
    /// Highest heartbeat round the follower acknowledged (ReadIndex).
    pub acknowledged_round: u64,
    /// When the follower last answered, by the replica's clock.
    pub last_contact_ms: Option<u64>,
    /// The commit index last sent to the follower.
    pub commit_sent: LogIndex,
    /// When `match_index` last moved (or replication started): a pipeline that stops
    /// moving has lost appends.
    pub last_progress_ms: u64,
    /// In Snapshot mode, when to give up waiting and probe again (which sends the snapshot
    /// again if it is still needed).
    pub snapshot_deadline_ms: u64,
    /// In Snapshot mode, once the transport delivered the snapshot: the first heartbeat
    /// round sent after that. The follower handles the snapshot before any message sent
    /// later, so an answer to such a round that still lacks the snapshot means the follower
    /// lost it (it crashed before installing it).
    pub snapshot_delivered_round: Option<u64>,
    /// Snapshot transfers to this follower that failed in a row (it backs off).
    pub snapshot_failures: u32,
}

impl Progress {
    pub fn new(next_index: LogIndex, now_ms: u64) -> Self {
        Self {
            match_index: 0,
            next_index,
            mode: ProgressMode::Probe,
            probe_outstanding: false,
            inflight: VecDeque::new(),
            recently_active: false,
            acknowledged_round: 0,
            last_contact_ms: None,
            commit_sent: 0,
            last_progress_ms: now_ms,
            snapshot_deadline_ms: 0,
            snapshot_delivered_round: None,
            snapshot_failures: 0,
        }
    }

    /// Whether another append may be sent now.
    pub fn can_send(&self, inflight_max: usize) -> bool {
        match self.mode {
            ProgressMode::Probe => !self.probe_outstanding,
            ProgressMode::Replicate => self.inflight.len() < inflight_max,
            ProgressMode::Snapshot { .. } => false,
        }
    }

    /// Records an append carrying entries through `last_index`.
    pub fn sent(&mut self, last_index: LogIndex) {
        match self.mode {
            ProgressMode::Probe => self.probe_outstanding = true,
            ProgressMode::Replicate => {
                self.next_index = last_index + 1;
                self.inflight.push_back(last_index);
            }
            ProgressMode::Snapshot { .. } => unreachable!("no append is sent to a follower awaiting a snapshot"),
        }
    }

    /// Records a snapshot through `index` sent, with the time to give up waiting for it.
    pub fn snapshot_sent(&mut self, index: LogIndex, deadline_ms: u64) {
        self.mode = ProgressMode::Snapshot { index };
        self.next_index = index + 1;
        self.probe_outstanding = false;
        self.inflight.clear();
        self.snapshot_deadline_ms = deadline_ms;
        self.snapshot_delivered_round = None;
    }

    /// The follower matches through `match_index`. Returns whether that is news.
    pub fn accepted(&mut self, match_index: LogIndex, now_ms: u64) -> bool {
        self.probe_outstanding = false;
        if match_index <= self.match_index {
            return false;
        }
        self.match_index = match_index;
        self.last_progress_ms = now_ms;
        self.next_index = self.next_index.max(match_index + 1);
        while self.inflight.front().is_some_and(|&last| last <= match_index) {
            self.inflight.pop_front();
        }
        match self.mode {
            ProgressMode::Probe => {
                self.mode = ProgressMode::Replicate;
                self.inflight.clear();
            }
            // Replication resumes once the follower holds what the snapshot covers (an
            // acknowledgement of less answers a heartbeat).
            ProgressMode::Snapshot { index } if match_index >= index => {
                self.mode = ProgressMode::Replicate;
                self.next_index = match_index + 1;
            }
            ProgressMode::Replicate | ProgressMode::Snapshot { .. } => {}
        }
        true
    }

    /// Back to probing after `match_index`: the appends in flight are presumed lost.
    pub fn restart_probing(&mut self) {
        self.next_index = self.match_index + 1;
        self.mode = ProgressMode::Probe;
        self.probe_outstanding = false;
        self.inflight.clear();
    }

    /// The follower rejected an append after `rejected_previous`. Returns false when the
    /// rejection is stale (it answers an append older than what the leader now knows).
    pub fn rejected(&mut self, rejected_previous: LogIndex, new_next: LogIndex) -> bool {
        let stale = match self.mode {
            // Pipelined appends rejected after a later one matched.
            ProgressMode::Replicate => rejected_previous < self.match_index,
            // Only the answer to the outstanding probe counts.
            ProgressMode::Probe => rejected_previous + 1 != self.next_index,
            // Nothing was sent that it could answer but heartbeats after what it holds.
            ProgressMode::Snapshot { .. } => true,
        };
        if stale {
            return false;
        }
        // Never below what is known to match, and strictly below what was just rejected,
        // so probing always makes progress.
        self.next_index = new_next.clamp(self.match_index + 1, rejected_previous.max(self.match_index + 1));
        self.mode = ProgressMode::Probe;
        self.probe_outstanding = false;
        self.inflight.clear();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelining_is_bounded_and_acks_free_slots() {
        let mut progress = Progress::new(11, 0);
        assert!(progress.accepted(10, 0));
        assert_eq!(progress.mode, ProgressMode::Replicate);
        for last in [12, 14, 16] {
            assert!(progress.can_send(3));
            progress.sent(last);
        }
        assert!(!progress.can_send(3));
        assert_eq!(progress.next_index, 17);
        assert!(progress.accepted(14, 0));
        assert_eq!(progress.inflight, [16]);
        assert!(progress.can_send(3));
    }

    #[test]
    fn stale_rejections_are_ignored() {
        let mut progress = Progress::new(11, 0);
        progress.accepted(10, 0);
        progress.sent(12);
        progress.sent(14);
        // An append after 8 (older than the match) comes back rejected: ignore it.
        assert!(!progress.rejected(8, 5));
        // The append after 12 is rejected: fall back to probing at the hint.
        assert!(progress.rejected(12, 11));
        assert_eq!((progress.mode, progress.next_index), (ProgressMode::Probe, 11));
        // A late rejection of some other probe is stale.
        assert!(!progress.rejected(12, 3));
        assert_eq!(progress.next_index, 11);
    }
}
