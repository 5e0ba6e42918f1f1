//! A configuration's protobuf form (`chorus.v1.Membership`): in the log's records and on
//! the wire (the transport's codec uses it too), so that both read one format.

use std::collections::BTreeSet;

use bytes::Bytes;
use chorus_proto::v1 as pb;

use crate::replication::{Membership, NodeId};

pub fn encode_membership(membership: &Membership) -> pb::Membership {
    pb::Membership {
        voters: membership.voters.iter().copied().collect(),
        learners: membership.learners.iter().copied().collect(),
        context: membership.context.to_vec(),
    }
}

/// Decodes a configuration; one that lists a node twice is refused here (a set would hide
/// it). What a correct replica would never hold ([`Membership::invalid`]) the core refuses.
pub fn decode_membership(membership: pb::Membership) -> Result<Membership, &'static str> {
    let voters: BTreeSet<NodeId> = membership.voters.iter().copied().collect();
    let learners: BTreeSet<NodeId> = membership.learners.iter().copied().collect();
    if voters.len() != membership.voters.len() || learners.len() != membership.learners.len() {
        return Err("a configuration lists a member twice");
    }
    Ok(Membership { voters, learners, context: Bytes::from(membership.context) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_round_trips_and_a_repeated_member_is_refused() {
        let membership = Membership {
            learners: [4].into(),
            context: Bytes::from_static(b"x"),
            ..Membership::with_voters([1, 2, 3])
        };
        assert_eq!(decode_membership(encode_membership(&membership)), Ok(membership));
        let twice = pb::Membership { voters: vec![1, 1], learners: vec![], context: vec![] };
        assert!(decode_membership(twice).is_err());
    }
}
