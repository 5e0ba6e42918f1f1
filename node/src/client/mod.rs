//! The client library, used by the CLI, the demo, the simulations and the benchmarks.
//!
//! A [`ClusterClient`] holds the cluster's client addresses and finds the leader: it sends
//! each call to the node it believes leads, follows the leader hint a follower answers
//! with, and on UNAVAILABLE, timeouts or broken connections tries the next node, backing
//! off exponentially with jitter, until the call's overall deadline. A retried send carries
//! the same session and sequence ([`SendSequence`]), so the cluster stores it once however
//! often it is retried. What to do with an error is read from the `google.rpc.ErrorInfo`
//! every Chorus error carries (`chorus_proto::wire`), never from its message.

mod send_sequence;
mod subscription;

use std::future::Future;
use std::time::Duration;

use chorus_proto::v1::chat_client::ChatClient as GrpcChatClient;
use chorus_proto::v1::cluster_client::ClusterClient as GrpcClusterClient;
use chorus_proto::wire;
use rand::RngCore;
use rand::rngs::StdRng;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::backoff::Backoff;

pub use chorus_proto::v1;
pub use send_sequence::SendSequence;
pub use subscription::{RawDelivery, Subscription};

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

/// Calls one RPC that acts as the session of `$token` through [`ClusterClient::call`]: the
/// token goes in each attempt's `authorization` metadata ([`authorized`]):
/// `cluster_call_as!(client, send_message, request, token)`.
#[macro_export]
macro_rules! cluster_call_as {
    ($client:expr, $method:ident, $request:expr, $token:expr) => {{
        let request = $request;
        let token: &str = &$token;
        $client
            .call(|mut chat| {
                let request = $crate::client::authorized(request.clone(), token);
                async move { chat.$method(request?).await }
            })
            .await
    }};
}

/// `message` as a call that acts as the session of `token`: the token travels in the
/// request's `authorization` metadata (`Bearer <token>`), never in its body, so nothing
/// that logs or traces requests can capture it. A token that cannot be a header value
/// (Login's are hex) names no session, and is refused here as a node would refuse it.
pub fn authorized<T>(message: T, token: &str) -> Result<tonic::Request<T>, Status> {
    let value =
        format!("{}{token}", wire::BEARER_PREFIX).parse::<tonic::metadata::AsciiMetadataValue>().map_err(|_| {
            let details = ErrorDetails::with_error_info(
                wire::SESSION_INVALID,
                wire::ERROR_DOMAIN,
                std::collections::HashMap::new(),
            );
            Status::with_error_details(Code::Unauthenticated, "the session token is not printable ASCII", details)
        })?;
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(wire::AUTHORIZATION, value);
    Ok(request)
}

/// How long to wait for a TCP connection to one node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// While a call or a stream is open, the client pings its node this often over HTTP/2 and
/// gives the connection up when no answer comes within the timeout: a node whose machine
/// died (no FIN, no RST) is noticed in under a minute, and a subscription resumes elsewhere.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest reply the client accepts. A node never sends more than half of it
/// (`REPLY_BYTES_MAX` in the server), so a reply within the protocol always fits; it is
/// tonic's default, set here so that the two stay in step deliberately.
pub const REPLY_DECODE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// What an error answer says about the call it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorVerdict {
    /// Another node (or this one, later) may serve it. `applied_maybe`: the attempt may
    /// have taken effect; `leader`: the client address of the leader, if the node named it;
    /// `retry_after`: the node's advice on when to retry.
    Retry { applied_maybe: bool, leader: Option<String>, retry_after: Option<Duration> },
    /// The answer to the request itself (a refusal, or a reason nobody else would decide
    /// differently): give it to the caller.
    Final,
}

