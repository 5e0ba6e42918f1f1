//! The `chorus` client verbs as a script or a person uses them: passwords from stdin, the
//! session kept in a file, readable errors and non-zero exits.

mod common;

use std::process::Output;

use common::{TestNode, run_cli};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn assert_ok(output: &Output) -> String {
    assert!(output.status.success(), "exit {}: {}{}", output.status, stdout(output), stderr(output));
    stdout(output)
}

#[track_caller]
fn assert_fails_with(output: &Output, message: &str) {
    assert!(!output.status.success(), "expected failure, got: {}", stdout(output));
    assert!(stderr(output).contains(message), "expected {message:?} in: {}", stderr(output));
}

#[test]
fn a_conversation_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("node"));
    let alice = dir.path().join("alice.json");
    let bob = dir.path().join("bob.json");
    let cli = |session: &std::path::Path, args: &[&str], stdin: &str| run_cli(node.address, session, args, stdin);

    assert!(
        assert_ok(&cli(&alice, &["account", "create", "Alice", "--password-stdin"], "alice-pass\n"))
            .contains("created account 'alice'")
    );
    assert_ok(&cli(&bob, &["account", "create", "bob", "--password-stdin"], "bob-password\n"));
    assert_fails_with(
        &cli(&bob, &["account", "create", "bob", "--password-stdin"], "bob-password\n"),
        "username 'bob' is taken",
    );

    assert!(
        assert_ok(&cli(&alice, &["login", "alice", "--password-stdin"], "alice-pass\n"))
            .contains("logged in as 'alice'")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&alice).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the session file holds a secret: owner only");
    }
    assert!(assert_ok(&cli(&alice, &["send", "bob", "hello", "bob"], "")).contains("sent message 1 to bob"));
    assert_ok(&cli(&alice, &["send", "bob"], "from stdin\n"));
    assert_fails_with(&cli(&alice, &["send", "carol", "hi"], ""), "user 'carol' does not exist");
    // A retry with the same sequence is recognized, as long as its answer is awaited; sends
    // numbered by the session file acknowledge what was answered.
    let once = assert_ok(&cli(&alice, &["send", "bob", "once"], ""));
    assert!(once.contains("sent message"), "{once}");
    let session: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&alice).unwrap()).unwrap();
    assert_eq!(session["next_send_sequence"], 5, "{session}");
    assert_eq!(session["sends_awaiting"], serde_json::json!([]), "answered sends are not awaited");
    assert_fails_with(&cli(&alice, &["send", "bob", "x", "--sequence", "9"], ""), "still awaiting its answer");
    assert_fails_with(&cli(&alice, &["send", "bob", "x", "--sequence", "1"], ""), "still awaiting its answer");

    assert_fails_with(&cli(&bob, &["read"], ""), "not logged in");
    assert_fails_with(
        &cli(&bob, &["login", "bob", "--password-stdin"], "wrong-password\n"),
        "unknown username or wrong password",
    );
    assert!(assert_ok(&cli(&bob, &["login", "bob", "--password-stdin"], "bob-password\n")).contains("3 unread"));
    let read = assert_ok(&cli(&bob, &["read", "--limit", "2"], ""));
    assert!(read.contains("alice -> bob: hello bob") && read.contains("from stdin"), "{read}");
    assert!(read.contains("1 more unread"), "{read}");
    assert!(assert_ok(&cli(&bob, &["read"], "")).contains("alice -> bob: once"));

    let history = assert_ok(&cli(&alice, &["history", "--peer", "bob", "--limit", "2"], ""));
    assert!(history.contains("older: chorus history --peer bob --before 2"), "{history}");
    assert_eq!(assert_ok(&cli(&alice, &["users"], "")).lines().collect::<Vec<_>>(), ["alice", "bob"]);
    assert!(assert_ok(&cli(&alice, &["users", "z*"], "")).contains("no accounts match"));
    assert_fails_with(&cli(&alice, &["users", "a[b]"], ""), "pattern contains '['");

    assert_fails_with(&cli(&alice, &["delete", "1"], ""), "already read");
    assert!(assert_ok(&cli(&bob, &["delete", "1", "2"], "")).contains("deleted 2"));
    assert_fails_with(&cli(&bob, &["delete", "1"], ""), "message 1 not found");
    assert_fails_with(&cli(&bob, &["delete", "x"], ""), "invalid value 'x'");

    assert_fails_with(&cli(&alice, &["account", "delete", "--password-stdin"], "nope-nope\n"), "wrong password");
    assert!(
        assert_ok(&cli(&alice, &["account", "delete", "--password-stdin"], "alice-pass\n")).contains("deleted account")
    );
    assert!(!alice.exists(), "the session file goes with the account");
    assert!(assert_ok(&cli(&bob, &["logout"], "")).contains("logged out 'bob'"));
}

