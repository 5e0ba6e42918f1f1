//! `chorus demo`: starts a local cluster of node processes and opens a shell in which a
//! newcomer can create accounts, chat, watch messages arrive, and kill and restart nodes
//! to see failover and persistence at work.
//!
//! When stdin is not a terminal, the shell reads the same commands from it and echoes each
//! one, so a script (or a test) drives the demo exactly as a person would.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chorus::client::v1::{
    CreateAccountRequest, DeleteMessagesRequest, HistoryRequest, ListAccountsRequest, LoginRequest,
    ReadMessagesRequest, Role, SendMessageRequest, StatusRequest,
};
use chorus::client::{ClusterClient, RetryPolicy, SendSequence, new_request_id};
use chorus::cluster_config::{ClusterConfig, MemberConfig, Timing};
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

use super::format::message_line;
use super::rpc_error;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for the cluster's configuration and data. Give the directory of an earlier
    /// demo to see that everything survived a full stop. [default: a fresh directory under
    /// the system's temp dir]
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// How many nodes (3, 5 or 7; a new cluster only).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=7))]
    pub nodes: u64,
}

/// How long a node may take to start before the demo gives up on it.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to stop on SIGTERM before it is killed.
const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the demo waits for the first leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Interactive calls give up sooner than scripts' (a person is waiting).
const CALL_DEADLINE: Duration = Duration::from_secs(10);

const HELP: &str = "\
commands:
  create NAME PASSWORD   create an account
  login NAME PASSWORD    log in; later commands act as this user
  send TO TEXT...        send a message
  read                   show unread messages and mark them read
  history [PEER]         show sent and received messages, newest first
  users [PATTERN]        list accounts ('*' and '?' wildcards)
  delete ID...           delete messages
  watch                  print this user's incoming messages as they arrive
  status                 show every node: role, term, leader, commit and applied index
  kill N                 SIGKILL node N (the cluster goes on while a majority is up)
  restart N              start node N again (it catches up from the others)
  help                   this text
  quit                   stop every node and leave (or Ctrl-D)";

pub fn run(args: DemoArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let dir = match args.dir {
            Some(dir) => dir,
            None => std::env::temp_dir().join(format!("chorus-demo-{}", chorus::seam::unix_time_ms())),
        };
        let mut demo = Demo::start(dir, args.nodes).await?;
        let result = demo.shell().await;
        demo.stop_all().await;
        result
    })
}

/// One node process the demo manages.
struct DemoNode {
    id: u64,
    data_dir: PathBuf,
    /// This demo created the cluster and has not started the node yet: its first start
    /// initializes its data directory (`--bootstrap`).
    bootstrap: bool,
    process: Option<(Child, ChildStdout)>,
}

struct Demo {
    dir: PathBuf,
    config_path: PathBuf,
    nodes: BTreeMap<u64, DemoNode>,
    client: ClusterClient,
    /// Sessions of the users logged in during this demo: token and send numbering.
    sessions: BTreeMap<String, (String, SendSequence)>,
    current_user: Option<String>,
    watches: Vec<JoinHandle<()>>,
    echo_commands: bool,
}

