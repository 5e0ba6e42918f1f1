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
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.transcript.push(line.clone());
                    if line.contains(expected) {
                        return line;
                    }
                }
                Err(_) => panic!("{expected:?} did not appear; transcript:\n{}", self.transcript.join("\n")),
            }
        }
    }

    #[track_caller]
    fn run(&mut self, command: &str, expected: &str) -> String {
        self.type_line(command);
        self.expect(&format!("> {command}"));
        self.expect(expected)
    }
}

#[test]
fn demo_shell_shows_live_delivery_and_persistence_across_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut shell = DemoShell::start(dir.path());
    shell.expect("node 1 up on 127.0.0.1:");
    shell.run("help", "kill N");
    shell.run("create alice password1", "created account 'alice'");
    shell.run("create bob password2", "created account 'bob'");
    shell.run("create bob password2", "error: username 'bob' is taken");
    shell.run("login alice password1", "logged in as 'alice': 0 unread");
    shell.run("send bob hello from alice", "sent message 1 to bob");
    shell.run("status", "1     up");
    shell.run("kill 1", "node 1 killed (SIGKILL)");
    shell.run("status", "1     down");
    shell.run("send bob this fails while the node is down", "error: cannot reach any server");
    shell.run("restart 1", "node 1 up on 127.0.0.1:");
    shell.run("login bob password2", "logged in as 'bob': 1 unread");
    shell.run("watch", "watching messages for 'bob'");
    shell.expect("[watch bob] #1 ");
    // The watch resumes after a crash of its node, with no repeat of message 1.
    shell.run("kill 1", "node 1 killed");
    shell.run("restart 1", "node 1 up");
    shell.run("login alice password1", "logged in as 'alice'");
    shell.run("send bob after the crash", "sent message 2 to bob");
    let live = shell.expect("[watch bob]");
    assert!(live.contains("#2 ") && live.contains("after the crash"), "{live}");
    shell.run("login bob password2", "logged in as 'bob': 2 unread");
    shell.run("read", "alice -> bob: hello from alice");
    shell.expect("alice -> bob: after the crash");
    shell.run("history alice", "#2 ");
    shell.run("users", "alice bob");
    shell.run("delete 1 2", "deleted 2 message(s)");
    shell.run("kill 7", "error: there is no node 7");
    shell.run("bogus command", "error: unknown command or wrong arguments: bogus command");
    shell.stdin.take(); // Ctrl-D
    shell.expect("all nodes stopped");
    let status = shell.child.wait().unwrap();
    assert!(status.success());
    let watched_first = shell.transcript.iter().filter(|line| line.contains("[watch bob] #1 ")).count();
    assert_eq!(watched_first, 1, "message 1 watched {watched_first} times:\n{}", shell.transcript.join("\n"));
    // The nodes are gone: nothing holds the data directory's lock.
    chorus::storage::DataDir::open(&dir.path().join("node-1")).expect("node 1 stopped and released its data");
}