/// A send whose outcome stays unknown (here: no node answered) keeps its sequence awaiting,
/// and a retry under it goes through only as the same message; an awaiting send with a
/// start time far ahead (a clock that was wrong) or 512 sends behind stops holding the
/// session's acknowledgement back.
#[test]
fn unknown_outcomes_are_retried_by_sequence_as_the_same_message_only() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("node"));
    let alice = dir.path().join("alice.json");
    let cli = |args: &[&str], stdin: &str| run_cli(node.address, &alice, args, stdin);
    assert_ok(&cli(&["account", "create", "alice", "--password-stdin"], "alice-pass\n"));
    assert_ok(&cli(&["account", "create", "bob", "--password-stdin"], "bob-password\n"));
    assert_ok(&cli(&["login", "alice", "--password-stdin"], "alice-pass\n"));
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let lost = assert_ok(&run_cli(nobody, &alice, &["--timeout", "1", "send", "bob", "lost?"], ""));
    assert!(lost.contains("queued: cluster unreachable") && lost.contains("#1"), "{lost}");
    // Out of the outbox (which would deliver it first), the send stays awaiting as any
    // send of unknown outcome does.
    assert!(assert_ok(&cli(&["outbox", "drop", "1"], "")).contains("dropped message 1"));
    assert_fails_with(&cli(&["send", "bob", "found", "--sequence", "1"], ""), "given to a different message");
    assert_fails_with(&cli(&["send", "carol", "lost?", "--sequence", "1"], ""), "given to a different message");
    assert!(assert_ok(&cli(&["send", "bob", "lost?", "--sequence", "1"], "")).contains("sent message 1 to bob"));
    assert_fails_with(&cli(&["send", "bob", "lost?", "--sequence", "1"], ""), "still awaiting its answer");

    // Sends left awaiting 600 sends back, and by a clock set to 2100: neither holds back
    // the acknowledgement of the next send, which then leaves the file with nothing awaiting.
    let edit = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut session: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&alice).unwrap()).unwrap();
        change(&mut session);
        std::fs::write(&alice, session.to_string()).unwrap();
    };
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    edit(&|session| {
        session["next_send_sequence"] = 700.into();
        session["sends_awaiting"] = serde_json::json!([
            { "sequence": 100, "started_unix_ms": now_ms },
            { "sequence": 699, "started_unix_ms": 4_102_444_800_000u64 },
        ]);
    });
    assert_fails_with(&cli(&["send", "bob", "x", "--sequence", "100"], ""), "still awaiting its answer");
    assert!(assert_ok(&cli(&["send", "bob", "again", "--sequence", "699"], "")).contains("sent message 2"));
    let session: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&alice).unwrap()).unwrap();
    assert_eq!(session["sends_awaiting"], serde_json::json!([]), "{session}");
    edit(&|session| {
        session["sends_awaiting"] = serde_json::json!([{ "sequence": 699, "started_unix_ms": 4_102_444_800_000u64 }]);
    });
    let session: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&alice).unwrap()).unwrap();
    assert_eq!(session["next_send_sequence"], 700);
    assert_ok(&cli(&["send", "bob", "new"], ""));
    let session: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&alice).unwrap()).unwrap();
    let kept = session["sends_awaiting"].as_array().unwrap();
    let started = kept[0]["started_unix_ms"].as_u64().unwrap();
    assert!(started < 4_102_444_800_000, "a start ahead of the clock is kept as now: {session}");
}

#[test]
fn passwords_never_come_from_arguments_and_errors_exit_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("s.json");
    let unused = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    // stdin is a pipe, not a terminal: with no --password-stdin and no CHORUS_PASSWORD it must refuse.
    assert_fails_with(&run_cli(unused, &session, &["login", "alice"], ""), "no password given");
    assert_fails_with(&run_cli(unused, &session, &["login", "alice", "--password-stdin"], ""), "no password on stdin");
    // Nothing listens on port 9.
    assert_fails_with(
        &run_cli(unused, &session, &["--timeout", "1", "users"], ""),
        "cluster unreachable: no node answered",
    );
    let bad = run_cli(unused, &session, &["--servers", "no-port-here", "users"], "");
    assert_fails_with(&bad, "no port");
}

