//! A Chorus cluster across test hosts: each member a real `chorus node` process inside its
//! host's namespace, at the host's address, over TLS; people on hosts running the real
//! `chorus` client there; and an observer host, never faulted, from which the test asks
//! the members for their status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chorus::cluster_config::{ClusterConfig, Limits, MemberConfig, Timing};
use chorus::replication::NodeId;
use chorus::supervisor::{Launch, LocalCluster, SupervisorError};
use chorus_proto::v1::StatusResponse;

use crate::netns::NetError;
use crate::network::{Host, Network, NetworkError};

/// The observer's host name: a host on the bridge that runs no node and is never faulted.
pub const OBSERVER: &str = "obs";
/// Member `id` serves clients on port `CLIENT_PORT_BASE + id` of its host's address…
pub const CLIENT_PORT_BASE: u16 = 7000;
/// …and its peers on `PEER_PORT_BASE + id`.
pub const PEER_PORT_BASE: u16 = 7100;

#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("node {0} is placed on no host")]
    NotPlaced(NodeId),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("no leader within {0:?}")]
    NoLeader(Duration),
    #[error("cannot find the `chorus` binary at {0} (build it first: cargo build -p chorus), or set CHORUS_BIN")]
    NoBinary(PathBuf),
}

/// Which members run on a host.
#[derive(Debug, Clone)]
pub struct Placement {
    pub host: String,
    pub nodes: Vec<NodeId>,
}

impl Placement {
    pub fn new(host: &str, nodes: &[NodeId]) -> Self {
        Self { host: host.to_owned(), nodes: nodes.to_vec() }
    }
}

/// How a testbed runs its cluster.
#[derive(Debug, Clone)]
pub struct TestbedOptions {
    pub cluster_id: String,
    pub timing: Timing,
    /// Argon2 at its minimum cost: tests only.
    pub fast_password_hashing: bool,
    /// `RUST_LOG` of the nodes.
    pub log_filter: String,
    /// The `chorus-hosts` binary, for link delays (none: delays are refused).
    pub delay_program: Option<PathBuf>,
    /// Each node in a process group of its own, so that a Ctrl-C at the terminal reaches
    /// only the shell (which then removes everything itself). Off in tests: an interrupted
    /// test run takes its nodes with it.
    pub own_process_groups: bool,
}

impl Default for TestbedOptions {
    /// Production timing (heartbeat 100 ms, elections 1-2 s: delays of tens of ms stay
    /// well inside them) and cheap hashing.
    fn default() -> Self {
        Self {
            cluster_id: "hosts".to_owned(),
            timing: Timing { heartbeat_interval_ms: 100, election_timeout_min_ms: 1000, election_timeout_max_ms: 2000 },
            fast_password_hashing: true,
            log_filter: "info".to_owned(),
            delay_program: None,
            own_process_groups: false,
        }
    }
}

/// What a command run on a host did.
#[derive(Debug)]
pub struct CliRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Whether it was killed for outliving its time.
    pub timed_out: bool,
    pub took: Duration,
}

impl CliRun {
    pub fn ok(&self) -> bool {
        self.status.success() && !self.timed_out
    }
}

impl std::fmt::Display for CliRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}{} after {:?}\nstdout: {}\nstderr: {}",
            self.status,
            if self.timed_out { " (killed: timed out)" } else { "" },
            self.took,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// A cluster across hosts. Dropping it kills every node, then removes the hosts.
pub struct Testbed {
    // Declared first, dropped first: the nodes die before their namespaces go.
    cluster: LocalCluster,
    network: Network,
    dir: PathBuf,
    binary: PathBuf,
    node_hosts: BTreeMap<NodeId, String>,
}

