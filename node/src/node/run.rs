//! A running node: opens its data directory (chat state and replication log), starts the
//! replication runtime and the transport to its peers, and serves the chat and cluster APIs
//! to clients and the Raft service to peers, until told to stop.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chorus_proto::v1::chat_server::ChatServer;
use chorus_proto::v1::cluster_server::ClusterServer;
use chorus_proto::v1::raft_server::RaftServer;
use rand::RngCore;
use tracing::Instrument;

use crate::chat::credentials::{CredentialError, PasswordHashCost, PasswordHasher};
use crate::chat::limits::REQUEST_BYTES_MAX;
use crate::chat::{ChatStateMachine, StateMachineError, check_snapshot};
use crate::cluster_config::ClusterConfig;
use crate::replication::{NodeId, ReplicaError};
use crate::runtime::{
    ChatState, HandOver, ReplicaSetup, ReplicationObserver, RuntimeError, SnapshotPolicy, SnapshotSetup, start_runtime,
};
use crate::seam::{NodeClock, os_seeded_rng};
use crate::server::{ChatService, ClusterService, LeaderHints, RefusalCounts, StreamEnds};
use crate::storage::{
    ClusterIdentity, Creation, DataDir, DataDirError, LogStore, LogStoreError, LogStoreFactory, SharedLog, SnapshotDir,
    SnapshotFileError, SqliteLog,
};
use crate::transport::{
    GrpcTransport, LinkSecurity, PEER_DELIVERIES_MAX, PEER_DELIVERIES_PER_CONNECTION_MAX, PEER_DELIVERY_TIMEOUT,
    PEER_KEEPALIVE_INTERVAL, PEER_KEEPALIVE_TIMEOUT, PeerAuthentication, RAFT_BATCH_BYTES_MAX, RaftService,
    SnapshotIntake, peer_inbox,
};
use crate::watch::Watch;

/// The thread the replication runtime runs on (see [`crate::seam::spawn_dedicated`]).
pub const RAFT_THREAD_NAME: &str = "chorus-raft";
/// How long a stopping node waits for clients to finish before it stops regardless.
const SHUTDOWN_GRACE_PERIOD: Duration = Duration::from_secs(5);
/// How often a node pings an idle client connection, and how long it waits for the answer.
const CLIENT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const CLIENT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Calls open at once on one client connection (HTTP/2 streams; live subscriptions among
/// them). A client needs a few; one that opens more waits, at its own end, until one of its
/// calls ends, so a single connection cannot take a node's every subscription or pile up
/// work behind the per-session and per-account bounds.
pub const CLIENT_STREAMS_PER_CONNECTION_MAX: u32 = 128;
/// The largest request the cluster service decodes: its requests are a few flags.
const CLUSTER_REQUEST_BYTES_MAX: usize = 4 * 1024;

/// Whether a node's connections are encrypted and its peers authenticated.
#[derive(Clone)]
pub enum NodeSecurity {
    /// TLS on both ports with this material: clients verify the node, and peers verify each
    /// other (mutual TLS; a batch must come from the member its connection's certificate
    /// names).
    #[cfg(not(madsim))]
    Tls(Arc<crate::tls::NodeTls>),
    /// Plaintext, unauthenticated peers (`--insecure`; the simulation, which has no TLS).
    Insecure,
}

impl NodeSecurity {
    fn is_tls(&self) -> bool {
        !matches!(self, NodeSecurity::Insecure)
    }

    fn link_security(&self) -> LinkSecurity {
        match self {
            #[cfg(not(madsim))]
            NodeSecurity::Tls(tls) => LinkSecurity::Tls(Arc::clone(tls)),
            NodeSecurity::Insecure => LinkSecurity::Plain,
        }
    }

    fn peer_authentication(&self) -> PeerAuthentication {
        match self {
            #[cfg(not(madsim))]
            NodeSecurity::Tls(_) => PeerAuthentication::Certificate,
            NodeSecurity::Insecure => PeerAuthentication::Unauthenticated,
        }
    }
}

#[derive(Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub cluster: ClusterConfig,
    pub data_dir: PathBuf,
    /// Where clients connect (port 0: any free port, reported to `on_ready`).
    pub client_listen: SocketAddr,
    /// Where peers connect; unused in a cluster of one.
    pub peer_listen: SocketAddr,
    pub password_hash_cost: PasswordHashCost,
    /// Sees every role change and applied entry (simulation checkers); `None` normally.
    pub observer: Option<Arc<dyn ReplicationObserver>>,
    /// Opens the replication log; `None`: SQLite in the data directory.
    pub log_store: Option<LogStoreFactory>,
    /// This is the member's first start in a new cluster (`--bootstrap`): its data
    /// directory must be empty, and is initialized. Otherwise a member of a cluster of
    /// several refuses an empty one.
    pub bootstrap: bool,
    /// The node's clocks: the machine's, or a simulated node's own skewed ones.
    pub clock: NodeClock,
    pub security: NodeSecurity,
}

