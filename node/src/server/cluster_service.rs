//! The `chorus.v1.Cluster` service: what this node knows of itself and its peers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chorus_proto::v1::cluster_server::Cluster;
use std::time::Duration;

use chorus_proto::v1::{self as pb, StatusRequest, StatusResponse, TransferLeaderRequest, TransferLeaderResponse};
use chorus_proto::wire;
use tonic::{Code, Request, Response, Status};

use super::status::{self, LeaderHints};
use crate::cluster_config::ClusterConfig;
use crate::replication::{Role, TransferError};
use crate::runtime::{ChatState, ProposeError, RaftHandle, TransferLeaderError};

/// What a node has refused from the network, for `cluster status`, and how it serves.
#[derive(Clone)]
pub struct RefusalCounts {
    /// The node serves TLS: the cluster methods then need a client certificate.
    pub tls: bool,
    pub peer_batches: Arc<AtomicU64>,
    pub connections: Arc<AtomicU64>,
}

pub struct ClusterService {
    node_id: u64,
    cluster: ClusterConfig,
    raft: RaftHandle,
    chat: Arc<ChatState>,
    refusals: RefusalCounts,
    hints: LeaderHints,
}

impl ClusterService {
    pub fn new(
        node_id: u64,
        cluster: ClusterConfig,
        raft: RaftHandle,
        chat: Arc<ChatState>,
        refusals: RefusalCounts,
        hints: LeaderHints,
    ) -> Self {
        Self { node_id, cluster, raft, chat, refusals, hints }
    }

    /// How long each step of a transfer may take: the target's catch-up and election are
    /// bounded by the core's own give-up after an election timeout, so twice the longest
    /// one covers a transfer that is going to succeed.
    fn transfer_wait(&self) -> Duration {
        Duration::from_millis(2 * self.cluster.timing.election_timeout_max_ms)
    }

    fn transfer_error(&self, error: TransferLeaderError) -> Status {
        let message = error.to_string();
        match error {
            TransferLeaderError::Refused(TransferError::NotLeader { leader_hint }) => {
                self.hints.propose_error(ProposeError::NotLeader { leader: leader_hint })
            }
            TransferLeaderError::Refused(TransferError::NotAVoter(_)) => {
                status::error(Code::InvalidArgument, wire::INVALID_INPUT, message)
            }
            // Handled before asking the runtime (the leader answers with itself).
            TransferLeaderError::Refused(TransferError::ToSelf) => status::not_applied(message),
            TransferLeaderError::NotTaken { .. } | TransferLeaderError::Stalled => status::not_applied(message),
            TransferLeaderError::NoLeaderSeen { .. } => {
                status::error(Code::Unavailable, wire::OUTCOME_UNKNOWN, message)
            }
        }
    }
}

fn role(role: Role) -> pb::Role {
    match role {
        Role::Follower => pb::Role::Follower,
        Role::PreCandidate => pb::Role::PreCandidate,
        Role::Candidate => pb::Role::Candidate,
        Role::Leader => pb::Role::Leader,
    }
}

impl ClusterService {
    /// Refuses a caller without a cluster credential: under TLS, a client certificate the
    /// handshake verified against the cluster's CA (an operator's or a node's).
    fn require_credential<T>(&self, request: &Request<T>) -> Result<(), Status> {
        #[cfg(not(madsim))]
        if self.refusals.tls && crate::tls::connection_info(request).is_none_or(|info| info.peer_certs.is_none()) {
            return Err(status::error(
                tonic::Code::Unauthenticated,
                chorus_proto::wire::CREDENTIAL_REQUIRED,
                "the cluster methods need a cluster credential: a client certificate from the cluster's CA \
                 (`chorus certs client NAME`; pass --cert and --key)",
            ));
        }
        let _ = request;
        Ok(())
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.require_credential(&request)?;
        let replica = self.raft.replica_status().await.ok_or_else(|| {
            status::not_applied(
                "this node's replication loop did not answer within 5 s: it is stopping, or stalled (a hung disk?); see its log",
            )
        })?;
        let now = self.raft.now_ms();
        let members = self
            .cluster
            .members
            .iter()
            .map(|member| {
                let follower = replica.followers.get(&member.id);
                pb::MemberStatus {
                    id: member.id,
                    client_address: member.client_address.clone(),
                    peer_address: member.peer_address.clone(),
                    match_index: follower.map(|f| f.match_index),
                    ms_since_contact: follower.and_then(|f| f.last_contact_ms).map(|t| now.saturating_sub(t)),
                }
            })
            .collect();
        let (applied_index, state_digest) = if request.into_inner().include_state_digest {
            // A full scan, on its own connection: it cannot hold up apply or client reads,
            // and only one runs at a time.
            let (applied, digest) = self
                .chat
                .digest()
                .await
                .map_err(|busy| status::overloaded(busy.to_string()))?
                .map_err(status::storage)?;
            (applied, digest.to_vec())
        } else {
            (self.chat.last_applied(), Vec::new())
        };
        Ok(Response::new(StatusResponse {
            cluster_id: self.cluster.cluster_id.clone(),
            node_id: self.node_id,
            role: role(replica.role).into(),
            term: replica.term,
            leader_id: replica.leader.unwrap_or(0),
            commit_index: replica.commit_index,
            applied_index,
            last_log_index: replica.last_index,
            members,
            state_digest,
            fault: self.raft.fault().unwrap_or_default(),
            tls: self.refusals.tls,
            peer_batches_refused: self.refusals.peer_batches.load(Ordering::Relaxed),
            connections_refused: self.refusals.connections.load(Ordering::Relaxed),
            peer_messages_refused: replica.messages_refused,
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        self.require_credential(&request)?;
        let target = request.into_inner().target_id;
        if target == 0 {
            return Err(status::error(
                Code::InvalidArgument,
                wire::INVALID_INPUT,
                "target_id is required (ids start at 1)",
            ));
        }
        if target == self.node_id {
            let replica =
                self.raft.replica_status().await.ok_or_else(|| self.transfer_error(TransferLeaderError::Stalled))?;
            if replica.role == Role::Leader {
                return Ok(Response::new(TransferLeaderResponse { leader_id: self.node_id }));
            }
        }
        let leader = match self.raft.transfer_leadership(target, self.transfer_wait()).await {
            Ok(leader) => leader,
            // This node won an election between the check above and the runtime's turn.
            Err(TransferLeaderError::Refused(TransferError::ToSelf)) => target,
            Err(error) => return Err(self.transfer_error(error)),
        };
        tracing::info!(target, leader, "leadership transferred on an operator's request");
        Ok(Response::new(TransferLeaderResponse { leader_id: leader }))
    }
}
