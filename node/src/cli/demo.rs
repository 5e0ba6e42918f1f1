//! `chorus demo`: starts a local cluster of node processes and opens a shell in which a
//! newcomer can create accounts, chat, watch messages arrive, and kill and restart nodes
//! to see failover and persistence at work.
//!
//! When stdin is not a terminal, the shell reads the same commands from it and echoes each
//! one, so a script (or a test) drives the demo exactly as a person would.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chorus::client::v1::{ChangePasswordRequest, CreateAccountRequest, ListAccountsRequest, LoginRequest};
use chorus::client::{ClientSecurity, ClusterClient, RetryPolicy};
use chorus::cluster_config::{Limits, Timing};
use chorus::supervisor::{Launch, LocalCluster};
use clap::Args;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;
use tokio::task::JoinHandle;

use super::format::message_line;
use super::session_file::{self, SavedSession};
use super::{ClientOptions, OutboxVerb, Verb, rpc_error};

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
  send TO TEXT...        send a message (queued in this user's outbox if no majority
                         answers, and delivered, once, by this user's next command that
                         reaches the cluster); `... --sequence N` retries one whose
                         outcome was unknown
  outbox [send|drop ID]  what waits in the outbox; deliver it now; drop a message
  read                   show unread messages and mark them read
  history [PEER]         show sent and received messages, newest first
  users [PATTERN]        list accounts ('*' and '?' wildcards)
  delete ID...           delete messages
  password OLD NEW       change this user's password (its other sessions end)
  watch                  print this user's incoming messages as they arrive
  status                 show every node: role, term, leader, commit and applied index
  kill N                 SIGKILL node N (the cluster goes on while a majority is up)
  restart N              start node N again (it catches up from the others)
  help                   this text
  quit                   stop every node and leave (or Ctrl-D)";

pub fn run(args: DemoArgs, insecure: bool) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        let dir = match args.dir {
            Some(dir) => dir,
            None => std::env::temp_dir().join(format!("chorus-demo-{}", chorus::seam::unix_time_ms())),
        };
        // From the first moment, SIGINT, SIGTERM and SIGHUP (a closed terminal) stop the
        // demo in order rather than kill it: its nodes run in process groups of their own
        // (so that a Ctrl-C reaches only the demo), and would otherwise run on.
        let stop = stop_signal()?;
        let mut demo = tokio::select! {
            demo = Demo::start(dir, args.nodes, insecure) => demo?,
            // Dropping the half-started demo kills the nodes it started.
            _ = stopped(stop.clone()) => {
                println!("interrupted: the nodes started so far are stopped");
                return Ok(());
            }
        };
        let result = demo.shell(stop).await;
        demo.stop_all();
        result
    });
    // A line being read when the shell ended (Ctrl-C) is not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

struct Demo {
    cluster: LocalCluster,
    client: ClusterClient,
    /// The user of the latest login: later commands act as them. Each user's session is
    /// a session file in the demo's directory (`sessions/NAME.json`), as the `chorus` verbs
    /// keep theirs, with its outbox beside it: what is queued survives the demo.
    current_user: Option<String>,
    watches: Vec<JoinHandle<()>>,
    /// Where commands come from: a line editor on a terminal, else stdin, echoed.
    input: Option<ShellInput>,
}

impl Demo {
    async fn start(dir: PathBuf, nodes: u64, insecure: bool) -> Result<Self> {
        let launch = Launch {
            start_timeout: NODE_START_TIMEOUT,
            own_process_group: true,
            insecure,
            ..Launch::new(std::env::current_exe()?)
        };
        let cluster = if dir.join("cluster.toml").exists() {
            println!("Chorus demo: reusing the cluster in {}", dir.display());
            LocalCluster::open(&dir, launch)?
        } else {
            println!("Chorus demo: a new {nodes}-node cluster in {}", dir.display());
            LocalCluster::create(
                &dir,
                "chorus-demo",
                nodes,
                Timing::default(),
                Limits::default(),
                CONFIG_HEADER,
                launch,
            )?
        };
        let policy = RetryPolicy { call_deadline: CALL_DEADLINE, ..RetryPolicy::default() };
        let input = ShellInput::new(&dir);
        let mut demo = Self {
            client: ClusterClient::new(&cluster.client_addresses(), policy, cluster.client_security().clone())?,
            cluster,
            current_user: None,
            watches: Vec::new(),
            input: Some(input),
        };
        for id in demo.cluster.ids() {
            demo.start_node(id)?;
        }
        let leader = demo.cluster.wait_for_leader(LEADER_TIMEOUT).await?;
        println!("{} nodes up; node {leader} is the leader. Type 'help' for commands.", demo.cluster.ids().len());
        println!("{}", demo.connection_hint());
        Ok(demo)
    }

