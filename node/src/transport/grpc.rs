//! The sending side of the gRPC transport: one task and one bounded queue per peer, and a
//! task per snapshot transfer (at most one per peer at a time), which streams the snapshot
//! file in chunks and reports how the transfer ended.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chorus_proto::v1::raft_client::RaftClient;
use chorus_proto::v1::{RaftBatch, SnapshotChunk};
use rand::RngCore;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

use super::codec::encode_message;
use super::{RAFT_BATCH_BYTES_MAX, RAFT_BATCH_MESSAGES_MAX, Transport, message_cost};
use crate::backoff::Backoff;
use crate::replication::{Message, MessageBody, NodeId, SnapshotTransfer};
use crate::seam::run_blocking;
use crate::storage::{OutgoingSnapshot, SnapshotDir};
use crate::watch::Watch;

/// Messages waiting for one peer; beyond this, new ones are dropped.
const PEER_QUEUE_MAX: usize = 1024;
/// Bytes in one batch RPC, by [`message_cost`]: well under what the receiver accepts.
const BATCH_BYTES_MAX: usize = RAFT_BATCH_BYTES_MAX / 2;
/// How long a connection attempt to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one batch RPC may take.
const DELIVER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one snapshot chunk may take (the last one includes the follower's fsync).
const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of snapshot data in one chunk: well under what the receiver decodes.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// How a snapshot transfer to a peer ended, for the runtime to tell its replica.
pub type SnapshotReports = mpsc::UnboundedSender<(NodeId, SnapshotTransfer)>;

/// Reconnection backoff: doubles from the minimum to the maximum while a peer is down
/// (plus jitter, so that the links of a restarted node's peers do not all come at once).
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How a node's links to its peers connect.
#[derive(Clone)]
pub enum LinkSecurity {
    /// Mutual TLS with the node's current material: each link accepts only the
    /// certificate of the member it is to, and presents the node's own.
    #[cfg(not(madsim))]
    Tls(Arc<crate::tls::NodeTls>),
    /// Plaintext (`--insecure`, and the simulation).
    Plain,
}

pub struct GrpcTransport {
    queues: BTreeMap<NodeId, mpsc::Sender<Message>>,
    /// Per peer: how to reach it for a snapshot, and whether a transfer is under way.
    snapshot_links: BTreeMap<NodeId, (Arc<PeerLink>, Arc<std::sync::atomic::AtomicBool>)>,
    snapshots: SnapshotDir,
    reports: SnapshotReports,
    dropped: Arc<AtomicU64>,
}

impl GrpcTransport {
    /// Starts a sender task per peer (`peers`: id → peer address `HOST:PORT`). The tasks end
    /// when `stopping` turns true.
    pub fn start(
        cluster_id: String,
        node_id: NodeId,
        peers: BTreeMap<NodeId, String>,
        security: LinkSecurity,
        snapshots: SnapshotDir,
        reports: SnapshotReports,
        stopping: Watch<bool>,
    ) -> Self {
        let dropped = Arc::new(AtomicU64::new(0));
        let mut queues = BTreeMap::new();
        let mut snapshot_links = BTreeMap::new();
        for (peer, address) in peers {
            let (sender, receiver) = mpsc::channel(PEER_QUEUE_MAX);
            queues.insert(peer, sender);
            let link = PeerLink {
                cluster_id: cluster_id.clone(),
                from: node_id,
                to: peer,
                address,
                security: security.clone(),
                dropped: Arc::clone(&dropped),
            };
            let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
            snapshot_links.insert(peer, (Arc::new(link.clone()), busy));
            tokio::task::spawn(link.run(receiver, stopping.clone()).in_current_span());
        }
        Self { queues, snapshot_links, snapshots, reports, dropped }
    }

    /// Starts streaming the snapshot `message` names to its peer, unless a transfer to it
    /// is under way (that one's report stands for this one too).
    fn send_snapshot(&self, message: Message) {
        let Some((link, busy)) = self.snapshot_links.get(&message.to) else {
            tracing::warn!(to = message.to, "no route to node; snapshot not sent");
            return;
        };
        if busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let (link, busy, snapshots, reports) =
            (Arc::clone(link), Arc::clone(busy), self.snapshots.clone(), self.reports.clone());
        let transfer = async move {
            let to = message.to;
            let started = crate::seam::monotonic_now();
            let outcome = match link.stream_snapshot(&snapshots, &message).await {
                Ok(bytes) => {
                    let elapsed = crate::seam::monotonic_now().saturating_duration_since(started);
                    tracing::info!(
                        peer = to,
                        bytes,
                        ms = elapsed.as_millis() as u64,
                        "snapshot handed to the follower"
                    );
                    SnapshotTransfer::Delivered
                }
                Err(reason) => {
                    tracing::info!(peer = to, %reason, "snapshot transfer failed");
                    SnapshotTransfer::Failed
                }
            };
            busy.store(false, Ordering::Release);
            let _ = reports.send((to, outcome));
        };
        tokio::task::spawn(transfer.in_current_span());
    }

    /// Messages dropped so far (full queues, failed deliveries).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Transport for GrpcTransport {
    fn send(&self, messages: Vec<Message>) {
        for message in messages {
            if matches!(message.body, MessageBody::InstallSnapshot { .. }) {
                self.send_snapshot(message);
                continue;
            }
            let Some(queue) = self.queues.get(&message.to) else {
                tracing::warn!(to = message.to, "no route to node; message dropped");
                continue;
            };
            if queue.try_send(message).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[derive(Clone)]
struct PeerLink {
    cluster_id: String,
    from: NodeId,
    to: NodeId,
    address: String,
    security: LinkSecurity,
    dropped: Arc<AtomicU64>,
}

impl PeerLink {
    /// The endpoint of the next connection: under TLS, with the material current now (a
    /// reload reaches a link when it next connects).
    fn endpoint(&self) -> Result<Endpoint, tonic::transport::Error> {
        self.endpoint_with_timeout(DELIVER_TIMEOUT)
    }

    fn endpoint_with_timeout(&self, timeout: Duration) -> Result<Endpoint, tonic::transport::Error> {
        match &self.security {
            LinkSecurity::Plain => Endpoint::from_shared(format!("http://{}", self.address)),
            #[cfg(not(madsim))]
            LinkSecurity::Tls(tls) => {
                Endpoint::from_shared(format!("https://{}", self.address))?.tls_config(tls.peer_client_config(self.to))
            }
        }
        .map(|endpoint| {
            // Both ends ping (the peer server does too): a link to a machine that died
            // mid-connection is given up within the keepalive timeout, and reconnects.
            endpoint
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(timeout)
                .http2_keep_alive_interval(super::PEER_KEEPALIVE_INTERVAL)
                .keep_alive_timeout(super::PEER_KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
        })
    }

    async fn run(self, mut queue: mpsc::Receiver<Message>, stopping: Watch<bool>) {
        if let Err(error) = self.endpoint() {
            tracing::error!(peer = self.to, address = %self.address, %error, "bad peer address; not sending to it");
            return;
        }
        // A failure to set up TLS with this peer is a configuration to fix, unlike a peer
        // that is down: it is logged as a warning each time it changes.
        let mut last_warning: Option<String> = None;
        let mut client: Option<RaftClient<Channel>> = None;
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX, crate::seam::os_seeded_rng().next_u64());
        // A message that would have overflowed the last batch starts the next one.
        let mut carried: Option<Message> = None;
        loop {
            let first = match carried.take() {
                Some(message) => message,
                // `biased`: a fixed polling order keeps simulations replayable.
                None => tokio::select! {
                    biased;
                    message = queue.recv() => match message {
                        Some(message) => message,
                        None => return,
                    },
                    _ = stopping.wait_for(|stopping| *stopping) => return,
                },
            };
            let mut bytes = message_cost(&first);
            let mut batch = vec![first];
            while batch.len() < RAFT_BATCH_MESSAGES_MAX {
                match queue.try_recv() {
                    Ok(message) if bytes + message_cost(&message) > BATCH_BYTES_MAX => {
                        carried = Some(message);
                        break;
                    }
                    Ok(message) => {
                        bytes += message_cost(&message);
                        batch.push(message);
                    }
                    Err(_) => break,
                }
            }
            let count = batch.len() as u64;
            if client.is_none() {
                let connected = match self.endpoint() {
                    Ok(endpoint) => endpoint.connect().await,
                    Err(error) => Err(error),
                };
                match connected {
                    Ok(channel) => {
                        last_warning = None;
                        client = Some(RaftClient::new(channel));
                    }
                    Err(error) => {
                        match tls_failure(&error) {
                            Some(reason) if last_warning.as_ref() != Some(&reason) => {
                                tracing::warn!(peer = self.to, address = %self.address, %reason, "cannot connect to peer over TLS");
                                last_warning = Some(reason);
                            }
                            _ => tracing::debug!(peer = self.to, address = %self.address, %error, "peer unreachable"),
                        }
                        self.dropped.fetch_add(count, Ordering::Relaxed);
                        self.pause(&mut backoff).await;
                        continue;
                    }
                }
            }
            // The queue is this link's: every message on it is from this node to its peer,
            // and the receiver drops a batch whose messages say otherwise.
            assert!(
                batch.iter().all(|message| message.from == self.from && message.to == self.to),
                "a message for another link was queued to node {}",
                self.to
            );
            let request = RaftBatch {
                cluster_id: self.cluster_id.clone(),
                from: self.from,
                to: self.to,
                messages: batch.iter().map(encode_message).collect(),
            };
            let rpc = client.as_mut().expect("connected above").deliver(request);
            match rpc.await {
                Ok(_) => backoff.reset(),
                Err(status) => {
                    tracing::debug!(peer = self.to, %status, "delivery failed");
                    self.dropped.fetch_add(count, Ordering::Relaxed);
                    client = None;
                    self.pause(&mut backoff).await;
                }
            }
        }
    }

    /// Streams the snapshot file `message` names, chunk after chunk, going on from where
    /// the follower says it stands; returns the bytes sent once the follower handed the
    /// message to its replica.
    async fn stream_snapshot(&self, snapshots: &SnapshotDir, message: &Message) -> Result<u64, String> {
        let MessageBody::InstallSnapshot { snapshot } = &message.body else { unreachable!("only snapshots stream") };
        // Opened first (a newer snapshot may delete it any time), then connected, then
        // hashed: a follower that is down costs no read of the whole file.
        let path = snapshots.path_of(snapshot.last_included);
        let file = run_blocking(move || OutgoingSnapshot::open(path)).await.map_err(|error| error.to_string())?;
        let endpoint = self.endpoint_with_timeout(SNAPSHOT_CHUNK_TIMEOUT).map_err(|error| error.to_string())?;
        let mut client = RaftClient::new(endpoint.connect().await.map_err(|error| error.to_string())?)
            .max_decoding_message_size(1024);
        let mut file = run_blocking(move || file.hashed()).await.map_err(|error| error.to_string())?;
        let (data_bytes, digest) = (file.length(), file.digest());
        let encoded = encode_message(message);
        let mut offset = 0u64;
        // Each answer moves the transfer on or back; a follower that sends it back more
        // often than the data has chunks, plus some, is not going to take it.
        let chunks = data_bytes / SNAPSHOT_CHUNK_BYTES as u64 + 1;
        for _ in 0..2 * chunks + 8 {
            let (returned, data) = run_blocking(move || {
                let data = file.read_chunk(offset, SNAPSHOT_CHUNK_BYTES);
                (file, data)
            })
            .await;
            file = returned;
            let data = data.map_err(|error| error.to_string())?;
            let request = SnapshotChunk {
                cluster_id: self.cluster_id.clone(),
                from: self.from,
                to: self.to,
                message: Some(encoded.clone()),
                data_bytes,
                data_sha256: digest.to_vec(),
                offset,
                data,
            };
            let ack =
                client.install_snapshot(request).await.map_err(|status| status.message().to_owned())?.into_inner();
            if ack.handed_over {
                return Ok(data_bytes);
            }
            if ack.next_offset > data_bytes {
                return Err(format!("the follower asks for offset {} of {data_bytes} bytes", ack.next_offset));
            }
            offset = ack.next_offset;
        }
        Err("the follower kept sending the transfer back".to_owned())
    }

    async fn pause(&self, backoff: &mut Backoff) {
        tokio::time::sleep(backoff.next_pause()).await;
    }
}

/// What went wrong in TLS, if that is why a connection failed (rustls says so somewhere
/// in the error's chain of causes).
fn tls_failure(error: &tonic::transport::Error) -> Option<String> {
    #[cfg(not(madsim))]
    {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(current) = cause {
            let rustls = current.downcast_ref::<tokio_rustls::rustls::Error>().or_else(|| {
                current
                    .downcast_ref::<std::io::Error>()
                    .and_then(|io| io.get_ref())
                    .and_then(|inner| inner.downcast_ref())
            });
            if let Some(rustls) = rustls {
                return Some(rustls.to_string());
            }
            cause = current.source();
        }
    }
    let _ = error;
    None
}