impl Testbed {
    /// Makes the hosts (and the observer) and a cluster of every node `placements` name,
    /// with its files under `dir`, and starts every node.
    pub fn start(dir: &Path, placements: &[Placement], options: TestbedOptions) -> Result<Self, TestbedError> {
        let binary = chorus_binary()?;
        let mut names: Vec<&str> = placements.iter().map(|p| p.host.as_str()).collect();
        names.push(OBSERVER);
        let mut network = Network::create(&names, options.delay_program.clone())?;
        network.set_own_process_groups(options.own_process_groups);
        let mut members = Vec::new();
        let mut prefixes = BTreeMap::new();
        let mut node_hosts = BTreeMap::new();
        for placement in placements {
            let host = network.host(&placement.host)?;
            for &id in &placement.nodes {
                let port = |base: u16| base + u16::try_from(id).expect("a member id is small");
                members.push(MemberConfig {
                    id,
                    client_address: format!("{}:{}", host.address, port(CLIENT_PORT_BASE)),
                    peer_address: format!("{}:{}", host.address, port(PEER_PORT_BASE)),
                    data_dir: Some(dir.join(format!("node-{id}"))),
                });
                prefixes.insert(id, host.namespace.exec_prefix());
                node_hosts.insert(id, placement.host.clone());
            }
        }
        members.sort_by_key(|member| member.id);
        let config = ClusterConfig {
            cluster_id: options.cluster_id.clone(),
            timing: options.timing,
            limits: Limits::generous(),
            compaction: Default::default(),
            members,
        };
        let launch = Launch {
            fast_password_hashing: options.fast_password_hashing,
            log_filter: Some(options.log_filter.clone()),
            own_process_group: options.own_process_groups,
            ..Launch::new(&binary)
        };
        let header = "# A cluster across the test hosts of chorus-hosts (network namespaces).";
        let cluster = LocalCluster::create_placed(dir, config, header, launch, prefixes)?;
        let mut testbed = Self { cluster, network, dir: dir.to_owned(), binary, node_hosts };
        for id in testbed.ids() {
            testbed.start_node(id)?;
        }
        Ok(testbed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn cluster(&self) -> &LocalCluster {
        &self.cluster
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    pub fn network_mut(&mut self) -> &mut Network {
        &mut self.network
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.cluster.ids()
    }

    /// The host member `id` runs on.
    pub fn host_of(&self, id: NodeId) -> Result<&Host, TestbedError> {
        let name = self.node_hosts.get(&id).ok_or(TestbedError::NotPlaced(id))?;
        Ok(self.network.host(name)?)
    }

    /// The members on host `name`.
    pub fn nodes_on(&self, name: &str) -> Vec<NodeId> {
        self.node_hosts.iter().filter(|(_, host)| *host == name).map(|(id, _)| *id).collect()
    }

    pub fn start_node(&mut self, id: NodeId) -> Result<(), TestbedError> {
        self.cluster.start(id)?;
        Ok(())
    }

    /// SIGKILL; returns whether it ran.
    pub fn kill(&mut self, id: NodeId) -> Result<bool, TestbedError> {
        Ok(self.cluster.kill(id)?)
    }

    /// SIGTERM (a leader hands over first), a kill after `grace`; `None` if it was not
    /// running, else its exit status and whether it exited in time.
    pub fn terminate(&mut self, id: NodeId, grace: Duration) -> Result<Option<(ExitStatus, bool)>, TestbedError> {
        Ok(self.cluster.terminate(id, grace)?)
    }

    pub fn pause(&self, id: NodeId) -> Result<bool, TestbedError> {
        Ok(self.cluster.pause(id)?)
    }

    pub fn resume(&self, id: NodeId) -> Result<bool, TestbedError> {
        Ok(self.cluster.resume(id)?)
    }

    pub fn is_running(&self, id: NodeId) -> bool {
        self.cluster.is_running(id)
    }

    /// Runs `work` with the cluster, on a thread inside the observer host with a runtime
    /// of its own: the calls it makes go over the bridge, as any client's do.
    pub fn observe<'a, R, F>(&'a self, work: impl FnOnce(&'a LocalCluster) -> F + Send) -> Result<R, TestbedError>
    where
        R: Send,
        F: std::future::Future<Output = R> + 'a,
    {
        let observer = &self.network.host(OBSERVER)?.namespace;
        let cluster = &self.cluster;
        let result = observer.enter(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            runtime.map(|runtime| runtime.block_on(work(cluster)))
        })?;
        result.map_err(|error| TestbedError::Io(PathBuf::from("tokio runtime"), error))
    }

    /// Each running member's status as the observer gets it (`None`: no answer).
    pub fn statuses(
        &self,
        include_state_digest: bool,
    ) -> Result<BTreeMap<NodeId, Option<StatusResponse>>, TestbedError> {
        let ids: Vec<NodeId> = self.ids().into_iter().filter(|id| self.is_running(*id)).collect();
        self.observe(|cluster| async move {
            let mut statuses = BTreeMap::new();
            for id in ids {
                statuses.insert(id, cluster.status(id, include_state_digest).await);
            }
            statuses
        })
    }

    /// The member that reports itself leader, waiting up to `timeout` for one.
    pub fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, TestbedError> {
        self.observe(|cluster| cluster.wait_for_leader(timeout))?.map_err(|_| TestbedError::NoLeader(timeout))
    }

    /// `chorus ARGS…` on host `host`, as a person there runs it: every member named as a
    /// server, the cluster's CA trusted, the session kept in `session`, `env` added, killed
    /// after `limit`.
    pub fn chorus(
        &self,
        host: &str,
        session: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        limit: Duration,
    ) -> Result<CliRun, TestbedError> {
        let mut command = self.client_command(host, session)?;
        command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        run_limited(command, limit).map_err(|error| TestbedError::Io(self.binary.clone(), error))
    }

    /// `chorus ARGS…` on host `host` on this terminal (its prompts and output the
    /// person's own); returns how it exited.
    pub fn chorus_interactive(&self, host: &str, session: &Path, args: &[&str]) -> Result<ExitStatus, TestbedError> {
        let mut command = self.client_command(host, session)?;
        command.args(args).status().map_err(|error| TestbedError::Io(self.binary.clone(), error))
    }

    /// The client's command on `host`, before its arguments.
    fn client_command(&self, host: &str, session: &Path) -> Result<Command, TestbedError> {
        let namespace = &self.network.host(host)?.namespace;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", namespace.name()])
            .arg(&self.binary)
            .env("CHORUS_SERVERS", self.cluster.client_addresses().join(","))
            .env("CHORUS_CA", self.cluster.certs_dir().join(chorus::tls::CA_CERT_FILE))
            .env("CHORUS_SESSION_FILE", session)
            .env_remove("CHORUS_INSECURE");
        Ok(command)
    }
}

/// Runs `command` to its end or until `limit`, then kills it; collects its output.
fn run_limited(mut command: Command, limit: Duration) -> std::io::Result<CliRun> {
    use std::io::Read;
    let started = Instant::now();
    let mut child = command.spawn()?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    // The pipes are read on threads of their own so that a chatty child never blocks on a
    // full pipe while it is waited for.
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() >= limit {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    Ok(CliRun {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        timed_out,
        took,
    })
}

/// The `chorus` binary: `CHORUS_BIN`, or the one cargo built beside the running program
/// (a test binary lives in `target/<profile>/deps/`, the binaries one level up).
pub fn chorus_binary() -> Result<PathBuf, TestbedError> {
    if let Some(path) = std::env::var_os("CHORUS_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| TestbedError::Io(PathBuf::from("current_exe"), e))?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let binary = dir.join("chorus");
    if binary.is_file() { Ok(binary) } else { Err(TestbedError::NoBinary(binary)) }
}