    /// How to reach this cluster with the client verbs from another terminal.
    fn connection_hint(&self) -> String {
        let servers = self.cluster.client_addresses().join(",");
        match self.cluster.client_security() {
            chorus::client::ClientSecurity::Insecure => {
                format!(
                    "Without TLS (--insecure). Other terminals: CHORUS_INSECURE=true CHORUS_SERVERS={servers} chorus ..."
                )
            }
            chorus::client::ClientSecurity::Tls { .. } => format!(
                "Every connection uses TLS, with the cluster's own CA. Other terminals: CHORUS_CA={} CHORUS_SERVERS={servers} chorus ...",
                self.cluster.certs_dir().join(chorus::tls::CA_CERT_FILE).display()
            ),
        }
    }

    /// Starts a node process and waits for it to say that it listens.
    fn start_node(&mut self, id: u64) -> Result<()> {
        // The wait blocks; the watches meanwhile run on the runtime's other threads.
        let address = tokio::task::block_in_place(|| self.cluster.start(id))?;
        println!("node {id} up on {address} (pid {})", self.cluster.pid(id).unwrap_or(0));
        Ok(())
    }

    /// Runs commands until the input ends, `quit`, or a stop signal (which takes effect
    /// once the command under way, if any, is done).
    async fn shell(&mut self, stop: tokio::sync::watch::Receiver<bool>) -> Result<()> {
        loop {
            if *stop.borrow() {
                println!("interrupted: stopping the demo");
                break;
            }
            let mut input = self.input.take().context("the shell has no input")?;
            let on_terminal = matches!(input, ShellInput::Terminal { .. });
            let reading = tokio::task::spawn_blocking(move || {
                let line = input.read_line();
                (input, line)
            });
            let read = if on_terminal {
                // The line editor reads Ctrl-C itself (as the end of the shell), and must
                // get the terminal back out of raw mode before the demo goes on.
                Some(reading.await)
            } else {
                tokio::select! {
                    read = reading => Some(read),
                    _ = stopped(stop.clone()) => None,
                }
            };
            let line = match read {
                Some(read) => {
                    let (input, line) = read.context("the shell's input reader failed")?;
                    self.input = Some(input);
                    line?
                }
                None => None,
            };
            let Some(line) = line else { break };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
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
            ($method:ident, $request:expr, as $token:expr) => {{
                let token = $token;
                chorus::cluster_call_as!(self.client, $method, $request, token)
                    .map_err(|status| rpc_error(self.client.current_server(), status))?
            }};
        }
        match words {
            ["help"] => println!("{HELP}"),
            ["status"] => super::cluster_status::print(&mut self.client).await?,
            ["kill", id] => {
                let id = self.node(id)?;
                if !self.cluster.kill(id)? {
                    bail!("node {id} is not running");
                }
                println!("node {id} killed (SIGKILL)");
            }
            ["restart", id] => {
                let id = self.node(id)?;
                if self.cluster.is_running(id) {
                    bail!("node {id} is running; kill it first");
                }
                self.start_node(id)?;
            }
            ["create", name, password] => {
                let response = call!(
                    create_account,
                    CreateAccountRequest { username: name.to_string(), password: password.to_string() }
                );
                println!("created account '{}'", response.username);
            }
            ["login", name, password] => {
                // What this user's earlier session queued is delivered by that session,
                // before the new one replaces it (only the session that numbered a message
                // may repeat it), as `chorus login` does.
                let earlier = chorus::chat::validate::canonical_username(name).map(|name| self.session_path(&name));
                if let Ok(earlier) = earlier
                    && earlier.exists()
                    && let Err(error) =
                        self.run_verb_on(&earlier, Verb::Outbox { action: Some(OutboxVerb::Send) }).await
                {
                    println!("note: {error:#}; the messages in the outbox stay there (`outbox`)");
                }
                let response =
                    call!(login, LoginRequest { username: name.to_string(), password: password.to_string() });
                let path = self.session_path(&response.username);
                let saved =
                    SavedSession::new(response.username, response.token, self.client.current_server().to_owned());
                session_file::replace(&path, &saved)?;
                println!("logged in as '{}': {} unread message(s)", saved.username, response.unread_count);
                self.current_user = Some(saved.username);
            }
            // What a session does, the `chorus` verbs do, on this user's session file: the
            // outbox is delivered first, and a send no majority answers is queued. A send
            // whose outcome was unknown is retried as the error says, with the same words
            // and `--sequence N` (as `chorus send` takes it): recognized, never stored twice.
            ["send", to, text @ ..] if !text.is_empty() => {
                let (words, sequence) = match text {
                    [words @ .., "--sequence", sequence] if !words.is_empty() => {
                        let sequence = sequence
                            .parse::<u64>()
                            .with_context(|| format!("'{sequence}' is not a sequence number"))?;
                        (words, Some(sequence))
                    }
                    _ => (text, None),
                };
                let body = words.iter().map(|word| word.to_string()).collect();
                self.as_user(Verb::Send { to: to.to_string(), body, sequence }).await?;
            }
            ["read"] => self.as_user(Verb::Read { limit: 0 }).await?,
            ["history", peer @ ..] if peer.len() <= 1 => {
                let peer = peer.first().map(|p| p.to_string());
                self.as_user(Verb::History { peer, before: 0, limit: 20 }).await?;
            }
            ["outbox"] => self.as_user(Verb::Outbox { action: None }).await?,
            ["outbox", "send"] => self.as_user(Verb::Outbox { action: Some(OutboxVerb::Send) }).await?,
            ["outbox", "drop", ids @ ..] if !ids.is_empty() => {
                let ids = message_ids(ids)?;
                self.as_user(Verb::Outbox { action: Some(OutboxVerb::Drop { ids }) }).await?;
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
                let ids = message_ids(ids)?;
                self.as_user(Verb::Delete { ids }).await?;
            }
            ["password", old, new] => {
                let request = ChangePasswordRequest { old_password: old.to_string(), new_password: new.to_string() };
                let response = call!(change_password, request, as self.token()?);
                println!("password changed; {} other session(s) ended", response.sessions_ended);
            }
            ["watch"] => {
                let user = self.current_user.clone().context("log in first")?;
                let token = self.token()?;
                let mut client =
                    ClusterClient::new(self.client.servers(), self.client.policy(), self.client.security().clone())?;
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

    /// The node a command names, checked to be a member.
    fn node(&self, id: &str) -> Result<u64> {
        let id: u64 = id.parse().with_context(|| format!("'{id}' is not a node number"))?;
        let ids = self.cluster.ids();
        if !ids.contains(&id) {
            bail!("there is no node {id}: nodes are {}", ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", "));
        }
        Ok(id)
    }

    fn session_path(&self, username: &str) -> PathBuf {
        self.cluster.dir().join("sessions").join(format!("{username}.json"))
    }

    /// The current user's session file.
    fn current_session(&self) -> Result<PathBuf> {
        let user = self.current_user.as_ref().context("log in first: login NAME PASSWORD")?;
        Ok(self.session_path(user))
    }

    fn token(&self) -> Result<String> {
        Ok(session_file::load(&self.current_session()?)?.token)
    }

    /// Runs a client verb as the current user, exactly as `chorus VERB` would with this
    /// cluster's servers and CA and the user's session file.
    async fn as_user(&mut self, verb: Verb) -> Result<()> {
        let session = self.current_session()?;
        self.run_verb_on(&session, verb).await
    }

    /// Runs a client verb on the session file at `session`.
    async fn run_verb_on(&self, session: &std::path::Path, verb: Verb) -> Result<()> {
        let (ca, insecure) = match self.cluster.client_security() {
            ClientSecurity::Insecure => (None, true),
            ClientSecurity::Tls { .. } => (Some(self.cluster.certs_dir().join(chorus::tls::CA_CERT_FILE)), false),
        };
        let options = ClientOptions {
            servers: self.cluster.client_addresses(),
            timeout_secs: CALL_DEADLINE.as_secs(),
            session_file: Some(session.to_owned()),
            ca,
            cert: None,
            key: None,
            insecure,
        };
        super::client_commands::run_verb(&options, verb).await
    }

    fn stop_all(&mut self) {
        for watch in self.watches.drain(..) {
            watch.abort();
        }
        for id in self.cluster.ids() {
            if let Err(error) = self.cluster.terminate(id, NODE_STOP_TIMEOUT) {
                println!("error: {error:#}");
            }
        }
        if let Some(input) = &mut self.input {
            input.save_history();
        }
        let dir = self.cluster.dir().display();
        println!("all nodes stopped; the data stays in {dir}");
        println!("to see it survived: chorus demo --dir {dir}");
    }
}

/// A flag that turns true at the first SIGINT, SIGTERM or SIGHUP; from then on those
/// signals no longer kill the process.
fn stop_signal() -> Result<tokio::sync::watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let (raise, flag) = tokio::sync::watch::channel(false);
    tokio::task::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
            _ = hangup.recv() => {}
        }
        let _ = raise.send(true);
        // Keep the handlers installed: later signals change nothing.
        std::future::pending::<()>().await;
    });
    Ok(flag)
}

