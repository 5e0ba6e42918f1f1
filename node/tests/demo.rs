//! `chorus demo` driven through stdin exactly as a person would type at its shell: each
//! command is sent once the answer to the previous one has appeared.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// How long one answer may take to appear (node starts included).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

struct DemoShell {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    transcript: Vec<String>,
}

impl DemoShell {
    fn start(dir: &std::path::Path) -> Self {
        let mut child = Command::new(common::BINARY)
            .arg("demo")
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        Self { child, stdin, lines, transcript: Vec::new() }
    }

    fn type_line(&mut self, command: &str) {
        writeln!(self.stdin.as_mut().unwrap(), "{command}").unwrap();
    }

    /// Waits for a line containing `expected`; returns it.
    #[track_caller]
    fn expect(&mut self, expected: &str) -> String {
        self.expect_line(expected, |line| line.contains(expected))
    }

    /// Waits for a line that `matches` (described by `what`); returns it.
    #[track_caller]
    fn expect_line(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.transcript.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("{what:?} did not appear; transcript:\n{}", self.transcript.join("\n")),
            }
        }
    }

    /// Runs `status` and waits for the row of a node whose role is `role` (not the header,
    /// which names the column); returns that node's number.
    #[track_caller]
    fn status_row_with_role(&mut self, role: &str) -> u64 {
        self.type_line("status");
        self.expect("> status");
        // A table row: cells between `│` borders and `┆` separators.
        let cells = |line: &str| -> Vec<String> {
            line.split(['│', '┆']).map(str::trim).filter(|cell| !cell.is_empty()).map(str::to_owned).collect()
        };
        let row = self.expect_line(&format!("a status row with role {role}"), |line| {
            let cells = cells(line);
            cells.first().is_some_and(|node| node.parse::<u64>().is_ok())
                && cells.get(1).map(String::as_str) == Some(role)
        });
        cells(&row)[0].parse().unwrap()
    }

    /// Waits until a line containing each of `expected` has appeared, in any order (a
    /// watch prints whenever its message arrives, before or after the command's answer);
    /// returns the lines, in the order of `expected`.
    #[track_caller]
    fn expect_all(&mut self, expected: &[&str]) -> Vec<String> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut found: Vec<Option<String>> = vec![None; expected.len()];
        while found.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!("{expected:?} did not all appear; transcript:\n{}", self.transcript.join("\n"))
            });
            self.transcript.push(line.clone());
            if let Some(slot) = expected.iter().zip(found.iter_mut()).find(|(e, f)| f.is_none() && line.contains(*e)) {
                *slot.1 = Some(line);
            }
        }
        found.into_iter().map(Option::unwrap).collect()
    }

    #[track_caller]
    fn run(&mut self, command: &str, expected: &str) -> String {
        self.type_line(command);
        self.expect(&format!("> {command}"));
        self.expect(expected)
    }
}

