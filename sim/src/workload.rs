//! Clients using the real client library, each recording a history of what it invoked and
//! what came back, with its runtime's timestamps; plus one live subscription per user
//! recording what it delivered.
//!
//! The clients themselves ([`run_client`], [`read_final_mailboxes`]) are plain tokio code:
//! the simulation runs them on simulated hosts ([`start`], [`final_mailboxes`]), and the
//! multi-host tests (`tests/`) on threads inside real network namespaces, over TLS, with
//! real time.

use std::collections::BTreeSet;
#[cfg(madsim)]
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus::client::v1::{
    CreateAccountRequest, DeleteMessagesRequest, HistoryRequest, ListAccountsRequest, LoginRequest, Message,
    ReadMessagesRequest, SendMessageRequest,
};
use chorus::client::{ClientSecurity, ClusterClient, RetryPolicy, SendSequence, new_request_id};
#[cfg(madsim)]
use madsim::runtime::Handle;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::{Code, Status};

use crate::history::{Delivery, History, Observed, Op, Operation, Outcome, RawDelivery};

/// Deadline of one client call: an operation either completes within it or reports an
/// unknown outcome.
pub const CALL_DEADLINE: Duration = Duration::from_secs(20);
/// Names the account operations fight over (created, checked, never deleted).
const CONTESTED_ACCOUNTS: usize = 4;

fn observed(message: &Message) -> Observed {
    Observed { id: message.id, from: message.from.clone(), to: message.to.clone(), body: message.body.clone() }
}

/// What every client task shares.
#[derive(Clone)]
pub struct Recorder {
    start: tokio::time::Instant,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    pub fn new() -> Self {
        Self { start: tokio::time::Instant::now(), history: Arc::default(), stop: Arc::new(AtomicBool::new(false)) }
    }

    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn invoke(&self, client: usize, op: Op) -> usize {
        let mut history = self.history.lock().unwrap();
        history.operations.push(Operation { client, op, invoked: self.now(), completed: None });
        history.operations.len() - 1
    }

    fn complete(&self, operation: usize, outcome: Outcome) {
        let now = self.now();
        self.history.lock().unwrap().operations[operation].completed = Some((now, outcome));
    }

    fn deliver(&self, user: &str, message: &Message) {
        let delivery = Delivery { user: user.to_owned(), message: observed(message), at: self.now() };
        self.history.lock().unwrap().deliveries.push(delivery);
    }