/// Reads an error answer: Chorus's `ErrorInfo` reason when there is one, else the code (a
/// transport failure or a passed deadline, whose outcome is unknown).
pub fn error_verdict(status: &Status) -> ErrorVerdict {
    let retry_after = status.get_details_retry_info().and_then(|info| info.retry_delay);
    match status.get_details_error_info().filter(|info| info.domain == wire::ERROR_DOMAIN) {
        Some(info) => match info.reason.as_str() {
            wire::NOT_LEADER => ErrorVerdict::Retry {
                applied_maybe: false,
                leader: info.metadata.get(wire::LEADER_ADDRESS).filter(|a| !a.is_empty()).cloned(),
                retry_after,
            },
            wire::NOT_APPLIED | wire::SHUTTING_DOWN | wire::OVERLOADED | wire::RATE_LIMITED => {
                ErrorVerdict::Retry { applied_maybe: false, leader: None, retry_after }
            }
            wire::OUTCOME_UNKNOWN | wire::STORAGE_FAILURE => {
                ErrorVerdict::Retry { applied_maybe: true, leader: None, retry_after }
            }
            _ => ErrorVerdict::Final,
        },
        // UNKNOWN is how a broken HTTP/2 stream surfaces; CANCELLED is how real tonic
        // reports its own timeout.
        None if matches!(
            status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        ) =>
        {
            ErrorVerdict::Retry { applied_maybe: true, leader: None, retry_after }
        }
        None => ErrorVerdict::Final,
    }
}

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

/// How a client reaches the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientSecurity {
    /// TLS, trusting only the cluster's CA (`ca_pem`, from `chorus certs init`): a node is
    /// verified by the address the client dials, as its certificate names it. `identity`:
    /// a client certificate from the same CA, a cluster credential for operators.
    Tls { ca_pem: String, identity: Option<ClientIdentity> },
    /// Plaintext, for a cluster started with `--insecure`.
    Insecure,
}

/// A client certificate and its private key, in PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ClientIdentity {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no servers given: pass --servers HOST:PORT[,HOST:PORT...]")]
    NoServers,
    #[error("server address {address:?} is not valid: {source}")]
    BadAddress { address: String, source: tonic::transport::Error },
    #[error("server address {address:?} has no port (expected HOST:PORT)")]
    NoPort { address: String },
    #[error("retry backoff from {min:?} to {max:?}: it must start above zero and not above its maximum")]
    BadBackoff { min: Duration, max: Duration },
    #[error("server address {address:?} says {scheme}://, but the client runs {expected}")]
    SchemeMismatch { address: String, scheme: String, expected: &'static str },
    #[error("TLS does not exist in the simulation: its clients run insecure")]
    TlsNotSimulated,
}

/// A client of the whole cluster.
pub struct ClusterClient {
    security: ClientSecurity,
    servers: Vec<String>,
    endpoints: Vec<Endpoint>,
    channels: Vec<Option<Channel>>,
    /// The node believed to lead.
    preferred: usize,
    policy: RetryPolicy,
    /// Jitter for backoff; seeded through the seam, so simulations replay it.
    rng: StdRng,
    /// How many attempts the last `call` made: a refusal after a retry may be the echo of
    /// the call's own first attempt (a retried create finding the account it created).
    last_call_attempts: u32,
}