impl Demo {
    async fn start(dir: PathBuf, nodes: u64) -> Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create demo directory {}", dir.display()))?;
        let config_path = dir.join("cluster.toml");
        let new = !config_path.exists();
        let config = if !new {
            println!("Chorus demo: reusing the cluster in {}", dir.display());
            let text = std::fs::read_to_string(&config_path)?;
            ClusterConfig::from_toml(&text).with_context(|| format!("in {}", config_path.display()))?
        } else {
            println!("Chorus demo: a new {nodes}-node cluster in {}", dir.display());
            let config = new_cluster(&dir, nodes)?;
            std::fs::write(&config_path, render(&config))?;
            config
        };
        let servers: Vec<String> = config.members.iter().map(|m| m.client_address.clone()).collect();
        let policy = RetryPolicy { call_deadline: CALL_DEADLINE, ..RetryPolicy::default() };
        let mut demo = Self {
            nodes: config
                .members
                .iter()
                .map(|m| {
                    let data_dir = m.data_dir.clone().unwrap_or_else(|| dir.join(format!("node-{}", m.id)));
                    (m.id, DemoNode { id: m.id, data_dir, bootstrap: new, process: None })
                })
                .collect(),
            dir,
            config_path,
            client: ClusterClient::new(&servers, policy)?,
            sessions: BTreeMap::new(),
            current_user: None,
            watches: Vec::new(),
            echo_commands: !std::io::stdin().is_terminal(),
        };
        for node in demo.nodes.values_mut() {
            start_node(node, &demo.config_path).await?;
        }
        let leader = demo.wait_for_leader().await?;
        println!("{} nodes up; node {leader} is the leader. Type 'help' for commands.", demo.nodes.len());
        Ok(demo)
    }

    async fn wait_for_leader(&mut self) -> Result<u64> {
        let deadline = chorus::seam::monotonic_now() + LEADER_TIMEOUT;
        while chorus::seam::monotonic_now() < deadline {
            for server in 0..self.client.servers().len() {
                let request = StatusRequest { include_state_digest: false };
                let answer =
                    tokio::time::timeout(Duration::from_millis(500), self.client.cluster_of(server).status(request))
                        .await;
                if let Ok(Ok(status)) = answer
                    && status.get_ref().role() == Role::Leader
                {
                    return Ok(status.get_ref().node_id);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("no leader was elected within {LEADER_TIMEOUT:?}; see the node.log files under {}", self.dir.display())
    }

    async fn shell(&mut self) -> Result<()> {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        loop {
            if !self.echo_commands {
                print_prompt();
            }
            let line = tokio::select! {
                line = lines.next_line() => line.context("cannot read stdin")?,
                _ = tokio::signal::ctrl_c() => None,
            };
            let Some(line) = line else {
                if !self.echo_commands {
                    // Ctrl-D leaves the cursor after the prompt.
                    println!();
                }
                break;
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if self.echo_commands {
                println!("> {line}");
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            if matches!(words[0], "quit" | "exit") {
                break;
            }
            if let Err(error) = self.command(&words).await {
                println!("error: {error:#}");
            }
        }
        Ok(())
    }

    async fn command(&mut self, words: &[&str]) -> Result<()> {
        macro_rules! call {
            ($method:ident, $request:expr) => {
                chorus::cluster_call!(self.client, $method, $request)
                    .map_err(|status| rpc_error(self.client.current_server(), status))?
            };
        }
        match words {
            ["help"] => println!("{HELP}"),
            ["status"] => super::cluster_status::print(&mut self.client).await?,
            ["kill", id] => {
                let node = self.node(id)?;
                let Some((mut child, _)) = node.process.take() else { bail!("node {} is not running", node.id) };
                child.kill().await.context("cannot kill the node")?;
                println!("node {} killed (SIGKILL)", node.id);
            }
            ["restart", id] => {
                let config_path = self.config_path.clone();
                let node = self.node(id)?;
                if node.process.is_some() {
                    bail!("node {} is running; kill it first", node.id);
                }
                start_node(node, &config_path).await?;
            }
            ["create", name, password] => {
                let response = call!(
                    create_account,
                    CreateAccountRequest { username: name.to_string(), password: password.to_string() }
                );
                println!("created account '{}'", response.username);
            }
            ["login", name, password] => {
                let response =
                    call!(login, LoginRequest { username: name.to_string(), password: password.to_string() });
                println!("logged in as '{}': {} unread message(s)", response.username, response.unread_count);
                self.sessions.insert(response.username.clone(), (response.token, SendSequence::new()));
                self.current_user = Some(response.username);
            }
            ["send", to, text @ ..] if !text.is_empty() => {
                let (token, sends) = self.session()?;
                let request: SendMessageRequest = sends.request(token, to.to_string(), text.join(" "));
                let result = chorus::cluster_call!(self.client, send_message, request.clone());
                // The shell never retries a send by itself, so its answer, whatever it is,
                // is acknowledged with the next one.
                self.session()?.1.finish(request.sequence);
                let response = result.map_err(|status| rpc_error(self.client.current_server(), status))?;
                println!("sent message {} to {}", response.message_id, to.to_ascii_lowercase());
            }
            ["read"] => {
                let response = call!(
                    read_messages,
                    ReadMessagesRequest { token: self.token()?, limit: 0, request_id: new_request_id() }
                );
                if response.messages.is_empty() {
                    println!("no unread messages");
                }
                for message in &response.messages {
                    println!("{}", message_line(message));
                }
            }
            ["history", peer @ ..] if peer.len() <= 1 => {
                let request = HistoryRequest {
                    token: self.token()?,
                    peer: peer.first().map(|p| p.to_string()),
                    before_id: 0,
                    limit: 20,
                };
                let response = call!(history, request);
                if response.messages.is_empty() {
                    println!("no messages");
                }
                for message in &response.messages {
                    println!("{}", message_line(message));
                }
            }
            ["users", pattern @ ..] if pattern.len() <= 1 => {
                let request = ListAccountsRequest {
                    pattern: pattern.first().unwrap_or(&"*").to_string(),
                    page_size: 100,
                    page_token: String::new(),
                };
                let response = call!(list_accounts, request);
                let names = response.usernames;
                println!("{}", if names.is_empty() { "no accounts".to_owned() } else { names.join(" ") });
            }
            ["delete", ids @ ..] if !ids.is_empty() => {
                let ids = ids
                    .iter()
                    .map(|id| {
                        id.trim_start_matches('#').parse::<u64>().with_context(|| format!("'{id}' is not a message id"))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let response = call!(delete_messages, DeleteMessagesRequest { token: self.token()?, ids });
                println!("deleted {} message(s)", response.deleted);
            }
            ["watch"] => {
                let user = self.current_user.clone().context("log in first")?;
                let token = self.token()?;
                let mut client = ClusterClient::new(self.client.servers(), self.client.policy())?;
                let watcher = user.clone();
                self.watches.push(tokio::task::spawn(async move {
                    let user = watcher;
                    let mut subscription = client.subscribe(token, 0);
                    loop {
                        match subscription.next().await {
                            Ok(message) => println!("[watch {user}] {}", message_line(&message)),
                            Err(status) => {
                                println!("[watch {user}] stopped: {}", status.message());
                                return;
                            }
                        }
                    }
                }));
                println!("watching messages for '{user}'");
            }
            _ => bail!("unknown command or wrong arguments: {} (type 'help')", words.join(" ")),
        }
        Ok(())
    }

    fn node(&mut self, id: &str) -> Result<&mut DemoNode> {
        let id: u64 = id.parse().with_context(|| format!("'{id}' is not a node number"))?;
        let count = self.nodes.len();
        self.nodes.get_mut(&id).with_context(|| format!("there is no node {id}: nodes are 1-{count}"))
    }

    fn token(&self) -> Result<String> {
        let user = self.current_user.as_ref().context("log in first: login NAME PASSWORD")?;
        Ok(self.sessions[user].0.clone())
    }

    /// The current user's token (a copy) and send numbering.
    fn session(&mut self) -> Result<(String, &mut SendSequence)> {
        let user = self.current_user.as_ref().context("log in first: login NAME PASSWORD")?;
        let (token, sends) = self.sessions.get_mut(user).context("log in first")?;
        Ok((token.clone(), sends))
    }

    async fn stop_all(&mut self) {
        for watch in self.watches.drain(..) {
            watch.abort();
        }
        for node in self.nodes.values_mut() {
            if let Some((mut child, _stdout)) = node.process.take() {
                stop_gracefully(&mut child).await;
            }
        }
        println!("all nodes stopped; the data stays in {}", self.dir.display());
        println!("to see it survived: chorus demo --dir {}", self.dir.display());
    }
}

fn print_prompt() {
    use std::io::Write;
    print!("chorus> ");
    let _ = std::io::stdout().flush();
}

/// A configuration for `nodes` nodes on loopback, on ports free right now.
fn new_cluster(dir: &Path, nodes: u64) -> Result<ClusterConfig> {
    // Holding every listener until all ports are chosen keeps them distinct.
    let listeners = (0..2 * nodes)
        .map(|_| TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot find free ports on 127.0.0.1")?;
    let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?;
    drop(listeners);
    let members = (1..=nodes)
        .map(|id| MemberConfig {
            id,
            client_address: format!("127.0.0.1:{}", ports[2 * (id as usize - 1)]),
            peer_address: format!("127.0.0.1:{}", ports[2 * (id as usize - 1) + 1]),
            data_dir: Some(dir.join(format!("node-{id}"))),
        })
        .collect();
    let config = ClusterConfig { cluster_id: "chorus-demo".to_owned(), timing: Timing::default(), members };
    config.validate()?;
    Ok(config)
}

/// The configuration as a `cluster.toml` a person can read and reuse.
fn render(config: &ClusterConfig) -> String {
    let mut text = format!(
        "# Written by `chorus demo`; `chorus node --id N --config <this file>` runs member N.\ncluster_id = \"{}\"\n",
        config.cluster_id
    );
    for member in &config.members {
        text.push_str(&format!(
            "\n[[members]]\nid = {}\nclient_address = \"{}\"\npeer_address = \"{}\"\n",
            member.id, member.client_address, member.peer_address
        ));
        if let Some(dir) = &member.data_dir {
            text.push_str(&format!("data_dir = {:?}\n", dir.display().to_string()));
        }
    }
    text
}

/// Starts a node process and waits for it to report that it listens.
async fn start_node(node: &mut DemoNode, config: &Path) -> Result<()> {
    std::fs::create_dir_all(&node.data_dir)?;
    let log_path = node.data_dir.join("node.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("node")
        .args(["--id", &node.id.to_string()])
        .arg("--config")
        .arg(config)
        .args(node.bootstrap.then_some("--bootstrap"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start a node process")?;
    let stdout = child.stdout.take().context("node has no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(NODE_START_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(address) = line.split(" listening on ").nth(1) {
                return Ok(Some(address.trim().to_owned()));
            }
        }
        Ok::<_, anyhow::Error>(None)
    })
    .await;
    let address = match ready {
        Ok(Ok(Some(address))) => address,
        Ok(Ok(None)) => bail!("node {} exited while starting; see {}", node.id, log_path.display()),
        Ok(Err(error)) => return Err(error.context(format!("node {} did not start", node.id))),
        Err(_) => bail!("node {} did not start within {NODE_START_TIMEOUT:?}; see {}", node.id, log_path.display()),
    };
    println!("node {} up on {address} (pid {})", node.id, child.id().unwrap_or(0));
    node.bootstrap = false;
    // Keep the pipe open: a node writing to a closed stdout would fail.
    node.process = Some((child, lines.into_inner().into_inner()));
    Ok(())
}

async fn stop_gracefully(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a pid this process spawned and has not yet reaped.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(NODE_STOP_TIMEOUT, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}
