//! A cluster of real `chorus node` processes on loopback for end-to-end tests: start,
//! SIGKILL, SIGTERM and restart members, and ask each for its status.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use chorus::client::v1::cluster_client::ClusterClient as GrpcClusterClient;
use chorus::client::v1::{Role, StatusRequest, StatusResponse};
use chorus::client::{ClusterClient, RetryPolicy};

use super::BINARY;

pub struct ClusterNode {
    pub id: u64,
    pub client_address: String,
    pub log_path: PathBuf,
    /// Started before: later starts must not pass --bootstrap.
    started: bool,
    child: Option<Child>,
    _stdout: Option<ChildStdout>,
}

pub struct TestCluster {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub nodes: BTreeMap<u64, ClusterNode>,
    options: ClusterOptions,
}

/// How a test cluster runs.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub cluster_id: String,
    /// `[timing]` of the configuration: heartbeat, election minimum and maximum (ms).
    pub timing_ms: (u64, u64, u64),
    /// Argon2 at its minimum cost (fast tests) instead of the production cost.
    pub fast_password_hashing: bool,
}

impl Default for ClusterOptions {
    /// Short timeouts (heartbeat 50 ms, elections 400-800 ms) and cheap hashing.
    fn default() -> Self {
        Self { cluster_id: "e2e".to_owned(), timing_ms: (50, 400, 800), fast_password_hashing: true }
    }
}

impl ClusterOptions {
    /// The production defaults: heartbeat 100 ms, elections 1-2 s, Argon2's default cost.
    pub fn production() -> Self {
        Self { timing_ms: (100, 1000, 2000), fast_password_hashing: false, ..Self::default() }
    }
}

impl TestCluster {
    /// Starts `size` nodes with short timeouts (heartbeat 50 ms, elections 400-800 ms).
    pub fn start(dir: &Path, size: u64) -> Self {
        Self::start_with(dir, size, ClusterOptions::default())
    }

    pub fn start_with_cluster_id(dir: &Path, size: u64, cluster_id: &str) -> Self {
        Self::start_with(dir, size, ClusterOptions { cluster_id: cluster_id.to_owned(), ..ClusterOptions::default() })
    }

    pub fn start_with(dir: &Path, size: u64, options: ClusterOptions) -> Self {
        let cluster_id = options.cluster_id.clone();
        let (heartbeat, election_min, election_max) = options.timing_ms;
        let listeners: Vec<TcpListener> =
            (0..2 * size).map(|_| TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap()).collect();
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        drop(listeners);
        let mut config = format!(
            "cluster_id = \"{cluster_id}\"\n[timing]\nheartbeat_interval_ms = {heartbeat}\nelection_timeout_min_ms = {election_min}\nelection_timeout_max_ms = {election_max}\n"
        );
        let mut nodes = BTreeMap::new();
        for id in 1..=size {
            let client_address = format!("127.0.0.1:{}", ports[2 * (id as usize - 1)]);
            let peer_address = format!("127.0.0.1:{}", ports[2 * (id as usize - 1) + 1]);
            let data_dir = dir.join(format!("node-{id}"));
            config.push_str(&format!(
                "\n[[members]]\nid = {id}\nclient_address = \"{client_address}\"\npeer_address = \"{peer_address}\"\ndata_dir = {:?}\n",
                data_dir.display().to_string()
            ));
            std::fs::create_dir_all(&data_dir).unwrap();
            let log_path = dir.join(format!("node-{id}.log"));
            nodes.insert(id, ClusterNode { id, client_address, log_path, started: false, child: None, _stdout: None });
        }
        let config_path = dir.join("cluster.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut cluster = Self { dir: dir.to_owned(), config_path, nodes, options };
        for id in 1..=size {
            cluster.start_node(id);
        }
        cluster
    }

    pub fn start_node(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        assert!(node.child.is_none(), "node {id} is running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log_path).unwrap();
        let mut command = Command::new(BINARY);
        command.args(["node", "--id", &id.to_string(), "--config"]).arg(&self.config_path);
        if self.options.fast_password_hashing {
            command.arg("--insecure-fast-password-hashing");
        }
        if !node.started {
            command.arg("--bootstrap");
        }
        let mut child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start chorus node");
        let (_, stdout) = super::wait_for_ready_line(child.stdout.take().unwrap());
        node.started = true;
        node.child = Some(child);
        node._stdout = Some(stdout);
    }

    /// SIGKILL: no chance to clean up or hand over.
    pub fn kill(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        if let Some(mut child) = node.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        let node = self.nodes.get_mut(&id).unwrap();
        let mut child = node.child.take().expect("node is running");
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        child.wait().unwrap()
    }

    pub fn is_up(&self, id: u64) -> bool {
        self.nodes[&id].child.is_some()
    }

    /// A running node's memory, from /proc: (resident now, peak resident), in bytes.
    pub fn memory_of(&self, id: u64) -> (u64, u64) {
        let pid = self.nodes[&id].child.as_ref().expect("node is running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc is readable");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn servers(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.client_address.clone()).collect()
    }

    pub fn client(&self, call_deadline: Duration) -> ClusterClient {
        ClusterClient::new(&self.servers(), RetryPolicy { call_deadline, ..RetryPolicy::default() }).unwrap()
    }

    pub async fn status(&self, id: u64, include_state_digest: bool) -> Option<StatusResponse> {
        let address = format!("http://{}", self.nodes[&id].client_address);
        let attempt = async {
            let mut client = GrpcClusterClient::connect(address).await.ok()?;
            client.status(StatusRequest { include_state_digest }).await.ok().map(|r| r.into_inner())
        };
        tokio::time::timeout(Duration::from_secs(5), attempt).await.ok().flatten()
    }

    /// Waits for a live node to report itself leader; returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            for &id in self.nodes.keys() {
                if self.is_up(id)
                    && let Some(status) = self.status(id, false).await
                    && status.role() == Role::Leader
                {
                    return id;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader within {timeout:?}");
    }

    /// Waits until every live node has applied the same index and holds the same chat
    /// state; returns that index.
    pub async fn wait_converged(&self, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = Vec::new();
        while tokio::time::Instant::now() < deadline {
            let mut views = Vec::new();
            for &id in self.nodes.keys().filter(|id| self.is_up(**id)) {
                match self.status(id, true).await {
                    Some(status) => views.push((id, status.applied_index, status.commit_index, status.state_digest)),
                    None => views.push((id, 0, u64::MAX, Vec::new())),
                }
            }
            let first = &views[0];
            if first.1 > 0 && views.iter().all(|v| v.1 == first.1 && v.3 == first.3 && v.2 == v.1) {
                return first.1;
            }
            last = views;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let summary: Vec<String> = last
            .iter()
            .map(|(id, applied, commit, digest)| {
                format!("node {id}: applied {applied} commit {commit} digest {:02x?}", &digest[..digest.len().min(4)])
            })
            .collect();
        panic!("replicas did not converge within {timeout:?}:\n{}", summary.join("\n"));
    }

    pub fn log_of(&self, id: u64) -> String {
        std::fs::read_to_string(&self.nodes[&id].log_path).unwrap_or_default()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}
