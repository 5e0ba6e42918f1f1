//! The client library, used by the CLI, the demo, the simulations and the benchmarks.
//!
//! A [`ClusterClient`] holds the cluster's client addresses and finds the leader: it sends
//! each call to the node it believes leads, follows the leader hint a follower answers
//! with, and on UNAVAILABLE, timeouts or broken connections tries the next node, backing
//! off exponentially with jitter, until the call's overall deadline. A retried send carries
//! the same `client_msg_id`, so the cluster stores it once however often it is retried.

mod subscription;

use std::future::Future;
use std::time::Duration;

use chorus_proto::v1::chat_client::ChatClient as GrpcChatClient;
use chorus_proto::v1::cluster_client::ClusterClient as GrpcClusterClient;
use rand::rngs::StdRng;
use rand::{Rng, RngCore};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub use chorus_proto::v1;
pub use subscription::Subscription;

use crate::server::status::{LEADER_ADDRESS_KEY, LEADER_ID_KEY};

/// Calls one chat RPC through [`ClusterClient::call`] (leader-finding, failover, retries),
/// cloning `$request` for each attempt: `cluster_call!(client, send_message, request)`.
#[macro_export]
macro_rules! cluster_call {
    ($client:expr, $method:ident, $request:expr) => {{
        let request = $request;
        $client
            .call(|mut chat| {
                let request = request.clone();
                async move { chat.$method(request).await }
            })
            .await
    }};
}

/// How long to wait for a TCP connection to one node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How hard a client tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Overall deadline of one call, across every node tried.
    pub call_deadline: Duration,
    /// Deadline of one attempt on one node. Above the server's own proposal timeout (10 s),
    /// so that a slow commit is reported by the server rather than cut off here.
    pub attempt_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            call_deadline: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(12),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no servers given: pass --servers HOST:PORT[,HOST:PORT...]")]
    NoServers,
    #[error("server address {address:?} is not valid: {reason}")]
    BadAddress { address: String, reason: String },
}

/// A client of the whole cluster.
pub struct ClusterClient {
    servers: Vec<String>,
    endpoints: Vec<Endpoint>,
    channels: Vec<Option<Channel>>,
    /// The node believed to lead.
    preferred: usize,
    policy: RetryPolicy,
    /// Jitter for backoff; seeded through the seam, so simulations replay it.
    rng: StdRng,
    /// The leader named by the last refusal, for the subscription to follow.
    last_hint: Option<usize>,
    /// How many attempts the last `call` made: a refusal after a retry may be the echo of
    /// the call's own first attempt (a retried create finding the account it created).
    last_call_attempts: u32,
}

