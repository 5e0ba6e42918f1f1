//! The receiving side of the gRPC transport: the `chorus.v1.Raft` service. It checks that
//! a batch belongs to this cluster, comes from a member (the one the connection's
//! certificate names, under TLS) and is addressed to this node, decodes it, and hands the
//! messages to the runtime. Anything else is refused, logged and counted.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chorus_proto::v1::raft_server::Raft;
use chorus_proto::v1::{RaftBatch, RaftBatchAck, SnapshotChunk, SnapshotChunkAck};
use tonic::{Request, Response, Status};

use super::RAFT_BATCH_MESSAGES_MAX;
use super::codec::decode_message;
use super::inbox::InboxSender;
use crate::replication::{Message, MessageBody, NodeId, SnapshotMeta, Term};
use crate::seam::run_blocking;
use crate::storage::{IncomingSnapshot, SnapshotDir};

/// Largest snapshot a node accepts: far beyond any chat state this build is meant for,
/// and a bound on what a peer can make it write.
pub const SNAPSHOT_BYTES_MAX: u64 = 256 * 1024 * 1024 * 1024;
/// Largest chunk of snapshot data a node accepts in one request.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 4 * 1024 * 1024;

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
        self.check_envelope(sender, &batch.cluster_id, batch.from, batch.to)?;
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

    /// Whether a frame's envelope may be taken: of this cluster, from another member (the
    /// one the connection proved it is), to this node.
    fn check_envelope(&self, sender: Option<NodeId>, cluster_id: &str, from: NodeId, to: NodeId) -> Result<(), Status> {
        if cluster_id != self.cluster_id {
            let message = format!("this node belongs to cluster '{}', not '{}'", self.cluster_id, shown(cluster_id));
            return Err(Status::failed_precondition(message));
        }
        if to != self.node_id {
            let message = format!("this is node {}, not node {to}", self.node_id);
            return Err(Status::invalid_argument(message));
        }
        if from == self.node_id || !self.members.contains(&from) {
            let message = format!("node {from} is not a member of cluster '{}'", self.cluster_id);
            return Err(Status::permission_denied(message));
        }
        if let Some(sender) = sender
            && sender != from
        {
            // A member's certificate does not let it speak for another member.
            let message = format!("this connection is node {sender}'s; it cannot send for node {from}");
            return Err(Status::permission_denied(message));
        }
        Ok(())
    }

    /// A snapshot chunk's InstallSnapshot message and what identifies its transfer, or the
    /// status that refuses the chunk.
    pub fn admit_chunk(
        &self,
        sender: Option<NodeId>,
        chunk: &mut SnapshotChunk,
    ) -> Result<(Message, TransferKey), Status> {
        self.check_envelope(sender, &chunk.cluster_id, chunk.from, chunk.to)?;
        let encoded =
            chunk.message.take().ok_or_else(|| Status::invalid_argument("a snapshot chunk needs its message"))?;
        let message = decode_message(chunk.from, chunk.to, encoded)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let MessageBody::InstallSnapshot { snapshot } = &message.body else {
            return Err(Status::invalid_argument("a snapshot chunk's message must be an InstallSnapshot"));
        };
        let digest: [u8; 32] = chunk
            .data_sha256
            .as_slice()
            .try_into()
            .map_err(|_| Status::invalid_argument("a snapshot's digest is a SHA-256: 32 bytes"))?;
        if chunk.data_bytes > SNAPSHOT_BYTES_MAX {
            let message = format!("a snapshot holds at most {SNAPSHOT_BYTES_MAX} bytes, this one {}", chunk.data_bytes);
            return Err(Status::invalid_argument(message));
        }
        if chunk.data.len() > SNAPSHOT_CHUNK_BYTES_MAX {
            let message = format!(
                "a snapshot chunk holds at most {SNAPSHOT_CHUNK_BYTES_MAX} bytes, this one {}",
                chunk.data.len()
            );
            return Err(Status::invalid_argument(message));
        }
        let key = TransferKey {
            from: message.from,
            term: message.term,
            snapshot: snapshot.clone(),
            data_bytes: chunk.data_bytes,
            digest,
        };
        Ok((message, key))
    }
}

/// What makes two chunks parts of one transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferKey {
    from: NodeId,
    term: Term,
    snapshot: SnapshotMeta,
    data_bytes: u64,
    digest: [u8; 32],
}

