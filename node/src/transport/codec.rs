//! Conversion between the replication core's messages and their protobuf form. Decoding
//! checks that every required field is present; what it cannot check (the protocol's own
//! consistency) the core checks before acting.

use bytes::Bytes;
use chorus_proto::v1 as pb;

use crate::replication::{
    AppendResult, Entry, LogPosition, Membership, Message, MessageBody, NodeId, Payload, SnapshotMeta,
};
use crate::storage::encode_membership;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed Raft message: {0}")]
pub struct DecodeError(pub &'static str);

pub fn encode_message(message: &Message) -> pb::RaftMessage {
    use pb::raft_message::Body;
    let body = match &message.body {
        MessageBody::PreVoteRequest { last_log, leadership_transfer } => Body::PreVoteRequest(pb::PreVoteRequest {
            last_log: Some(encode_position(*last_log)),
            leadership_transfer: *leadership_transfer,
        }),
        MessageBody::PreVoteResponse { granted } => Body::PreVoteResponse(pb::VoteResponse { granted: *granted }),
        MessageBody::VoteRequest { last_log, leadership_transfer } => Body::VoteRequest(pb::VoteRequest {
            last_log: Some(encode_position(*last_log)),
            leadership_transfer: *leadership_transfer,
        }),
        MessageBody::VoteResponse { granted } => Body::VoteResponse(pb::VoteResponse { granted: *granted }),
        MessageBody::AppendRequest { previous, entries, leader_commit, heartbeat_round, transfer_target } => {
            Body::AppendRequest(pb::AppendRequest {
                previous: Some(encode_position(*previous)),
                entries: entries.iter().map(encode_entry).collect(),
                leader_commit: *leader_commit,
                heartbeat_round: *heartbeat_round,
                transfer_target: transfer_target.unwrap_or(0),
            })
        }
        MessageBody::AppendResponse { result, heartbeat_round } => {
            let result = match *result {
                AppendResult::Accepted { match_index } => {
                    pb::append_response::Result::Accepted(pb::AppendAccepted { match_index })
                }
                AppendResult::Rejected { rejected_previous, conflict_term, first_index_of_term } => {
                    pb::append_response::Result::Rejected(pb::AppendRejected {
                        rejected_previous,
                        conflict_term,
                        first_index_of_term,
                    })
                }
            };
            Body::AppendResponse(pb::AppendResponse { heartbeat_round: *heartbeat_round, result: Some(result) })
        }
        MessageBody::TimeoutNow { last_log } => {
            Body::TimeoutNow(pb::TimeoutNow { last_log: Some(encode_position(*last_log)) })
        }
        MessageBody::InstallSnapshot { snapshot } => Body::InstallSnapshot(pb::InstallSnapshot {
            last_included: Some(encode_position(snapshot.last_included)),
            members: snapshot.membership.voters.iter().copied().collect(),
            membership: Some(encode_membership(&snapshot.membership)),
        }),
    };
    pb::RaftMessage { term: message.term, body: Some(body) }
}

pub fn decode_message(from: NodeId, to: NodeId, message: pb::RaftMessage) -> Result<Message, DecodeError> {
    use pb::raft_message::Body;
    let body = match message.body.ok_or(DecodeError("no body"))? {
        Body::PreVoteRequest(request) => MessageBody::PreVoteRequest {
            last_log: decode_position(request.last_log)?,
            leadership_transfer: request.leadership_transfer,
        },
        Body::PreVoteResponse(response) => MessageBody::PreVoteResponse { granted: response.granted },
        Body::VoteRequest(request) => MessageBody::VoteRequest {
            last_log: decode_position(request.last_log)?,
            leadership_transfer: request.leadership_transfer,
        },
        Body::VoteResponse(response) => MessageBody::VoteResponse { granted: response.granted },
        Body::AppendRequest(request) => MessageBody::AppendRequest {
            previous: decode_position(request.previous)?,
            entries: request.entries.into_iter().map(decode_entry).collect::<Result<_, _>>()?,
            leader_commit: request.leader_commit,
            heartbeat_round: request.heartbeat_round,
            transfer_target: Some(request.transfer_target).filter(|&target| target != 0),
        },
        Body::AppendResponse(response) => {
            let result = match response.result.ok_or(DecodeError("append response without a result"))? {
                pb::append_response::Result::Accepted(accepted) => {
                    AppendResult::Accepted { match_index: accepted.match_index }
                }
                pb::append_response::Result::Rejected(rejected) => AppendResult::Rejected {
                    rejected_previous: rejected.rejected_previous,
                    conflict_term: rejected.conflict_term,
                    first_index_of_term: rejected.first_index_of_term,
                },
            };
            MessageBody::AppendResponse { result, heartbeat_round: response.heartbeat_round }
        }
        Body::TimeoutNow(request) => MessageBody::TimeoutNow { last_log: decode_position(request.last_log)? },
        Body::InstallSnapshot(request) => {
            let membership = match request.membership {
                Some(membership) => decode_membership(membership)?,
                // From a node built before membership changes: its voters are all of it.
                None => {
                    decode_membership(pb::Membership { voters: request.members, learners: vec![], context: vec![] })?
                }
            };
            let last_included = decode_position(request.last_included)?;
            MessageBody::InstallSnapshot { snapshot: SnapshotMeta { last_included, membership } }
        }
    };
    Ok(Message { from, to, term: message.term, body })
}

fn encode_position(position: LogPosition) -> pb::LogPosition {
    pb::LogPosition { term: position.term, index: position.index }
}

fn decode_position(position: Option<pb::LogPosition>) -> Result<LogPosition, DecodeError> {
    let position = position.ok_or(DecodeError("missing log position"))?;
    Ok(LogPosition { term: position.term, index: position.index })
}

fn encode_entry(entry: &Entry) -> pb::LogEntry {
    let payload = match &entry.payload {
        Payload::Noop => pb::log_entry::Payload::Noop(pb::NoopPayload {}),
        Payload::Command(bytes) => pb::log_entry::Payload::Command(bytes.clone()),
        Payload::Membership(membership) => pb::log_entry::Payload::Membership(encode_membership(membership)),
    };
    pb::LogEntry { term: entry.term, index: entry.index, payload: Some(payload) }
}

fn decode_entry(entry: pb::LogEntry) -> Result<Entry, DecodeError> {
    let payload = match entry.payload.ok_or(DecodeError("log entry without a payload"))? {
        pb::log_entry::Payload::Noop(_) => Payload::Noop,
        // Copied out of the frame: decoded without a copy, the payload would be a slice of
        // the whole batch's buffer and keep all of it alive (a 1-byte command padded to
        // 8 MiB with unknown fields) while it waits in the inbox or the log's cache, which
        // count only the payload.
        pb::log_entry::Payload::Command(bytes) => Payload::Command(Bytes::copy_from_slice(&bytes)),
        pb::log_entry::Payload::Membership(membership) => Payload::Membership(decode_membership(membership)?),
    };
    Ok(Entry { term: entry.term, index: entry.index, payload })
}

/// Decodes a configuration on the wire (see `storage::decode_membership`).
fn decode_membership(membership: pb::Membership) -> Result<Membership, DecodeError> {
    crate::storage::decode_membership(membership).map_err(DecodeError)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn every_message_kind_round_trips() {
        let position = LogPosition { term: 3, index: 9 };
        let bodies = [
            MessageBody::PreVoteRequest { last_log: position, leadership_transfer: true },
            MessageBody::PreVoteResponse { granted: true },
            MessageBody::VoteRequest { last_log: position, leadership_transfer: true },
            MessageBody::VoteResponse { granted: false },
            MessageBody::AppendRequest {
                previous: position,
                entries: vec![
                    Entry { term: 3, index: 10, payload: Payload::Noop },
                    Entry { term: 4, index: 11, payload: Payload::Command(Bytes::from_static(b"cmd")) },
                    Entry { term: 4, index: 12, payload: Payload::Membership(Membership::with_voters([1, 2])) },
                ],
                leader_commit: 8,
                heartbeat_round: 5,
                transfer_target: Some(3),
            },
            MessageBody::AppendResponse { result: AppendResult::Accepted { match_index: 11 }, heartbeat_round: 5 },
            MessageBody::AppendResponse {
                result: AppendResult::Rejected { rejected_previous: 9, conflict_term: Some(2), first_index_of_term: 6 },
                heartbeat_round: 0,
            },
            MessageBody::TimeoutNow { last_log: position },
            MessageBody::InstallSnapshot {
                snapshot: SnapshotMeta {
                    last_included: position,
                    membership: Membership {
                        voters: [1, 2, 3].into(),
                        learners: [4].into(),
                        context: Bytes::from_static(b"addresses"),
                    },
                },
            },
        ];
        for body in bodies {
            let message = Message { from: 1, to: 2, term: 4, body };
            assert_eq!(decode_message(1, 2, encode_message(&message)).unwrap(), message);
        }
    }

    /// A snapshot offer from a node built before membership changes (voters in field 2, no
    /// configuration) reads as those voters.
    #[test]
    fn an_old_nodes_snapshot_offer_reads_as_its_voters() {
        let old = pb::RaftMessage {
            term: 2,
            body: Some(pb::raft_message::Body::InstallSnapshot(pb::InstallSnapshot {
                last_included: Some(pb::LogPosition { term: 2, index: 9 }),
                members: vec![1, 2, 3],
                membership: None,
            })),
        };
        let decoded = decode_message(1, 2, old).unwrap();
        let MessageBody::InstallSnapshot { snapshot } = decoded.body else { panic!("{decoded:?}") };
        assert_eq!(snapshot.membership, Membership::with_voters([1, 2, 3]));
    }

    #[test]
    fn missing_fields_are_errors() {
        assert!(decode_message(1, 2, pb::RaftMessage { term: 1, body: None }).is_err());
        let no_position = pb::RaftMessage {
            term: 1,
            body: Some(pb::raft_message::Body::PreVoteRequest(pb::PreVoteRequest {
                last_log: None,
                leadership_transfer: false,
            })),
        };
        assert!(decode_message(1, 2, no_position).is_err());
    }

    /// A decoded payload owns its bytes: it does not keep the frame it came in alive. (A
    /// 1-byte command in an 8 MiB frame, counted as 1 byte by the inbox, pinned the whole
    /// frame.)
    #[test]
    fn a_decoded_payload_does_not_hold_its_frame() {
        let message = Message {
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::AppendRequest {
                previous: LogPosition { term: 1, index: 0 },
                entries: vec![Entry { term: 1, index: 1, payload: Payload::Command(Bytes::from_static(b"x")) }],
                leader_commit: 0,
                heartbeat_round: 0,
                transfer_target: None,
            },
        };
        let batch = pb::RaftBatch { cluster_id: "c".into(), from: 1, to: 2, messages: vec![encode_message(&message)] };
        let frame = Bytes::from(batch.encode_to_vec());
        let decoded = pb::RaftBatch::decode(frame.clone()).unwrap();
        let decoded = decode_message(1, 2, decoded.messages.into_iter().next().unwrap()).unwrap();
        let MessageBody::AppendRequest { entries, .. } = &decoded.body else { panic!("{decoded:?}") };
        let Payload::Command(payload) = &entries[0].payload else { panic!("{entries:?}") };
        assert_eq!(&payload[..], b"x");
        let frame_range = frame.as_ptr_range();
        assert!(!frame_range.contains(&payload.as_ptr()), "the payload is a slice of the frame");
    }
}