impl ClusterClient {
    /// A client of the nodes at `servers` (each `HOST:PORT` or a URL). Connections are made
    /// when first needed.
    pub fn new(servers: &[String], policy: RetryPolicy) -> Result<Self, ClientError> {
        if servers.is_empty() {
            return Err(ClientError::NoServers);
        }
        let endpoints = servers.iter().map(|server| endpoint(server)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            servers: servers.to_vec(),
            channels: vec![None; endpoints.len()],
            endpoints,
            preferred: 0,
            policy,
            rng: crate::seam::os_seeded_rng(),
            last_hint: None,
            last_call_attempts: 0,
        })
    }

    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// The node the client currently talks to.
    pub fn current_server(&self) -> &str {
        &self.servers[self.preferred]
    }

    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// How many attempts the last call made (1 when the first node answered).
    pub fn last_call_attempts(&self) -> u32 {
        self.last_call_attempts
    }

    fn channel(&mut self, server: usize) -> Channel {
        self.channels[server].get_or_insert_with(|| self.endpoints[server].connect_lazy()).clone()
    }

    /// The chat API of one node, without failover: for callers that want a specific node.
    pub fn chat_of(&mut self, server: usize) -> GrpcChatClient<Channel> {
        GrpcChatClient::new(self.channel(server))
    }

    /// The cluster API of one node.
    pub fn cluster_of(&mut self, server: usize) -> GrpcClusterClient<Channel> {
        GrpcClusterClient::new(self.channel(server))
    }

    /// Runs `attempt` against the leader, failing over as described in the module docs.
    /// Returns the first answer that is not "try elsewhere", or UNAVAILABLE once the
    /// deadline passes.
    pub async fn call<T, F, Fut>(&mut self, mut attempt: F) -> Result<T, Status>
    where
        F: FnMut(GrpcChatClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = crate::seam::monotonic_now() + self.policy.call_deadline;
        let mut backoff = self.policy.backoff_min;
        let mut tried_since_pause = 0;
        let mut last_failure = String::new();
        self.last_call_attempts = 0;
        loop {
            let now = crate::seam::monotonic_now();
            if now >= deadline {
                return Err(Status::unavailable(format!(
                    "no node could serve the request within {} s (last: {last_failure}); if it was a change, it may or may not have taken effect",
                    self.policy.call_deadline.as_secs()
                )));
            }
            let server = self.preferred;
            let client = self.chat_of(server);
            let budget = self.policy.attempt_timeout.min(deadline - now);
            self.last_call_attempts += 1;
            let result = match tokio::time::timeout(budget, attempt(client)).await {
                Ok(result) => result,
                Err(_) => Err(Status::deadline_exceeded("the node did not answer in time")),
            };
            let status = match result {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if !retryable(&status) => return Err(status),
                Err(status) => status,
            };
            last_failure = format!("{}: {}", self.servers[server], status.message());
            tried_since_pause += 1;
            // Follow a leader hint at once; otherwise try the next node.
            self.preferred = match self.leader_hint(&status) {
                Some(leader) if leader != server => leader,
                _ => (server + 1) % self.servers.len(),
            };
            if tried_since_pause >= self.servers.len() {
                // As many refusals in a row as there are nodes (an election is probably
                // under way, or hints are stale): wait a little before going round again.
                let pause = self.jittered(backoff).min(deadline.saturating_duration_since(now));
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(self.policy.backoff_max);
                tried_since_pause = 0;
            }
        }
    }

    /// The server a NOT-the-leader answer points to, adding it if it is not known yet.
    fn leader_hint(&mut self, status: &Status) -> Option<usize> {
        let metadata = status.metadata();
        metadata.get(LEADER_ID_KEY)?;
        let address = metadata.get(LEADER_ADDRESS_KEY)?.to_str().ok()?.to_owned();
        if let Some(index) = self.servers.iter().position(|s| *s == address || s.ends_with(&format!("//{address}"))) {
            return Some(index);
        }
        let endpoint = endpoint(&address).ok()?;
        self.servers.push(address);
        self.endpoints.push(endpoint);
        self.channels.push(None);
        Some(self.servers.len() - 1)
    }

    /// A subscription to `token`'s incoming messages after `after_id`, resumed on another
    /// node whenever its node goes away.
    pub fn subscribe(&mut self, token: String, after_id: u64) -> Subscription<'_> {
        Subscription::new(self, token, after_id)
    }

    fn next_server(&mut self) {
        self.preferred = (self.preferred + 1) % self.servers.len();
    }

    /// A pause of `backoff` plus up to half of it again, at random.
    fn jittered(&mut self, backoff: Duration) -> Duration {
        let jitter_ms = self.rng.random_range(0..=backoff.as_millis() as u64 / 2);
        backoff + Duration::from_millis(jitter_ms)
    }
}

/// Answers that mean "this node cannot serve it now; another might": it is not the
/// leader, it is stopping, the connection failed or broke (UNKNOWN is how a broken HTTP/2
/// stream surfaces), or it did not answer in time.
fn retryable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown)
}

/// A fresh client_msg_id: the time of this first attempt (which lets the server bound how
/// long it remembers ids) and 128 random bits, so two messages never share one by chance.
/// Retries of the same message must reuse it unchanged.
pub fn new_client_msg_id() -> String {
    let mut bytes = [0u8; 16];
    crate::seam::os_seeded_rng().fill_bytes(&mut bytes);
    let random: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{random}", crate::seam::unix_time_ms())
}

/// A fresh id for a read, reused by its retries (see `ReadMessagesRequest.request_id`).
pub fn new_request_id() -> String {
    let mut bytes = [0u8; 12];
    crate::seam::os_seeded_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn endpoint(server: &str) -> Result<Endpoint, ClientError> {
    let url = if server.contains("://") { server.to_owned() } else { format!("http://{server}") };
    let bad = |reason: String| ClientError::BadAddress { address: server.to_owned(), reason };
    let endpoint = Endpoint::from_shared(url).map_err(|e| bad(e.to_string()))?;
    if endpoint.uri().port_u16().is_none() {
        return Err(bad("it has no port (expected HOST:PORT)".to_owned()));
    }
    Ok(endpoint.connect_timeout(CONNECT_TIMEOUT))
}