/// Sends no node can take go into the outbox ("queued", exit 0), and the next command that
/// reaches the cluster delivers them in order, exactly once: one whose first attempt may
/// have been stored is repeated under its own sequence, so a copy the server already holds
/// (here, a delivery "killed" after its send) is recognized and not stored again.
#[test]
fn an_unreachable_cluster_queues_sends_and_the_outbox_delivers_each_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(&dir.path().join("node"));
    let alice = dir.path().join("alice.json");
    let bob = dir.path().join("bob.json");
    let address = node.address;
    let cli = |session: &std::path::Path, args: &[&str], stdin: &str| run_cli(address, session, args, stdin);
    assert_ok(&cli(&alice, &["account", "create", "alice", "--password-stdin"], "alice-pass\n"));
    assert_ok(&cli(&bob, &["account", "create", "bob", "--password-stdin"], "bob-password\n"));
    assert_ok(&cli(&alice, &["login", "alice", "--password-stdin"], "alice-pass\n"));
    assert!(assert_ok(&cli(&alice, &["outbox"], "")).contains("the outbox is empty"));

    node.kill();
    let first = assert_ok(&cli(&alice, &["--timeout", "1", "send", "bob", "one"], ""));
    assert!(first.contains("queued: cluster unreachable"), "{first}");
    assert!(first.contains("waits in the outbox as #1"), "{first}");
    let second = assert_ok(&cli(&alice, &["--timeout", "1", "send", "bob", "two"], ""));
    assert!(second.contains("queued: cluster unreachable") && second.contains("#2"), "{second}");
    let listed = assert_ok(&cli(&alice, &["outbox"], ""));
    let one = listed.find("alice -> bob: one").expect(&listed);
    let two = listed.find("alice -> bob: two").expect(&listed);
    assert!(one < two, "oldest first:\n{listed}");
    assert_fails_with(&cli(&alice, &["--timeout", "1", "read"], ""), "cluster unreachable");
    // What a node would refuse is refused now, not queued.
    assert_fails_with(&cli(&alice, &["--timeout", "1", "send", "no such!", "x"], ""), "username");
    // Two days pass: the first send's number must still be awaiting when it is delivered
    // (the outbox holds it), or the session would acknowledge past it and the server
    // forget it.
    let mut session: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&alice).unwrap()).unwrap();
    let two_days_ago = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
        - 2 * 24 * 3600 * 1000;
    let shown = session.to_string();
    let awaiting = session["sends_awaiting"].as_array_mut().unwrap();
    assert_eq!(awaiting.len(), 1, "{shown}");
    assert_eq!(awaiting[0]["pinned"], true, "held by the outbox: {shown}");
    awaiting[0]["started_unix_ms"] = two_days_ago.into();
    std::fs::write(&alice, session.to_string()).unwrap();

    node.restart();
    // The first send's attempt reached no node, but a connection that fails says nothing
    // certain, so it is queued under its sequence (1). Its copy arrives here as a delivery
    // killed after its send was stored and before it heard the answer would leave it: the
    // outbox and the session file as they were (both are set aside meanwhile, or this send
    // would deliver the outbox first and the session would record the answer).
    let outbox = alice.with_extension("outbox.sqlite");
    let aside = dir.path().join("aside.sqlite");
    std::fs::rename(&outbox, &aside).unwrap();
    let session_before = std::fs::read(&alice).unwrap();
    assert!(assert_ok(&cli(&alice, &["send", "bob", "one", "--sequence", "1"], "")).contains("sent message"));
    std::fs::write(&alice, session_before).unwrap();
    std::fs::rename(&aside, &outbox).unwrap();
    let delivered = assert_ok(&cli(&alice, &["outbox", "send"], ""));
    assert!(delivered.contains("delivered outbox message #1"), "{delivered}");
    assert!(delivered.contains("already stored as message"), "the repeat is recognized:\n{delivered}");
    assert!(delivered.contains("delivered outbox message #2") && delivered.contains("sent message"), "{delivered}");
    assert!(assert_ok(&cli(&alice, &["outbox"], "")).contains("the outbox is empty"));

    assert_ok(&cli(&bob, &["login", "bob", "--password-stdin"], "bob-password\n"));
    let read = assert_ok(&cli(&bob, &["read"], ""));
    assert_eq!(read.matches(": one").count(), 1, "{read}");
    assert_eq!(read.matches(": two").count(), 1, "{read}");
    assert!(read.find(": one").unwrap() < read.find(": two").unwrap(), "in order:\n{read}");

    node.kill();
    assert!(assert_ok(&cli(&alice, &["--timeout", "1", "send", "bob", "three"], "")).contains("#3"));
    assert!(assert_ok(&cli(&alice, &["outbox", "drop", "3"], "")).contains("dropped message 3"));
    assert_fails_with(&cli(&alice, &["outbox", "drop", "3"], ""), "no message 3 in the outbox");
    node.restart();
    assert!(assert_ok(&cli(&alice, &["send", "bob", "four"], "")).contains("sent message"));
    let read = assert_ok(&cli(&bob, &["read"], ""));
    assert!(!read.contains("three") && read.contains("four"), "a dropped message is never sent:\n{read}");
}
