//! The receiving side of the gRPC transport: the `chorus.v1.Raft` service. It checks that
//! a batch belongs to this cluster, comes from a member and is addressed to this node,
//! decodes it, and hands the messages to the runtime. Anything else is refused and logged.

use std::collections::BTreeSet;

use chorus_proto::v1::raft_server::Raft;
use chorus_proto::v1::{RaftBatch, RaftBatchAck};
use tonic::{Request, Response, Status};

use super::RAFT_BATCH_MESSAGES_MAX;
use super::codec::decode_message;
use super::inbox::InboxSender;
use crate::replication::NodeId;

pub struct RaftService {
    cluster_id: String,
    node_id: NodeId,
    members: BTreeSet<NodeId>,
    inbox: InboxSender,
}

impl RaftService {
    pub fn new(cluster_id: String, node_id: NodeId, members: BTreeSet<NodeId>, inbox: InboxSender) -> Self {
        Self { cluster_id, node_id, members, inbox }
    }

    fn refuse(&self, batch: &RaftBatch, status: Status) -> Status {
        // The node is named here, not only by the span: under madsim the peer server runs
        // its handlers outside the node's span (real tonic's `trace_fn` puts them in it).
        tracing::warn!(
            node = self.node_id,
            from = batch.from,
            cluster = %batch.cluster_id,
            reason = %status.message(),
            "refused a Raft batch"
        );
        status
    }
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn deliver(&self, request: Request<RaftBatch>) -> Result<Response<RaftBatchAck>, Status> {
        let mut batch = request.into_inner();
        if batch.cluster_id != self.cluster_id {
            let message = format!("this node belongs to cluster '{}', not '{}'", self.cluster_id, batch.cluster_id);
            return Err(self.refuse(&batch, Status::failed_precondition(message)));
        }
        if batch.to != self.node_id {
            let message = format!("this is node {}, not node {}", self.node_id, batch.to);
            return Err(self.refuse(&batch, Status::invalid_argument(message)));
        }
        if batch.from == self.node_id || !self.members.contains(&batch.from) {
            let message = format!("node {} is not a member of cluster '{}'", batch.from, self.cluster_id);
            return Err(self.refuse(&batch, Status::permission_denied(message)));
        }
        if batch.messages.len() > RAFT_BATCH_MESSAGES_MAX {
            let message =
                format!("a batch holds at most {RAFT_BATCH_MESSAGES_MAX} messages, this one {}", batch.messages.len());
            return Err(self.refuse(&batch, Status::invalid_argument(message)));
        }
        let encoded = std::mem::take(&mut batch.messages);
        let mut messages = Vec::with_capacity(encoded.len());
        for message in encoded {
            match decode_message(batch.from, batch.to, message) {
                Ok(message) => messages.push(message),
                Err(error) => return Err(self.refuse(&batch, Status::invalid_argument(error.to_string()))),
            }
        }
        for message in messages {
            // A full inbox means the runtime is behind; dropping is what the network would
            // do, and Raft retransmits.
            if !self.inbox.try_send(message) {
                tracing::debug!(node = self.node_id, from = batch.from, "inbox full; message dropped");
            }
        }
        Ok(Response::new(RaftBatchAck {}))
    }
}
