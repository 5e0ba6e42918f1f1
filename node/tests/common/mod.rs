//! Helpers for tests that run the real `chorus` binary: start a node on an ephemeral
//! loopback port, kill it, restart it on the same data, and talk to it.

#![allow(dead_code)]

pub mod cluster;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use chorus::client::v1::chat_client::ChatClient as GrpcChatClient;
use chorus::client::v1::{CreateAccountRequest, LoginRequest};
use chorus::cluster_config::{ClusterConfig, Limits};
use chorus::supervisor::{NodeProcess, PortClaim, claim_loopback_ports};
use tonic::transport::Channel;

pub const BINARY: &str = env!("CARGO_BIN_EXE_chorus");
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A single `chorus node` process (a cluster of one) on a claimed port, which it keeps
/// across restarts (see `chorus::supervisor::claim_loopback_ports`).
pub struct TestNode {
    pub data_dir: PathBuf,
    pub address: SocketAddr,
    process: Option<NodeProcess>,
    port: Option<PortClaim>,
}

impl TestNode {
    /// Starts a node on a claimed port with its data in `data_dir`, with limits no test of
    /// the API reaches.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with_limits(data_dir, Limits::generous())
    }

    /// Starts a node whose configuration (`cluster.toml` in its data directory) has these
    /// `[limits]`.
    pub fn start_with_limits(data_dir: &Path, limits: Limits) -> Self {
        let port = claim_loopback_ports(1).unwrap().pop().unwrap();
        let config = ClusterConfig { limits, ..ClusterConfig::single(1, port.address().to_string()) };
        std::fs::create_dir_all(data_dir).unwrap();
        std::fs::write(data_dir.join("cluster.toml"), config.to_toml("").unwrap()).unwrap();
        Self::start_on(data_dir, port)
    }

    fn start_on(data_dir: &Path, port: PortClaim) -> Self {
        let listen = port.address();
        let mut command = Command::new(BINARY);
        command
            // These tests are about the chat API, over plaintext; tests/tls.rs checks TLS.
            .args(["--insecure", "node", "--id", "1", "--insecure-fast-password-hashing"])
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--config")
            .arg(data_dir.join("cluster.toml"))
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn");
        let process = NodeProcess::start(command, START_TIMEOUT).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(process.client_address(), listen, "the node says it listens where it was told");
        Self { data_dir: data_dir.to_owned(), address: listen, process: Some(process), port: Some(port) }
    }

    /// SIGKILL: the process dies at once, with no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill().unwrap();
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let process = self.process.take().expect("node is running");
        let (status, in_time) = process.terminate(Duration::from_secs(60)).unwrap();
        assert!(in_time, "the node did not stop within a minute of SIGTERM");
        status
    }

    /// Starts the node again on its data directory and its old port.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "kill the node before restarting it");
        let port = self.port.take().expect("a node keeps its port");
        *self = Self::start_on(&self.data_dir.clone(), port);
    }

    /// A client of this node alone (no failover).
    pub async fn client(&self) -> GrpcChatClient<Channel> {
        GrpcChatClient::connect(format!("http://{}", self.address)).await.expect("connect to node")
    }
}

/// `message` as a call of the session `token` (its `authorization: Bearer` metadata).
pub fn as_user<T>(message: T, token: &str) -> tonic::Request<T> {
    chorus::client::authorized(message, token).unwrap()
}

/// Creates an account and logs it in; returns the session token.
pub async fn account(client: &mut GrpcChatClient<Channel>, username: &str) -> String {
    let password = format!("{username}-password");
    client
        .create_account(CreateAccountRequest { username: username.to_owned(), password: password.clone() })
        .await
        .unwrap();
    login(client, username).await
}

pub async fn login(client: &mut GrpcChatClient<Channel>, username: &str) -> String {
    let password = format!("{username}-password");
    client.login(LoginRequest { username: username.to_owned(), password }).await.unwrap().into_inner().token
}

/// Runs a `chorus` client verb against `server` with its own session file; `stdin` is fed
/// to the process.
pub fn run_cli(server: SocketAddr, session_file: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BINARY)
        .args(["--insecure", "--servers", &server.to_string()])
        .arg("--session-file")
        .arg(session_file)
        .args(args)
        .env_remove("CHORUS_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chorus");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}
