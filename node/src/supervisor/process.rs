//! One `chorus node` process: started, waited for until it says where it listens, and
//! stopped by signal.

use std::io::{ErrorKind, Read};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::replication::NodeId;

/// How often a wait polls the child (its pipe, its exit).
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The line a node prints on stdout once it serves clients. Scripts and supervisors wait
/// for it, so its shape is part of the binary's interface.
pub fn listening_line(id: NodeId, client_address: SocketAddr) -> String {
    format!("node {id} listening on {client_address}")
}

/// The client address in a [`listening_line`], if `line` is one.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let rest = line.trim().strip_prefix("node ")?;
    let (id, address) = rest.split_once(" listening on ")?;
    id.parse::<NodeId>().ok()?;
    address.trim().parse().ok()
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("the node exited while starting ({status})")]
    ExitedWhileStarting { status: String },
    #[error("the node did not say it listens within {0:?}")]
    StartTimeout(Duration),
    #[error("cannot read the node's output: {0}")]
    Output(#[source] std::io::Error),
    #[error("cannot signal process {pid}: {source}")]
    Signal { pid: u32, source: nix::Error },
    #[error("cannot wait for process {pid}: {source}")]
    Wait { pid: u32, source: std::io::Error },
}

/// A running node process. Dropping it kills the process (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct NodeProcess {
    child: Child,
    /// Held open: a node writing to a closed stdout would fail.
    _stdout: ChildStdout,
    client_address: SocketAddr,
}

impl NodeProcess {
    /// Starts `command` (a `chorus node …` invocation; its stdout is taken over) and waits
    /// up to `timeout` for its [`listening_line`].
    pub fn start(mut command: Command, timeout: Duration) -> Result<Self, ProcessError> {
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|source| ProcessError::Spawn { program, source })?;
        let mut stdout = child.stdout.take().expect("stdout is piped");
        match wait_for_listening_line(&mut child, &mut stdout, timeout) {
            Ok(client_address) => Ok(Self { child, _stdout: stdout, client_address }),
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(error)
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the node serves clients, as it reported.
    pub fn client_address(&self) -> SocketAddr {
        self.client_address
    }

    /// SIGKILL: the process dies at once, with no chance to clean up or hand over.
    pub fn kill(mut self) -> Result<ExitStatus, ProcessError> {
        self.kill_and_reap()
    }

    /// SIGHUP: a node reloads its certificates.
    pub fn hang_up(&self) -> Result<(), ProcessError> {
        self.send(Signal::SIGHUP)
    }

    /// SIGSTOP: the process freezes until [`NodeProcess::resume`]. A SIGKILL still kills
    /// it; a SIGTERM waits for the resume.
    pub fn pause(&self) -> Result<(), ProcessError> {
        self.send(Signal::SIGSTOP)
    }

    /// SIGCONT: a paused process goes on.
    pub fn resume(&self) -> Result<(), ProcessError> {
        self.send(Signal::SIGCONT)
    }

    fn send(&self, signal: Signal) -> Result<(), ProcessError> {
        let pid = self.pid();
        let raw = i32::try_from(pid).expect("a process id fits in pid_t");
        kill(Pid::from_raw(raw), signal).map_err(|source| ProcessError::Signal { pid, source })
    }

    /// SIGTERM, then waits up to `grace` for a clean exit; kills the process after that.
    /// Returns its exit status and whether it exited within the grace period.
    pub fn terminate(mut self, grace: Duration) -> Result<(ExitStatus, bool), ProcessError> {
        let pid = self.pid();
        self.send(Signal::SIGTERM)?;
        // A paused process would hold the signal until resumed.
        self.send(Signal::SIGCONT)?;
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait().map_err(|source| ProcessError::Wait { pid, source })? {
                Some(status) => return Ok((status, true)),
                None if Instant::now() >= deadline => return Ok((self.kill_and_reap()?, false)),
                None => std::thread::sleep(POLL_INTERVAL),
            }
        }
    }

    fn kill_and_reap(&mut self) -> Result<ExitStatus, ProcessError> {
        let pid = self.pid();
        if let Some(status) = self.child.try_wait().map_err(|source| ProcessError::Wait { pid, source })? {
            return Ok(status);
        }
        // An error here means it exited on its own meanwhile; wait reaps it either way.
        let _ = self.child.kill();
        self.child.wait().map_err(|source| ProcessError::Wait { pid, source })
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.kill_and_reap();
    }
}

/// Reads the child's stdout until its listening line, without blocking past `timeout`:
/// the pipe is made non-blocking and polled, so no thread is needed to bound the wait.
fn wait_for_listening_line(
    child: &mut Child,
    stdout: &mut ChildStdout,
    timeout: Duration,
) -> Result<SocketAddr, ProcessError> {
    let flags = fcntl(stdout.as_fd(), FcntlArg::F_GETFL).map_err(|e| ProcessError::Output(e.into()))?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(stdout.as_fd(), FcntlArg::F_SETFL(flags)).map_err(|e| ProcessError::Output(e.into()))?;
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stdout.read(&mut buffer) {
            Ok(0) => {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                return Err(ProcessError::ExitedWhileStarting { status });
            }
            Ok(read) => {
                seen.extend_from_slice(&buffer[..read]);
                // Only whole lines: the end of a line still being written could parse as
                // another port ("…:10" of "…:10001").
                let complete = seen.iter().rposition(|&byte| byte == b'\n').map_or(0, |end| end + 1);
                let text = String::from_utf8_lossy(&seen[..complete]);
                if let Some(address) = text.lines().find_map(parse_listening_line) {
                    return Ok(address);
                }
                continue;
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {}
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return Err(ProcessError::Output(error)),
        }
        if Instant::now() >= deadline {
            return Err(ProcessError::StartTimeout(timeout));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_reads_back() {
        let address: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        assert_eq!(parse_listening_line(&listening_line(3, address)), Some(address));
        assert_eq!(parse_listening_line("  node 3 listening on [::1]:80 \n"), "[::1]:80".parse().ok());
        assert_eq!(parse_listening_line("node 3 peers on 127.0.0.1:7101"), None);
        assert_eq!(parse_listening_line("warning: not node 3 listening on 127.0.0.1:1"), None);
        assert_eq!(parse_listening_line("node x listening on 127.0.0.1:1"), None);
    }

    #[test]
    fn a_process_that_never_listens_times_out_and_one_that_exits_is_reported() {
        let mut silent = Command::new("sleep");
        silent.arg("30");
        let started = Instant::now();
        let error = NodeProcess::start(silent, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(error, ProcessError::StartTimeout(_)), "{error}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let mut exits = Command::new("sh");
        exits.args(["-c", "echo starting; exit 3"]);
        let error = NodeProcess::start(exits, Duration::from_secs(10)).unwrap_err();
        assert!(matches!(&error, ProcessError::ExitedWhileStarting { status } if status.contains('3')), "{error}");
        let mut listens = Command::new("sh");
        // The line arrives in two pieces; the first alone would parse as port 9.
        listens.args(["-c", "printf 'node 4 listening on 127.0.0.1:9'; sleep 0.3; echo 1; exec sleep 30"]);
        let process = NodeProcess::start(listens, Duration::from_secs(10)).unwrap();
        assert_eq!(process.client_address(), "127.0.0.1:91".parse().unwrap());
        let (status, in_time) = process.terminate(Duration::from_secs(5)).unwrap();
        assert!(in_time && !status.success(), "sleep dies of SIGTERM: {status}");
    }
}
