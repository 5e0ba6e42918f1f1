//! `chorus demo`: starts local nodes as child processes and opens a shell in which a
//! newcomer can create accounts, chat, and kill and restart nodes to see what survives.
//!
//! When stdin is not a terminal, the shell reads the same commands from it and echoes each
//! one, so a script (or a test) drives the demo exactly as a person would.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chorus::client::v1::{
    CreateAccountRequest, DeleteMessagesRequest, HistoryRequest, ListAccountsRequest, LoginRequest,
    ReadMessagesRequest, SendMessageRequest, SubscribeRequest,
};
use chorus::client::{ChatClient, new_client_msg_id};
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

use super::format::message_line;
use super::rpc_error;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for the nodes' data. Give the directory of an earlier demo to see that
    /// everything survived a full stop. [default: a fresh directory under the system's temp dir]
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// How long a node may take to start before the demo gives up on it.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to stop on SIGTERM before it is killed.
const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between attempts of a watch to reconnect after its node went away.
const WATCH_RETRY_PAUSE: Duration = Duration::from_millis(500);

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
  status                 show the nodes
  kill N                 SIGKILL node N
  restart N              start node N again
  help                   this text
  quit                   stop every node and leave (or Ctrl-D)";

pub fn run(args: DemoArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let dir = match args.dir {
            Some(dir) => dir,
            None => std::env::temp_dir().join(format!("chorus-demo-{}", chorus::seam::unix_time_ms())),
        };
        let mut demo = Demo::start(dir).await?;
        let result = demo.shell().await;
        demo.stop_all().await;
        result
    })
}

/// One node process the demo manages.
struct DemoNode {
    id: u64,
    data_dir: PathBuf,
    /// Fixed after the first start, so a restarted node is found where it was.
    address: Option<SocketAddr>,
    process: Option<(Child, ChildStdout)>,
}

struct Demo {
    dir: PathBuf,
    nodes: BTreeMap<u64, DemoNode>,
    /// Session tokens of the users logged in during this demo.
    sessions: BTreeMap<String, String>,
    current_user: Option<String>,
    watches: Vec<JoinHandle<()>>,
    echo_commands: bool,
}

impl Demo {
    async fn start(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create demo directory {}", dir.display()))?;
        println!("Chorus demo: data in {}", dir.display());
        let mut nodes = BTreeMap::new();
        let id = 1;
        nodes.insert(id, DemoNode { id, data_dir: dir.join(format!("node-{id}")), address: None, process: None });
        let mut demo = Self {
            dir,
            nodes,
            sessions: BTreeMap::new(),
            current_user: None,
            watches: Vec::new(),
            echo_commands: !std::io::stdin().is_terminal(),
        };
        for node in demo.nodes.values_mut() {
            start_node(node).await?;
        }
        println!("{} node(s) up. Type 'help' for commands.", demo.nodes.len());
        Ok(demo)
    }

