//! What clients can make a node spend is bounded: no request stalls replication, and no
//! burst grows a node's memory past a bound. Real `chorus node` processes on loopback with
//! the production timing (heartbeat 100 ms, elections 1-2 s), measured from outside: the
//! leader's view of its followers (`Cluster/Status`) and each node's resident memory
//! (`/proc`). Stability is asserted (no election, no follower unheard for an election
//! timeout, memory under its bound); the figures themselves are printed, and recorded in
//! docs/performance.md.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus::client::v1::chat_client::ChatClient;
use chorus::client::v1::cluster_client::ClusterClient as GrpcClusterClient;
use chorus::client::v1::{CreateAccountRequest, LoginRequest, SendMessageRequest, StatusRequest, SubscribeRequest};
use chorus::client::{ClusterClient, RetryPolicy, SendSequence};
use common::cluster::{ClusterOptions, TestCluster, connect};

/// The production minimum election timeout: a follower unheard for this long campaigns.
const ELECTION_TIMEOUT_MIN: Duration = Duration::from_millis(1000);

/// The load tests run one at a time: each measures how a cluster behaves under its own load
/// on a small machine, and two at once measure neither (and starve each other past their
/// deadlines: a sign-up burst beside the subscription test ran out of its 300 s).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Watches a cluster from outside while a load runs: every term and leader any node
/// reports, and the longest a follower went unheard by the leader.
struct StabilityWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<(u64, u64)>>>,
    longest_silence_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl StabilityWatch {
    fn start(cluster: &TestCluster) -> Self {
        let addresses: Vec<String> = cluster.servers();
        let security = cluster.security();
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<BTreeSet<(u64, u64)>>> = Arc::default();
        let longest_silence_ms = Arc::new(AtomicU64::new(0));
        let task = tokio::task::spawn({
            let (stop, seen, longest) = (Arc::clone(&stop), Arc::clone(&seen), Arc::clone(&longest_silence_ms));
            async move {
                let mut clients = Vec::new();
                for address in &addresses {
                    clients.push(GrpcClusterClient::new(connect(address, &security).await));
                }
                while !stop.load(Ordering::Acquire) {
                    for client in &mut clients {
                        let request = StatusRequest { include_state_digest: false };
                        let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(1), client.status(request)).await
                        else {
                            continue;
                        };
                        let status = status.into_inner();
                        seen.lock().unwrap().insert((status.term, status.leader_id));
                        for member in &status.members {
                            if let Some(silence) = member.ms_since_contact {
                                longest.fetch_max(silence, Ordering::AcqRel);
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Self { stop, seen, longest_silence_ms, task }
    }

    /// Stops watching; returns every (term, leader) seen and the longest silence.
    async fn finish(self) -> (BTreeSet<(u64, u64)>, u64) {
        self.stop.store(true, Ordering::Release);
        self.task.await.unwrap();
        let seen = self.seen.lock().unwrap().clone();
        (seen, self.longest_silence_ms.load(Ordering::Acquire))
    }
}

/// Asserts that one leader, in one term, ruled throughout, and no follower went unheard
/// for an election timeout.
#[track_caller]
fn assert_stable(what: &str, seen: &BTreeSet<(u64, u64)>, longest_silence_ms: u64) {
    println!("{what}: terms and leaders seen {seen:?}; longest a follower went unheard: {longest_silence_ms} ms");
    assert_eq!(seen.len(), 1, "{what}: the leadership changed: {seen:?}");
    assert!(
        longest_silence_ms < ELECTION_TIMEOUT_MIN.as_millis() as u64,
        "{what}: a follower went {longest_silence_ms} ms without hearing the leader"
    );
}

async fn create_and_login(client: &mut ClusterClient, username: &str) -> String {
    let password = format!("{username}-password");
    let create = CreateAccountRequest { username: username.to_owned(), password: password.clone() };
    match chorus::cluster_call!(client, create_account, create) {
        Ok(_) => {}
        // A retry of a sign-up whose first attempt was stored.
        Err(status) if status.code() == tonic::Code::AlreadyExists => {}
        Err(status) => panic!("sign-up of {username}: {status:?}"),
    }
    let login = LoginRequest { username: username.to_owned(), password };
    match chorus::cluster_call!(client, login, login) {
        Ok(reply) => reply.token,
        Err(status) => panic!("login of {username} after its sign-up: {status:?}"),
    }
}

/// Sends `count` messages of `body_bytes` from a session to `to`, round robin; returns
/// the last message's id.
async fn send_many(
    client: &mut ClusterClient,
    (token, sends): (&str, &mut SendSequence),
    to: &[String],
    count: usize,
    body_bytes: usize,
) -> u64 {
    let mut last = 0;
    for n in 0..count {
        let body = format!("{n:06}{}", "x".repeat(body_bytes.saturating_sub(6)));
        let request: SendMessageRequest = sends.request(to[n % to.len()].clone(), body);
        last = chorus::cluster_call_as!(client, send_message, request.clone(), token)
            .expect("a healthy cluster serves")
            .message_id;
        sends.finish(request.sequence);
    }
    last
}

/// Opens `per_user` subscriptions (a multiple of 4: a session holds at most 4 per node)
/// for each of `users`, after message `after_id`, on `address` alone, one connection per
/// user; returns the streams.
async fn subscribe_many(
    setup: &mut ClusterClient,
    address: &str,
    users: &[String],
    per_user: usize,
    after_id: u64,
) -> Vec<tonic::Streaming<chorus::client::v1::Message>> {
    assert!(per_user.is_multiple_of(4));
    let mut streams = Vec::new();
    for user in users {
        let channel = connect(address, &setup.security().clone()).await;
        let mut chat = ChatClient::new(channel);
        for _ in 0..per_user / 4 {
            let login = LoginRequest { username: user.clone(), password: format!("{user}-password") };
            let token = chorus::cluster_call!(setup, login, login).unwrap().token;
            for _ in 0..4 {
                let request = || chorus::client::authorized(SubscribeRequest { after_id }, &token).unwrap();
                // A node that has not applied the login yet defers to the leader: ask again.
                let mut attempts = 0;
                let stream = loop {
                    match chat.subscribe(request()).await {
                        Ok(response) => break response.into_inner(),
                        Err(status) if status.code() == tonic::Code::Unavailable && attempts < 100 => {
                            attempts += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(status) => panic!("a subscription opens: {status:?}"),
                    }
                };
                streams.push(stream);
            }
        }
    }
    streams
}

/// Starts sending a message every 20 ms from a fresh session of `sender` to `users` in
/// turn, until `sending` turns false; counts what was acknowledged in `sent`.
fn steady_sends(
    cluster: &TestCluster,
    token: String,
    users: Vec<String>,
    sending: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let mut client = cluster.client(Duration::from_secs(30));
    tokio::task::spawn(async move {
        let mut sends = SendSequence::new();
        while sending.load(Ordering::Acquire) {
            let n = sent.load(Ordering::Acquire) as usize;
            let request: SendMessageRequest = sends.request(users[n % users.len()].clone(), format!("live {n}"));
            chorus::cluster_call_as!(client, send_message, request.clone(), token).expect("sends go on");
            sends.finish(request.sequence);
            sent.fetch_add(1, Ordering::AcqRel);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Under a steady load of sends, a loop of state digests against every node (each a scan
/// of the whole chat database), and then 1,000 live subscriptions on the leader receiving
/// those sends, leave the cluster's heartbeats and its leader alone. (Before, a digest held
/// the one chat lock that apply waits on, inline in the replication loop: a loop of them
/// deposed the leader; and every apply woke every subscription to query under that lock.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn digests_and_a_thousand_subscriptions_do_not_stall_replication() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    const PHASE: Duration = Duration::from_secs(8);
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start_with(
        dir.path(),
        3,
        ClusterOptions { fast_password_hashing: true, ..ClusterOptions::production() },
    );
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let leader_address = cluster.client_address(leader);
    let mut client = cluster.client(Duration::from_secs(30));
    // 63 accounts of 16 live streams each (an account's most on a node): 1,008 streams.
    let users: Vec<String> = (0..63).map(|n| format!("user{n}")).collect();
    let mut tokens = Vec::new();
    for user in &users {
        tokens.push(create_and_login(&mut client, user).await);
    }
    // A chat database worth scanning: 24 MB of messages.
    let mut fillers = Vec::new();
    for (k, token) in tokens.iter().enumerate().take(4) {
        let (mut client, token, users) = (cluster.client(Duration::from_secs(60)), token.clone(), users.clone());
        fillers.push(tokio::task::spawn(async move {
            send_many(&mut client, (&token, &mut SendSequence::new()), &users[k..k + 1], 375, 16 * 1024).await
        }));
    }
    let mut last_id = 0;
    for filler in fillers {
        last_id = last_id.max(filler.await.unwrap());
    }

    // A steady load of sends throughout, from a session of its own.
    let sending = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicU64::new(0));
    // Four senders, each on a session of its own: about 200 sends a second, each waking
    // its recipient's 16 streams in the last phase.
    let mut senders = Vec::new();
    for _ in 0..4 {
        let live_token = create_and_login(&mut client, "user0").await;
        senders.push(steady_sends(&cluster, live_token, users.clone(), Arc::clone(&sending), Arc::clone(&sent)));
    }

    // The baseline: the load alone.
    let watch = StabilityWatch::start(&cluster);
    tokio::time::sleep(PHASE).await;
    let (seen, baseline_silence) = watch.finish().await;
    assert_stable("the send load alone", &seen, baseline_silence);

    // Digests, four callers per node.
    let watch = StabilityWatch::start(&cluster);
    let digesting = Arc::new(AtomicBool::new(true));
    let digests = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::new();
    for address in cluster.servers() {
        for _ in 0..4 {
            let (digesting, digests, address) = (Arc::clone(&digesting), Arc::clone(&digests), address.clone());
            let security = cluster.security();
            callers.push(tokio::task::spawn(async move {
                let mut status = GrpcClusterClient::new(connect(&address, &security).await);
                while digesting.load(Ordering::Acquire) {
                    if status.status(StatusRequest { include_state_digest: true }).await.is_ok() {
                        digests.fetch_add(1, Ordering::AcqRel);
                    }
                }
            }));
        }
    }
    tokio::time::sleep(PHASE).await;
    digesting.store(false, Ordering::Release);
    for caller in callers {
        caller.await.unwrap();
    }
    let (seen, silence) = watch.finish().await;
    println!("{} digests of a 24 MB database computed", digests.load(Ordering::Acquire));
    assert!(digests.load(Ordering::Acquire) > 0, "the digests ran");
    assert_stable("the load with digests on every node", &seen, silence);

    // 1,008 subscriptions on the leader, 16 per user, all read as messages arrive.
    // After what is there already (message ids are dense), so that the streams carry the
    // live load, not a backlog.
    let now_id = last_id + sent.load(Ordering::Acquire);
    let mut streams = subscribe_many(&mut client, &leader_address, &users, 16, now_id).await;
    assert_eq!(streams.len(), 1008);
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for mut stream in streams.drain(..) {
        let delivered = Arc::clone(&delivered);
        readers.push(tokio::task::spawn(async move {
            while let Ok(Some(_)) = stream.message().await {
                delivered.fetch_add(1, Ordering::AcqRel);
            }
        }));
    }
    let watch = StabilityWatch::start(&cluster);
    let sent_before = sent.load(Ordering::Acquire);
    tokio::time::sleep(PHASE).await;
    let (seen, silence) = watch.finish().await;
    let sent_during = sent.load(Ordering::Acquire) - sent_before;
    println!(
        "with 1,000 subscriptions: {sent_during} messages sent, {} deliveries; baseline silence {baseline_silence} ms",
        delivered.load(Ordering::Acquire)
    );
    assert!(sent_during > 0, "sends went on");
    assert!(delivered.load(Ordering::Acquire) >= sent_during * 14, "the subscriptions kept up");
    assert_stable("the load with 1,000 subscriptions on the leader", &seen, silence);
    sending.store(false, Ordering::Release);
    for sender in senders {
        sender.await.unwrap();
    }
    for reader in readers {
        reader.abort();
    }
}

/// A burst of 250 concurrent sign-ups, each followed by a login (500 password hashes and
/// checks), with Argon2 at its
/// production cost (19 MiB a hash): the bounded password pool keeps every node's peak
/// memory under 200 MB, and the cluster's leader in place. (Before, hashes ran on tokio's
/// blocking pool, as many at once as it had threads, and the allocator kept what they
/// used: 200 sign-ups took a leader from 11 MB to 3.6 GB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_sign_ups_and_logins_keeps_memory_bounded() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    const MEMORY_MAX: u64 = 200 * 1024 * 1024;
    // Far more than a node lets wait (the pool's WAITING_MAX, 64): enough to show the
    // bound, where 200 unbounded sign-ups once took a leader to 3.6 GB.
    const SIGN_UPS: usize = 250;
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start_with(dir.path(), 3, ClusterOptions::production());
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    let watch = StabilityWatch::start(&cluster);
    let servers = cluster.servers();
    let mut clients = Vec::new();
    for n in 0..SIGN_UPS {
        let (servers, security) = (servers.clone(), cluster.security());
        clients.push(tokio::task::spawn(async move {
            let policy = RetryPolicy { call_deadline: Duration::from_secs(300), ..RetryPolicy::default() };
            let mut client = ClusterClient::new(&servers, policy, security).unwrap();
            create_and_login(&mut client, &format!("burst{n}")).await
        }));
    }
    for client in clients {
        assert_eq!(client.await.unwrap().len(), 64, "every sign-up and login went through");
    }
    let (seen, silence) = watch.finish().await;
    for id in 1..=3 {
        let (resident, peak) = cluster.memory_of(id);
        println!("node {id}: resident {} MB, peak {} MB", resident >> 20, peak >> 20);
        assert!(peak < MEMORY_MAX, "node {id} peaked at {} MB", peak >> 20);
    }
    assert_stable("a burst of sign-ups and logins", &seen, silence);
}

/// 1,000 subscriptions that never read, 8 per user, with up to 240 KiB of messages behind
/// each (240 MB in all across the streams): a
/// node fetches for a stream only as the client reads, so what waits does not grow its
/// memory, and doubling what waits changes nothing. (Before, each stream's task fetched
/// 256 messages at a time into a buffer of 256: 100 such streams took a node from 34 MB
/// to 809 MB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_slow_subscribers_keep_memory_flat() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(dir.path(), 3);
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let follower_address = cluster.client_address(follower);
    let mut client = cluster.client(Duration::from_secs(60));
    // 125 accounts of 8 streams each.
    let users: Vec<String> = (0..125).map(|n| format!("slow{n}")).collect();
    let mut tokens = Vec::new();
    for user in &users {
        tokens.push(create_and_login(&mut client, user).await);
    }
    // Two 60 KiB messages per user a round: 120, then 240 KiB waiting in each stream,
    // well above the 64 KiB a stream fetches at once.
    const MESSAGES_PER_ROUND: usize = 250;
    let streams = subscribe_many(&mut client, &follower_address, &users, 8, 0).await;
    assert_eq!(streams.len(), 1000);
    let (idle, _) = cluster.memory_of(follower);
    let mut sends = SendSequence::new();
    let mut waiting = Vec::new();
    for round in 0..2 {
        send_many(&mut client, (&tokens[0], &mut sends), &users, MESSAGES_PER_ROUND, 60 * 1024).await;
        // Let the follower apply everything and wake every stream.
        cluster.wait_converged(Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (resident, peak) = cluster.memory_of(follower);
        println!(
            "follower, 1,000 unread subscriptions, {} KiB waiting per user: resident {} MB (idle {} MB), peak {} MB",
            (round + 1) * MESSAGES_PER_ROUND / users.len() * 60,
            resident >> 20,
            idle >> 20,
            peak >> 20
        );
        waiting.push(resident);
    }
    let growth = waiting[1].saturating_sub(waiting[0]);
    assert!(growth < 24 * 1024 * 1024, "twice as much waiting grew the follower by {} MB", growth >> 20);
    let (_, peak) = cluster.memory_of(follower);
    assert!(peak < 300 * 1024 * 1024, "the follower peaked at {} MB", peak >> 20);
    drop(streams);
}
