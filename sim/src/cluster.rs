//! A cluster of real Chorus nodes on simulated hosts (10.0.0.N), with their own data
//! directories on the real file system and, for power-loss runs, simulated log disks.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chorus::chat::credentials::PasswordHashCost;
use chorus::client::v1::cluster_client::ClusterClient as GrpcClusterClient;
use chorus::client::v1::{StatusRequest, StatusResponse};
use chorus::cluster_config::{ClusterConfig, MemberConfig, Timing};
use chorus::node::{NodeConfig, NodeError, run_node};
use chorus::runtime::ReplicationObserver;
use chorus::seam::{ClockSkew, NodeClock};
use chorus::storage::LogStoreFactory;
use chorus::storage::{DataDirError, LogStoreError};
use madsim::runtime::{Handle, NodeHandle};

use crate::disk::SimDisk;
use crate::observer::GlobalObserver;

/// Where a node's log lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageModel {
    /// SQLite on the real file system: a kill is a process crash (the OS keeps what was
    /// written).
    Sqlite,
    /// The simulated disk: a kill is a power loss (unsynced writes are lost or torn).
    PowerLoss,
}

pub const CLIENT_PORT: u16 = 7001;
pub const PEER_PORT: u16 = 7101;

pub fn node_ip(id: u64) -> IpAddr {
    IpAddr::from([10, 0, 0, id as u8])
}

pub struct SimCluster {
    pub config: ClusterConfig,
    pub storage: StorageModel,
    pub observer: Arc<GlobalObserver>,
    nodes: BTreeMap<u64, NodeHandle>,
    disks: BTreeMap<u64, SimDisk>,
    /// Each node's clocks, as wrong as the nemesis makes them; they outlive restarts, as a
    /// machine's clock outlives its processes.
    clocks: BTreeMap<u64, Arc<ClockSkew>>,
    up: BTreeMap<u64, bool>,
    dir: PathBuf,
    /// A host for status queries (the supervisor has no address of its own).
    probe: NodeHandle,
}

