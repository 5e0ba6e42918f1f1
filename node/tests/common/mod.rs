//! Helpers for tests that run the real `chorus` binary: start a node on an ephemeral
//! loopback port, kill it, restart it on the same data, and talk to it.

#![allow(dead_code)]

pub mod cluster;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use chorus::client::v1::chat_client::ChatClient as GrpcChatClient;
use chorus::client::v1::{CreateAccountRequest, LoginRequest};
use tonic::transport::Channel;

pub const BINARY: &str = env!("CARGO_BIN_EXE_chorus");
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A `chorus node` process.
pub struct TestNode {
    pub data_dir: PathBuf,
    pub address: SocketAddr,
    child: Option<Child>,
    /// Held open so the node never writes to a closed pipe.
    _stdout: Option<ChildStdout>,
}

impl TestNode {
    /// Starts a node on a fresh port with its data in `data_dir`.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_on(data_dir, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    fn start_on(data_dir: &Path, listen: SocketAddr) -> Self {
        let mut child = Command::new(BINARY)
            .args(["node", "--id", "1", "--insecure-fast-password-hashing", "--listen", &listen.to_string()])
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start chorus node");
        let stdout = child.stdout.take().unwrap();
        let (address, stdout) = wait_for_ready_line(stdout);
        Self { data_dir: data_dir.to_owned(), address, child: Some(child), _stdout: Some(stdout) }
    }

    /// SIGKILL: the process dies at once, with no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("node is running");
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        child.wait().unwrap()
    }

    /// Starts the node again on its data directory and its old port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill the node before restarting it");
        *self = Self::start_on(&self.data_dir.clone(), self.address);
    }

    /// A client of this node alone (no failover).
    pub async fn client(&self) -> GrpcChatClient<Channel> {
        GrpcChatClient::connect(format!("http://{}", self.address)).await.expect("connect to node")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads the node's stdout until it says where it listens; the pipe goes back to the caller.
pub fn wait_for_ready_line(stdout: ChildStdout) -> (SocketAddr, ChildStdout) {
    let (sender, receiver) = mpsc::channel();
    // A thread, so the wait can time out (std pipes have no read timeout).
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                let _ = sender.send(None);
                return;
            }
            if let Some(address) = line.trim().split(" listening on ").nth(1) {
                let _ = sender.send(Some((address.parse().unwrap(), reader.into_inner())));
                return;
            }
        }
    });
    receiver.recv_timeout(START_TIMEOUT).expect("node did not start in time").expect("node exited while starting")
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
        .args(["--servers", &server.to_string()])
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
