//! What a node acknowledged survives SIGKILL; a SIGTERM stops it cleanly; a data directory
//! is never shared by two nodes.

mod common;

use std::time::Duration;

use chorus::client::v1::{LoginRequest, ReadMessagesRequest, SendMessageRequest, SubscribeRequest};
use chorus::cluster_config::{ClusterConfig, MemberConfig, Timing};
use chorus::supervisor::NodeProcess;
use common::{TestNode, account, as_user, login};
use tonic::Code;

#[tokio::test]
async fn acknowledged_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(dir.path());
    let mut client = node.client().await;
    let alice = account(&mut client, "alice").await;
    let bob = account(&mut client, "bob").await;
    client.logout(as_user(chorus::client::v1::LogoutRequest {}, &bob)).await.unwrap();
    let mut acknowledged = Vec::new();
    for n in 0..50 {
        let request = as_user(
            SendMessageRequest {
                to: "bob".into(),
                body: format!("message {n}"),
                sequence: n + 1,
                acknowledged_through: 0,
            },
            &alice,
        );
        acknowledged.push(client.send_message(request).await.unwrap().into_inner().message_id);
    }

    node.kill();
    node.restart();

    let mut client = node.client().await;
    let bob = client
        .login(LoginRequest { username: "bob".into(), password: "bob-password".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bob.unread_count, 50);
    let read = client
        .read_messages(as_user(ReadMessagesRequest { limit: 1000, request_id: String::new() }, &bob.token))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<u64> = read.messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, acknowledged);
    assert!(read.messages.iter().enumerate().all(|(n, m)| m.body == format!("message {n}")));

    // Sessions are durable too, and so is what they remember of their sends: a retry
    // after the restart is recognized and not stored again.
    let retry = as_user(
        SendMessageRequest { to: "bob".into(), body: "message 49".into(), sequence: 50, acknowledged_through: 0 },
        &alice,
    );
    let response = client.send_message(retry).await.unwrap().into_inner();
    assert!(response.duplicate);
    assert_eq!(response.message_id, acknowledged[49]);
}

// Multi-threaded so the client's connection keeps being served while the test waits for
// the node to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_live_streams_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(dir.path());
    let mut client = node.client().await;
    let alice = account(&mut client, "alice").await;
    let mut stream = client.subscribe(as_user(SubscribeRequest { after_id: 0 }, &alice)).await.unwrap().into_inner();
    let status = node.terminate();
    assert!(status.success(), "node exited with {status}");
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message()).await.expect("stream ends");
    match ended {
        Err(status) => assert!(matches!(status.code(), Code::Unavailable | Code::Unknown), "{status:?}"),
        Ok(None) => {}
        Ok(Some(message)) => panic!("unexpected message {message:?}"),
    }
    // The data is intact for the next start.
    node.restart();
    let mut client = node.client().await;
    login(&mut client, "alice").await;
}

#[test]
fn a_second_node_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _node = TestNode::start(dir.path());
    let output = std::process::Command::new(common::BINARY)
        .args(["--insecure", "node", "--id", "2", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
}

#[test]
fn a_corrupt_database_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("chat.sqlite3"), vec![0x42; 16384]).unwrap();
    let output = std::process::Command::new(common::BINARY)
        .args(["--insecure", "node", "--id", "1", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a Chorus database or is corrupt"), "{stderr}");
}

/// A node refuses to start on data from another cluster, with a config that does not name
/// it, or with a broken config, and says what is wrong.
#[test]
fn a_node_refuses_data_or_configs_that_do_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Written unchecked: some of these configurations are wrong on purpose.
    let write_config = |name: &str, cluster_id: &str, ids: &[u64]| {
        let members = ids
            .iter()
            .map(|&id| MemberConfig {
                id,
                peer_address: format!("127.0.0.1:{}", 17100 + id),
                client_address: format!("127.0.0.1:{}", 17200 + id),
                data_dir: None,
            })
            .collect();
        let config = ClusterConfig {
            cluster_id: cluster_id.to_owned(),
            timing: Timing::default(),
            limits: Default::default(),
            compaction: Default::default(),
            members,
        };
        let path = dir.path().join(name);
        std::fs::write(&path, config.to_toml("").unwrap()).unwrap();
        path
    };
    let run = |config: &std::path::Path, id: u64| {
        std::process::Command::new(common::BINARY)
            .args([
                "--insecure",
                "node",
                "--id",
                &id.to_string(),
                "--listen",
                "127.0.0.1:0",
                "--peer-listen",
                "127.0.0.1:0",
            ])
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(&data)
            .env("RUST_LOG", "off")
            .output()
            .unwrap()
    };
    // Create the data directory as member 1 of cluster "alpha", then stop.
    let alpha = write_config("alpha.toml", "alpha", &[1]);
    let mut node = std::process::Command::new(common::BINARY);
    node.args(["--insecure", "node", "--id", "1", "--listen", "127.0.0.1:0", "--config"])
        .arg(&alpha)
        .arg("--data-dir")
        .arg(&data);
    NodeProcess::start(node, Duration::from_secs(30)).unwrap().kill().unwrap();

    let cases = [
        (write_config("beta.toml", "beta", &[1]), 1, "belongs to cluster 'alpha'"),
        (write_config("grown.toml", "alpha", &[1, 2, 3]), 1, "changing membership"),
        (write_config("other.toml", "alpha", &[1]), 7, "node id 7 is not among the members"),
        (write_config("dup.toml", "alpha", &[1, 1]), 1, "id 1 appears more than once"),
    ];
    for (config, id, expected) in cases {
        let output = run(&config, id);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "expected {expected:?} in: {stderr}");
    }
    // A member of a cluster of several does not start on an empty data directory unless
    // told it is the cluster's first start, and is not told so twice.
    let trio = write_config("trio.toml", "trio", &[1, 2, 3]);
    let empty = dir.path().join("empty");
    let start_member = |extra: &[&str]| {
        std::process::Command::new(common::BINARY)
            .args(["--insecure", "node", "--id", "2", "--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0"])
            .args(extra)
            .arg("--config")
            .arg(&trio)
            .arg("--data-dir")
            .arg(&empty)
            .env("RUST_LOG", "off")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let refused = start_member(&[]).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("pass --bootstrap"), "{stderr}");
    let mut first = start_member(&["--bootstrap"]);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(first.stdout.take().unwrap()), &mut line).unwrap();
    assert!(line.contains("listening on"), "{line}");
    first.kill().unwrap();
    first.wait().unwrap();
    let twice = start_member(&["--bootstrap"]).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&twice.stderr);
    assert!(!twice.status.success() && stderr.contains("only for a member's first start"), "{stderr}");
    // A wiped directory (the member's data lost) is refused like any empty one.
    std::fs::remove_dir_all(&empty).unwrap();
    let wiped = start_member(&[]).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&wiped.stderr);
    assert!(!wiped.status.success() && stderr.contains("must not rejoin as the voter it was"), "{stderr}");

    let garbled = dir.path().join("garbled.toml");
    std::fs::write(&garbled, "cluster_id = \"alpha\"\n[[members]]\nid = 1\npeer_address = 5\n").unwrap();
    let output = run(&garbled, 1);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("peer_address"), "{stderr}");
}
