//! Snapshots (Raft dissertation §5.1 and §5.3): a leader whose log no longer holds what a
//! follower needs sends it a snapshot instead; the follower installs it, replacing its log
//! and its state machine, and replication resumes after the snapshot's last entry.
//!
//! The core never sees a snapshot's data. The caller takes snapshots of its state machine,
//! records them in its storage (`Storage::snapshot`) and compacts the log behind them; the
//! leader's `InstallSnapshot` names the latest, and the transport streams the data beside
//! it, delivering the message only once the data is staged whole at the follower. The
//! follower decides at its next `Ready` whether to install it (see
//! [`Replica::take_snapshot_to_install`]); the caller installs it atomically with that
//! `Ready`, and only then does the acknowledgement leave.

use super::message::{AppendResult, MessageBody};
use super::progress::ProgressMode;
use super::replica::{Replica, RoleState};
use super::storage::{Storage, StorageError};
use super::types::{NodeId, SnapshotMeta};

/// How long a leader waits for a follower to acknowledge a snapshot before sending it
/// again, when the transport reports nothing (it normally reports every transfer's end, see
/// [`Replica::report_snapshot`]): long, because a large snapshot takes a while to stream.
pub(super) const SNAPSHOT_ACK_TIMEOUT_MS: u64 = 60_000;

/// How a snapshot transfer the transport carried out ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotTransfer {
    /// The follower received the data whole and was handed the `InstallSnapshot`.
    Delivered,
    /// The transfer broke off, or the follower refused it: send it again later.
    Failed,
}

impl<S: Storage> Replica<S> {
    pub(super) fn handle_install_snapshot(&mut self, from: NodeId, snapshot: SnapshotMeta) -> Result<(), StorageError> {
        if matches!(self.role, RoleState::Leader(_)) {
            tracing::error!(
                term = self.term,
                from,
                "received a snapshot from another leader of this node's own term; ignoring it"
            );
            return Ok(());
        }
        if !matches!(self.role, RoleState::Follower) || self.leader != Some(from) {
            self.become_follower(self.term, Some(from));
        }
        self.last_leader_contact_ms = Some(self.now_ms);
        self.reset_election_deadline();
        let newer = self
            .snapshot_offered
            .as_ref()
            .is_none_or(|(_, offered)| offered.last_included.index <= snapshot.last_included.index);
        if newer {
            self.snapshot_offered = Some((from, snapshot));
        }
        Ok(())
    }

    /// Settles the snapshot a leader offered, for the `Ready` being built: installs it if
    /// this log lacks its last entry (returning it, for the caller to install), or else
    /// acknowledges what this log already holds. Decided here, with no `Ready` outstanding,
    /// rather than when the message arrived: entries accepted meanwhile from the same
    /// leader (which agree with it) may make the install unnecessary, and the log is never
    /// reset under a `Ready` the caller is still writing.
    pub(super) fn take_snapshot_to_install(&mut self) -> Result<Option<SnapshotMeta>, StorageError> {
        let Some((leader, snapshot)) = self.snapshot_offered.take() else { return Ok(None) };
        let position = snapshot.last_included;
        let committed = self.log.committed();
        let install = if position.index <= committed {
            // Everything it covers is committed here already (and so matches the leader).
            None
        } else if self.log.matches(position)? {
            // §5.3 (figure 5.3, step 6): this log holds the snapshot's last entry, so it
            // matches the leader's through it; keep it and what follows, and commit.
            self.log.commit_to(position.index);
            None
        } else {
            Some(snapshot)
        };
        let match_index = match &install {
            Some(snapshot) => {
                tracing::info!(
                    term = self.term,
                    index = position.index,
                    leader,
                    "installing a snapshot from the leader"
                );
                // Leaves nothing committed to hand out in this `Ready`: the state machine
                // resumes after the snapshot.
                self.log.install_snapshot(position);
                self.configs.reset(position.index, snapshot.membership.clone(), self.id);
                position.index
            }
            None => position.index.max(committed),
        };
        // After persisting: the leader counts this follower as holding everything through
        // `match_index`, which is true only once the snapshot is installed.
        let result = AppendResult::Accepted { match_index };
        self.send(leader, MessageBody::AppendResponse { result, heartbeat_round: 0 });
        Ok(install)
    }