/// The addresses a started node actually listens on.
#[derive(Debug, Clone, Copy)]
pub struct BoundAddresses {
    pub client: SocketAddr,
    pub peer: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    StateMachine(#[from] StateMachineError),
    #[error(transparent)]
    Log(#[from] LogStoreError),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("replication stopped: {0}")]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    SnapshotDir(#[from] SnapshotFileError),
    #[error("snapshot: {0}")]
    Snapshot(String),
}

/// Runs a node until `shutdown` resolves: a leader first hands leadership to its most
/// up-to-date follower, then live subscriptions end and in-flight requests finish.
pub async fn run_node(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send,
    on_ready: impl FnOnce(BoundAddresses) + Send,
) -> Result<(), NodeError> {
    // Everything the node logs is inside this span (the tasks it spawns too, through
    // `in_current_span`), so no event needs to say which node it is from.
    let span = tracing::info_span!("node", id = config.node_id);
    serve(config, shutdown, on_ready, span.clone()).instrument(span).await
}

/// Opens the data directory, its chat state and its replication log as the node's start
/// would, and closes them: with `bootstrap`, an empty directory is initialized (and one that
/// holds data refused), as `run_node` would do, without serving anything.
pub fn initialize_data_dir(config: &NodeConfig) -> Result<(), NodeError> {
    let data_dir = DataDir::open(&config.data_dir)?;
    let (store, _chat) = open_storage(config, &data_dir)?;
    drop(store);
    Ok(())
}

/// The data directory's two databases, the log opened as `config.bootstrap` says.
fn open_storage(config: &NodeConfig, data_dir: &DataDir) -> Result<(Box<dyn LogStore>, Arc<ChatState>), NodeError> {
    let cluster = &config.cluster;
    let chat = ChatState::new(ChatStateMachine::open(&data_dir.chat_database())?)?;
    let identity = ClusterIdentity {
        cluster_id: cluster.cluster_id.clone(),
        node_id: config.node_id,
        members: cluster.member_ids(),
    };
    let creation = if config.bootstrap { Creation::Bootstrap } else { Creation::MemberOfExisting };
    let store: Box<dyn LogStore> = match &config.log_store {
        Some(open) => open(&identity, creation)?,
        None => Box::new(SqliteLog::open(&data_dir.raft_database(), &identity, creation)?),
    };
    Ok((store, chat))
}

/// Completes the install of a leader's snapshot that a crash interrupted: the log records
/// it (the commit point) but the chat state is older. Everything the chat state lacks is in
/// that snapshot, whose file the node keeps until a later one replaces it.
fn finish_snapshot_install(
    store: Box<dyn LogStore>,
    chat: &ChatState,
    snapshots: &SnapshotDir,
) -> Result<Box<dyn LogStore>, NodeError> {
    let Some(snapshot) = store.snapshot().map_err(|error| NodeError::Snapshot(error.to_string()))? else {
        return Ok(store);
    };
    let position = snapshot.last_included;
    if chat.last_applied() >= position.index {
        return Ok(store);
    }
    tracing::warn!(
        index = position.index,
        applied = chat.last_applied(),
        "the chat state is behind the snapshot the log was reset to (a crash while installing it); installing it again"
    );
    let path = snapshots.path_of(position);
    // Checked before anything is replaced.
    check_snapshot(&path, position.index).map_err(|error| {
        NodeError::Snapshot(format!("the log was reset to a snapshot through entry {}, but {error}", position.index))
    })?;
    chat.install_snapshot_blocking(&path)?;
    Ok(store)
}

async fn serve(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send,
    on_ready: impl FnOnce(BoundAddresses) + Send,
    node_span: tracing::Span,
) -> Result<(), NodeError> {
    let node_id = config.node_id;
    let cluster = &config.cluster;
    let data_dir = DataDir::open(&config.data_dir)?;
    let (store, chat) = open_storage(&config, &data_dir)?;
    let snapshots = SnapshotDir::open(data_dir.path())?;
    let store = finish_snapshot_install(store, &chat, &snapshots)?;
    let log = SharedLog::new(store);
    tracing::info!(
        cluster = %cluster.cluster_id,
        data_dir = %data_dir.path().display(),
        last_applied = chat.last_applied(),
        "opened chat state and replication log"
    );

    let stopping = Watch::new(false);
    // However this function returns (an early `?`, a port taken), the runtime and the
    // transport are told to stop: the Raft thread must not outlive the node it serves.
    let _stop_on_return = StopOnDrop(stopping.clone());
    let peers: BTreeMap<NodeId, String> =
        cluster.members.iter().filter(|m| m.id != node_id).map(|m| (m.id, m.peer_address.clone())).collect();
    let clustered = !peers.is_empty();
    let (snapshot_reports, reports) = tokio::sync::mpsc::unbounded_channel();
    let transport = GrpcTransport::start(
        cluster.cluster_id.clone(),
        node_id,
        peers,
        config.security.link_security(),
        snapshots.clone(),
        snapshot_reports,
        stopping.clone(),
    );
    let refusals = RefusalCounts {
        tls: config.security.is_tls(),
        peer_batches: Arc::new(AtomicU64::new(0)),
        connections: Arc::new(AtomicU64::new(0)),
    };
    let (inbox_tx, inbox) = peer_inbox();
    let mut rng = os_seeded_rng();
    let setup = ReplicaSetup {
        node_id,
        members: cluster.member_ids(),
        config: cluster.replica_config(),
        rng_seed: rng.next_u64(),
        observer: config.observer.clone(),
        clock: config.clock.clone(),
        snapshots: SnapshotSetup {
            dir: snapshots.clone(),
            policy: SnapshotPolicy {
                every_entries: cluster.compaction.snapshot_every_entries,
                tail_entries: cluster.compaction.log_tail_entries,
            },
            reports,
        },
    };
    // What can fail is done before the Raft thread starts: past it, a failure must stop
    // the thread and wait for it (it holds the log; see the serve error below).
    let hasher = PasswordHasher::new(config.password_hash_cost, &mut rng)?;
    #[cfg(not(madsim))]
    let (client_listener, client_bound, peer_listener, peer_bound) = {
        let bind = |addr: SocketAddr| async move {
            let listener =
                tokio::net::TcpListener::bind(addr).await.map_err(|source| NodeError::Bind { addr, source })?;
            let bound = listener.local_addr().map_err(|source| NodeError::Bind { addr, source })?;
            Ok::<_, NodeError>((listener, bound))
        };
        let (client_listener, client_bound) = bind(config.client_listen).await?;
        let (peer_listener, peer_bound) =
            if clustered { bind(config.peer_listen).await.map(|(l, b)| (Some(l), Some(b)))? } else { (None, None) };
        (client_listener, client_bound, peer_listener, peer_bound)
    };
    let (runtime, raft) = start_runtime(setup, log, Arc::clone(&chat), transport, inbox)?;
    let mut runtime_task = crate::seam::spawn_dedicated(RAFT_THREAD_NAME, runtime.run(stopping.clone()));
    // One span per call, under the node's: the server runs each connection in a task of
    // its own, outside the node's span, so the parent is named.
    let rpc_span = move |request: &tonic::codegen::http::Request<()>| tracing::info_span!(parent: &node_span, "rpc", method = %request.uri().path());

    let hints = LeaderHints::new(cluster.members.iter().map(|m| (m.id, m.client_address.clone())).collect());
    let stream_ends = StreamEnds {
        stopping: stopping.clone(),
        fault: raft.watch_fault(),
        leader_known: raft.watch_leader_known(),
        // Two election timeouts: an election that was going to succeed is over by then.
        leaderless_max: Duration::from_millis(2 * cluster.timing.election_timeout_max_ms),
        clock: config.clock.clone(),
    };
    let chat_service = ChatService::new(
        Arc::clone(&chat),
        Arc::new(raft.clone()),
        hasher,
        rng,
        stream_ends,
        hints.clone(),
        &cluster.limits,
    );
    let cluster_service =
        ClusterService::new(node_id, cluster.clone(), raft.clone(), Arc::clone(&chat), refusals.clone(), hints.clone());
    let client_router = tonic::transport::Server::builder()
        .trace_fn(rpc_span.clone())
        // A client that vanished without closing its connection (a dead machine, a cut
        // link) is found within a minute, and its live subscriptions freed with it.
        .http2_keepalive_interval(Some(CLIENT_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(CLIENT_KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(CLIENT_STREAMS_PER_CONNECTION_MAX)
        .add_service(ChatServer::new(chat_service).max_decoding_message_size(REQUEST_BYTES_MAX))
        .add_service(ClusterServer::new(cluster_service).max_decoding_message_size(CLUSTER_REQUEST_BYTES_MAX));
    let raft_service = RaftService::new(
        cluster.cluster_id.clone(),
        node_id,
        cluster.member_ids(),
        inbox_tx,
        SnapshotIntake {
            dir: snapshots,
            // A snapshot this node could not install never reaches its replica (which
            // would reset its log for it).
            validate: Arc::new(|path: &std::path::Path, position: crate::replication::LogPosition| {
                check_snapshot(path, position.index).map_err(|error| error.to_string())
            }),
        },
        config.security.peer_authentication(),
        Arc::clone(&refusals.peer_batches),
    );
    let peer_router = tonic::transport::Server::builder()
        .trace_fn(rpc_span)
        .timeout(PEER_DELIVERY_TIMEOUT)
        .http2_keepalive_interval(Some(PEER_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(PEER_KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(PEER_DELIVERIES_PER_CONNECTION_MAX as u32)
        .concurrency_limit_per_connection(PEER_DELIVERIES_PER_CONNECTION_MAX)
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(PEER_DELIVERIES_MAX))
        .add_service(RaftServer::new(raft_service).max_decoding_message_size(RAFT_BATCH_BYTES_MAX));

    // Serving stops when `stopping` turns true; the peer server keeps running until then so
    // that a leader can hand over.
    let wait_for_stop = |stopping: Watch<bool>| async move {
        stopping.wait_for(|stopping| *stopping).await;
    };
    #[cfg(not(madsim))]
    let (client_server, peer_server, bound) = {
        use crate::tls::{Handshake, Refusals, Side, incoming};
        let handshake = |side: Side| match &config.security {
            NodeSecurity::Tls(tls) => Handshake::Tls { tls: Arc::clone(tls), side },
            NodeSecurity::Insecure => Handshake::Plain,
        };
        let port_refusals = Arc::new(Refusals::new(Arc::clone(&refusals.connections)));
        let client_incoming = incoming(client_listener, "client", handshake(Side::Client), Arc::clone(&port_refusals));
        let client_server =
            client_router.serve_with_incoming_shutdown(client_incoming, wait_for_stop(stopping.clone()));
        let peer_incoming =
            peer_listener.map(|listener| incoming(listener, "peer", handshake(Side::Peer), port_refusals));
        let peer_server = async {
            match peer_incoming {
                Some(incoming) => {
                    peer_router.serve_with_incoming_shutdown(incoming, wait_for_stop(stopping.clone())).await
                }
                None => Ok(()),
            }
        };
        (client_server, peer_server, BoundAddresses { client: client_bound, peer: peer_bound })
    };
    #[cfg(madsim)]
    let (client_server, peer_server, bound) = {
        let client_server = client_router.serve_with_shutdown(config.client_listen, wait_for_stop(stopping.clone()));
        let peer_listen = config.peer_listen;
        let peer_stopping = stopping.clone();
        let peer_server = async move {
            if clustered {
                peer_router.serve_with_shutdown(peer_listen, wait_for_stop(peer_stopping)).await
            } else {
                Ok(())
            }
        };
        let peer = clustered.then_some(config.peer_listen);
        (client_server, peer_server, BoundAddresses { client: config.client_listen, peer })
    };
    tracing::info!(client = %bound.client, peer = ?bound.peer, tls = config.security.is_tls(), "serving");
    #[cfg(not(madsim))]
    if !config.security.is_tls() {
        tracing::warn!(
            "running WITHOUT TLS (--insecure): passwords and messages cross the network in clear, and \
             anyone who can reach the peer port can speak for any member; use it only on a trusted loopback"
        );
    }
    on_ready(bound);

    let servers = async { tokio::try_join!(client_server, peer_server) };
    tokio::pin!(servers);
    // `biased`: a fixed polling order keeps simulations replayable.
    let stopped_by_runtime = tokio::select! {
        biased;
        () = shutdown => None,
        result = &mut runtime_task => Some(result),
        served = &mut servers => {
            if let Err(error) = served {
                // The servers failed (a port taken, say): the runtime and the transport
                // must not outlive them, nor the data directory's lock (dropped on return)
                // the runtime: a caller that retries would open a second writer.
                stopping.set(true);
                stop_runtime(runtime_task).await?;
                return Err(error.into());
            }
            None
        }
    };
    if let Some(result) = stopped_by_runtime {
        stopping.set(true);
        return match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                tracing::error!(%error, "replication failed; stopping");
                Err(error.into())
            }
            Err(join_error) => panic!("the replication task failed: {join_error}"),
        };
    }

    tracing::info!("shutting down");
    match raft.hand_over_leadership(Duration::from_millis(cluster.timing.election_timeout_min_ms)).await {
        HandOver::NotLeader => {}
        HandOver::Done { target } => tracing::info!(target, "handed leadership over"),
        HandOver::NoLeaderSeen { target } => {
            tracing::warn!(target, "stepped down for a hand-over, but saw no new leader in time; stopping anyway")
        }
        // The cluster elects a leader after an election timeout, as after a crash.
        HandOver::NotTaken { target } => {
            tracing::warn!(target, "leadership hand-over did not complete in time; stopping anyway")
        }
    }
    // Live subscriptions never end on their own; this tells them, the servers and the
    // runtime to stop.
    stopping.set(true);
    // A client that stops reading can hold a graceful shutdown open indefinitely; past the
    // grace period the node stops anyway (everything acknowledged is already durable).
    if tokio::time::timeout(SHUTDOWN_GRACE_PERIOD, &mut servers).await.is_err() {
        tracing::warn!("clients did not disconnect in time; stopping anyway");
    }
    stop_runtime(runtime_task).await?;
    tracing::info!("stopped");
    drop(data_dir);
    Ok(())
}

/// Sets a stop signal when dropped.
struct StopOnDrop(Watch<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

/// Waits for the replication runtime, told to stop, to finish (what it was writing is
/// then written), for at most the grace period: a runtime stuck on a disk that does not
/// answer must not keep the process from exiting (everything acknowledged is durable).
async fn stop_runtime(runtime_task: tokio::task::JoinHandle<Result<(), RuntimeError>>) -> Result<(), NodeError> {
    match tokio::time::timeout(SHUTDOWN_GRACE_PERIOD, runtime_task).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join_error)) => panic!("the replication task failed: {join_error}"),
        Err(_) => tracing::warn!("replication did not stop in time"),
    }
    Ok(())
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::replication::{Entry, LogIndex, Membership, Role, Term};

    /// A crash between installing a leader's snapshot in the log and in the chat state
    /// leaves the chat state behind: the start installs the snapshot the log names, and
    /// refuses a file that does not hold what the log says.
    #[test]
    fn a_start_completes_a_snapshot_install_a_crash_interrupted() {
        use chorus_proto::v1::{Command, CreateAccountCommand, command};

        use crate::replication::{LogPosition, SnapshotMeta};
        use crate::storage::ClusterIdentity;

        let dir = tempfile::tempdir().unwrap();
        let snapshots = SnapshotDir::open(dir.path()).unwrap();
        let mut leader = ChatStateMachine::open(&dir.path().join("leader.sqlite3")).unwrap();
        for (index, name) in [(1, "ann"), (2, "bob"), (3, "cat")] {
            let create = CreateAccountCommand { username: name.into(), password_hash: "h".into(), created_at_ms: 1 };
            let command = Command { proposed_at_ms: 1, kind: Some(command::Kind::CreateAccount(create)) };
            leader.apply(index, &command).unwrap();
        }
        let position = LogPosition { index: 3, term: 2 };
        leader.queries().write_snapshot(&snapshots.path_of(position)).unwrap();
        let identity = ClusterIdentity { cluster_id: "c".into(), node_id: 1, members: [1, 2, 3].into() };
        let mut log = SqliteLog::open(&dir.path().join("raft.sqlite3"), &identity, Creation::Bootstrap).unwrap();
        log.persist(Some(crate::replication::HardState { term: 2, vote: None }), None, &[]).unwrap();
        log.install_snapshot(&SnapshotMeta {
            last_included: position,
            membership: Membership::with_voters(identity.members.iter().copied()),
        })
        .unwrap();

        let chat = ChatState::new(ChatStateMachine::open(&dir.path().join("chat.sqlite3")).unwrap()).unwrap();
        let store = finish_snapshot_install(Box::new(log), &chat, &snapshots).unwrap();
        assert_eq!(chat.last_applied(), 3);

        // The log names a later snapshot than the file there holds.
        drop(store);
        let mut log = SqliteLog::open(&dir.path().join("raft.sqlite3"), &identity, Creation::MemberOfExisting).unwrap();
        let later = LogPosition { index: 9, term: 2 };
        std::fs::copy(snapshots.path_of(position), snapshots.path_of(later)).unwrap();
        log.install_snapshot(&SnapshotMeta {
            last_included: later,
            membership: Membership::with_voters(identity.members.iter().copied()),
        })
        .unwrap();
        let error = finish_snapshot_install(Box::new(log), &chat, &snapshots).err().expect("refused");
        assert!(error.to_string().contains("through entry 3, not 9"), "{error}");
    }

    /// Records the thread each applied entry was applied on.
    #[derive(Default)]
    struct ThreadNames(Mutex<Vec<Option<String>>>, tokio::sync::Notify);

    impl ReplicationObserver for ThreadNames {
        fn role_changed(&self, _: NodeId, _: Term, _: Role) {}
        fn entry_applied(&self, _: NodeId, _: &Entry) {
            self.0.lock().unwrap().push(std::thread::current().name().map(str::to_owned));
            self.1.notify_one();
        }
        fn snapshot_installed(&self, _: NodeId, _: LogIndex) {}
    }

    /// The Raft loop, which reads old log entries synchronously, runs on its own thread,
    /// not on the workers that serve clients.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_replication_runtime_runs_on_its_own_thread() {
        let dir = tempfile::tempdir().unwrap();
        let observer = Arc::new(ThreadNames::default());
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let config = NodeConfig {
            node_id: 1,
            cluster: ClusterConfig::single(1, loopback.to_string()),
            data_dir: dir.path().to_owned(),
            client_listen: loopback,
            peer_listen: loopback,
            password_hash_cost: PasswordHashCost::MINIMUM,
            observer: Some(observer.clone()),
            log_store: None,
            bootstrap: true,
            clock: NodeClock::system(),
            security: NodeSecurity::Insecure,
        };
        // A single node elects itself and applies its no-op: one applied entry.
        let applied = observer.1.notified();
        run_node(config, applied, |_| {}).await.unwrap();
        let names = observer.0.lock().unwrap().clone();
        assert!(!names.is_empty(), "the no-op was applied");
        assert!(names.iter().all(|name| name.as_deref() == Some(RAFT_THREAD_NAME)), "{names:?}");
    }
}