    fn deliver_raw(&self, user: &str, raw: &chorus::client::RawDelivery, subscription: u64) {
        // Streams are numbered across every subscription the client opens for the user.
        let stream = subscription * 1_000_000 + raw.stream;
        let delivery = RawDelivery { user: user.to_owned(), id: raw.message.id, stream, at: self.now() };
        self.history.lock().unwrap().raw_deliveries.push(delivery);
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub fn history(&self) -> History {
        self.history.lock().unwrap().clone()
    }

    pub fn set_final_mailboxes(&self, mailboxes: Vec<(String, Vec<Observed>)>) {
        self.history.lock().unwrap().final_mailboxes = mailboxes;
    }

    /// Ids each user's subscription delivered.
    pub fn delivered(&self, user: &str) -> BTreeSet<u64> {
        let history = self.history.lock().unwrap();
        history.deliveries.iter().filter(|d| d.user == user).map(|d| d.message.id).collect()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

pub fn user(client: usize) -> String {
    format!("user{client}")
}

#[cfg(madsim)]
fn client_ip(client: usize) -> IpAddr {
    IpAddr::from([10, 0, 1, client as u8 + 1])
}

fn unknown_or_refused(status: &Status, attempts: u32) -> Outcome {
    let text = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => Outcome::Unknown(text),
        // A refusal after a retry may answer the call's own first attempt.
        _ if attempts > 1 => Outcome::Ambiguous(text),
        _ => Outcome::Refused(text),
    }
}

/// Starts `clients` client hosts. Each logs in as its user, keeps a subscription open and
/// performs random operations until the recorder says stop.
#[cfg(madsim)]
pub fn start(
    clients: usize,
    servers: Vec<String>,
    seed: u64,
    recorder: &Recorder,
) -> Vec<madsim::task::JoinHandle<()>> {
    let handle = Handle::current();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let host = handle.create_node().name(format!("client-{client}")).ip(client_ip(client)).build();
        let servers = servers.clone();
        let recorder = recorder.clone();
        tasks.push(host.spawn(async move {
            run_client(client, clients, servers, ClientSecurity::Insecure, seed, recorder).await;
        }));
    }
    tasks
}

async fn call_until_done<T, F, Fut>(client: &mut ClusterClient, recorder: &Recorder, mut attempt: F) -> Option<T>
where
    F: FnMut(chorus::client::v1::chat_client::ChatClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
{
    // Setup calls (account, login) are retried until they work: without them the client
    // has nothing to do.
    loop {
        match client.call(&mut attempt).await {
            Ok(value) => return Some(value),
            Err(status) if status.code() == Code::AlreadyExists => return None,
            Err(_) if recorder.stopping() => return None,
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Client number `client` of `clients`: creates and logs in as its user, keeps a
/// subscription open, and performs random operations (drawn from `seed`) until the
/// recorder says stop, recording each.
pub async fn run_client(
    client: usize,
    clients: usize,
    servers: Vec<String>,
    security: ClientSecurity,
    seed: u64,
    recorder: Recorder,
) {
    let me = user(client);
    let password = format!("{me}-password");
    let policy = RetryPolicy { call_deadline: CALL_DEADLINE, ..RetryPolicy::default() };
    let mut rpc = ClusterClient::new(&servers, policy, security.clone()).expect("valid servers");
    let mut rng = StdRng::seed_from_u64(seed ^ (client as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));

    let create = CreateAccountRequest { username: me.clone(), password: password.clone() };
    call_until_done(&mut rpc, &recorder, |mut chat| {
        let request = create.clone();
        async move { chat.create_account(request).await }
    })
    .await;
    let login = LoginRequest { username: me.clone(), password: password.clone() };
    let Some(session) = call_until_done(&mut rpc, &recorder, |mut chat| {
        let request = login.clone();
        async move { chat.login(request).await }
    })
    .await
    else {
        return;
    };
    let token = session.token;

    // The subscription, on the same host: every message for this user, once, in order.
    {
        let servers = servers.clone();
        let token = token.clone();
        let recorder = recorder.clone();
        let me = me.clone();
        // It runs until the simulation (or the client's runtime) ends: the scenario waits
        // for it to catch up with the final mailbox before judging it.
        tokio::task::spawn(async move {
            let mut client = ClusterClient::new(&servers, policy, security).expect("valid servers");
            let mut after = 0;
            for subscriptions in 0u64.. {
                let mut subscription = client.subscribe(token.clone(), after);
                // Every message the servers send is recorded raw; what the library passes
                // on (the fresh ones) is the user's delivery.
                while let Ok(raw) = subscription.next_raw().await {
                    recorder.deliver_raw(&me, &raw, subscriptions);
                    if raw.fresh {
                        recorder.deliver(&me, &raw.message);
                        after = raw.message.id;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    let mut sent = 0u64;
    let mut sends = SendSequence::new();
    let mut known_ids: Vec<u64> = Vec::new();
    while !recorder.stopping() {
        let roll = rng.random_range(0..100);
        if roll < 60 {
            let to = user(rng.random_range(0..clients));
            let body = format!("{me}#{sent}");
            sent += 1;
            let request: SendMessageRequest = sends.request(to.clone(), body.clone());
            let op = recorder.invoke(client, Op::Send { from: me.clone(), to, body });
            let result = chorus::cluster_call_as!(rpc, send_message, request.clone(), token);
            // The workload never retries a send after its call returns (an unknown outcome
            // stays unknown in the history), so every answer is acknowledged next time.
            sends.finish(request.sequence);
            let outcome = match result {
                Ok(response) => Outcome::Sent { message_id: response.message_id },
                Err(status) => unknown_or_refused(&status, rpc.last_call_attempts()),
            };
            recorder.complete(op, outcome);
        } else if roll < 75 {
            let request = HistoryRequest { peer: None, before_id: 0, limit: 1000 };
            let op = recorder.invoke(client, Op::ReadMailbox { user: me.clone() });
            let result = chorus::cluster_call_as!(rpc, history, request, token);
            let outcome = match result {
                // A full page would not be the whole mailbox: not an atomic read of it.
                Ok(page) if page.messages.len() >= 1000 => Outcome::Unknown("mailbox too large to read at once".into()),
                Ok(page) => {
                    let mut mailbox: Vec<Observed> =
                        page.messages.iter().filter(|m| m.to == me).map(observed).collect();
                    mailbox.sort_by_key(|m| m.id);
                    known_ids = mailbox.iter().map(|m| m.id).collect();
                    Outcome::Messages(mailbox)
                }
                Err(status) => unknown_or_refused(&status, rpc.last_call_attempts()),
            };
            recorder.complete(op, outcome);
        } else if roll < 82 {
            let request = ReadMessagesRequest { limit: rng.random_range(1..5), request_id: new_request_id() };
            let op = recorder.invoke(client, Op::ReadUnread { user: me.clone() });
            let result = chorus::cluster_call_as!(rpc, read_messages, request, token);
            let outcome = match result {
                Ok(response) => Outcome::Messages(response.messages.iter().map(observed).collect()),
                Err(status) => unknown_or_refused(&status, rpc.last_call_attempts()),
            };
            recorder.complete(op, outcome);
        } else if roll < 87 && !known_ids.is_empty() {
            let id = known_ids.remove(rng.random_range(0..known_ids.len()));
            let request = DeleteMessagesRequest { ids: vec![id] };
            let op = recorder.invoke(client, Op::Delete { user: me.clone(), ids: vec![id] });
            let result = chorus::cluster_call_as!(rpc, delete_messages, request, token);
            let outcome = match result {
                Ok(_) => Outcome::Deleted,
                Err(status) => unknown_or_refused(&status, rpc.last_call_attempts()),
            };
            recorder.complete(op, outcome);
        } else if roll < 94 {
            let name = format!("acct{}", rng.random_range(0..CONTESTED_ACCOUNTS));
            let request = CreateAccountRequest { username: name.clone(), password: "contested-password".into() };
            let op = recorder.invoke(client, Op::CreateAccount { user: name });
            let result = chorus::cluster_call!(rpc, create_account, request);
            let attempts = rpc.last_call_attempts();
            let outcome = match result {
                Ok(_) => Outcome::Created,
                Err(status) if status.code() == Code::AlreadyExists && attempts == 1 => Outcome::AlreadyExists,
                Err(status) => unknown_or_refused(&status, attempts),
            };
            recorder.complete(op, outcome);
        } else {
            let name = format!("acct{}", rng.random_range(0..CONTESTED_ACCOUNTS));
            let request = ListAccountsRequest { pattern: name.clone(), page_size: 10, page_token: String::new() };
            let op = recorder.invoke(client, Op::AccountExists { user: name.clone() });
            let result = chorus::cluster_call!(rpc, list_accounts, request);
            let outcome = match result {
                Ok(response) => Outcome::Exists(response.usernames.contains(&name)),
                Err(status) => unknown_or_refused(&status, rpc.last_call_attempts()),
            };
            recorder.complete(op, outcome);
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..200))).await;
    }
}

/// Every user's mailbox, read from the leader (linearizable), once the faults are over,
/// by an auditor on a simulated host of its own.
#[cfg(madsim)]
pub async fn final_mailboxes(servers: &[String], clients: usize) -> Result<Vec<(String, Vec<Observed>)>, Status> {
    let host = Handle::current().create_node().name("auditor").ip(IpAddr::from([10, 0, 3, 1])).build();
    let servers = servers.to_vec();
    host.spawn(async move { read_final_mailboxes(servers, ClientSecurity::Insecure, clients).await })
        .await
        .expect("auditor task")
}

/// Every user's mailbox, read from the leader (linearizable): the auditor's reads.
pub async fn read_final_mailboxes(
    servers: Vec<String>,
    security: ClientSecurity,
    clients: usize,
) -> Result<Vec<(String, Vec<Observed>)>, Status> {
    let policy = RetryPolicy { call_deadline: Duration::from_secs(60), ..RetryPolicy::default() };
    let mut rpc = ClusterClient::new(&servers, policy, security).expect("valid servers");
    let mut mailboxes = Vec::new();
    for client in 0..clients {
        let me = user(client);
        let login = LoginRequest { username: me.clone(), password: format!("{me}-password") };
        let token = match chorus::cluster_call!(rpc, login, login) {
            Ok(session) => session.token,
            // The client never got to create its account.
            Err(status) if status.code() == Code::Unauthenticated => continue,
            Err(status) => return Err(status),
        };
        let mut mailbox = Vec::new();
        let mut before_id = 0;
        loop {
            let request = HistoryRequest { peer: None, before_id, limit: 1000 };
            let page = chorus::cluster_call_as!(rpc, history, request, token)?;
            mailbox.extend(page.messages.iter().filter(|m| m.to == me).map(observed));
            if page.next_before_id == 0 {
                break;
            }
            before_id = page.next_before_id;
        }
        mailbox.sort_by_key(|m| m.id);
        mailboxes.push((me, mailbox));
    }
    Ok(mailboxes)
}
