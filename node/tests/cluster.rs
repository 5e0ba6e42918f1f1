//! Five real `chorus node` processes on loopback, under load, with nodes SIGKILLed and
//! restarted: what was acknowledged is delivered exactly once, replicas converge to the
//! same state, a majority keeps serving, a minority never does.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus::client::v1::{
    CreateAccountRequest, LoginRequest, ReadMessagesRequest, SendMessageRequest, SubscribeRequest,
};
use chorus::client::{ClusterClient, SendSequence};
use chorus::cluster_config::Compaction;
use common::cluster::{ClusterOptions, TestCluster};
use tonic::Code;

const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// A logged-in session, shared by every task that sends on it: one numbering of its sends.
#[derive(Clone)]
struct Session {
    token: String,
    sends: Arc<Mutex<SendSequence>>,
}

async fn create_and_login(client: &mut ClusterClient, username: &str) -> Session {
    let password = format!("{username}-password");
    let create = CreateAccountRequest { username: username.to_owned(), password: password.clone() };
    let result = chorus::cluster_call!(client, create_account, create);
    // A retried creation may find its own first attempt.
    assert!(result.is_ok() || result.as_ref().unwrap_err().code() == Code::AlreadyExists, "{result:?}");
    let login = LoginRequest { username: username.to_owned(), password };
    let token = chorus::cluster_call!(client, login, login).unwrap().token;
    Session { token, sends: Arc::default() }
}

/// Sends `body` to `to` as the session's next message, the same request on every retry;
/// `Ok(id)` when acknowledged.
async fn send(client: &mut ClusterClient, session: &Session, to: &str, body: &str) -> Result<u64, tonic::Status> {
    let request: SendMessageRequest = session.sends.lock().unwrap().request(to.to_owned(), body.to_owned());
    let result = chorus::cluster_call_as!(client, send_message, request.clone(), session.token);
    // These tests never retry a send after its call returns.
    session.sends.lock().unwrap().finish(request.sequence);
    result.map(|response| response.message_id)
}

/// Every unread message of `session`'s mailbox, reading in pages.
async fn read_all(client: &mut ClusterClient, session: &Session) -> Vec<String> {
    let mut bodies = Vec::new();
    loop {
        let request = ReadMessagesRequest { limit: 1000, request_id: String::new() };
        let page = chorus::cluster_call_as!(client, read_messages, request, session.token).unwrap();
        bodies.extend(page.messages.into_iter().map(|m| m.body));
        if page.unread_remaining == 0 {
            return bodies;
        }
    }
}

/// Eight clients send 1,000 messages while the leader is SIGKILLed twice (and restarted):
/// each acknowledged message reaches its recipient exactly once, nothing is duplicated,
/// and the five replicas end with identical chat state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_messages_survive_two_leader_kills_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start(dir.path(), 5);
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    const CLIENTS: usize = 8;
    const MESSAGES_PER_CLIENT: usize = 125;
    let mut tokens = Vec::new();
    let mut setup = cluster.client(Duration::from_secs(30));
    for k in 0..CLIENTS {
        tokens.push(create_and_login(&mut setup, &format!("user{k}")).await);
    }
    let acknowledged: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut senders = Vec::new();
    for (k, token) in tokens.iter().enumerate() {
        let mut client = cluster.client(Duration::from_secs(60));
        let session = token.clone();
        let acknowledged = Arc::clone(&acknowledged);
        senders.push(tokio::task::spawn(async move {
            let to = format!("user{}", (k + 1) % CLIENTS);
            for n in 0..MESSAGES_PER_CLIENT {
                let body = format!("from user{k} #{n}");
                if send(&mut client, &session, &to, &body).await.is_ok() {
                    acknowledged.lock().unwrap().insert(body);
                }
            }
        }));
    }
    for threshold in [250, 600] {
        // Let some messages through, then kill whoever leads now, and bring it back.
        while acknowledged.lock().unwrap().len() < threshold {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
        assert!(senders.iter().any(|s| !s.is_finished()), "the kill must land in the middle of the load");
        cluster.kill(leader);
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.start_node(leader);
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= CLIENTS * MESSAGES_PER_CLIENT * 9 / 10, "only {} acknowledged", acknowledged.len());

    let mut reader = cluster.client(Duration::from_secs(30));
    let mut delivered: BTreeMap<String, usize> = BTreeMap::new();
    for token in &tokens {
        for body in read_all(&mut reader, token).await {
            *delivered.entry(body).or_default() += 1;
        }
    }
    let duplicates: Vec<_> = delivered.iter().filter(|(_, count)| **count > 1).collect();
    assert!(duplicates.is_empty(), "delivered more than once: {duplicates:?}");
    let lost: Vec<_> = acknowledged.iter().filter(|body| !delivered.contains_key(*body)).collect();
    assert!(lost.is_empty(), "acknowledged but never delivered: {lost:?}");
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
}

