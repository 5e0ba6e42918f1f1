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
use tracing::Instrument;

use super::RAFT_BATCH_MESSAGES_MAX;
use super::codec::decode_message;
use super::inbox::InboxSender;
use crate::replication::{LogPosition, Message, MessageBody, NodeId, SnapshotMeta, Term};
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
enum Receiving {
    Writing {
        key: TransferKey,
        file: IncomingSnapshot,
    },
    /// Staged whole; its message may not have reached the replica (a full inbox, a caller
    /// gone before the answer): a chunk of the same transfer hands it over again.
    Staged {
        key: TransferKey,
    },
}

impl Receiving {
    fn key(&self) -> &TransferKey {
        match self {
            Receiving::Writing { key, .. } | Receiving::Staged { key } => key,
        }
    }
}

/// Checks a staged snapshot file before its message reaches the replica: the node's
/// state machine says whether it can install it (the transport knows nothing of what a
/// snapshot holds).
pub type SnapshotValidator = Arc<dyn Fn(&std::path::Path, LogPosition) -> Result<(), String> + Send + Sync>;

/// Where snapshots from a leader are staged, and the check each must pass first.
pub struct SnapshotIntake {
    pub dir: SnapshotDir,
    pub validate: SnapshotValidator,
}

/// What handling a chunk needs, owned by the task that handles it.
#[derive(Clone)]
struct ChunkContext {
    node_id: NodeId,
    inbox: InboxSender,
    snapshots: SnapshotDir,
    validate: SnapshotValidator,
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
    validate: SnapshotValidator,
    /// A transfer under way. A chunk of another transfer at offset 0 replaces it (a new
    /// leader, or the same leader's newer snapshot) unless it is of an older term; one at
    /// another offset is sent back to 0.
    receiving: Arc<tokio::sync::Mutex<Option<Receiving>>>,
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
        intake: SnapshotIntake,
        authentication: PeerAuthentication,
        refused: Arc<AtomicU64>,
    ) -> Self {
        Self {
            gate: BatchGate { cluster_id, node_id, members },
            inbox,
            snapshots: intake.dir,
            validate: intake.validate,
            receiving: Arc::new(tokio::sync::Mutex::new(None)),
            authentication,
            refused,
        }
    }

    /// Writes a chunk of the transfer it belongs to; once the data is whole and sound,
    /// stages the snapshot file and hands the message to the replica. The work runs in a
    /// task of its own that holds the transfer's state throughout: a caller that gives up
    /// (its deadline passed during a long sync) leaves the state whole, and its retry
    /// resumes where the data stands.
    async fn receive_chunk(
        &self,
        message: Message,
        key: TransferKey,
        chunk: SnapshotChunk,
    ) -> Result<SnapshotChunkAck, Status> {
        let receiving = Arc::clone(&self.receiving);
        let context = ChunkContext {
            node_id: self.gate.node_id,
            inbox: self.inbox.clone(),
            snapshots: self.snapshots.clone(),
            validate: Arc::clone(&self.validate),
        };
        let work = async move {
            let mut slot = receiving.lock_owned().await;
            take_chunk(&mut slot, &context, message, key, chunk).await
        };
        tokio::task::spawn(work.in_current_span())
            .await
            .unwrap_or_else(|_| Err(Status::internal("the snapshot chunk's handling stopped; send it again")))
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

/// One chunk's effect on the transfer under way (see [`RaftService::receive_chunk`]).
async fn take_chunk(
    slot: &mut Option<Receiving>,
    context: &ChunkContext,
    message: Message,
    key: TransferKey,
    chunk: SnapshotChunk,
) -> Result<SnapshotChunkAck, Status> {
    let data_bytes = key.data_bytes;
    let hand_over = |message: Message| {
        if context.inbox.try_send(message) {
            Ok(SnapshotChunkAck { next_offset: data_bytes, handed_over: true })
        } else {
            Err(Status::unavailable(
                "this node's replication inbox is full; send the snapshot's last chunk again shortly",
            ))
        }
    };
    match slot.as_ref() {
        Some(Receiving::Staged { key: staged }) if *staged == key => return hand_over(message),
        Some(current) if *current.key() == key => {}
        Some(current) if current.key().term > key.term => {
            let message = format!(
                "a snapshot from the leader of term {} is being received; this one is of term {}",
                current.key().term,
                key.term
            );
            return Err(Status::failed_precondition(message));
        }
        _ if chunk.offset != 0 => return Ok(SnapshotChunkAck { next_offset: 0, handed_over: false }),
        _ => {
            let snapshots = context.snapshots.clone();
            let (data_bytes, digest) = (key.data_bytes, key.digest);
            let file =
                run_blocking(move || IncomingSnapshot::create(snapshots.partial("incoming")?, data_bytes, digest))
                    .await
                    .map_err(|error| Status::internal(error.to_string()))?;
            *slot = Some(Receiving::Writing { key: key.clone(), file });
        }
    }
    let Some(Receiving::Writing { file, .. }) = slot.as_mut() else { unreachable!("a transfer is being written") };
    if chunk.offset != file.written() {
        return Ok(SnapshotChunkAck { next_offset: file.written(), handed_over: false });
    }
    let Some(Receiving::Writing { mut file, .. }) = slot.take() else { unreachable!("a transfer is being written") };
    let data = chunk.data;
    let (result, returned) = run_blocking(move || (file.append(&data), file)).await;
    file = returned;
    // A chunk that does not fit ends the transfer: it starts over.
    result.map_err(|error| Status::invalid_argument(error.to_string()))?;
    if !file.is_whole() {
        let next_offset = file.written();
        *slot = Some(Receiving::Writing { key, file });
        return Ok(SnapshotChunkAck { next_offset, handed_over: false });
    }
    let (snapshots, validate) = (context.snapshots.clone(), Arc::clone(&context.validate));
    let position = key.snapshot.last_included;
    run_blocking(move || {
        let partial = file.finish().map_err(|error| Status::data_loss(format!("{error}; send it again")))?;
        // Checked while still partial: only checked data ever carries a staged name.
        validate(&partial, position).map_err(|reason| {
            let _ = std::fs::remove_file(&partial);
            Status::invalid_argument(format!(
                "the snapshot through entry {} cannot be installed here: {reason}",
                position.index
            ))
        })?;
        snapshots.stage(&partial, position).map_err(|error| Status::internal(error.to_string()))
    })
    .await?;
    tracing::info!(node = context.node_id, from = key.from, index = position.index, "received a snapshot");
    *slot = Some(Receiving::Staged { key: key.clone() });
    hand_over(message)
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
    use crate::replication::Membership;

    /// A peer's cluster id is repeated in full only when short.
    #[test]
    fn a_long_cluster_id_is_cut_where_it_is_shown() {
        assert_eq!(shown("e2e"), "e2e");
        let long = "é".repeat(10_000);
        assert_eq!(shown(&long), format!("{}...", "é".repeat(CLUSTER_ID_SHOWN_CHARS_MAX)));
        assert_eq!(shown("e2e\nforged line"), "e2e\\nforged line");
    }
    fn service(dir: &std::path::Path, accept: bool) -> (RaftService, super::super::InboxReceiver) {
        let (inbox, receiver) = super::super::peer_inbox();
        let validate: SnapshotValidator =
            Arc::new(move |_: &std::path::Path, _: LogPosition| if accept { Ok(()) } else { Err("no".to_owned()) });
        let intake = SnapshotIntake { dir: SnapshotDir::open(dir).unwrap(), validate };
        let members = [1, 2, 3].into();
        let service = RaftService::new(
            "c".into(),
            1,
            members,
            inbox,
            intake,
            PeerAuthentication::Unauthenticated,
            Arc::new(AtomicU64::new(0)),
        );
        (service, receiver)
    }

    fn chunk(term: Term, data: &[u8], offset: u64, part: std::ops::Range<usize>) -> SnapshotChunk {
        use sha2::Digest;
        let offer = Message {
            from: 2,
            to: 1,
            term,
            body: MessageBody::InstallSnapshot {
                snapshot: SnapshotMeta {
                    last_included: LogPosition { term, index: 7 },
                    membership: Membership::with_voters([1, 2, 3]),
                },
            },
        };
        SnapshotChunk {
            cluster_id: "c".into(),
            from: 2,
            to: 1,
            message: Some(super::super::encode_message(&offer)),
            data_bytes: data.len() as u64,
            data_sha256: sha2::Sha256::digest(data).to_vec(),
            offset,
            data: data[part].to_vec(),
        }
    }

    async fn send(service: &RaftService, mut chunk: SnapshotChunk) -> Result<SnapshotChunkAck, Status> {
        let (message, key) = service.gate.admit_chunk(None, &mut chunk)?;
        service.receive_chunk(message, key, chunk).await
    }

    /// Chunks out of place are sent back to where the data stands, the last one stages the
    /// file and hands the message over (again, if repeated), and a transfer of an older
    /// term does not displace one of a newer.
    #[tokio::test(flavor = "current_thread")]
    async fn a_transfer_resumes_where_it_stands_and_hands_over_once_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (service, mut inbox) = service(dir.path(), true);
        let data = b"0123456789";
        let ack = |next_offset, handed_over| SnapshotChunkAck { next_offset, handed_over };
        assert_eq!(send(&service, chunk(5, data, 4, 4..8)).await.unwrap(), ack(0, false), "a start mid-way");
        assert_eq!(send(&service, chunk(5, data, 0, 0..4)).await.unwrap(), ack(4, false));
        assert_eq!(send(&service, chunk(5, data, 0, 0..4)).await.unwrap(), ack(4, false), "a repeat");
        assert_eq!(send(&service, chunk(5, data, 8, 8..10)).await.unwrap(), ack(4, false), "a gap");
        let refused = send(&service, chunk(4, data, 0, 0..4)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
        assert!(inbox.try_recv().is_none(), "nothing handed over before the data is whole");
        assert_eq!(send(&service, chunk(5, data, 4, 4..10)).await.unwrap(), ack(10, true));
        assert!(matches!(inbox.try_recv().map(|m| m.body), Some(MessageBody::InstallSnapshot { .. })));
        let staged = service.snapshots.staged_path_of(LogPosition { term: 5, index: 7 });
        assert_eq!(std::fs::read(&staged).unwrap(), data);
        assert_eq!(send(&service, chunk(5, data, 4, 4..10)).await.unwrap(), ack(10, true), "handed over again");
        assert!(inbox.try_recv().is_some());
    }

    /// Data whose digest fails, or that the node could not install, is not staged and its
    /// message never reaches the replica.
    #[tokio::test(flavor = "current_thread")]
    async fn a_snapshot_the_node_cannot_use_never_reaches_the_replica() {
        let dir = tempfile::tempdir().unwrap();
        let (service, mut inbox) = service(dir.path(), false);
        let refused = send(&service, chunk(5, b"0123456789", 0, 0..10)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(!service.snapshots.staged_path_of(LogPosition { term: 5, index: 7 }).exists());
        assert!(inbox.try_recv().is_none());
        let (service, mut inbox) = self::service(dir.path(), true);
        let mut damaged = chunk(5, b"0123456789", 0, 0..10);
        damaged.data[0] = b'x';
        assert_eq!(send(&service, damaged).await.unwrap_err().code(), tonic::Code::DataLoss);
        assert!(inbox.try_recv().is_none());
    }
}