/// Resolves once the stop flag is up.
async fn stopped(mut flag: tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|&stop| stop).await;
}

/// The top of the `cluster.toml` a demo writes.
const CONFIG_HEADER: &str = "# Written by `chorus demo`; `chorus node --id N --config <this file>` runs member N.";
/// Shell commands whose arguments include a password.
const PASSWORD_COMMANDS: &[&str] = &["create", "login", "password"];
/// Lines of shell history kept in the demo's directory.
const HISTORY_LINES_MAX: usize = 1000;

/// Where the shell's commands come from.
enum ShellInput {
    /// A person at a terminal: line editing and history (kept in the demo's directory).
    Terminal { editor: Box<DefaultEditor>, history: PathBuf },
    /// A script on stdin: each command is echoed, so the output reads like a session.
    Script(std::io::Stdin),
}

impl ShellInput {
    fn new(dir: &std::path::Path) -> Self {
        if std::io::stdin().is_terminal() {
            let config = rustyline::Config::builder().max_history_size(HISTORY_LINES_MAX);
            if let Ok(mut editor) = config.and_then(|c| DefaultEditor::with_config(c.auto_add_history(false).build())) {
                let history = dir.join("shell-history");
                // No history yet is the normal first start.
                let _ = editor.load_history(&history);
                return Self::Terminal { editor: Box::new(editor), history };
            }
        }
        Self::Script(std::io::stdin())
    }

