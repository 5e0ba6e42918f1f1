//! A cluster of `chorus node` processes on this machine, as `chorus demo` and the
//! end-to-end tests run it: ports claimed, `cluster.toml` written, each member started,
//! killed, stopped and restarted on its own data directory, every process killed when the
//! cluster is dropped.
//!
//! It supervises real OS processes and reads the real clock, so it is not part of a node
//! and is not built for the simulation.

mod ports;
mod process;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chorus_proto::v1::cluster_client::ClusterClient as GrpcClusterClient;
use chorus_proto::v1::{Role, StatusRequest, StatusResponse};

pub use ports::{PortClaim, PortError, claim_loopback_port, claim_loopback_ports};
pub use process::{NodeProcess, ProcessError, listening_line, parse_listening_line};

use crate::client::{ClientError, ClientIdentity, ClientSecurity};
use crate::cluster_config::{ClusterConfig, ClusterConfigError, Compaction, Limits, MemberConfig, Timing};
use crate::replication::NodeId;
use crate::tls::{CA_CERT_FILE, CertificateAuthority, TlsError, Validity, client_files, node_files};

/// The client certificate a supervisor issues itself, to call the cluster methods.
pub const OPERATOR_CLIENT: &str = "operator";

/// How long one status call may take before a node counts as not answering.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Config { path: PathBuf, source: ClusterConfigError },
    #[error(transparent)]
    Ports(#[from] PortError),
    #[error("node {id}: {source}; its log is {log}")]
    Node { id: NodeId, log: PathBuf, source: ProcessError },
    #[error("node {0} is not a member of this cluster")]
    NotAMember(NodeId),
    #[error("node {0} is already running")]
    AlreadyRunning(NodeId),
    #[error("no node reported itself leader within {timeout:?}; the logs are under {dir}")]
    NoLeader { timeout: Duration, dir: PathBuf },
    #[error("certificates in {dir}: {source}")]
    Certificates { dir: PathBuf, source: TlsError },
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// How member processes are started.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `chorus` binary.
    pub binary: PathBuf,
    /// Argon2 at its minimum cost (`--insecure-fast-password-hashing`): tests only.
    pub fast_password_hashing: bool,
    /// `RUST_LOG` for the nodes; `None` leaves the environment's.
    pub log_filter: Option<String>,
    /// How long a node may take to say it listens.
    pub start_timeout: Duration,
    /// Each node in a process group of its own, so that a Ctrl-C at the terminal reaches
    /// only the supervisor, which then stops the nodes itself (the demo). Off, a Ctrl-C
    /// stops the nodes with their supervisor (tests: nothing outlives an interrupted run).
    pub own_process_group: bool,
    /// Run the nodes with `--insecure` (no TLS). Otherwise the cluster has its own CA and
    /// certificates in `DIR/certs`, made on its first start.
    pub insecure: bool,
}

impl Launch {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            fast_password_hashing: false,
            log_filter: None,
            start_timeout: Duration::from_secs(30),
            own_process_group: false,
            insecure: false,
        }
    }
}

struct Member {
    data_dir: PathBuf,
    log_path: PathBuf,
    /// Not started yet in a cluster this supervisor created: the first start initializes
    /// the data directory (`--bootstrap`).
    bootstrap: bool,
    /// What the `chorus` binary is run under, if anything: `ip netns exec HOST` for a
    /// member on a test host with a network stack of its own.
    command_prefix: Vec<String>,
    process: Option<NodeProcess>,
}

pub struct LocalCluster {
    dir: PathBuf,
    config_path: PathBuf,
    config: ClusterConfig,
    launch: Launch,
    members: BTreeMap<NodeId, Member>,
    /// How clients (and this supervisor) reach the nodes.
    security: ClientSecurity,
    /// The ports of a cluster created here, held for as long as it runs.
    _ports: Vec<PortClaim>,
}