    fn servers(&self) -> Vec<String> {
        self.nodes.values().filter_map(|n| n.address).map(|a| a.to_string()).collect()
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
            let Some(line) = line else { break };
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
        match words {
            ["help"] => println!("{HELP}"),
            ["status"] => self.status(),
            ["kill", id] => {
                let node = self.node(id)?;
                let Some((mut child, _)) = node.process.take() else { bail!("node {} is not running", node.id) };
                child.kill().await.context("cannot kill the node")?;
                println!("node {} killed (SIGKILL)", node.id);
            }
            ["restart", id] => {
                let node = self.node(id)?;
                if node.process.is_some() {
                    bail!("node {} is running; kill it first", node.id);
                }
                start_node(node).await?;
            }
            ["create", name, password] => {
                let request = CreateAccountRequest { username: name.to_string(), password: password.to_string() };
                let mut client = self.client().await?;
                let response = client
                    .grpc()
                    .create_account(request)
                    .await
                    .map_err(|s| rpc_error(client.server(), s))?
                    .into_inner();
                println!("created account '{}'", response.username);
            }
            ["login", name, password] => {
                let request = LoginRequest { username: name.to_string(), password: password.to_string() };
                let mut client = self.client().await?;
                let response =
                    client.grpc().login(request).await.map_err(|s| rpc_error(client.server(), s))?.into_inner();
                println!("logged in as '{}': {} unread message(s)", response.username, response.unread_count);
                self.sessions.insert(response.username.clone(), response.token);
                self.current_user = Some(response.username);
            }
            ["send", to, text @ ..] if !text.is_empty() => {
                let request = SendMessageRequest {
                    token: self.token()?,
                    to: to.to_string(),
                    body: text.join(" "),
                    client_msg_id: new_client_msg_id(),
                };
                let mut client = self.client().await?;
                let response =
                    client.grpc().send_message(request).await.map_err(|s| rpc_error(client.server(), s))?.into_inner();
                println!("sent message {} to {}", response.message_id, to.to_ascii_lowercase());
            }
            ["read"] => {
                let request = ReadMessagesRequest { token: self.token()?, limit: 0 };
                let mut client = self.client().await?;
                let response =
                    client.grpc().read_messages(request).await.map_err(|s| rpc_error(client.server(), s))?.into_inner();
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
                let mut client = self.client().await?;
                let response =
                    client.grpc().history(request).await.map_err(|s| rpc_error(client.server(), s))?.into_inner();
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
                let mut client = self.client().await?;
                let response =
                    client.grpc().list_accounts(request).await.map_err(|s| rpc_error(client.server(), s))?.into_inner();
                println!(
                    "{}",
                    if response.usernames.is_empty() { "no accounts".to_owned() } else { response.usernames.join(" ") }
                );
            }
            ["delete", ids @ ..] if !ids.is_empty() => {
                let ids = ids
                    .iter()
                    .map(|id| {
                        id.trim_start_matches('#').parse::<u64>().with_context(|| format!("'{id}' is not a message id"))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let request = DeleteMessagesRequest { token: self.token()?, ids };
                let mut client = self.client().await?;
                let response = client
                    .grpc()
                    .delete_messages(request)
                    .await
                    .map_err(|s| rpc_error(client.server(), s))?
                    .into_inner();
                println!("deleted {} message(s)", response.deleted);
            }
            ["watch"] => {
                let user = self.current_user.clone().context("log in first")?;
                let token = self.token()?;
                self.watches.push(tokio::spawn(watch(self.servers(), user.clone(), token)));
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

    fn status(&self) {
        println!("{:<6}{:<10}{:<24}data", "node", "state", "address");
        for node in self.nodes.values() {
            let state = if node.process.is_some() { "up" } else { "down" };
            let address = node.address.map(|a| a.to_string()).unwrap_or_default();
            println!("{:<6}{:<10}{:<24}{}", node.id, state, address, node.data_dir.display());
        }
    }

    fn token(&self) -> Result<String> {
        let user = self.current_user.as_ref().context("log in first: login NAME PASSWORD")?;
        Ok(self.sessions[user].clone())
    }

    async fn client(&self) -> Result<ChatClient> {
        Ok(ChatClient::connect(&self.servers()).await?)
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

/// Starts a node process and waits for it to report its address.
async fn start_node(node: &mut DemoNode) -> Result<()> {
    std::fs::create_dir_all(&node.data_dir)?;
    let log_path = node.data_dir.join("node.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let listen = node.address.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let mut child = Command::new(std::env::current_exe()?)
        .arg("node")
        .args(["--id", &node.id.to_string()])
        .args(["--listen", &listen.to_string()])
        .arg("--data-dir")
        .arg(&node.data_dir)
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
                return Ok(Some(address.trim().parse::<SocketAddr>()?));
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
    node.address = Some(address);
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

/// Prints `user`'s messages as they arrive, resuming after the last one shown whenever the
/// stream breaks (a node was killed): nothing is shown twice and nothing is skipped.
async fn watch(servers: Vec<String>, user: String, token: String) {
    let mut last_shown = 0;
    loop {
        if let Ok(mut client) = ChatClient::connect(&servers).await {
            let request = SubscribeRequest { token: token.clone(), after_id: last_shown };
            if let Ok(response) = client.grpc().subscribe(request).await {
                let mut stream = response.into_inner();
                while let Ok(Some(message)) = stream.message().await {
                    last_shown = message.id;
                    println!("[watch {user}] {}", message_line(&message));
                }
            }
        }
        tokio::time::sleep(WATCH_RETRY_PAUSE).await;
    }
}