/// With any two of five down (the leader among them) writes go on; with a third down they
/// fail with UNAVAILABLE within the client's deadline, never a false success; one node back
/// and they resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_failures_are_tolerated_and_three_stop_writes_until_one_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start(dir.path(), 5);
    let mut client = cluster.client(Duration::from_secs(20));
    let alice = create_and_login(&mut client, "alice").await;
    create_and_login(&mut client, "bob").await;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let follower = (1..=5).find(|&id| id != leader).unwrap();
    cluster.kill(leader);
    cluster.kill(follower);
    send(&mut client, &alice, "bob", "with two down").await.expect("a majority of three serves");
    let third = (1..=5).find(|&id| cluster.is_up(id)).unwrap();
    cluster.kill(third);
    let mut impatient = cluster.client(Duration::from_secs(5));
    let started = std::time::Instant::now();
    let status = send(&mut impatient, &alice, "bob", "with three down").await.expect_err("no majority, no success");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "the client deadline bounds the wait");
    cluster.start_node(third);
    send(&mut client, &alice, "bob", "back to three").await.expect("writes resume");
}

/// Every node SIGKILLed in the middle of a load, then all restarted: every acknowledged
/// message is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_every_node_mid_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start(dir.path(), 5);
    let mut client = cluster.client(Duration::from_secs(30));
    let alice = create_and_login(&mut client, "alice").await;
    let bob = create_and_login(&mut client, "bob").await;
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut loaders = Vec::new();
    for k in 0..4 {
        let mut client = cluster.client(Duration::from_secs(3));
        let alice = alice.clone();
        let acknowledged = Arc::clone(&acknowledged);
        loaders.push(tokio::task::spawn(async move {
            for n in 0.. {
                let body = format!("loader {k} #{n}");
                match send(&mut client, &alice, "bob", &body).await {
                    Ok(_) => acknowledged.lock().unwrap().push(body),
                    Err(_) => return,
                }
            }
        }));
    }
    while acknowledged.lock().unwrap().len() < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in 1..=5 {
        cluster.kill(id);
    }
    for loader in loaders {
        loader.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    for id in 1..=5 {
        cluster.start_node(id);
    }
    let mut reader = cluster.client(Duration::from_secs(30));
    let delivered: BTreeSet<String> = read_all(&mut reader, &bob).await.into_iter().collect();
    let lost: Vec<_> = acknowledged.iter().filter(|body| !delivered.contains(*body)).collect();
    assert!(lost.is_empty(), "{} acknowledged messages lost after a full stop: {lost:?}", lost.len());
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
}

