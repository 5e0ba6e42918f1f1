//! `chorus node`: runs a server until SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use chorus::chat::credentials::PasswordHashCost;
use chorus::runtime::{NodeConfig, run_node};
use clap::{Args, ValueEnum};

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// This node's id.
    #[arg(long)]
    pub id: u64,
    /// Address to serve the chat API on (port 0 picks a free port).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Directory for the node's databases (created if missing).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Log line format (filter with RUST_LOG, default "info").
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Hash passwords at Argon2's minimum cost. Only for tests: it makes stolen hashes cheap to crack.
    #[arg(long, hide = true)]
    pub insecure_fast_password_hashing: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn run(args: NodeArgs) -> Result<()> {
    init_logging(args.log_format);
    let config = NodeConfig {
        node_id: args.id,
        listen: args.listen,
        data_dir: args.data_dir,
        password_hash_cost: if args.insecure_fast_password_hashing {
            PasswordHashCost::MINIMUM
        } else {
            PasswordHashCost::DEFAULT
        },
    };
    let node_id = config.node_id;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime
        .block_on(run_node(config, shutdown_signal(), move |bound| {
            // The one line on stdout: scripts and tests wait for it to know the node is up
            // and which port it got.
            println!("node {node_id} listening on {bound}");
            let _ = std::io::stdout().flush();
        }))
        .with_context(|| format!("node {node_id} failed"))
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
