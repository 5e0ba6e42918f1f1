//! Target `raft_batch`: the bytes of a `RaftBatch` as a peer sends them. What prost decodes
//! goes through [`BatchGate::admit`], the checks the Raft service runs before the runtime
//! sees a message, once as an unauthenticated peer and once over a connection that proved
//! it is member 2.
//!
//! Properties: nothing panics; a refusal is one of the statuses the service documents,
//! with a short message; an admitted batch is of this cluster, from another member, to this
//! node, within the size bound, and every message in it encodes and decodes to itself.

use std::collections::BTreeSet;

use chorus::transport::{BatchGate, RAFT_BATCH_MESSAGES_MAX, decode_message, encode_message};
use chorus_proto::v1::RaftBatch;
use prost::Message as _;
use tonic::Code;

pub const CLUSTER_ID: &str = "fuzz";
pub const NODE_ID: u64 = 1;
pub const MEMBERS: [u64; 3] = [1, 2, 3];

/// The gate of node 1 of cluster "fuzz", of members 1-3.
pub fn gate() -> BatchGate {
    BatchGate {
        cluster_id: CLUSTER_ID.to_owned(),
        node_id: NODE_ID,
        members: MEMBERS.into_iter().collect::<BTreeSet<_>>(),
    }
}

pub fn run(data: &[u8]) {
    // What prost refuses, tonic refuses before the service runs.
    let Ok(batch) = RaftBatch::decode(data) else { return };
    let gate = gate();
    for sender in [None, Some(2)] {
        match gate.admit(sender, &mut batch.clone()) {
            Ok(messages) => {
                assert_eq!(batch.cluster_id, CLUSTER_ID, "admitted a batch of another cluster");
                assert_eq!(batch.to, NODE_ID, "admitted a batch addressed to another node");
                assert!(batch.from != NODE_ID && MEMBERS.contains(&batch.from), "admitted a non-member");
                assert!(sender.is_none_or(|sender| sender == batch.from), "admitted a member speaking for another");
                assert!(messages.len() <= RAFT_BATCH_MESSAGES_MAX, "admitted an oversized batch");
                assert_eq!(messages.len(), batch.messages.len(), "admitted a batch but lost messages");
                for message in messages {
                    assert_eq!((message.from, message.to), (batch.from, batch.to), "a message changed hands");
                    let again = decode_message(message.from, message.to, encode_message(&message))
                        .expect("an admitted message encodes to one that decodes");
                    assert_eq!(again, message, "an admitted message does not survive encoding");
                }
            }
            Err(status) => {
                assert!(
                    matches!(status.code(), Code::FailedPrecondition | Code::InvalidArgument | Code::PermissionDenied),
                    "refused with an undocumented status: {status:?}"
                );
                assert!(!status.message().is_empty(), "refused without saying why");
                // However much the frame holds, the refusal repeats little of it.
                assert!(status.message().len() < 1024, "a refusal of {} bytes", status.message().len());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeds;

    fn seed(name: &str) -> RaftBatch {
        RaftBatch::decode(&seeds::named("raft_batch", name)[..]).expect("a seed decodes")
    }

    /// The harness reaches both sides of the gate: a batch of every kind of message is
    /// admitted whole, from its member and unauthenticated alike, and strangers are not.
    #[test]
    fn every_kind_is_admitted_and_strangers_are_refused() {
        for sender in [None, Some(2)] {
            assert_eq!(gate().admit(sender, &mut seed("every-kind")).expect("admitted").len(), 8);
        }
        assert_eq!(gate().admit(None, &mut seed("other-cluster")).unwrap_err().code(), Code::FailedPrecondition);
        assert_eq!(gate().admit(None, &mut seed("from-self")).unwrap_err().code(), Code::PermissionDenied);
        assert_eq!(gate().admit(Some(3), &mut seed("heartbeat")).unwrap_err().code(), Code::PermissionDenied);
    }
}