impl ClusterClient {
    /// A client of the nodes at `servers` (each `HOST:PORT` or a URL). Connections are made
    /// when first needed.
    pub fn new(servers: &[String], policy: RetryPolicy, security: ClientSecurity) -> Result<Self, ClientError> {
        if servers.is_empty() {
            return Err(ClientError::NoServers);
        }
        if policy.backoff_min.is_zero() || policy.backoff_min > policy.backoff_max {
            return Err(ClientError::BadBackoff { min: policy.backoff_min, max: policy.backoff_max });
        }
        let endpoints = servers.iter().map(|server| endpoint(server, &security)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            security,
            servers: servers.to_vec(),
            channels: vec![None; endpoints.len()],
            endpoints,
            preferred: 0,
            policy,
            rng: crate::seam::os_seeded_rng(),
            last_call_attempts: 0,
        })
    }

    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    pub fn security(&self) -> &ClientSecurity {
        &self.security
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
        GrpcChatClient::new(self.channel(server)).max_decoding_message_size(REPLY_DECODE_BYTES_MAX)
    }

    /// The cluster API of one node.
    pub fn cluster_of(&mut self, server: usize) -> GrpcClusterClient<Channel> {
        GrpcClusterClient::new(self.channel(server))
    }

    /// Runs `attempt` against the leader, failing over as described in the module docs.
    /// Returns the first answer that is not "try elsewhere", or, once the deadline passes,
    /// UNAVAILABLE with reason CLUSTER_UNREACHABLE saying whether any attempt may have
    /// taken effect.
    pub async fn call<T, F, Fut>(&mut self, mut attempt: F) -> Result<T, Status>
    where
        F: FnMut(GrpcChatClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = crate::seam::monotonic_now();
        // A deadline too far to represent is no deadline: a century stands for it.
        let deadline = started
            .checked_add(self.policy.call_deadline)
            .unwrap_or_else(|| started + Duration::from_secs(100 * 365 * 24 * 3600));
        let mut backoff = self.backoff();
        let mut tried_since_pause = 0;
        let mut unserved = Unserved::default();
        // Nodes that gave no answer at all in this call (no connection, or silence), with
        // the attempt that found them so: the ones that answer are tried again before them,
        // so that a client cut off with a minority hears that minority's answer instead of
        // waiting out every dead node's connect timeout in turn; and once all others are
        // silent, the one found so longest ago is tried, so that each gets its turn again.
        let mut silent: Vec<Option<u32>> = vec![None; self.servers.len()];
        let mut applied_maybe = false;
        self.last_call_attempts = 0;
        loop {
            let now = crate::seam::monotonic_now();
            if now >= deadline {
                return Err(unserved.cluster_unreachable(self.policy.call_deadline, applied_maybe));
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
                Err(status) => status,
            };
            let ErrorVerdict::Retry { applied_maybe: maybe, leader, retry_after } = error_verdict(&status) else {
                // A definite answer to this attempt says nothing of an earlier one that
                // may have taken effect (a send whose session ended in between is refused
                // now, and may be stored): the call's outcome stays unknown.
                return Err(if applied_maybe { outcome_left_unknown(status) } else { status });
            };
            applied_maybe |= maybe;
            let answered = unserved.note(&self.servers[server], &status);
            silent.resize(self.servers.len(), None);
            silent[server] = (!answered).then_some(self.last_call_attempts);
            tried_since_pause += 1;
            // Follow a leader hint at once; otherwise try the next node not known to be
            // silent (any next node, once all are).
            self.preferred = match leader.and_then(|address| self.server_index(&address)) {
                Some(leader) if leader != server => leader,
                _ => next_not_silent(server, &silent),
            };
            let pause = match retry_after {
                // The node said when: the next attempt goes no sooner, wherever it goes; and
                // a node that keeps saying so is asked less and less often (with jitter), so
                // that many clients turned away at once do not come back at once.
                // (The pause never passes the call's deadline, below.)
                Some(delay) => Some(delay.max(backoff.next_pause())),
                // As many refusals in a row as there are nodes (an election is probably
                // under way, or hints are stale): wait a little before going round again.
                None if tried_since_pause >= self.servers.len() => Some(backoff.next_pause()),
                None => None,
            };
            if let Some(pause) = pause {
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(now))).await;
                tried_since_pause = 0;
            }
        }
    }

    /// The index of the server at `address`, adding it if it is not known yet (a leader
    /// hint may name a member the client was not given).
    fn server_index(&mut self, address: &str) -> Option<usize> {
        if let Some(index) = self.servers.iter().position(|s| *s == address || s.ends_with(&format!("//{address}"))) {
            return Some(index);
        }
        let endpoint = endpoint(address, &self.security).ok()?;
        self.servers.push(address.to_owned());
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

    /// A fresh backoff of the policy's delays, its jitter drawn from this client's seed.
    fn backoff(&mut self) -> Backoff {
        Backoff::new(self.policy.backoff_min, self.policy.backoff_max, self.rng.next_u64())
    }
}