#[test]
fn demo_cluster_survives_two_failures_refuses_writes_without_a_majority_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut shell = DemoShell::start(dir.path());
    let ready = shell.expect("nodes up; node ");
    let leader: u64 = ready.split("node ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(ready.starts_with("5 nodes up"), "{ready}");
    shell.run("help", "kill N");
    shell.run("create alice password1", "created account 'alice'");
    shell.run("create bob password2", "created account 'bob'");
    shell.run("create bob password2", "error: username 'bob' is taken");
    shell.run("login bob password2", "logged in as 'bob': 0 unread");
    shell.run("watch", "watching messages for 'bob'");
    shell.run("login alice password1", "logged in as 'alice': 0 unread");
    shell.type_line("send bob hello from alice");
    shell.expect_all(&["sent message 1 to bob", "[watch bob] #1 "]);
    assert_eq!(shell.status_row_with_role("leader"), leader, "status shows the leader the demo announced");

    // The leader dies: a new one is elected and writes go on.
    shell.run(&format!("kill {leader}"), &format!("node {leader} killed (SIGKILL)"));
    shell.type_line("send bob after the leader died");
    let lines = shell.expect_all(&["sent message 2 to bob", "[watch bob] #2 "]);
    let watched = &lines[1];
    assert!(watched.contains("#2 ") && watched.contains("after the leader died"), "{watched}");
    // A second node dies: still a majority of three.
    let second = if leader == 1 { 2 } else { 1 };
    shell.run(&format!("kill {second}"), "killed (SIGKILL)");
    shell.run("send bob with two down", "sent message 3 to bob");
    // A third: no majority, so no write may succeed.
    let third = (1..=5).find(|n| *n != leader && *n != second).unwrap();
    shell.run(&format!("kill {third}"), "killed (SIGKILL)");
    // The send is not lost: it waits in alice's outbox, on disk.
    shell.run("send bob with three down", "queued: cluster unreachable: no majority");
    shell.run("outbox", "alice -> bob: with three down");
    shell.run(&format!("restart {third}"), &format!("node {third} up on 127.0.0.1:"));
    // Logging in again delivers it first, by the session that numbered it (the new one
    // could not repeat that number), then the new session takes over.
    shell.run("login alice password1", "delivered outbox message");
    shell.expect("logged in as 'alice'");
    shell.run("send bob back to a majority", "sent message");
    shell.run("outbox", "the outbox is empty");
    shell.run(&format!("restart {leader}"), "up on 127.0.0.1:");
    shell.run(&format!("restart {second}"), "up on 127.0.0.1:");
    let new_leader = shell.status_row_with_role("leader");
    assert!((1..=5).contains(&new_leader), "a member leads again");

    shell.run("login bob password2", "logged in as 'bob'");
    shell.run("read", "alice -> bob: hello from alice");
    shell.expect("alice -> bob: after the leader died");
    shell.expect("alice -> bob: with two down");
    shell.expect("alice -> bob: with three down");
    shell.expect("alice -> bob: back to a majority");
    shell.run("history alice", "#");
    shell.run("users", "alice bob");
    // `--sequence N` is the retry an unknown outcome's error asks for, never words of a new
    // message: for a send already answered, it is refused and nothing is stored.
    shell.run("login alice password1", "logged in as 'alice'");
    shell.run("send bob answered once", "sent message");
    shell
        .run("send bob answered once --sequence 1", "error: --sequence 1 is not a send of this session still awaiting");
    shell.run("history bob", "alice -> bob");
    assert!(
        !shell.transcript.iter().any(|line| line.ends_with("--sequence 1") && line.starts_with('#')),
        "no message took the flag"
    );
    shell.run("kill 9", "error: there is no node 9");
    shell.run("bogus command", "error: unknown command or wrong arguments: bogus command");
    shell.stdin.take(); // Ctrl-D
    shell.expect("all nodes stopped");
    let status = shell.child.wait().unwrap();
    assert!(status.success());
    // "with three down" may have sat in the old leader's log and committed once a majority
    // was back, and was delivered from the outbox too: under the same number, so stored
    // once. What must never happen is a success reported without a majority (the send
    // above was queued instead) or a second copy.
    let transcript = shell.transcript.join("\n");
    let read_from = shell.transcript.iter().position(|line| line.ends_with("> read")).unwrap();
    let read_to = shell.transcript.iter().position(|line| line.ends_with("> history alice")).unwrap();
    let stored = shell.transcript[read_from..read_to]
        .iter()
        .filter(|line| line.starts_with('#') && line.ends_with(": with three down"))
        .count();
    assert_eq!(stored, 1, "bob reads the queued message once:\n{transcript}");
    for tag in ["#1 ", "#2 "] {
        let watched =
            shell.transcript.iter().filter(|line| line.starts_with("[watch bob]") && line.contains(tag)).count();
        assert_eq!(watched, 1, "message {tag} watched {watched} times:\n{transcript}");
    }
    // Every node stopped and released its data directory.
    for node in 1..=5 {
        chorus::storage::DataDir::open(&dir.path().join(format!("node-{node}"))).expect("node stopped");
    }
}