/// A node that was down while 10,000 messages were sent catches up after it restarts.
/// The leader compacts its log several times meanwhile, so the node catches up from a
/// snapshot (streamed to it, then installed), and then from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_down_during_ten_thousand_messages_catches_up_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let compaction = Compaction { snapshot_every_entries: 2_000, log_tail_entries: 100 };
    let mut cluster =
        TestCluster::start_with(dir.path(), 5, ClusterOptions { compaction, ..ClusterOptions::default() });
    let mut client = cluster.client(Duration::from_secs(30));
    let alice = create_and_login(&mut client, "alice").await;
    let bob = create_and_login(&mut client, "bob").await;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let down = (1..=5).find(|&id| id != leader).unwrap();
    cluster.kill(down);
    const SENDERS: usize = 16;
    const TOTAL: usize = 10_000;
    let mut tasks = Vec::new();
    for k in 0..SENDERS {
        let mut client = cluster.client(Duration::from_secs(60));
        let alice = alice.clone();
        tasks.push(tokio::task::spawn(async move {
            for n in (k..TOTAL).step_by(SENDERS) {
                send(&mut client, &alice, "bob", &format!("m{n}")).await.expect("a majority is up");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    cluster.start_node(down);
    let applied = cluster.wait_converged(CONVERGE_TIMEOUT).await;
    assert!(applied > TOTAL as u64, "applied only {applied}");
    let status = cluster.status(down, false).await.unwrap();
    assert_eq!(status.applied_index, applied);
    let log = cluster.log_of(down);
    assert!(log.contains("installed a snapshot from the leader"), "node {down} caught up without a snapshot:\n{log}");
    // Everything is still readable after the restart of the node that took the snapshot.
    cluster.kill(leader);
    cluster.start_node(leader);
    assert!(cluster.wait_converged(CONVERGE_TIMEOUT).await >= applied);
    let mut client = cluster.client(Duration::from_secs(60));
    let bodies = read_all(&mut client, &bob).await;
    let distinct: BTreeSet<&String> = bodies.iter().collect();
    assert_eq!((bodies.len(), distinct.len()), (TOTAL, TOTAL), "every message exactly once");
}

/// A Raft batch (or snapshot chunk) from another cluster, from a stranger, for another member than the
/// sender's certificate names, or that does not decode is refused, logged and counted; a
/// message that decodes but is impossible is dropped and counted by the core; the cluster
/// is unaffected. (The forger holds node 2's own certificate: tests/tls.rs shows
/// that without a member's certificate nothing gets past the handshake.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_wrong_cluster_raft_messages_are_refused_and_logged() {
    use chorus::client::v1::raft_client::RaftClient;
    use chorus::client::v1::{
        AppendRequest, InstallSnapshot, LogPosition, RaftBatch, RaftMessage, SnapshotChunk, raft_message,
    };

    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(dir.path(), 3);
    let mut client = cluster.client(Duration::from_secs(20));
    let alice = create_and_login(&mut client, "alice").await;
    create_and_login(&mut client, "bob").await;
    let config = std::fs::read_to_string(cluster.config_path()).unwrap();
    let peer_address = config
        .lines()
        .find_map(|line| line.strip_prefix("peer_address = \""))
        .map(|rest| rest.trim_end_matches('"').to_owned())
        .unwrap();
    let channel = cluster.peer_endpoint(&peer_address, 2, 1).connect().await.unwrap();
    let mut raft = RaftClient::new(channel.clone());
    let empty_message = RaftMessage { term: 99, body: None };
    let batch = |cluster_id: &str, from: u64, to: u64, messages: Vec<RaftMessage>| RaftBatch {
        cluster_id: cluster_id.to_owned(),
        from,
        to,
        messages,
    };
    let cases = [
        (batch("another-cluster", 2, 1, vec![]), Code::FailedPrecondition),
        (batch("e2e", 9, 1, vec![]), Code::PermissionDenied),
        (batch("e2e", 3, 1, vec![]), Code::PermissionDenied),
        (batch("e2e", 2, 3, vec![]), Code::InvalidArgument),
        (batch("e2e", 2, 1, vec![empty_message]), Code::InvalidArgument),
    ];
    let refused_before = cluster.status(1, false).await.unwrap().peer_batches_refused;
    for (request, code) in cases.clone() {
        let from = request.from;
        let status = raft.deliver(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        if from == 3 {
            assert!(status.message().contains("node 2's; it cannot send for node 3"), "{status:?}");
        }
    }
    // Snapshot chunks: for another node, not an InstallSnapshot, a digest that is not a
    // SHA-256, more data than any snapshot holds; each refused before anything is written.
    let offer = RaftMessage {
        term: 99,
        body: Some(raft_message::Body::InstallSnapshot(InstallSnapshot {
            last_included: Some(LogPosition { term: 99, index: 5 }),
            members: vec![],
            membership: Some(chorus_proto::v1::Membership { voters: vec![1, 2, 3], learners: vec![], context: vec![] }),
        })),
    };
    let chunk = |from: u64, message: RaftMessage, digest: Vec<u8>, data_bytes: u64| SnapshotChunk {
        cluster_id: "e2e".to_owned(),
        from,
        to: 1,
        message: Some(message),
        data_bytes,
        data_sha256: digest,
        offset: 0,
        data: b"not a database".to_vec(),
    };
    let snapshot_cases = [
        (chunk(3, offer.clone(), vec![0; 32], 14), Code::PermissionDenied),
        (chunk(2, RaftMessage { term: 99, body: None }, vec![0; 32], 14), Code::InvalidArgument),
        (chunk(2, offer.clone(), vec![0; 31], 14), Code::InvalidArgument),
        (chunk(2, offer.clone(), vec![0; 32], u64::MAX), Code::InvalidArgument),
    ];
    for (request, code) in snapshot_cases.clone() {
        let status = raft.install_snapshot(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
    }
    // Whole, but not what its digest says: never handed to the replica (whose term stays).
    let status = raft.install_snapshot(chunk(2, offer, vec![0; 32], 14)).await.unwrap_err();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(status.message().contains("SHA-256"), "{status:?}");
    // Bytes that are not a protobuf at all.
    let status = raw_grpc_call(channel, "/chorus.v1.Raft/Deliver", vec![0xff; 64]).await;
    assert_ne!(status.code(), Code::Ok);
    // What the certificate allows gets through: an empty batch from node 2 as node 2.
    raft.deliver(batch("e2e", 2, 1, vec![])).await.unwrap();
    // A message that decodes but that no member sends (its previous entry is of a term
    // after its own) passes the service and is dropped, and counted, by the core, without
    // its huge term reaching anyone.
    let impossible = RaftMessage {
        term: 99,
        body: Some(raft_message::Body::AppendRequest(AppendRequest {
            previous: Some(LogPosition { term: 100, index: 1 }),
            ..AppendRequest::default()
        })),
    };
    raft.deliver(batch("e2e", 2, 1, vec![impossible])).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = cluster.status(1, false).await.unwrap();
        if status.peer_messages_refused >= 1 {
            assert!(status.term < 99, "the impossible message's term was adopted");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the impossible message was not counted: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cluster.log_of(1).contains("refused a Raft batch"), "the refusals are logged");
    let refused = cluster.status(1, false).await.unwrap().peer_batches_refused - refused_before;
    // Bytes that are no protobuf are refused by gRPC's decoding, before the service: not
    // counted there.
    assert_eq!(refused, (cases.len() + snapshot_cases.len()) as u64, "each refusal is counted, the good batch not");
    send(&mut client, &alice, "bob", "still fine").await.unwrap();
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
}

/// Sends `body` as the raw message of a unary gRPC call, bypassing protobuf encoding.
async fn raw_grpc_call(channel: tonic::transport::Channel, path: &'static str, body: Vec<u8>) -> tonic::Status {
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Default)]
    struct RawCodec;
    struct RawEncoder;
    struct RawDecoder;
    impl Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            use bytes::BufMut;
            dst.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for RawDecoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
            use bytes::Buf;
            Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
        }
    }
    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = RawEncoder;
        type Decoder = RawDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> RawDecoder {
            RawDecoder
        }
    }

    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    match grpc.unary::<Vec<u8>, Vec<u8>, _>(tonic::Request::new(body), path, RawCodec).await {
        Ok(_) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

/// A node cut off from the majority (here: the other two are gone) ends its live streams
/// with NOT_APPLIED once it has known no leader for two election timeouts, so that a client
/// resumes elsewhere instead of waiting on a stream that will deliver nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_leader_ends_its_live_streams() {
    use tonic_types::StatusExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start(dir.path(), 3);
    let mut client = cluster.client(Duration::from_secs(20));
    let alice = create_and_login(&mut client, "alice").await;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    // The follower must know the session (else it asks the leader, by a read fence, which
    // a follower cannot serve): the login commits on the leader before it applies here.
    cluster.wait_converged(Duration::from_secs(30)).await;
    let mut chat = client.chat_of(follower as usize - 1);
    let request = chorus::client::authorized(SubscribeRequest { after_id: 0 }, &alice.token).unwrap();
    let mut stream = chat.subscribe(request).await.unwrap().into_inner();
    for id in (1..=3).filter(|&id| id != follower) {
        cluster.kill(id);
    }
    let ended = tokio::time::timeout(Duration::from_secs(15), stream.message()).await.expect("the stream ended");
    let status = ended.expect_err("an error ends it");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.get_details_error_info().unwrap().reason, chorus_proto::wire::NOT_APPLIED);
    assert!(status.message().contains("known no leader"), "{status:?}");
}

