//! `chorus node`: runs a server until SIGINT or SIGTERM; SIGHUP reloads its certificates.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use anyhow::{Context, Result};
use chorus::chat::credentials::PasswordHashCost;
use chorus::cluster_config::ClusterConfig;
use chorus::node::{NodeConfig, NodeSecurity, run_node};
use chorus::tls::{NodeTls, TlsFiles};
use clap::{Args, ValueEnum};

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// This node's id (a member id in the cluster configuration).
    #[arg(long)]
    pub id: u64,
    /// Cluster configuration file (TOML: cluster_id, members with peer and client addresses,
    /// optional timing). Without it the node is a cluster of one.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory for the node's databases (created if missing) [default: the member's
    /// data_dir in the configuration].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address to serve clients on [default: the member's client_address; required without
    /// --config]. Port 0 picks a free port.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Address to serve peers on [default: the member's peer_address].
    #[arg(long)]
    pub peer_listen: Option<SocketAddr>,
    /// Leader heartbeat interval, overriding the configuration.
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Election timeout range, overriding the configuration.
    #[arg(long)]
    pub election_timeout_min_ms: Option<u64>,
    #[arg(long)]
    pub election_timeout_max_ms: Option<u64>,
    /// Log line format (filter with RUST_LOG, default "info").
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Hash passwords at Argon2's minimum cost. Only for tests: it makes stolen hashes cheap to crack.
    #[arg(long, hide = true)]
    pub insecure_fast_password_hashing: bool,
    /// This member's first start in a new cluster: initialize its empty data directory.
    /// Refused on a directory that holds data. Without it, a member of a cluster of several
    /// refuses to start on an empty directory: a member whose data was lost must not
    /// rejoin as the voter it was (it could make the cluster lose acknowledged writes).
    #[arg(long)]
    pub bootstrap: bool,
    /// With --bootstrap: initialize the empty data directory and exit without serving (what
    /// an installer runs once, so that the service itself never starts with --bootstrap).
    #[arg(long, requires = "bootstrap")]
    pub init_only: bool,
    /// Directory of the cluster's TLS files: ca.pem, and this node's node-ID.pem and
    /// node-ID.key (`chorus certs`). Required unless --insecure. SIGHUP reloads them.
    #[arg(long, env = "CHORUS_CERTS")]
    pub certs: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn run(args: NodeArgs, insecure: bool) -> Result<()> {
    init_logging(args.log_format);
    let security = security(&args, insecure)?;
    let config = node_config(&args, security.clone())?;
    let node_id = config.node_id;
    if args.init_only {
        chorus::node::initialize_data_dir(&config)?;
        println!(
            "initialized {} for member {node_id} of cluster '{}'; start the node without --bootstrap",
            config.data_dir.display(),
            config.cluster.cluster_id
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // Installed before the node starts: a SIGHUP's default action would kill it.
    let hangups = {
        let _entered = runtime.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot install the SIGHUP handler (certificate reloads)")?
    };
    runtime.spawn(reload_on_hangup(security, hangups));
    runtime
        .block_on(run_node(config, shutdown_signal(), move |bound| {
            // Lines on stdout that scripts and tests wait for: the node is up, and where.
            println!("{}", chorus::supervisor::listening_line(node_id, bound.client));
            if let Some(peer) = bound.peer {
                println!("node {node_id} peers on {peer}");
            }
            let _ = std::io::stdout().flush();
        }))
        .with_context(|| format!("node {node_id} failed"))
}

/// TLS from --certs, or none with --insecure (one of the two is required).
fn security(args: &NodeArgs, insecure: bool) -> Result<NodeSecurity> {
    match (&args.certs, insecure) {
        (Some(_), true) => anyhow::bail!("--insecure turns TLS off: it cannot go with --certs"),
        (None, true) => Ok(NodeSecurity::Insecure),
        (Some(dir), false) => {
            let tls = NodeTls::load(args.id, TlsFiles::of_node(dir, args.id))
                .with_context(|| format!("cannot use the TLS files of node {} in {}", args.id, dir.display()))?;
            Ok(NodeSecurity::Tls(tls))
        }
        (None, false) => anyhow::bail!(
            "a node serves over TLS: pass --certs DIR with the cluster's ca.pem and this node's certificate \
             (make them with `chorus certs init` and `chorus certs node {}`), or --insecure for a loopback experiment",
            args.id
        ),
    }
}

/// Reloads the node's certificates on every SIGHUP. A reload that fails keeps the
/// previous ones (and says why): the node stays reachable.
async fn reload_on_hangup(security: NodeSecurity, mut hangups: tokio::signal::unix::Signal) {
    while hangups.recv().await.is_some() {
        match &security {
            NodeSecurity::Tls(tls) => match tls.reload() {
                Ok(()) => tracing::info!(cert = %tls.files().cert.display(), "SIGHUP: reloaded the TLS certificates"),
                Err(error) => tracing::error!(%error, "SIGHUP: kept the previous TLS certificates"),
            },
            NodeSecurity::Insecure => tracing::info!("SIGHUP: nothing to reload (running without TLS)"),
        }
    }
}

/// The node's configuration: the file (if any), then the flags over it.
fn node_config(args: &NodeArgs, security: NodeSecurity) -> Result<NodeConfig> {
    let (mut cluster, file) = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read cluster configuration {}", path.display()))?;
            let cluster = ClusterConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?;
            (cluster, Some(path))
        }
        None => {
            let listen = args.listen.context("--listen is required without --config")?;
            (ClusterConfig::single(args.id, listen.to_string()), None)
        }
    };
    let timing = &mut cluster.timing;
    timing.heartbeat_interval_ms = args.heartbeat_ms.unwrap_or(timing.heartbeat_interval_ms);
    timing.election_timeout_min_ms = args.election_timeout_min_ms.unwrap_or(timing.election_timeout_min_ms);
    timing.election_timeout_max_ms = args.election_timeout_max_ms.unwrap_or(timing.election_timeout_max_ms);
    cluster.validate().context("in the timing flags")?;
    let member = cluster.member(args.id)?.clone();
    let in_file = file.map(|p| format!(" in {}", p.display())).unwrap_or_default();
    let data_dir = args.data_dir.clone().or(member.data_dir.clone()).with_context(|| {
        format!("no data directory for node {}: pass --data-dir or set data_dir for that member{in_file}", args.id)
    })?;
    let client_listen = match args.listen {
        Some(listen) => listen,
        None => resolve(&member.client_address).context("client_address")?,
    };
    let peer_listen = match args.peer_listen {
        Some(listen) => listen,
        None if cluster.members.len() == 1 => SocketAddr::from(([127, 0, 0, 1], 0)),
        None => resolve(&member.peer_address).context("peer_address")?,
    };
    let password_hash_cost =
        if args.insecure_fast_password_hashing { PasswordHashCost::MINIMUM } else { PasswordHashCost::DEFAULT };
    Ok(NodeConfig {
        node_id: args.id,
        cluster,
        data_dir,
        client_listen,
        peer_listen,
        password_hash_cost,
        observer: None,
        log_store: None,
        bootstrap: args.bootstrap,
        clock: chorus::seam::NodeClock::system(),
        security,
    })
}

/// The address to bind for a configured `HOST:PORT`.
fn resolve(address: &str) -> Result<SocketAddr> {
    address
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {address}"))?
        .next()
        .with_context(|| format!("{address} resolves to no address"))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut interrupt, mut terminate) = match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
        _ => {
            tracing::error!("cannot install signal handlers; stop the node with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
    }
}