/// Whether a call's error leaves open whether it took effect: the client library's own
/// CLUSTER_UNREACHABLE when some attempt may have been applied, or any error after such an
/// attempt (its `ErrorInfo` says `outcome = unknown`). Other errors are definite answers.
pub fn outcome_unknown(status: &Status) -> bool {
    status.get_details_error_info().is_some_and(|info| {
        let outcome = info.metadata.get(wire::OUTCOME).map(String::as_str);
        info.domain == wire::ERROR_DOMAIN
            && (outcome == Some("unknown")
                || (info.reason == wire::CLUSTER_UNREACHABLE && outcome != Some("not_applied")))
    })
}

/// `status`, the last answer of a call an earlier attempt of which may have taken effect:
/// the same code and reason, marked `outcome = unknown`.
fn outcome_left_unknown(status: Status) -> Status {
    let info = status.get_details_error_info().filter(|info| info.domain == wire::ERROR_DOMAIN);
    let (reason, mut metadata) = match info {
        Some(info) => (info.reason, info.metadata),
        None => (wire::OUTCOME_UNKNOWN.to_owned(), std::collections::HashMap::new()),
    };
    metadata.insert(wire::OUTCOME.to_owned(), "unknown".to_owned());
    let message = format!("{}; an earlier attempt of this call may have taken effect", status.message());
    let details = ErrorDetails::with_error_info(reason, wire::ERROR_DOMAIN, metadata);
    Status::with_error_details(status.code(), message, details)
}

/// The server after `server` in turn that is not marked `silent` (with the attempt that
/// found it so), or, if every other is, the one found silent longest ago.
fn next_not_silent(server: usize, silent: &[Option<u32>]) -> usize {
    let count = silent.len();
    let others = (1..count).map(|step| (server + step) % count);
    others
        .clone()
        .find(|&other| silent[other].is_none())
        .unwrap_or_else(|| others.min_by_key(|&other| silent[other]).unwrap_or(server))
}

/// What the nodes said while a call went unserved, for the answer that ends it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Unserved {
    /// The last failure, with its node.
    last: String,
    /// Some node answered that it knows no leader.
    leaderless: bool,
    /// Some node answered at all (rather than no connection, or no answer in time).
    answered: bool,
}

impl Unserved {
    /// Notes the failed attempt on `server`; returns whether the node answered (with a
    /// Chorus refusal, rather than no connection or no answer in time).
    pub(crate) fn note(&mut self, server: &str, status: &Status) -> bool {
        self.last = format!("{server}: {}", status.message());
        let Some(info) = status.get_details_error_info().filter(|info| info.domain == wire::ERROR_DOMAIN) else {
            return false;
        };
        self.answered = true;
        // The latest answer decides: a node that knew no leader a moment ago (an election)
        // and names one now says nothing of a missing majority.
        let hint = info.metadata.get(wire::LEADER_ADDRESS).is_some_and(|a| !a.is_empty());
        self.leaderless = info.reason == wire::NOT_LEADER && !hint;
        true
    }

    /// Notes that a node said, in its own words (the end of a stream), that it knows no
    /// leader.
    pub(crate) fn note_leaderless(&mut self) {
        self.leaderless = true;
    }

    /// Notes an attempt on `server` that got no answer in time.
    pub(crate) fn note_silence(&mut self, server: &str) {
        self.last = format!("{server}: no answer");
    }