/// With one of three nodes down, a leader stopped with SIGTERM still hands leadership to
/// the live follower: it picks the follower it hears from (the dead one is as up to date,
/// and has the higher id) and grants its pre-vote itself, the other vote there is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_leadership_to_the_live_follower_with_one_node_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start(dir.path(), 3);
    let mut client = cluster.client(Duration::from_secs(20));
    create_and_login(&mut client, "alice").await;
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let (live, dead) = (followers[0], followers[1]);
    cluster.kill(dead);
    // Longer than an election timeout: the leader has stopped hearing from it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let exit = cluster.terminate(leader);
    assert!(exit.success(), "the leader exited with {exit}");
    let log = cluster.log_of(leader);
    assert!(log.contains("handed leadership over"), "no completed hand-over in the log:\n{log}");
    let status = cluster.status(live, false).await.expect("the live follower answers");
    assert_eq!(status.node_id, live);
    assert!(cluster.log_of(live).contains("became leader"), "{}", cluster.log_of(live));
}

/// A leader stopped with SIGTERM hands leadership to a follower before it exits, so the
/// cluster has a new leader without waiting out an election timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_leader_hands_leadership_over_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start(dir.path(), 3);
    let mut client = cluster.client(Duration::from_secs(20));
    let alice = create_and_login(&mut client, "alice").await;
    create_and_login(&mut client, "bob").await;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let term = cluster.status(leader, false).await.unwrap().term;
    let exit = cluster.terminate(leader);
    assert!(exit.success(), "the leader exited with {exit}");
    let log = cluster.log_of(leader);
    assert!(log.contains("handed leadership over"), "no hand-over in the log:\n{log}");
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    // One election, the one the old leader asked for: no timeout-driven rounds.
    assert_eq!(cluster.status(new_leader, false).await.unwrap().term, term + 1);
    send(&mut client, &alice, "bob", "after the hand-over").await.unwrap();
}