    /// The next command line; `None` at the end of input (Ctrl-D) or on Ctrl-C.
    fn read_line(&mut self) -> Result<Option<String>> {
        match self {
            Self::Terminal { editor, .. } => match editor.readline("chorus> ") {
                Ok(line) => {
                    // Commands that hold a password stay out of the history file.
                    let first = line.split_whitespace().next().unwrap_or("");
                    if !line.trim().is_empty() && !PASSWORD_COMMANDS.contains(&first) {
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    Ok(Some(line))
                }
                Err(ReadlineError::Eof | ReadlineError::Interrupted) => Ok(None),
                Err(error) => Err(error).context("cannot read the terminal"),
            },
            Self::Script(stdin) => {
                let mut line = String::new();
                if stdin.lock().read_line(&mut line).context("cannot read stdin")? == 0 {
                    return Ok(None);
                }
                let command = line.trim();
                if !command.is_empty() && !command.starts_with('#') {
                    println!("> {command}");
                }
                Ok(Some(line))
            }
        }
    }

    fn save_history(&mut self) {
        if let Self::Terminal { editor, history } = self
            && let Err(error) = editor.save_history(history)
        {
            println!("(the shell history was not saved to {}: {error})", history.display());
        }
    }
}

/// Message ids as the shell's commands take them (`12` or `#12`).
fn message_ids(words: &[&str]) -> Result<Vec<u64>> {
    words
        .iter()
        .map(|id| id.trim_start_matches('#').parse::<u64>().with_context(|| format!("'{id}' is not a message id")))
        .collect()
}