    /// The transport's report on a snapshot it streamed to `follower`. A failed transfer is
    /// tried again after a pause (a follower that cannot take it is not flooded); a
    /// delivered one waits for the follower's acknowledgement.
    pub fn report_snapshot(&mut self, follower: NodeId, transfer: SnapshotTransfer) {
        let Some((leader, cx)) = self.leader_parts() else { return };
        let next_round = leader.heartbeat_round + 1;
        let Some(progress) = leader.progress.get_mut(&follower) else { return };
        if !matches!(progress.mode, ProgressMode::Snapshot { .. }) {
            return;
        }
        match transfer {
            SnapshotTransfer::Failed => {
                // An election timeout, doubling with each failure in a row up to a minute:
                // a follower that is down (or cannot take it) is not sent a whole snapshot
                // every second.
                let pause = cx.config.election_timeout_min_ms.saturating_mul(1 << progress.snapshot_failures.min(6));
                progress.snapshot_failures = progress.snapshot_failures.saturating_add(1);
                tracing::info!(
                    follower,
                    pause_ms = pause.min(SNAPSHOT_ACK_TIMEOUT_MS),
                    "snapshot transfer failed; sending it again later"
                );
                progress.snapshot_deadline_ms = cx.now_ms + pause.min(SNAPSHOT_ACK_TIMEOUT_MS);
            }
            SnapshotTransfer::Delivered => {
                progress.snapshot_failures = 0;
                progress.snapshot_delivered_round.get_or_insert(next_round);
                // Installing a large snapshot takes a while: the wait starts again from here.
                progress.snapshot_deadline_ms = cx.now_ms + SNAPSHOT_ACK_TIMEOUT_MS;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ready::Ready;
    use super::super::test_support::*;
    use super::super::types::{HardState, LogIndex, LogPosition, Membership, Term};
    use super::*;

    fn snapshot_through(index: LogIndex, term: Term) -> SnapshotMeta {
        SnapshotMeta { last_included: position(index, term), membership: Membership::with_voters([1, 2, 3]) }
    }

    fn offer(index: LogIndex, term: Term) -> MessageBody {
        MessageBody::InstallSnapshot { snapshot: snapshot_through(index, term) }
    }

    /// Writes what `ready` asks, installing its snapshot first, as the runtime does.
    fn persist_with_snapshot(replica: &mut Replica<crate::replication::MemoryStorage>, ready: &Ready) {
        if let Some(snapshot) = &ready.snapshot {
            replica.storage_mut().install_snapshot(snapshot.clone());
        }
        persist(replica, ready);
    }

    /// §5.3: a follower lacking the snapshot's last entry installs it: the `Ready` asks for
    /// the install, hands out nothing to apply (the state resumes after the snapshot) and
    /// acknowledges the snapshot only after persisting; appends after it are then accepted.
    #[test]
    fn a_follower_lacking_the_snapshots_last_entry_installs_it_and_resumes_after_it() {
        let mut replica = replica(1, 3, 1, &[1, 1]);
        replica.step(message(2, 1, 2, offer(10, 2))).unwrap();
        let ready = replica.ready().unwrap();
        assert_eq!(ready.snapshot, Some(snapshot_through(10, 2)));
        assert_eq!(ready.committed_entries, []);
        assert_eq!(ready.messages, []);
        assert_eq!(ready.messages_after_persist, [message(1, 2, 2, accepted(10, 0))]);
        persist_with_snapshot(&mut replica, &ready);
        assert_eq!((replica.first_index().unwrap(), replica.last_index(), replica.commit_index()), (11, 10, 10));
        replica.step(message(2, 1, 2, append(position(10, 2), vec![entry(11, 2)], 11))).unwrap();
        let ready = handle_ready(&mut replica);
        assert_eq!(ready.entries, [entry(11, 2)]);
        assert_eq!(ready.committed_entries, [entry(11, 2)]);
        assert_eq!(ready.messages_after_persist, [message(1, 2, 2, accepted(11, 0))]);
    }

    /// §5.3 (figure 5.3, step 6): a log holding the snapshot's last entry keeps it and what
    /// follows; the entries through it commit, nothing is installed.
    #[test]
    fn a_log_holding_the_snapshots_last_entry_is_kept() {
        let mut replica = replica(1, 3, 1, &[1, 1, 1, 1]);
        replica.step(message(2, 1, 1, offer(3, 1))).unwrap();
        let ready = replica.ready().unwrap();
        assert_eq!(ready.snapshot, None);
        assert_eq!(ready.committed_entries, log(&[1, 1, 1]));
        assert_eq!(ready.messages_after_persist, [message(1, 2, 1, accepted(3, 0))]);
        persist(&mut replica, &ready);
        assert_eq!((replica.first_index().unwrap(), replica.last_index()), (1, 4));
    }

    /// A snapshot offered by the leader of an older term is forgotten when a newer leader
    /// is heard: installing it would wipe out entries this replica acknowledged since.
    #[test]
    fn a_snapshot_offered_in_an_older_term_is_dropped_on_a_newer_leaders_append() {
        let mut replica = replica(1, 3, 1, &[1]);
        replica.step(message(2, 1, 1, offer(5, 1))).unwrap();
        replica.step(message(3, 1, 2, append(position(1, 1), vec![entry(2, 2)], 0))).unwrap();
        let ready = replica.ready().unwrap();
        assert_eq!(ready.snapshot, None);
        assert_eq!(ready.entries, [entry(2, 2)]);
        assert_eq!(ready.hard_state, Some(HardState { term: 2, vote: None }));
        assert_eq!(ready.messages_after_persist, [message(1, 3, 2, accepted(2, 0))]);
    }

    /// A snapshot of what is already committed here only gets the commit index back.
    #[test]
    fn a_snapshot_behind_the_commit_index_is_answered_with_it() {
        let mut replica = replica(1, 3, 1, &[1, 1, 1]);
        replica.step(message(2, 1, 1, append(position(3, 1), vec![], 3))).unwrap();
        handle_ready(&mut replica);
        replica.step(message(2, 1, 1, offer(2, 1))).unwrap();
        let ready = replica.ready().unwrap();
        assert_eq!(ready.snapshot, None);
        assert_eq!(ready.messages_after_persist, [message(1, 2, 1, accepted(3, 0))]);
    }

    /// A leader whose log was compacted past what a follower needs sends the snapshot,
    /// sends nothing else but heartbeats while waiting, tries again a pause after a failed
    /// transfer, and replicates after the snapshot once it is acknowledged.
    #[test]
    fn a_leader_sends_a_snapshot_for_compacted_entries_and_waits_for_it() {
        let mut leader = leader(1, &[1, 1, 1]);
        let noop = leader.last_index();
        let term = leader.term();
        leader.step(message(2, 1, term, accepted(noop, 0))).unwrap();
        handle_ready(&mut leader);
        leader.storage_mut().record_snapshot(snapshot_through(noop, term));
        leader.storage_mut().compact(noop);
        // Node 3's log is empty: it refuses the no-op's append.
        let rejected =
            AppendResult::Rejected { rejected_previous: noop - 1, conflict_term: None, first_index_of_term: 1 };
        leader.step(message(3, 1, term, MessageBody::AppendResponse { result: rejected, heartbeat_round: 0 })).unwrap();
        let ready = handle_ready(&mut leader);
        assert_eq!(ready.messages, [message(1, 3, term, offer(noop, term))]);
        // Waiting: a new entry goes to node 2 only.
        leader.propose(bytes::Bytes::from_static(b"x")).unwrap();
        let ready = handle_ready(&mut leader);
        assert!(ready.messages.iter().all(|m| m.to == 2), "{:?}", ready.messages);
        // The transfer fails: sent again once the pause is over, not before.
        leader.report_snapshot(3, SnapshotTransfer::Failed);
        let now = ELECTION_TIMEOUT_MAX_MS + ELECTION_TIMEOUT_MIN_MS / 2;
        leader.tick(now).unwrap();
        let ready = handle_ready(&mut leader);
        assert!(!ready.messages.iter().any(|m| matches!(m.body, MessageBody::InstallSnapshot { .. })));
        leader.tick(now + ELECTION_TIMEOUT_MIN_MS).unwrap();
        let ready = handle_ready(&mut leader);
        assert!(ready.messages.contains(&message(1, 3, term, offer(noop, term))), "{:?}", ready.messages);
        // Acknowledged: the next entries follow the snapshot.
        leader.step(message(3, 1, term, accepted(noop, 0))).unwrap();
        let ready = handle_ready(&mut leader);
        let to_3: Vec<&MessageBody> = ready.messages.iter().filter(|m| m.to == 3).map(|m| &m.body).collect();
        assert!(
            matches!(to_3.as_slice(), [MessageBody::AppendRequest { previous, entries, .. }]
                if *previous == LogPosition { term, index: noop } && entries.len() == 1),
            "{to_3:?}"
        );
    }
}
