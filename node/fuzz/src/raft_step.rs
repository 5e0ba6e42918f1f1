//! Target `raft_step`: one peer message, admitted by the Raft service's gate, stepped into
//! replica 1 of a cluster of 3 in each of its roles (follower, pre-candidate, candidate,
//! leader; term 2 or 3 over a log of terms 1, 1, 2, nothing committed), then the `Ready`
//! it produces carried out and the replica ticked on.
//!
//! One message, not a run of them: Raft trusts its members, and a run of well-formed lies
//! (an acknowledgement that commits an entry, then an append from a "leader" that
//! overwrites it) breaks the core's safety assertions by design. A single message against
//! a replica with nothing committed can break nothing that a correct member relies on, so
//! any panic here is a defect: arithmetic on a peer's numbers, a state the core did not
//! expect, an impossible message its filter let through.
//!
//! Properties: nothing panics; a message the core refuses (counted in `messages_refused`)
//! changes nothing (term, role, no `Ready`); no term past `TERM_MAX` is ever adopted.
//!
//! Input: a role byte, then a `RaftBatch` whose first message is stepped.

use bytes::Bytes;
use chorus::replication::{
    Entry, HardState, Membership, MemoryStorage, Message, MessageBody, Payload, Replica, ReplicaConfig, TERM_MAX,
};
use chorus_proto::v1::RaftBatch;
use prost::Message as _;

use crate::raft_batch;

const ELECTION_TIMEOUT_MAX_MS: u64 = 200;
pub const ROLES: u8 = 4;

fn config() -> ReplicaConfig {
    ReplicaConfig {
        heartbeat_interval_ms: 10,
        election_timeout_min_ms: 100,
        election_timeout_max_ms: ELECTION_TIMEOUT_MAX_MS,
        ..ReplicaConfig::default()
    }
}

/// Writes what `ready` asks to persist, as the runtime does, and advances.
fn handle_ready(replica: &mut Replica<MemoryStorage>) {
    let ready = replica.ready().expect("memory storage does not fail");
    if let Some(hard_state) = ready.hard_state {
        replica.storage_mut().set_hard_state(hard_state);
    }
    replica.storage_mut().append(ready.truncate_from, &ready.entries);
    replica.advance().expect("memory storage does not fail");
}

/// Replica 1 of 3, in role `role` (0 follower, 1 pre-candidate, 2 candidate, 3 leader),
/// with every `Ready` so far carried out.
pub fn replica_in(role: u8) -> Replica<MemoryStorage> {
    let entries = (1..)
        .zip([1, 1, 2])
        .map(|(index, term)| Entry { term, index, payload: Payload::Command(Bytes::from(format!("{index}@{term}"))) })
        .collect();
    let storage = MemoryStorage::with_log(HardState { term: 2, vote: None }, entries);
    let members = Membership::with_voters([1, 2, 3]);
    let mut replica = Replica::new(1, members, config(), storage, 0, 1, 0).expect("a valid replica");
    let from_2 = |body| Message { from: 2, to: 1, term: 3, body };
    if role >= 1 {
        replica.tick(ELECTION_TIMEOUT_MAX_MS).expect("memory storage does not fail");
        handle_ready(&mut replica);
    }
    if role >= 2 {
        replica.step(from_2(MessageBody::PreVoteResponse { granted: true })).expect("memory storage does not fail");
        handle_ready(&mut replica);
    }
    if role >= 3 {
        replica.step(from_2(MessageBody::VoteResponse { granted: true })).expect("memory storage does not fail");
        handle_ready(&mut replica);
    }
    replica
}

pub fn run(data: &[u8]) {
    let Some((&role, frame)) = data.split_first() else { return };
    let Ok(mut batch) = RaftBatch::decode(frame) else { return };
    let Ok(messages) = raft_batch::gate().admit(None, &mut batch) else { return };
    let Some(message) = messages.into_iter().next() else { return };
    let mut replica = replica_in(role % ROLES);
    let (term, role, refused, had_ready) =
        (replica.term(), replica.role(), replica.status().messages_refused, replica.has_ready());
    replica.step(message).expect("memory storage does not fail");
    if replica.status().messages_refused > refused {
        assert_eq!((replica.term(), replica.role()), (term, role), "a refused message changed the replica");
        assert_eq!(replica.has_ready(), had_ready, "a refused message produced work");
    }
    assert!(replica.term() <= TERM_MAX, "adopted term {}", replica.term());
    handle_ready(&mut replica);
    for now in [2, 3].map(|n| n * ELECTION_TIMEOUT_MAX_MS) {
        replica.tick(now).expect("memory storage does not fail");
        handle_ready(&mut replica);
        assert!(replica.term() <= TERM_MAX, "adopted term {}", replica.term());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus::replication::Role;

    /// The harness builds every role it claims to.
    #[test]
    fn the_replica_is_built_in_each_role() {
        let roles: Vec<Role> = (0..ROLES).map(|role| replica_in(role).role()).collect();
        assert_eq!(roles, [Role::Follower, Role::PreCandidate, Role::Candidate, Role::Leader]);
    }
}