impl LocalCluster {
    /// A new cluster of `members` members on claimed loopback ports, its `cluster.toml` and
    /// data directories under `dir`. Nothing is started yet.
    pub fn create(
        dir: &Path,
        cluster_id: &str,
        members: u64,
        timing: Timing,
        limits: Limits,
        header: &str,
        launch: Launch,
    ) -> Result<Self, SupervisorError> {
        let ports = claim_loopback_ports(2 * members as usize)?;
        let members = (1..=members)
            .zip(ports.chunks(2))
            .map(|(id, pair)| MemberConfig {
                id,
                client_address: pair[0].address().to_string(),
                peer_address: pair[1].address().to_string(),
                data_dir: Some(dir.join(format!("node-{id}"))),
            })
            .collect();
        let config = ClusterConfig {
            cluster_id: cluster_id.to_owned(),
            timing,
            limits,
            compaction: Compaction::default(),
            members,
        };
        let mut cluster = Self::create_placed(dir, config, header, launch, BTreeMap::new())?;
        cluster._ports = ports;
        Ok(cluster)
    }

    /// A new cluster of the members `config` names, at their own addresses (nothing is
    /// claimed: they are not on this machine's loopback), each started under the command
    /// `prefixes` gives it (none for a member it does not name). Its `cluster.toml` and
    /// data directories go under `dir`; nothing is started yet.
    pub fn create_placed(
        dir: &Path,
        config: ClusterConfig,
        header: &str,
        launch: Launch,
        prefixes: BTreeMap<NodeId, Vec<String>>,
    ) -> Result<Self, SupervisorError> {
        if let Some(id) = prefixes.keys().find(|id| config.member(**id).is_err()) {
            return Err(SupervisorError::NotAMember(*id));
        }
        let config_path = dir.join("cluster.toml");
        let config_error = |source| SupervisorError::Config { path: config_path.clone(), source };
        config.validate().map_err(config_error)?;
        let text = config.to_toml(header).map_err(config_error)?;
        create_dir(dir)?;
        std::fs::write(&config_path, text)
            .map_err(|source| SupervisorError::Io { path: config_path.clone(), source })?;
        let mut cluster = Self::with_config(dir, config_path, config, launch, true, Vec::new())?;
        for (id, prefix) in prefixes {
            cluster.member_mut(id)?.command_prefix = prefix;
        }
        Ok(cluster)
    }