/// The one snapshot transfer a node takes in at a time.
struct Receiving {
    key: TransferKey,
    file: IncomingSnapshot,
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
    snapshots: SnapshotDir,
    /// A transfer under way. A chunk of another transfer at offset 0 replaces it (a new
    /// leader, or the same leader's newer snapshot); one at another offset is sent back.
    receiving: tokio::sync::Mutex<Option<Receiving>>,
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
        snapshots: SnapshotDir,
        authentication: PeerAuthentication,
        refused: Arc<AtomicU64>,
    ) -> Self {
        Self {
            gate: BatchGate { cluster_id, node_id, members },
            inbox,
            snapshots,
            receiving: tokio::sync::Mutex::new(None),
            authentication,
            refused,
        }
    }

    /// Writes a chunk of the transfer it belongs to; once the data is whole and sound,
    /// publishes the snapshot file and hands the message to the replica.
    async fn receive_chunk(
        &self,
        message: Message,
        key: TransferKey,
        chunk: SnapshotChunk,
    ) -> Result<SnapshotChunkAck, Status> {
        let mut receiving = self.receiving.lock().await;
        let same_transfer = receiving.as_ref().is_some_and(|r| r.key == key);
        if !same_transfer {
            if chunk.offset != 0 {
                return Ok(SnapshotChunkAck { next_offset: 0, handed_over: false });
            }
            let snapshots = self.snapshots.clone();
            let (data_bytes, digest) = (key.data_bytes, key.digest);
            let file =
                run_blocking(move || IncomingSnapshot::create(snapshots.partial("incoming")?, data_bytes, digest))
                    .await
                    .map_err(|error| Status::internal(error.to_string()))?;
            *receiving = Some(Receiving { key: key.clone(), file });
        }
        let mut current = receiving.take().expect("a transfer is under way");
        if chunk.offset != current.file.written() {
            let next_offset = current.file.written();
            *receiving = Some(current);
            return Ok(SnapshotChunkAck { next_offset, handed_over: false });
        }
        let data = chunk.data;
        let (result, file) = run_blocking(move || {
            let result = current.file.append(&data);
            (result, current)
        })
        .await;
        current = file;
        // A chunk that does not fit ends the transfer: it starts over.
        result.map_err(|error| Status::invalid_argument(error.to_string()))?;
        if !current.file.is_whole() {
            let next_offset = current.file.written();
            *receiving = Some(current);
            return Ok(SnapshotChunkAck { next_offset, handed_over: false });
        }
        let snapshots = self.snapshots.clone();
        let position = key.snapshot.last_included;
        run_blocking(move || current.file.finish(&snapshots, position))
            .await
            .map_err(|error| Status::data_loss(format!("{error}; send it again")))?;
        tracing::info!(node = self.gate.node_id, from = key.from, index = position.index, "received a snapshot");
        if !self.inbox.try_send(message) {
            return Err(Status::unavailable("this node's replication inbox is full; send the snapshot again shortly"));
        }
        Ok(SnapshotChunkAck { next_offset: key.data_bytes, handed_over: true })
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
        self.refuse_frame(batch.from, &batch.cluster_id, "batch", status)
    }

    fn refuse_frame(&self, from: NodeId, cluster_id: &str, what: &str, status: Status) -> Status {
        self.refused.fetch_add(1, Ordering::Relaxed);
        // The node is named here, not only by the span: under madsim the peer server runs
        // its handlers outside the node's span (real tonic's `trace_fn` puts them in it).
        tracing::warn!(
            node = self.gate.node_id,
            from,
            cluster = %shown(cluster_id),
            reason = %status.message(),
            "refused a Raft {what}"
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

    async fn install_snapshot(&self, request: Request<SnapshotChunk>) -> Result<Response<SnapshotChunkAck>, Status> {
        let sender = self.sender(&request);
        let mut chunk = request.into_inner();
        // Enough of the cluster id for the log line (which cuts it shorter still).
        let (from, cluster): (NodeId, String) = (chunk.from, chunk.cluster_id.chars().take(100).collect());
        let refuse = |status| self.refuse_frame(from, &cluster, "snapshot chunk", status);
        let sender = match sender {
            Ok(sender) => sender,
            Err(reason) => return Err(refuse(Status::unauthenticated(reason))),
        };
        let (message, key) = match self.gate.admit_chunk(sender, &mut chunk) {
            Ok(admitted) => admitted,
            Err(status) => return Err(refuse(status)),
        };
        self.receive_chunk(message, key, chunk).await.map(Response::new)
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