    /// The client's own answer when no node served a call within `deadline`: UNAVAILABLE
    /// with reason CLUSTER_UNREACHABLE, its message starting "cluster unreachable" and
    /// saying why as far as the client can tell. When the last node to answer knew no
    /// leader at the end of a whole deadline, it is cut off from a majority (an election
    /// takes well under one), so "no majority" is what a person should read.
    pub(crate) fn cluster_unreachable(&self, deadline: Duration, applied_maybe: bool) -> Status {
        let (outcome, consequence) = if applied_maybe {
            ("unknown", "if it was a change, it may or may not have taken effect")
        } else {
            ("not_applied", "it was not applied")
        };
        let seconds = deadline.as_secs();
        let last = &self.last;
        let message = if self.leaderless {
            format!(
                "cluster unreachable: no majority. After {seconds} s the last node to answer knew no leader: \
                 fewer than a majority of the members can reach each other (last: {last}); {consequence}"
            )
        } else if self.answered {
            format!(
                "cluster unreachable: no node could serve the request within {seconds} s (last: {last}); {consequence}"
            )
        } else {
            format!("cluster unreachable: no node answered within {seconds} s (last: {last}); {consequence}")
        };
        let metadata = std::collections::HashMap::from([(wire::OUTCOME.to_owned(), outcome.to_owned())]);
        let details = ErrorDetails::with_error_info(wire::CLUSTER_UNREACHABLE, wire::ERROR_DOMAIN, metadata);
        Status::with_error_details(Code::Unavailable, message, details)
    }
}