    /// The cluster whose `cluster.toml` is in `dir` (made by [`LocalCluster::create`]
    /// earlier, perhaps by another process). Its loopback ports are claimed again: if
    /// another cluster on this machine holds one, this fails rather than start beside it.
    /// Nothing is started yet.
    pub fn open(dir: &Path, launch: Launch) -> Result<Self, SupervisorError> {
        let config_path = dir.join("cluster.toml");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|source| SupervisorError::Io { path: config_path.clone(), source })?;
        let config = ClusterConfig::from_toml(&text)
            .map_err(|source| SupervisorError::Config { path: config_path.clone(), source })?;
        let mut ports = Vec::new();
        for member in &config.members {
            for address in [&member.client_address, &member.peer_address] {
                // Port 0 is any free port (a cluster of one): nothing to claim.
                if let Ok(address) = address.parse::<SocketAddr>()
                    && address.ip().is_loopback()
                    && address.port() != 0
                {
                    ports.push(claim_loopback_port(address.port())?);
                }
            }
        }
        Self::with_config(dir, config_path, config, launch, false, ports)
    }

    fn with_config(
        dir: &Path,
        config_path: PathBuf,
        config: ClusterConfig,
        launch: Launch,
        bootstrap: bool,
        ports: Vec<PortClaim>,
    ) -> Result<Self, SupervisorError> {
        let mut members = BTreeMap::new();
        for member in &config.members {
            let data_dir = member.data_dir.clone().unwrap_or_else(|| dir.join(format!("node-{}", member.id)));
            create_dir(&data_dir)?;
            // Beside the data directory, not in it: a data directory starts empty.
            let log_path = dir.join(format!("node-{}.log", member.id));
            members
                .insert(member.id, Member { data_dir, log_path, bootstrap, command_prefix: Vec::new(), process: None });
        }
        let security = if launch.insecure { ClientSecurity::Insecure } else { ensure_certificates(dir, &config)? };
        Ok(Self { dir: dir.to_owned(), config_path, config, launch, members, security, _ports: ports })
    }

    /// Sets `[compaction]` in the cluster's configuration file; for members started after.
    pub fn set_compaction(&mut self, compaction: Compaction) -> Result<(), SupervisorError> {
        let config_error = |source| SupervisorError::Config { path: self.config_path.clone(), source };
        let mut config = self.config.clone();
        config.compaction = compaction;
        config.validate().map_err(config_error)?;
        let text = config.to_toml("# Written by chorus's supervisor.").map_err(config_error)?;
        std::fs::write(&self.config_path, text)
            .map_err(|source| SupervisorError::Io { path: self.config_path.clone(), source })?;
        self.config = config;
        Ok(())
    }

    /// Where the cluster's TLS files are (whether or not it uses them).
    pub fn certs_dir(&self) -> PathBuf {
        certs_dir(&self.dir)
    }

    /// How a client reaches the nodes: under TLS, trusting the cluster's CA and presenting
    /// the supervisor's operator certificate.
    pub fn client_security(&self) -> &ClientSecurity {
        &self.security
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    /// Every member's client address, in id order (what a client is given).
    pub fn client_addresses(&self) -> Vec<String> {
        self.config.members.iter().map(|m| m.client_address.clone()).collect()
    }

    pub fn client_address(&self, id: NodeId) -> Result<String, SupervisorError> {
        Ok(self.config.member(id).map_err(|_| SupervisorError::NotAMember(id))?.client_address.clone())
    }

    pub fn data_dir(&self, id: NodeId) -> Result<&Path, SupervisorError> {
        Ok(&self.member(id)?.data_dir)
    }

    pub fn log_path(&self, id: NodeId) -> Result<&Path, SupervisorError> {
        Ok(&self.member(id)?.log_path)
    }

    pub fn is_running(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| m.process.is_some())
    }

    pub fn pid(&self, id: NodeId) -> Option<u32> {
        self.members.get(&id)?.process.as_ref().map(NodeProcess::pid)
    }

    /// Starts member `id` and waits until it serves clients; returns its client address.
    pub fn start(&mut self, id: NodeId) -> Result<SocketAddr, SupervisorError> {
        let (config_path, launch, certs) = (self.config_path.clone(), self.launch.clone(), certs_dir(&self.dir));
        let member = self.members.get_mut(&id).ok_or(SupervisorError::NotAMember(id))?;
        if member.process.is_some() {
            return Err(SupervisorError::AlreadyRunning(id));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log_path)
            .map_err(|source| SupervisorError::Io { path: member.log_path.clone(), source })?;
        let mut command = match member.command_prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&launch.binary);
                command
            }
            None => Command::new(&launch.binary),
        };
        command.args(["node", "--id", &id.to_string(), "--config"]).arg(&config_path).stderr(Stdio::from(log));
        if launch.fast_password_hashing {
            command.arg("--insecure-fast-password-hashing");
        }
        if launch.insecure {
            command.arg("--insecure");
        } else {
            command.arg("--certs").arg(certs);
        }
        if member.bootstrap {
            command.arg("--bootstrap");
        }
        if let Some(filter) = &launch.log_filter {
            command.env("RUST_LOG", filter);
        }
        if launch.own_process_group {
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
        }
        let process = NodeProcess::start(command, launch.start_timeout).map_err(|source| SupervisorError::Node {
            id,
            log: member.log_path.clone(),
            source,
        })?;
        let address = process.client_address();
        member.bootstrap = false;
        member.process = Some(process);
        Ok(address)
    }

    /// SIGKILL member `id` if it runs; returns whether it did.
    pub fn kill(&mut self, id: NodeId) -> Result<bool, SupervisorError> {
        let member = self.member_mut(id)?;
        let Some(process) = member.process.take() else { return Ok(false) };
        let log = member.log_path.clone();
        process.kill().map_err(|source| SupervisorError::Node { id, log, source })?;
        Ok(true)
    }

    /// SIGSTOP member `id` if it runs (it freezes: no timer fires, no socket is read, as
    /// in a long GC pause or a stalled VM); returns whether it runs.
    pub fn pause(&self, id: NodeId) -> Result<bool, SupervisorError> {
        self.signal(id, NodeProcess::pause)
    }

    /// SIGCONT member `id` if it runs (a paused member goes on where it stopped).
    pub fn resume(&self, id: NodeId) -> Result<bool, SupervisorError> {
        self.signal(id, NodeProcess::resume)
    }

    fn signal(&self, id: NodeId, send: fn(&NodeProcess) -> Result<(), ProcessError>) -> Result<bool, SupervisorError> {
        let member = self.member(id)?;
        let Some(process) = &member.process else { return Ok(false) };
        let log = member.log_path.clone();
        send(process).map_err(|source| SupervisorError::Node { id, log, source })?;
        Ok(true)
    }

    /// SIGHUP member `id` (it reloads its certificates); returns whether it runs.
    pub fn reload_certificates(&self, id: NodeId) -> Result<bool, SupervisorError> {
        self.signal(id, NodeProcess::hang_up)
    }

    /// SIGTERM member `id`, waits up to `grace` for it to exit and kills it after that.
    /// Returns its exit status and whether it exited in time; `None` if it was not running.
    pub fn terminate(&mut self, id: NodeId, grace: Duration) -> Result<Option<(ExitStatus, bool)>, SupervisorError> {
        let member = self.member_mut(id)?;
        let Some(process) = member.process.take() else { return Ok(None) };
        let log = member.log_path.clone();
        process.terminate(grace).map(Some).map_err(|source| SupervisorError::Node { id, log, source })
    }

    /// A running member's answer to `Cluster/Status`, or `None` if it does not answer soon.
    pub async fn status(&self, id: NodeId, include_state_digest: bool) -> Option<StatusResponse> {
        let endpoint = crate::client::endpoint(&self.client_address(id).ok()?, &self.security).ok()?;
        let attempt = async {
            let mut client = GrpcClusterClient::new(endpoint.connect().await.ok()?);
            client.status(StatusRequest { include_state_digest }).await.ok().map(|r| r.into_inner())
        };
        tokio::time::timeout(STATUS_TIMEOUT, attempt).await.ok().flatten()
    }

    /// Waits for a running member to report itself leader; returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, SupervisorError> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for id in self.ids() {
                if self.is_running(id)
                    && let Some(status) = self.status(id, false).await
                    && status.role() == Role::Leader
                {
                    return Ok(id);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(SupervisorError::NoLeader { timeout, dir: self.dir.clone() })
    }

    fn member(&self, id: NodeId) -> Result<&Member, SupervisorError> {
        self.members.get(&id).ok_or(SupervisorError::NotAMember(id))
    }

    fn member_mut(&mut self, id: NodeId) -> Result<&mut Member, SupervisorError> {
        self.members.get_mut(&id).ok_or(SupervisorError::NotAMember(id))
    }
}

