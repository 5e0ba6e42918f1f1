//! The `chorus` command line: `chorus node` runs a server, `chorus demo` a local cluster,
//! and the other verbs are the client.

mod certs;
mod client_commands;
mod cluster_status;
mod demo;
mod format;
mod node_command;
mod outbox;
mod password;
mod session_file;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use chorus::client::{ClientIdentity, ClientSecurity};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "chorus", version, about = "Chorus: a replicated, persistent chat service", max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub client: ClientOptions,
    #[command(subcommand)]
    pub command: Verb,
}

/// Options of every client verb.
#[derive(Debug, Args)]
pub struct ClientOptions {
    /// Cluster members to talk to, comma-separated HOST:PORT (client addresses); the client
    /// finds the leader among them and fails over on its own.
    #[arg(long, global = true, env = "CHORUS_SERVERS", value_delimiter = ',', default_value = "127.0.0.1:7001")]
    pub servers: Vec<String>,
    /// How long a command keeps trying (following the leader, failing over between nodes)
    /// before it gives up, in seconds.
    #[arg(long = "timeout", global = true, env = "CHORUS_TIMEOUT", default_value_t = 30)]
    pub timeout_secs: u64,
    /// Where the login session is kept [default: ~/.config/chorus/session.json].
    #[arg(long, global = true, env = "CHORUS_SESSION_FILE")]
    pub session_file: Option<PathBuf>,
    /// The cluster's CA certificate (ca.pem, from `chorus certs init`; `chorus demo` prints
    /// its own): the client trusts only nodes whose certificates it signed.
    #[arg(long, global = true, env = "CHORUS_CA")]
    pub ca: Option<PathBuf>,
    /// A client certificate from the cluster's CA (`chorus certs client`), with --key: an
    /// operator's credential.
    #[arg(long, global = true, env = "CHORUS_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    #[arg(long, global = true, env = "CHORUS_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// No TLS: for a cluster whose nodes were started with --insecure (loopback
    /// experiments only: passwords and messages cross the network in clear). With `chorus
    /// node`, runs the node so.
    #[arg(long, global = true, env = "CHORUS_INSECURE")]
    pub insecure: bool,
}