/// A fresh id for a read, reused by its retries (see `ReadMessagesRequest.request_id`).
pub fn new_request_id() -> String {
    let mut bytes = [0u8; 12];
    crate::seam::os_seeded_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The endpoint of one node (`HOST:PORT`, or a URL whose scheme agrees with `security`).
pub fn endpoint(server: &str, security: &ClientSecurity) -> Result<Endpoint, ClientError> {
    let expected = match security {
        ClientSecurity::Tls { .. } => "https",
        ClientSecurity::Insecure => "http",
    };
    let url = match server.split_once("://") {
        Some((scheme, _)) if scheme != expected => {
            let running = if expected == "https" { "with TLS" } else { "insecure (without TLS)" };
            return Err(ClientError::SchemeMismatch {
                address: server.to_owned(),
                scheme: scheme.to_owned(),
                expected: running,
            });
        }
        Some(_) => server.to_owned(),
        None => format!("{expected}://{server}"),
    };
    let address = server.to_owned();
    let endpoint = Endpoint::from_shared(url).map_err(|source| ClientError::BadAddress { address, source })?;
    if endpoint.uri().port_u16().is_none() {
        return Err(ClientError::NoPort { address: server.to_owned() });
    }
    let endpoint = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    match security {
        ClientSecurity::Insecure => Ok(endpoint),
        #[cfg(not(madsim))]
        ClientSecurity::Tls { ca_pem, identity } => {
            let identity = identity.as_ref().map(|id| (id.cert_pem.as_str(), id.key_pem.as_str()));
            endpoint
                .tls_config(crate::tls::client_tls_config(ca_pem, identity))
                .map_err(|source| ClientError::BadAddress { address: server.to_owned(), source })
        }
        #[cfg(madsim)]
        ClientSecurity::Tls { .. } => Err(ClientError::TlsNotSimulated),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn answer(code: Code, reason: &str) -> Status {
        let details = ErrorDetails::with_error_info(reason, wire::ERROR_DOMAIN, HashMap::new());
        Status::with_error_details(code, format!("{reason} from the node"), details)
    }

    /// Runs one call whose attempts get `answers` in turn; returns its error.
    async fn call_answered(answers: Vec<Status>) -> Status {
        let policy = RetryPolicy { backoff_min: Duration::from_millis(1), ..RetryPolicy::default() };
        let mut client = ClusterClient::new(&["127.0.0.1:9".to_owned()], policy, ClientSecurity::Insecure).unwrap();
        let mut answers = answers.into_iter();
        let result: Result<(), Status> = client
            .call(|_| {
                let answer = answers.next().expect("no more attempts than answers");
                async move { Err(answer) }
            })
            .await;
        result.unwrap_err()
    }

    #[test]
    fn the_next_node_tried_is_one_that_answered_before_one_that_did_not() {
        assert_eq!(next_not_silent(0, &[None, Some(1), None]), 2, "1 was silent: 2 next");
        assert_eq!(next_not_silent(2, &[None, Some(1), None]), 0);
        assert_eq!(next_not_silent(3, &[None, Some(1), Some(2), None]), 0);
        assert_eq!(next_not_silent(0, &[None]), 0, "a client of one node");
        // Every other is silent: the one found so longest ago, so that each gets its turn.
        assert_eq!(next_not_silent(0, &[None, Some(5), Some(2), Some(9)]), 2);
        assert_eq!(next_not_silent(4, &[Some(3), Some(4), Some(1), Some(2), None]), 2);
        // A client cut off with one answering node (4) goes round the silent ones in turn.
        let mut silent = vec![Some(1), Some(2), Some(3), Some(4), None];
        let mut probed = Vec::new();
        for attempt in 5..13 {
            let next = next_not_silent(4, &silent);
            probed.push(next);
            silent[next] = Some(attempt);
        }
        assert_eq!(probed, [0, 1, 2, 3, 0, 1, 2, 3]);
    }

    /// The answer at the deadline says why as far as the client can tell, and says
    /// "no majority" only when a node that answered knew no leader.
    #[test]
    fn an_unserved_call_says_whether_a_majority_is_missing() {
        let no_leader = answer(Code::Unavailable, wire::NOT_LEADER);
        let mut hint = HashMap::new();
        hint.insert(wire::LEADER_ADDRESS.to_owned(), "10.0.0.3:7003".to_owned());
        let details = ErrorDetails::with_error_info(wire::NOT_LEADER, wire::ERROR_DOMAIN, hint);
        let with_hint = Status::with_error_details(Code::Unavailable, "not the leader", details);
        let silence = Status::unavailable("transport error");
        let message = |statuses: &[&Status]| {
            let mut unserved = Unserved::default();
            for status in statuses {
                unserved.note("node", status);
            }
            unserved.cluster_unreachable(Duration::from_secs(8), false).message().to_owned()
        };
        assert!(message(&[&silence, &no_leader, &silence]).starts_with("cluster unreachable: no majority."));
        assert!(message(&[&with_hint, &silence]).starts_with("cluster unreachable: no node could serve"));
        // An election seen early says nothing once a node names a leader.
        assert!(message(&[&no_leader, &with_hint, &silence]).starts_with("cluster unreachable: no node could serve"));
        assert!(message(&[&silence]).starts_with("cluster unreachable: no node answered within 8 s"));
        let mut unserved = Unserved::default();
        assert!(!unserved.note("node", &silence), "silence is no answer");
        assert!(unserved.note("node", &with_hint), "a refusal is an answer");
    }

    /// A definite refusal after an attempt that may have taken effect leaves the call's
    /// outcome unknown (same code and reason, marked); without such an attempt it is the
    /// definite answer it says.
    #[tokio::test]
    async fn a_refusal_after_a_maybe_applied_attempt_leaves_the_outcome_unknown() {
        let refusal = || answer(Code::Unauthenticated, wire::SESSION_INVALID);
        let after_unknown = call_answered(vec![answer(Code::Unavailable, wire::OUTCOME_UNKNOWN), refusal()]).await;
        assert_eq!(after_unknown.code(), Code::Unauthenticated);
        assert_eq!(after_unknown.get_details_error_info().unwrap().reason, wire::SESSION_INVALID);
        assert!(outcome_unknown(&after_unknown), "{after_unknown:?}");
        let after_not_applied = call_answered(vec![answer(Code::Unavailable, wire::NOT_APPLIED), refusal()]).await;
        assert!(!outcome_unknown(&after_not_applied), "{after_not_applied:?}");
        assert!(!outcome_unknown(&call_answered(vec![refusal()]).await));
    }
}
