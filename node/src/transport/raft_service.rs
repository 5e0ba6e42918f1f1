//! The receiving side of the gRPC transport: the `chorus.v1.Raft` service. It checks that
//! a batch belongs to this cluster, comes from a member (the one the connection's
//! certificate names, under TLS) and is addressed to this node, decodes it, and hands the
//! messages to the runtime. Anything else is refused, logged and counted.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chorus_proto::v1::raft_server::Raft;
use chorus_proto::v1::{RaftBatch, RaftBatchAck};
use tonic::{Request, Response, Status};

use super::RAFT_BATCH_MESSAGES_MAX;
use super::codec::decode_message;
use super::inbox::InboxSender;
use crate::replication::{Message, MessageBody, NodeId};

/// How the peer service learns who sent a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAuthentication {
    /// From the connection's client certificate, verified against the cluster's CA at the
    /// handshake (mutual TLS): a batch must come from the member it names.
    #[cfg(not(madsim))]
    Certificate,
    /// Not at all (`--insecure`, and the simulation, whose network has no TLS): any
    /// process that reaches the peer port can speak for any member.
    Unauthenticated,
}

/// What a batch must be to be taken: of this cluster, from another member (the one the
/// connection proved it is, when peers are authenticated), to this node, within the size
/// bounds, and made of messages that decode. Pure, so that the fuzz target drives the very
/// checks the service runs.
#[derive(Debug, Clone)]
pub struct BatchGate {
    pub cluster_id: String,
    pub node_id: NodeId,
    pub members: BTreeSet<NodeId>,
}

impl BatchGate {
    /// The batch's messages, decoded (taken out of it), or the status that refuses it.
    /// `sender` is the member the connection's certificate names (`None` when peers are
    /// unauthenticated).
    pub fn admit(&self, sender: Option<NodeId>, batch: &mut RaftBatch) -> Result<Vec<Message>, Status> {
        if batch.cluster_id != self.cluster_id {
            let message =
                format!("this node belongs to cluster '{}', not '{}'", self.cluster_id, shown(&batch.cluster_id));
            return Err(Status::failed_precondition(message));
        }
        if batch.to != self.node_id {
            let message = format!("this is node {}, not node {}", self.node_id, batch.to);
            return Err(Status::invalid_argument(message));
        }
        if batch.from == self.node_id || !self.members.contains(&batch.from) {
            let message = format!("node {} is not a member of cluster '{}'", batch.from, self.cluster_id);
            return Err(Status::permission_denied(message));
        }
        if let Some(sender) = sender
            && sender != batch.from
        {
            // A member's certificate does not let it speak for another member.
            let message = format!("this connection is node {sender}'s; it cannot send for node {}", batch.from);
            return Err(Status::permission_denied(message));
        }
        if batch.messages.len() > RAFT_BATCH_MESSAGES_MAX {
            let message =
                format!("a batch holds at most {RAFT_BATCH_MESSAGES_MAX} messages, this one {}", batch.messages.len());
            return Err(Status::invalid_argument(message));
        }
        let (from, to) = (batch.from, batch.to);
        let messages = std::mem::take(&mut batch.messages)
            .into_iter()
            .map(|message| decode_message(from, to, message))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        if messages.iter().any(|message| matches!(message.body, MessageBody::InstallSnapshot { .. })) {
            // Installing needs the data, which only the InstallSnapshot stream carries.
            return Err(Status::invalid_argument(
                "an InstallSnapshot message travels only in the InstallSnapshot stream, with its data",
            ));
        }
        Ok(messages)
    }
}

/// Most characters of a peer's cluster id that a status or a log line repeats: a frame
/// may carry megabytes in it.
const CLUSTER_ID_SHOWN_CHARS_MAX: usize = 64;

/// `cluster_id` as statuses and log lines show it: cut at
/// [`CLUSTER_ID_SHOWN_CHARS_MAX`] characters, and escaped (a peer's newline must not
/// forge a log line).
fn shown(cluster_id: &str) -> String {
    let mut shown: String = cluster_id.chars().take(CLUSTER_ID_SHOWN_CHARS_MAX).flat_map(char::escape_debug).collect();
    if cluster_id.chars().nth(CLUSTER_ID_SHOWN_CHARS_MAX).is_some() {
        shown.push_str("...");
    }
    shown
}

pub struct RaftService {
    gate: BatchGate,
    inbox: InboxSender,
    authentication: PeerAuthentication,
    /// Batches refused so far, for `cluster status`.
    refused: Arc<AtomicU64>,
}

impl RaftService {
    pub fn new(
        cluster_id: String,
        node_id: NodeId,
        members: BTreeSet<NodeId>,
        inbox: InboxSender,
        authentication: PeerAuthentication,
        refused: Arc<AtomicU64>,
    ) -> Self {
        Self { gate: BatchGate { cluster_id, node_id, members }, inbox, authentication, refused }
    }

    /// The member the request's connection proved it is, or `None` when peers are not
    /// authenticated. Refuses a connection without a member's certificate.
    fn sender<T>(&self, request: &Request<T>) -> Result<Option<NodeId>, String> {
        match self.authentication {
            PeerAuthentication::Unauthenticated => {
                let _ = request;
                Ok(None)
            }
            #[cfg(not(madsim))]
            PeerAuthentication::Certificate => {
                let certs = crate::tls::connection_info(request).and_then(|info| info.peer_certs.clone());
                let Some(leaf) = certs.as_ref().and_then(|chain| chain.first()) else {
                    return Err("the connection presented no certificate".to_owned());
                };
                let others = self.gate.members.iter().copied().filter(|&id| id != self.gate.node_id);
                match crate::tls::member_named_by(leaf, others) {
                    Some(member) => Ok(Some(member)),
                    None => Err(format!(
                        "the connection's certificate names no other member of cluster '{}'",
                        self.gate.cluster_id
                    )),
                }
            }
        }
    }

    fn refuse(&self, batch: &RaftBatch, status: Status) -> Status {
        self.refused.fetch_add(1, Ordering::Relaxed);
        // The node is named here, not only by the span: under madsim the peer server runs
        // its handlers outside the node's span (real tonic's `trace_fn` puts them in it).
        tracing::warn!(
            node = self.gate.node_id,
            from = batch.from,
            cluster = %shown(&batch.cluster_id),
            reason = %status.message(),
            "refused a Raft batch"
        );
        status
    }
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn deliver(&self, request: Request<RaftBatch>) -> Result<Response<RaftBatchAck>, Status> {
        let sender = self.sender(&request);
        let mut batch = request.into_inner();
        let sender = match sender {
            Ok(sender) => sender,
            Err(reason) => return Err(self.refuse(&batch, Status::unauthenticated(reason))),
        };
        let messages = match self.gate.admit(sender, &mut batch) {
            Ok(messages) => messages,
            Err(status) => return Err(self.refuse(&batch, status)),
        };
        for message in messages {
            // A full inbox means the runtime is behind; dropping is what the network would
            // do, and Raft retransmits.
            if !self.inbox.try_send(message) {
                tracing::debug!(node = self.gate.node_id, from = batch.from, "inbox full; message dropped");
            }
        }
        Ok(Response::new(RaftBatchAck {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer's cluster id is repeated in full only when short.
    #[test]
    fn a_long_cluster_id_is_cut_where_it_is_shown() {
        assert_eq!(shown("e2e"), "e2e");
        let long = "é".repeat(10_000);
        assert_eq!(shown(&long), format!("{}...", "é".repeat(CLUSTER_ID_SHOWN_CHARS_MAX)));
        assert_eq!(shown("e2e\nforged line"), "e2e\\nforged line");
    }
}