impl ClientOptions {
    /// How the client verbs reach the nodes, from --ca, --cert, --key and --insecure.
    pub fn security(&self) -> Result<ClientSecurity> {
        if self.insecure {
            if self.ca.is_some() || self.cert.is_some() {
                bail!("--insecure turns TLS off: it cannot go with --ca or --cert");
            }
            return Ok(ClientSecurity::Insecure);
        }
        let Some(ca) = &self.ca else {
            bail!(
                "Chorus clients use TLS: pass --ca FILE (or set CHORUS_CA) with the cluster's ca.pem, \
                 or --insecure for a cluster started with --insecure"
            );
        };
        let read =
            |path: &PathBuf| std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()));
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(ClientIdentity { cert_pem: read(cert)?, key_pem: read(key)? }),
            _ => None,
        };
        Ok(ClientSecurity::Tls { ca_pem: read(ca)?, identity })
    }
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Run a Chorus node (a server).
    Node(node_command::NodeArgs),
    /// Start a local cluster and open a shell to try Chorus in.
    Demo(demo::DemoArgs),
    /// Make the cluster's certificate authority and issue node and client certificates.
    #[command(subcommand)]
    Certs(certs::CertsVerb),
    /// Create or delete an account.
    #[command(subcommand)]
    Account(AccountVerb),
    /// Log in and keep the session for the following commands.
    Login {
        username: String,
        /// Read the password from the first line of stdin (else CHORUS_PASSWORD, else a prompt).
        #[arg(long)]
        password_stdin: bool,
    },
    /// End the session.
    Logout,
    /// Send a message. The body is the remaining arguments, or stdin if there are none.
    /// When no node can take it (the cluster is unreachable), it is queued in the outbox
    /// (`chorus outbox`), the command says "queued" and exits 0, and the next command that
    /// reaches the cluster delivers it, once.
    Send {
        to: String,
        body: Vec<String>,
        /// Retry a message whose outcome was unknown: the sequence number the earlier
        /// attempt printed. Its recipient and body must be the same; it is never stored twice.
        #[arg(long)]
        sequence: Option<u64>,
    },
    /// Show your oldest unread messages and mark them read.
    Read {
        /// How many (default 50, at most 1000).
        #[arg(long, default_value_t = 0, hide_default_value = true)]
        limit: u32,
    },
    /// Show messages you sent and received, newest first.
    History {
        /// Only the conversation with this user.
        #[arg(long)]
        peer: Option<String>,
        /// Only messages older than this id (for the next page).
        #[arg(long, default_value_t = 0, hide_default_value = true)]
        before: u64,
        /// How many (default 50, at most 1000).
        #[arg(long, default_value_t = 0, hide_default_value = true)]
        limit: u32,
    },
    /// List accounts whose name matches PATTERN ('*' any run, '?' one character).
    Users {
        #[arg(default_value = "*")]
        pattern: String,
        /// Names per page (default 50, at most 1000).
        #[arg(long, default_value_t = 0, hide_default_value = true)]
        page_size: u32,
        /// Continue a previous listing.
        #[arg(long, default_value = "", hide_default_value = true)]
        page_token: String,
    },
    /// Delete messages by id (received ones, or sent ones not yet read).
    Delete {
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// Inspect the cluster.
    #[command(subcommand)]
    Cluster(ClusterVerb),
    /// Messages queued while the cluster was unreachable: list them (the default), deliver
    /// them now, or drop some. Every command of the session that reaches the cluster
    /// delivers them first, oldest first, each exactly once.
    Outbox {
        #[command(subcommand)]
        action: Option<OutboxVerb>,
    },
    /// Stream your incoming messages as they arrive (Ctrl-C to stop).
    Watch {
        /// Start after this message id (0: from your first message).
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum OutboxVerb {
    /// What waits, oldest first.
    List,
    /// Deliver what waits now.
    Send,
    /// Remove messages from the outbox without sending them.
    Drop {
        #[arg(required = true)]
        ids: Vec<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterVerb {
    /// Each member's role, term, leader, commit and applied index, and the leader's view of
    /// its followers; unreachable members are marked.
    Status,
    /// Whether every member answers, follows one leader and is caught up with it: prints
    /// `healthy: leader N, …` (exit 0), or every problem found (exit 1).
    Health {
        /// Keep asking for up to this many seconds until the cluster is healthy.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Hand leadership to the voter ID (before maintenance on the leader's machine, or to
    /// move the leader next to its clients); prints the new leader.
    TransferLeader {
        /// The member to lead.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum AccountVerb {
    /// Create an account.
    Create {
        username: String,
        /// Read the password from the first line of stdin (else CHORUS_PASSWORD, else a prompt).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change the logged-in account's password; every other session of the account ends.
    Password {
        /// Read the old password from the first line of stdin and the new one from the
        /// second (else CHORUS_PASSWORD and CHORUS_NEW_PASSWORD, else prompts).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete the logged-in account, its mailbox and its unread sent messages, for good.
    Delete {
        /// Read the password from the first line of stdin (else CHORUS_PASSWORD, else a prompt).
        #[arg(long)]
        password_stdin: bool,
    },
}

/// A failed call as a person should read it: the server's own message for what was asked
/// wrong, and which server for what went wrong on the way.
pub fn rpc_error(server: &str, status: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    match status.code() {
        Code::Unavailable if status.message().starts_with("cluster unreachable") => {
            anyhow::anyhow!("{}", status.message())
        }
        Code::Unavailable => anyhow::anyhow!("server {server} is unavailable: {}", status.message()),
        Code::DeadlineExceeded | Code::Cancelled => {
            anyhow::anyhow!("server {server} did not answer in time; the request may or may not have taken effect")
        }
        Code::Internal | Code::Unknown => anyhow::anyhow!("server {server} failed: {}", status.message()),
        _ => anyhow::anyhow!("{}", status.message()),
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Verb::Node(args) => node_command::run(args, cli.client.insecure),
        Verb::Demo(args) => demo::run(args, cli.client.insecure),
        Verb::Certs(verb) => certs::run(verb),
        verb => client_commands::run(&cli.client, verb),
    }
}
