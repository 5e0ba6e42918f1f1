//! The sending side of the gRPC transport: one task and one bounded queue per peer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chorus_proto::v1::RaftBatch;
use chorus_proto::v1::raft_client::RaftClient;
use rand::RngCore;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

use super::codec::encode_message;
use super::{RAFT_BATCH_BYTES_MAX, RAFT_BATCH_MESSAGES_MAX, Transport, message_cost};
use crate::backoff::Backoff;
use crate::replication::{Message, NodeId};
use crate::watch::Watch;

/// Messages waiting for one peer; beyond this, new ones are dropped.
const PEER_QUEUE_MAX: usize = 1024;
/// Bytes in one batch RPC, by [`message_cost`]: well under what the receiver accepts.
const BATCH_BYTES_MAX: usize = RAFT_BATCH_BYTES_MAX / 2;
/// How long a connection attempt to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one batch RPC may take.
const DELIVER_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnection backoff: doubles from the minimum to the maximum while a peer is down
/// (plus jitter, so that the links of a restarted node's peers do not all come at once).
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

pub struct GrpcTransport {
    queues: BTreeMap<NodeId, mpsc::Sender<Message>>,
    dropped: Arc<AtomicU64>,
}

impl GrpcTransport {
    /// Starts a sender task per peer (`peers`: id → peer address `HOST:PORT`). The tasks end
    /// when `stopping` turns true.
    pub fn start(cluster_id: String, node_id: NodeId, peers: BTreeMap<NodeId, String>, stopping: Watch<bool>) -> Self {
        let dropped = Arc::new(AtomicU64::new(0));
        let mut queues = BTreeMap::new();
        for (peer, address) in peers {
            let (sender, receiver) = mpsc::channel(PEER_QUEUE_MAX);
            queues.insert(peer, sender);
            let link = PeerLink {
                cluster_id: cluster_id.clone(),
                from: node_id,
                to: peer,
                address,
                dropped: Arc::clone(&dropped),
            };
            tokio::task::spawn(link.run(receiver, stopping.clone()).in_current_span());
        }
        Self { queues, dropped }
    }

    /// Messages dropped so far (full queues, failed deliveries).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Transport for GrpcTransport {
    fn send(&self, messages: Vec<Message>) {
        for message in messages {
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

struct PeerLink {
    cluster_id: String,
    from: NodeId,
    to: NodeId,
    address: String,
    dropped: Arc<AtomicU64>,
}

impl PeerLink {
    async fn run(self, mut queue: mpsc::Receiver<Message>, stopping: Watch<bool>) {
        let endpoint = match Endpoint::from_shared(format!("http://{}", self.address)) {
            Ok(endpoint) => endpoint.connect_timeout(CONNECT_TIMEOUT).timeout(DELIVER_TIMEOUT),
            Err(error) => {
                tracing::error!(peer = self.to, address = %self.address, %error, "bad peer address; not sending to it");
                return;
            }
        };
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
                match endpoint.connect().await {
                    Ok(channel) => client = Some(RaftClient::new(channel)),
                    Err(error) => {
                        tracing::debug!(peer = self.to, address = %self.address, %error, "peer unreachable");
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

    async fn pause(&self, backoff: &mut Backoff) {
        tokio::time::sleep(backoff.next_pause()).await;
    }
}
