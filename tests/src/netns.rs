//! Linux network namespaces, through `ip netns`: made, entered by a thread, swept when a
//! run that made them died without removing them.
//!
//! Every namespace this crate makes is named `chorus-hosts-<pid>-<n>-<name>`, the pid being
//! the process that made it, so that a later run can tell the ones whose maker is gone and
//! remove them, with whatever still runs inside.

use std::ffi::OsStr;
use std::fs::File;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

/// The start of every namespace name this crate makes.
pub const NAME_PREFIX: &str = "chorus-hosts-";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed { command: String, status: String, stderr: String },
    #[error("cannot enter network namespace {name}: {source}")]
    Enter { name: String, source: std::io::Error },
    #[error(
        "this kernel or sandbox refuses network namespaces ({0}); the multi-host tests need root and \
         `ip netns` (iproute2)"
    )]
    Unsupported(String),
}

/// Runs `program args…`, returning its output if it exits 0.
pub fn run<I, S>(program: &str, args: I) -> Result<Output, NetError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_with_input(program, args, None)
}

/// [`run`], with `input` on the program's stdin.
pub fn run_with_input<I, S>(program: &str, args: I, input: Option<&str>) -> Result<Output, NetError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(program);
    command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    command.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    let shown = format!("{command:?}").replace('"', "");
    let mut child = command.spawn().map_err(|source| NetError::Spawn { program: program.to_owned(), source })?;
    if let Some(input) = input {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin.write_all(input.as_bytes()).map_err(|source| NetError::Spawn { program: program.to_owned(), source })?;
    }
    let output = child.wait_with_output().map_err(|source| NetError::Spawn { program: program.to_owned(), source })?;
    if !output.status.success() {
        return Err(NetError::Failed {
            command: shown,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output)
}

/// A network namespace this process made. Dropping it kills what still runs inside and
/// removes it.
#[derive(Debug)]
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// A new namespace named after this process and `label`, with its loopback up.
    pub fn create(label: &str) -> Result<Self, NetError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("{NAME_PREFIX}{}-{}-{label}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        run("ip", ["netns", "add", &name]).map_err(|error| match error {
            NetError::Failed { stderr, .. } => NetError::Unsupported(stderr),
            other => other,
        })?;
        let namespace = Self { name };
        namespace.ip(["link", "set", "lo", "up"])?;
        Ok(namespace)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME args…`.
    pub fn ip<I, S>(&self, args: I) -> Result<Output, NetError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> = vec!["-n".into(), self.name.clone().into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        run("ip", all)
    }

    /// `program args…` inside the namespace (`ip netns exec`), `input` on its stdin.
    pub fn exec(&self, program: &str, args: &[&str], input: Option<&str>) -> Result<Output, NetError> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run_with_input("ip", all, input)
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn exec_prefix(&self) -> Vec<String> {
        vec!["ip".to_owned(), "netns".to_owned(), "exec".to_owned(), self.name.clone()]
    }

    /// Runs `work` on a thread of its own inside the namespace: every socket it opens is
    /// in the namespace's network stack (a thread's network namespace is its own, and the
    /// threads it starts inherit it).
    pub fn enter<R: Send>(&self, work: impl FnOnce() -> R + Send) -> Result<R, NetError> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).map_err(|source| NetError::Enter { name: self.name.clone(), source })?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(&file, CloneFlags::CLONE_NEWNET)
                        .map_err(|e| NetError::Enter { name: self.name.clone(), source: e.into() })?;
                    Ok(work())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Namespace {
    /// Starts `work` on a thread of its own inside the namespace, as [`Namespace::enter`]
    /// does, and returns at once.
    pub fn spawn<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Result<R, NetError>>, NetError> {
        let path = format!("/run/netns/{}", self.name);
        let name = self.name.clone();
        let file = File::open(&path).map_err(|source| NetError::Enter { name: name.clone(), source })?;
        Ok(std::thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Enter { name, source: e.into() })?;
            Ok(work())
        }))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

/// Kills every process inside namespace `name`, then removes it (best effort: this runs
/// on the way out, perhaps of a failed test).
fn remove(name: &str) {
    if let Ok(output) = run("ip", ["netns", "pids", name]) {
        for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    let _ = run("ip", ["netns", "del", name]);
}

/// Removes the namespaces of earlier runs whose maker is no longer alive (a test run that
/// was SIGKILLed cannot clean up after itself), and what still runs inside them. Returns
/// their names.
pub fn sweep_orphans() -> Vec<String> {
    sweep_where(|name| {
        let maker = name.strip_prefix(NAME_PREFIX).and_then(|rest| rest.split('-').next());
        maker
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    })
}

/// Removes every namespace this process made, with what runs inside (a shell stopped by
/// a signal, which cannot unwind to its destructors). Returns their names.
pub fn sweep_mine() -> Vec<String> {
    let mine = format!("{NAME_PREFIX}{}-", std::process::id());
    sweep_where(|name| name.starts_with(&mine))
}

/// Removes every namespace this crate ever made, whoever made it (`chorus-hosts sweep
/// --all`, for a person cleaning up by hand). Returns their names.
pub fn sweep_all() -> Vec<String> {
    sweep_where(|name| name.starts_with(NAME_PREFIX))
}

/// Removes the namespaces whose names `chosen` picks, and what runs inside them.
fn sweep_where(chosen: impl Fn(&str) -> bool) -> Vec<String> {
    let Ok(output) = run("ip", ["netns", "list"]) else { return Vec::new() };
    let names: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| chosen(name))
        .map(str::to_owned)
        .collect();
    for name in &names {
        remove(name);
    }
    names
}
