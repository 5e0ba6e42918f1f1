//! Helpers for the core's unit tests. Each test drives one `Replica` over `MemoryStorage`
//! (openraft's handler tests): it builds a replica in a known role, feeds it one input and
//! asserts on the exact `Ready` it hands out.

use bytes::Bytes;

use super::config::ReplicaConfig;
use super::message::{AppendResult, Message, MessageBody};
use super::ready::Ready;
use super::replica::Replica;
use super::storage::MemoryStorage;
use super::types::{Entry, HardState, LogIndex, LogPosition, Membership, NodeId, Payload, Role, Term};

pub const HEARTBEAT_INTERVAL_MS: u64 = 10;
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 100;
/// By then a replica started at 0 has certainly timed out.
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 200;

pub fn config() -> ReplicaConfig {
    ReplicaConfig {
        heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
        election_timeout_min_ms: ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max_ms: ELECTION_TIMEOUT_MAX_MS,
        ..ReplicaConfig::default()
    }
}

/// A command entry naming its position.
pub fn entry(index: LogIndex, term: Term) -> Entry {
    Entry { term, index, payload: Payload::Command(Bytes::from(format!("{index}@{term}"))) }
}

/// A log of `terms[i]` at index i + 1.
pub fn log(terms: &[Term]) -> Vec<Entry> {
    terms.iter().enumerate().map(|(i, &term)| entry(i as LogIndex + 1, term)).collect()
}

pub fn position(index: LogIndex, term: Term) -> LogPosition {
    LogPosition { term, index }
}

pub fn message(from: NodeId, to: NodeId, term: Term, body: MessageBody) -> Message {
    Message { from, to, term, body }
}

/// An append of round 0 announcing no transfer.
pub fn append(previous: LogPosition, entries: Vec<Entry>, leader_commit: LogIndex) -> MessageBody {
    MessageBody::AppendRequest { previous, entries, leader_commit, heartbeat_round: 0, transfer_target: None }
}

pub fn accepted(match_index: LogIndex, heartbeat_round: u64) -> MessageBody {
    MessageBody::AppendResponse { result: AppendResult::Accepted { match_index }, heartbeat_round }
}

/// Replica `id` of a cluster of `size` (ids 1..=size), started at time 0 on a disk that
/// holds `terms` as its log and `term` with no vote.
pub fn replica(id: NodeId, size: u64, term: Term, terms: &[Term]) -> Replica<MemoryStorage> {
    let storage = MemoryStorage::with_log(HardState { term, vote: None }, log(terms));
    Replica::new(id, Membership::with_voters(1..=size), config(), storage, 0, 1, 0).expect("valid replica")
}

/// Writes what `ready` asks to persist, as the runtime does, and advances.
pub fn persist(replica: &mut Replica<MemoryStorage>, ready: &Ready) {
    if let Some(hard_state) = ready.hard_state {
        replica.storage_mut().set_hard_state(hard_state);
    }
    replica.storage_mut().append(ready.truncate_from, &ready.entries);
    replica.advance().expect("memory storage does not fail");
}

/// Takes the next `Ready`, handles it, and returns it.
pub fn handle_ready(replica: &mut Replica<MemoryStorage>) -> Ready {
    let ready = replica.ready().expect("memory storage does not fail");
    persist(replica, &ready);
    ready
}

/// Replica 1 of 3 that has just won the election of `term + 1` from a disk holding `terms`
/// in `term`, with node 2's votes. Its first `Ready` as leader is handled (the no-op is
/// durable and went out to both followers in one append each); neither has answered.
pub fn leader(term: Term, terms: &[Term]) -> Replica<MemoryStorage> {
    let mut replica = replica(1, 3, term, terms);
    replica.tick(ELECTION_TIMEOUT_MAX_MS).unwrap();
    handle_ready(&mut replica);
    replica.step(message(2, 1, term + 1, MessageBody::PreVoteResponse { granted: true })).unwrap();
    handle_ready(&mut replica);
    replica.step(message(2, 1, term + 1, MessageBody::VoteResponse { granted: true })).unwrap();
    handle_ready(&mut replica);
    assert_eq!((replica.role(), replica.term()), (Role::Leader, term + 1));
    replica
}

/// [`leader`], with both followers' logs known to match its own through the no-op, which
/// has committed, and the new commit index sent to both.
pub fn leader_with_followers_caught_up(term: Term, terms: &[Term]) -> Replica<MemoryStorage> {
    let mut replica = leader(term, terms);
    let noop_index = replica.last_index();
    for follower in [2, 3] {
        replica.step(message(follower, 1, term + 1, accepted(noop_index, 0))).unwrap();
        handle_ready(&mut replica);
    }
    assert_eq!(replica.commit_index(), noop_index);
    replica
}
