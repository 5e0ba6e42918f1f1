//! What the multi-host tests share: a namespace check that skips only where the kernel
//! refuses namespaces, and never where the test script says they must run.

#![allow(dead_code)]

use std::path::PathBuf;

/// The `chorus-hosts` binary (it holds a slow host's delayed packets).
pub const HOSTS_BINARY: &str = env!("CARGO_BIN_EXE_chorus-hosts");

/// Set by scripts/test.sh once it saw that this machine makes namespaces: from then on a
/// refusal is a failure, not a skip.
const REQUIRED: &str = "CHORUS_HOSTS_REQUIRED";

/// Whether the test may run: `false` (after a plain SKIPPED line) only where namespaces
/// are refused and the test script did not require them.
pub fn hosts_available(test: &str) -> bool {
    let Some(reason) = chorus_hosts::namespaces_refused() else { return true };
    if std::env::var_os(REQUIRED).is_some() {
        panic!("{test}: network namespaces are required here ({REQUIRED} is set) but refused: {reason}");
    }
    // Straight to stderr: the test harness captures println!, and a skip must be seen.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
    false
}

/// Whether the program at `path` is installed: `false` (after a SKIPPED line) only where
/// the test script did not require the multi-host tests (it installs what they need).
pub fn tool_available(test: &str, path: &str) -> bool {
    if std::path::Path::new(path).is_file() {
        return true;
    }
    if std::env::var_os(REQUIRED).is_some() {
        panic!(
            "{test}: {path} is required here ({REQUIRED} is set; scripts/hosts.sh install-tools installs it) but missing"
        );
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {path} is not installed");
    false
}

pub fn delay_program() -> Option<PathBuf> {
    Some(PathBuf::from(HOSTS_BINARY))
}

use std::path::Path;
use std::time::Duration;

use chorus::replication::NodeId;
use chorus_hosts::{CliRun, Placement, Testbed, TestbedOptions};

/// The assignment's three machines: A runs nodes 1 and 2, B nodes 3 and 4, C node 5.
pub fn three_hosts() -> Vec<Placement> {
    vec![Placement::new("A", &[1, 2]), Placement::new("B", &[3, 4]), Placement::new("C", &[5])]
}

pub fn start(dir: &Path, placements: &[Placement]) -> Testbed {
    let options = TestbedOptions { delay_program: delay_program(), ..TestbedOptions::default() };
    Testbed::start(dir, placements, options).unwrap()
}

/// A person at a host, with the `chorus` client and a session file of their own there.
pub struct Person {
    pub host: String,
    pub username: String,
    password: String,
    session: PathBuf,
}

impl Person {
    pub fn new(testbed: &Testbed, host: &str, username: &str) -> Self {
        let session = testbed.dir().join(format!("session-{username}-on-{host}.json"));
        Self { host: host.to_owned(), username: username.to_owned(), password: format!("{username}-password"), session }
    }

    /// Sits down at another host (the session file does not come along).
    pub fn moves_to(&self, testbed: &Testbed, host: &str) -> Self {
        Self { password: self.password.clone(), ..Self::new(testbed, host, &self.username) }
    }

    /// `chorus ARGS…` with `--timeout timeout_secs`, killed if it outlives that by 20 s.
    pub fn try_run(&self, testbed: &Testbed, timeout_secs: u64, args: &[&str]) -> CliRun {
        let timeout = timeout_secs.to_string();
        let mut all = vec!["--timeout", timeout.as_str()];
        all.extend_from_slice(args);
        let env = [("CHORUS_PASSWORD", self.password.as_str())];
        let limit = Duration::from_secs(timeout_secs + 20);
        testbed.chorus(&self.host, &self.session, &all, &env, limit).unwrap()
    }

    /// `chorus ARGS…` with a 60 s timeout, SIGKILLed after `after`.
    pub fn run_killed_after(&self, testbed: &Testbed, after: Duration, args: &[&str]) -> CliRun {
        let mut all = vec!["--timeout", "60"];
        all.extend_from_slice(args);
        let env = [("CHORUS_PASSWORD", self.password.as_str())];
        testbed.chorus(&self.host, &self.session, &all, &env, after).unwrap()
    }

    /// Like [`Person::try_run`] with a 30 s timeout, and the command must succeed.
    pub fn run(&self, testbed: &Testbed, args: &[&str]) -> String {
        let run = self.try_run(testbed, 30, args);
        assert!(run.ok(), "{} on {}: chorus {args:?}: {run}", self.username, self.host);
        run.stdout
    }

    pub fn create_account(&self, testbed: &Testbed) {
        self.run(testbed, &["account", "create", &self.username]);
    }

    pub fn login(&self, testbed: &Testbed) {
        self.run(testbed, &["login", &self.username]);
    }
}

/// Alice on host B and Bob on host C, each with an account and logged in.
pub fn alice_on_b_and_bob_on_c(testbed: &Testbed) -> (Person, Person) {
    let alice = Person::new(testbed, "B", "alice");
    let bob = Person::new(testbed, "C", "bob");
    alice.create_account(testbed);
    bob.create_account(testbed);
    alice.login(testbed);
    bob.login(testbed);
    (alice, bob)
}

/// How many times each of `bodies` appears as a message body in `listing` (lines of
/// `chorus read` or `chorus history`: `#ID TIME FROM -> TO[ (unread)]: BODY`).
pub fn count_bodies(listing: &str, bodies: &[String]) -> Vec<usize> {
    bodies
        .iter()
        .map(|body| {
            listing.lines().filter(|line| line.starts_with('#') && line.ends_with(&format!(": {body}"))).count()
        })
        .collect()
}

/// Waits until every member runs, answers, and has applied the same index with the same
/// state digest; panics with what they said after `timeout`.
pub fn wait_for_convergence(testbed: &Testbed, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let statuses = testbed.statuses(true).unwrap();
        let answers: Vec<(NodeId, u64, Vec<u8>)> = statuses
            .iter()
            .filter_map(|(id, status)| status.as_ref().map(|s| (*id, s.applied_index, s.state_digest.clone())))
            .collect();
        let all_answer = answers.len() == testbed.ids().len();
        let same = answers.windows(2).all(|pair| pair[0].1 == pair[1].1 && pair[0].2 == pair[1].2);
        if all_answer && same && answers.first().is_some_and(|first| !first.2.is_empty()) {
            return;
        }
        if std::time::Instant::now() >= deadline {
            let shown: Vec<String> = answers
                .iter()
                .map(|(id, applied, digest)| format!("node {id}: applied {applied}, digest {}", hex(digest)))
                .collect();
            panic!(
                "the members did not converge within {timeout:?}: {shown:?} ({} of {} answered)",
                answers.len(),
                testbed.ids().len()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// A line for the test's log (shown with --nocapture: scripts/hosts.sh demo).
pub fn say(step: &str) {
    println!("[{}] {step}", chrono_free_time());
}

fn chrono_free_time() -> String {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs() % 86_400;
    format!("{:02}:{:02}:{:02}.{:03}", seconds / 3600, seconds / 60 % 60, seconds % 60, since.subsec_millis())
}
