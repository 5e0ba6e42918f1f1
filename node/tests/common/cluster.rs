//! A cluster of real `chorus node` processes on loopback for end-to-end tests: start,
//! SIGKILL, SIGTERM and restart members, and ask each for its status. The processes are
//! `chorus::supervisor`'s, as the demo's are; dropping the cluster kills them.

use std::path::Path;
use std::time::Duration;

use chorus::client::v1::StatusResponse;
use chorus::client::{ClientSecurity, ClusterClient, RetryPolicy};
use chorus::cluster_config::{Compaction, Limits, Timing};
use chorus::supervisor::{Launch, LocalCluster};

use super::BINARY;

/// A [`LocalCluster`] whose calls panic on failure (a test's failure), with the waits
/// tests need.
pub struct TestCluster {
    pub cluster: LocalCluster,
}

/// How a test cluster runs.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub cluster_id: String,
    /// `[timing]` of the configuration: heartbeat, election minimum and maximum (ms).
    pub timing_ms: (u64, u64, u64),
    /// Argon2 at its minimum cost (fast tests) instead of the production cost.
    pub fast_password_hashing: bool,
    /// Nodes and clients without TLS.
    pub insecure: bool,
    /// `[limits]` of the configuration (by default, limits no load of a test reaches).
    pub limits: Limits,
    /// `[compaction]` of the configuration (by default, the production defaults).
    pub compaction: Compaction,
}

impl Default for ClusterOptions {
    /// Short timeouts (heartbeat 50 ms, elections 400-800 ms) and cheap hashing.
    fn default() -> Self {
        Self {
            cluster_id: "e2e".to_owned(),
            timing_ms: (50, 400, 800),
            fast_password_hashing: true,
            insecure: false,
            limits: Limits::generous(),
            compaction: Compaction::default(),
        }
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
        let (heartbeat_interval_ms, election_timeout_min_ms, election_timeout_max_ms) = options.timing_ms;
        let timing = Timing { heartbeat_interval_ms, election_timeout_min_ms, election_timeout_max_ms };
        let launch = Launch {
            fast_password_hashing: options.fast_password_hashing,
            insecure: options.insecure,
            log_filter: Some("info".to_owned()),
            ..Launch::new(BINARY)
        };
        let mut cluster =
            LocalCluster::create(dir, &options.cluster_id, size, timing, options.limits, "", launch).unwrap();
        if options.compaction != Compaction::default() {
            cluster.set_compaction(options.compaction).unwrap();
        }
        let mut cluster = Self { cluster };
        for id in 1..=size {
            cluster.start_node(id);
        }
        cluster
    }

    pub fn config_path(&self) -> &Path {
        self.cluster.config_path()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.cluster.ids()
    }

    pub fn client_address(&self, id: u64) -> String {
        self.cluster.client_address(id).unwrap()
    }

    pub fn start_node(&mut self, id: u64) {
        self.cluster.start(id).unwrap_or_else(|error| panic!("{error}"));
    }

    /// SIGKILL: no chance to clean up or hand over.
    pub fn kill(&mut self, id: u64) {
        self.cluster.kill(id).unwrap();
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        let (status, in_time) = self.cluster.terminate(id, Duration::from_secs(60)).unwrap().expect("node is running");
        assert!(in_time, "node {id} did not stop within a minute of SIGTERM");
        status
    }

    pub fn is_up(&self, id: u64) -> bool {
        self.cluster.is_running(id)
    }

    /// A running node's memory, from /proc: (resident now, peak resident), in bytes.
    pub fn memory_of(&self, id: u64) -> (u64, u64) {
        let pid = self.cluster.pid(id).expect("node is running");
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

    /// How clients reach this cluster (TLS with its own CA and the operator's certificate).
    pub fn security(&self) -> ClientSecurity {
        self.cluster.client_security().clone()
    }

    /// An endpoint to `peer_address` that proves to be member `as_node` (its certificate
    /// from this cluster's certs directory) and accepts only member `to`'s certificate.
    pub fn peer_endpoint(&self, peer_address: &str, as_node: u64, to: u64) -> tonic::transport::Endpoint {
        let certs = self.cluster.certs_dir();
        let tls = chorus::tls::NodeTls::load(as_node, chorus::tls::TlsFiles::of_node(&certs, as_node)).unwrap();
        tonic::transport::Endpoint::from_shared(format!("https://{peer_address}"))
            .unwrap()
            .tls_config(tls.peer_client_config(to))
            .unwrap()
    }

    /// Runs the `chorus` command line against this cluster, as an operator holding node
    /// 1's certificate.
    pub fn run_cli(&self, args: &[&str]) -> std::process::Output {
        let files = chorus::tls::TlsFiles::of_node(&self.cluster.certs_dir(), 1);
        std::process::Command::new(super::BINARY)
            .arg("--servers")
            .arg(self.servers().join(","))
            .arg("--ca")
            .arg(&files.ca)
            .arg("--cert")
            .arg(&files.cert)
            .arg("--key")
            .arg(&files.key)
            .args(args)
            .output()
            .expect("run chorus")
    }

    pub fn servers(&self) -> Vec<String> {
        self.cluster.client_addresses()
    }

    pub fn client(&self, call_deadline: Duration) -> ClusterClient {
        let policy = RetryPolicy { call_deadline, ..RetryPolicy::default() };
        ClusterClient::new(&self.servers(), policy, self.cluster.client_security().clone()).unwrap()
    }

    pub async fn status(&self, id: u64, include_state_digest: bool) -> Option<StatusResponse> {
        self.cluster.status(id, include_state_digest).await
    }

    /// Waits for a live node to report itself leader; returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> u64 {
        self.cluster.wait_for_leader(timeout).await.unwrap_or_else(|error| panic!("{error}"))
    }

    /// Waits until every live node has applied the same index and holds the same chat
    /// state; returns that index.
    pub async fn wait_converged(&self, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = Vec::new();
        while tokio::time::Instant::now() < deadline {
            let mut views = Vec::new();
            for id in self.ids().into_iter().filter(|&id| self.is_up(id)) {
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
                format!(
                    "node {id}: applied {applied} commit {commit} digest {}",
                    hex::encode(&digest[..digest.len().min(4)])
                )
            })
            .collect();
        panic!("replicas did not converge within {timeout:?}:\n{}", summary.join("\n"));
    }

    pub fn log_of(&self, id: u64) -> String {
        std::fs::read_to_string(self.cluster.log_path(id).unwrap()).unwrap_or_default()
    }
}

/// A connection to one node's client port. A node closes at once the connections beyond
/// 16 handshakes under way from one host (as this test's clients all are), so a refused
/// connection is tried again, for up to 30 s.
pub async fn connect(address: &str, security: &ClientSecurity) -> tonic::transport::Channel {
    let endpoint = chorus::client::endpoint(address, security).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(error) if tokio::time::Instant::now() >= deadline => panic!("cannot connect to {address}: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