/// `TransferLeader` (and `chorus cluster transfer-leader`) hands leadership to the voter
/// asked for; a follower answers NOT_LEADER naming the leader, a target that is not a voter
/// is INVALID_ARGUMENT, and the command line says so and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_voter_an_operator_names() {
    use chorus::client::v1::TransferLeaderRequest;
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(dir.path(), 3);
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let target = (1..=3).find(|&id| id != leader).unwrap();
    let mut client = cluster.client(Duration::from_secs(20));
    let index_of = |id: u64| (id - 1) as usize;

    let answer = client.cluster_of(index_of(leader)).transfer_leader(TransferLeaderRequest { target_id: target }).await;
    assert_eq!(answer.expect("the transfer succeeds").into_inner().leader_id, target);
    let status = cluster.status(target, false).await.expect("the target answers");
    assert_eq!(status.role(), chorus::client::v1::Role::Leader);

    // The old leader is a follower now, and says who leads.
    let refused =
        client.cluster_of(index_of(leader)).transfer_leader(TransferLeaderRequest { target_id: leader }).await;
    let refused = refused.expect_err("a follower cannot transfer");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains(&format!("node {target} is")), "{refused:?}");
    for bad in [0, 9] {
        let answer =
            client.cluster_of(index_of(target)).transfer_leader(TransferLeaderRequest { target_id: bad }).await;
        assert_eq!(answer.expect_err("not a voter").code(), Code::InvalidArgument);
    }
    // To itself: nothing to do.
    let answer = client.cluster_of(index_of(target)).transfer_leader(TransferLeaderRequest { target_id: target }).await;
    assert_eq!(answer.unwrap().into_inner().leader_id, target);

    let output = cluster.run_cli(&["cluster", "transfer-leader", &leader.to_string()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(&format!("leader: node {leader} (was node {target})")), "{stdout}");
    let output = cluster.run_cli(&["cluster", "transfer-leader", "9"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("node 9 is not a member"), "{stderr}");
}