fn certs_dir(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join("certs")
}

/// Makes what is missing of the cluster's CA, its members' certificates (each naming the
/// hosts of the member's addresses, and localhost) and the operator's client certificate,
/// in `DIR/certs`; returns how clients reach the cluster with them.
fn ensure_certificates(dir: &Path, config: &ClusterConfig) -> Result<ClientSecurity, SupervisorError> {
    let certs = certs_dir(dir);
    let error = |source| SupervisorError::Certificates { dir: certs.clone(), source };
    let ca = if certs.join(CA_CERT_FILE).exists() {
        CertificateAuthority::open(&certs).map_err(error)?
    } else {
        CertificateAuthority::create(&certs, &config.cluster_id, Validity::ca_default()).map_err(error)?
    };
    for member in &config.members {
        let files = node_files(&certs, member.id);
        if files.cert.exists() {
            continue;
        }
        let mut hosts = vec!["localhost".to_owned()];
        for address in [&member.client_address, &member.peer_address] {
            let host = address.rsplit_once(':').map_or(address.as_str(), |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        ca.issue_node(member.id, &hosts, Validity::leaf_default())
            .and_then(|issued| issued.write(&files))
            .map_err(error)?;
    }
    let operator = client_files(&certs, OPERATOR_CLIENT);
    if !operator.cert.exists() {
        ca.issue_client(OPERATOR_CLIENT, Validity::leaf_default())
            .and_then(|issued| issued.write(&operator))
            .map_err(error)?;
    }
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| SupervisorError::Io { path: path.to_owned(), source })
    };
    Ok(ClientSecurity::Tls {
        ca_pem: read(&certs.join(CA_CERT_FILE))?,
        identity: Some(ClientIdentity { cert_pem: read(&operator.cert)?, key_pem: read(&operator.key)? }),
    })
}

fn create_dir(dir: &Path) -> Result<(), SupervisorError> {
    std::fs::create_dir_all(dir).map_err(|source| SupervisorError::Io { path: dir.to_owned(), source })
}
