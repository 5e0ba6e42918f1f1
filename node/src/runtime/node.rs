//! A running node: opens the data directory and state machine, builds the services, and
//! serves until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chorus_proto::v1::chat_server::ChatServer;
use tokio::sync::watch;

use super::{ChatState, SingleNodeLog};
use crate::chat::credentials::{CredentialError, PasswordHashCost, PasswordHasher};
use crate::chat::{ChatStateMachine, StateMachineError};
use crate::seam::os_seeded_rng;
use crate::server::ChatService;
use crate::storage::{DataDir, DataDirError};

/// How long a stopping node waits for clients to finish before it stops regardless.
const SHUTDOWN_GRACE_PERIOD: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: u64,
    /// Where clients connect. Port 0 picks a free port (reported to `on_ready`).
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub password_hash_cost: PasswordHashCost,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    StateMachine(#[from] StateMachineError),
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Runs a node until `shutdown` resolves, then stops serving: live subscriptions end and
/// in-flight requests finish. `on_ready` is called with the bound address once the node
/// accepts connections.
pub async fn run_node(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send,
    on_ready: impl FnOnce(SocketAddr) + Send,
) -> Result<(), NodeError> {
    let data_dir = DataDir::open(&config.data_dir)?;
    let machine = ChatStateMachine::open(&data_dir.chat_database())?;
    let state = ChatState::new(machine)?;
    tracing::info!(
        node_id = config.node_id,
        data_dir = %data_dir.path().display(),
        last_applied = state.last_applied(),
        "opened chat state"
    );
    let log = Arc::new(SingleNodeLog::new(Arc::clone(&state)));
    let mut rng = os_seeded_rng();
    let hasher = PasswordHasher::new(config.password_hash_cost, &mut rng)?;
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let chat = ChatService::new(state, log, hasher, rng, stopping_rx);
    let router = tonic::transport::Server::builder().add_service(ChatServer::new(chat));
    let mut stopping = stopping_tx.subscribe();
    let shutdown = async move {
        shutdown.await;
        tracing::info!(node_id = config.node_id, "shutting down");
        // Live subscriptions never end on their own; tell them to, so that the server's
        // graceful shutdown does not wait on them forever.
        stopping_tx.send_replace(true);
    };
    // A client that stops reading can hold a graceful shutdown open indefinitely; past
    // this grace period the node stops anyway (everything acknowledged is already durable).
    let grace_expired = async move {
        let _ = stopping.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(SHUTDOWN_GRACE_PERIOD).await;
        tracing::warn!(node_id = config.node_id, "clients did not disconnect in time; stopping anyway");
    };

    #[cfg(not(madsim))]
    {
        let incoming = tonic::transport::server::TcpIncoming::bind(config.listen)
            .map_err(|source| NodeError::Bind { addr: config.listen, source })?;
        let bound = incoming.local_addr().map_err(|source| NodeError::Bind { addr: config.listen, source })?;
        tracing::info!(node_id = config.node_id, %bound, "serving the chat API");
        on_ready(bound);
        tokio::select! {
            served = router.serve_with_incoming_shutdown(incoming, shutdown) => served?,
            () = grace_expired => {}
        }
    }
    #[cfg(madsim)]
    {
        on_ready(config.listen);
        tokio::select! {
            served = router.serve_with_shutdown(config.listen, shutdown) => served?,
            () = grace_expired => {}
        }
    }
    tracing::info!(node_id = config.node_id, "stopped");
    drop(data_dir);
    Ok(())
}