impl SimCluster {
    /// Starts `size` nodes. Data goes under a directory unique to this process, run and
    /// seed (`run` names the scenario: runs of one seed in different scenarios may run at
    /// the same time).
    pub fn start(run: &str, seed: u64, size: u64, storage: StorageModel) -> Self {
        let handle = Handle::current();
        // On a RAM file system when there is one: the nodes' SQLite files are rewritten
        // constantly, and the simulation models crashes itself.
        let base =
            if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = base.join(format!("chorus-sim-{}-{run}-{seed}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let members: Vec<MemberConfig> = (1..=size)
            .map(|id| MemberConfig {
                id,
                client_address: SocketAddr::new(node_ip(id), CLIENT_PORT).to_string(),
                peer_address: SocketAddr::new(node_ip(id), PEER_PORT).to_string(),
                data_dir: Some(dir.join(format!("node-{id}"))),
            })
            .collect();
        // Simulation timing: as in production (100 ms heartbeats, 1-2 s elections).
        let config = ClusterConfig {
            cluster_id: format!("sim-{seed}"),
            timing: Timing::default(),
            // The workload's clients send as fast as they can; rate limits are checked over
            // real sockets (node/tests/chat_api.rs), not here.
            limits: chorus::cluster_config::Limits::generous(),
            // Small, so that every scenario compacts its logs and lagging nodes catch up
            // from snapshots.
            compaction: chorus::cluster_config::Compaction { snapshot_every_entries: 50, log_tail_entries: 10 },
            members,
        };
        let observer = Arc::new(GlobalObserver::default());
        let mut cluster = Self {
            config,
            storage,
            observer,
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            clocks: BTreeMap::new(),
            up: BTreeMap::new(),
            dir,
            probe: handle.create_node().name("probe").ip(IpAddr::from([10, 0, 2, 1])).build(),
        };
        for id in 1..=size {
            let disk = SimDisk::new();
            cluster.disks.insert(id, disk.clone());
            let skew = Arc::new(ClockSkew::new());
            cluster.clocks.insert(id, Arc::clone(&skew));
            let node_config = cluster.node_config(id, disk, NodeClock::skewed(skew));
            // Only the first start that gets as far as serving initializes the node's data
            // (as an operator passes --bootstrap until a start succeeds); every later
            // start, even on a wiped disk, is an ordinary start. A node killed before its
            // first start served is started with --bootstrap again.
            let initialized = Arc::new(AtomicBool::new(false));
            let node = handle
                .create_node()
                .name(format!("node-{id}"))
                .ip(node_ip(id))
                .init(move || {
                    let mut config = node_config.clone();
                    config.bootstrap = !initialized.load(Ordering::SeqCst);
                    let initialized = Arc::clone(&initialized);
                    async move {
                        let id = config.node_id;
                        for attempt in 1.. {
                            // Ctrl-C is the simulation's SIGTERM: a graceful stop, handing
                            // leadership over first.
                            let shutdown = async {
                                let _ = tokio::signal::ctrl_c().await;
                            };
                            let serving = Arc::clone(&initialized);
                            let on_ready = move |_| serving.store(true, Ordering::SeqCst);
                            match run_node(config.clone(), shutdown, on_ready).await {
                                Ok(()) => tracing::info!(node = id, "node stopped gracefully"),
                                // A bootstrap start was killed after it created the log and
                                // before it served: the operator starts it without the flag.
                                Err(NodeError::Log(LogStoreError::AlreadyInitialized { .. })) if config.bootstrap => {
                                    config.bootstrap = false;
                                    continue;
                                }
                                // The previous process of this node (killed, its tasks not yet
                                // dropped) still holds the data directory or its ports: a
                                // supervisor would start it again a moment later.
                                Err(NodeError::DataDir(DataDirError::InUse { .. }) | NodeError::Serve(_))
                                    if attempt < 100 =>
                                {
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                    continue;
                                }
                                // A node that cannot start (a corrupt or wiped disk, say) stays
                                // down, as a real one would, with its reason in the log.
                                Err(error) => tracing::error!(node = id, %error, "node stopped"),
                            }
                            return;
                        }
                    }
                })
                .build();
            cluster.nodes.insert(id, node);
            cluster.up.insert(id, true);
        }
        cluster
    }

    fn node_config(&self, id: u64, disk: SimDisk, clock: NodeClock) -> NodeConfig {
        let log_store: Option<LogStoreFactory> = match self.storage {
            StorageModel::Sqlite => None,
            StorageModel::PowerLoss => Some(Arc::new(move |identity, creation| {
                Ok(Box::new(disk.open(identity, creation)?) as Box<dyn chorus::storage::LogStore>)
            })),
        };
        NodeConfig {
            node_id: id,
            cluster: self.config.clone(),
            data_dir: self.dir.join(format!("node-{id}")),
            client_listen: SocketAddr::new(node_ip(id), CLIENT_PORT),
            peer_listen: SocketAddr::new(node_ip(id), PEER_PORT),
            password_hash_cost: PasswordHashCost::MINIMUM,
            observer: Some(Arc::clone(&self.observer) as Arc<dyn ReplicationObserver>),
            log_store,
            bootstrap: false,
            clock,
            // madsim's network has no TLS (docs/testing.md says what checks it instead).
            security: chorus::node::NodeSecurity::Insecure,
        }
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn is_up(&self, id: u64) -> bool {
        self.up[&id]
    }

    pub fn node_id(&self, id: u64) -> madsim::task::NodeId {
        self.nodes[&id].id()
    }

    pub fn servers(&self) -> Vec<String> {
        self.config.members.iter().map(|m| m.client_address.clone()).collect()
    }

    /// The process dies at once (SIGKILL). On the power-loss model the disk loses what was
    /// not synced; returns what happened to it, for the timeline.
    pub fn kill(&mut self, id: u64, rng: &mut impl rand::Rng) -> String {
        Handle::current().kill(self.nodes[&id].id());
        self.up.insert(id, false);
        self.observer.forget_role(id);
        match self.storage {
            StorageModel::Sqlite => String::new(),
            StorageModel::PowerLoss => self.disks[&id].power_loss(rng),
        }
    }

    pub fn restart(&mut self, id: u64) {
        // A node stopped gracefully is not dead to madsim (only its tasks ended), and a
        // restart alone does not release its network bindings: kill it first, as the
        // process is gone.
        Handle::current().kill(self.nodes[&id].id());
        Handle::current().restart(self.nodes[&id].id());
        self.up.insert(id, true);
    }

    /// A graceful stop (SIGTERM): a leader hands leadership over, then the node exits.
    pub fn terminate(&mut self, id: u64) {
        Handle::current().send_ctrl_c(self.nodes[&id].id());
        self.up.insert(id, false);
        self.observer.forget_role(id);
    }

    /// The node's data is gone (a replaced disk, a wiped directory) while it is down: the
    /// log and the chat database both.
    pub fn wipe(&mut self, id: u64) {
        assert!(!self.up[&id], "wipe a node that is down");
        // A node stopping gracefully may still be running: it dies with its disk.
        Handle::current().kill(self.nodes[&id].id());
        self.disks[&id].wipe();
        let dir = self.dir.join(format!("node-{id}"));
        if let Ok(files) = std::fs::read_dir(&dir) {
            for file in files.flatten() {
                if file.file_name() != "LOCK" {
                    let _ = std::fs::remove_file(file.path());
                }
            }
        }
    }

    /// Node `id`'s clocks, for the nemesis to bend.
    pub fn clock(&self, id: u64) -> &ClockSkew {
        &self.clocks[&id]
    }

    /// Flips a bit in a durable record of `id`'s simulated disk.
    pub fn corrupt_disk(&self, id: u64, rng: &mut impl rand::Rng) -> bool {
        self.disks[&id].flip_bit(rng)
    }

    /// A node's status, asked from the probe host.
    pub async fn status(&self, id: u64, include_state_digest: bool) -> Option<StatusResponse> {
        let address = format!("http://{}", SocketAddr::new(node_ip(id), CLIENT_PORT));
        self.probe
            .spawn(async move {
                let attempt = async {
                    let mut client = GrpcClusterClient::connect(address).await.ok()?;
                    client.status(StatusRequest { include_state_digest }).await.ok().map(|r| r.into_inner())
                };
                tokio::time::timeout(Duration::from_secs(2), attempt).await.ok().flatten()
            })
            .await
            .ok()
            .flatten()
    }

    /// Waits until every live node has applied the same index with the same chat state
    /// (checker 4, convergence). Returns that index, or what each node reported.
    /// Nodes in `excluded` (a corrupt disk keeps them down, as it should) are left out.
    pub async fn converge(&self, timeout: Duration, excluded: &std::collections::BTreeSet<u64>) -> Result<u64, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            let mut views = Vec::new();
            for id in self.ids().into_iter().filter(|id| self.is_up(*id) && !excluded.contains(id)) {
                let status = self.status(id, true).await;
                views.push((id, status.map(|s| (s.applied_index, s.commit_index, s.state_digest))));
            }
            let reference = views.iter().find_map(|(_, v)| v.clone());
            let converged = reference.as_ref().is_some_and(|(applied, _, digest)| {
                views.iter().all(|(_, view)| {
                    view.as_ref().is_some_and(|(a, commit, d)| a == applied && commit == applied && d == digest)
                })
            });
            if converged {
                return Ok(reference.map(|(applied, _, _)| applied).unwrap_or(0));
            }
            last = views
                .iter()
                .map(|(id, view)| match view {
                    Some((applied, commit, digest)) => {
                        let digest = hex::encode(&digest[..4.min(digest.len())]);
                        format!("node {id}: applied {applied}, commit {commit}, digest {digest}")
                    }
                    None => format!("node {id}: no answer"),
                })
                .collect::<Vec<_>>()
                .join("; ");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(last)
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
