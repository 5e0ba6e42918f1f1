//! The client library: connects to a Chorus node and calls the chat API.
//!
//! Given several servers it uses the first one that accepts a connection. (Failing over
//! between nodes mid-session, following leader hints, and retrying with backoff belong to
//! the replicated cluster and come with it.)

use std::time::Duration;

use chorus_proto::v1::chat_client::ChatClient as GrpcChatClient;
use tonic::transport::{Channel, Endpoint};

pub use chorus_proto::v1;

/// How long to wait for a TCP connection to one server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of one unary call.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no servers given: pass --servers HOST:PORT[,HOST:PORT...]")]
    NoServers,
    #[error("server address {address:?} is not valid: {reason}")]
    BadAddress { address: String, reason: String },
    #[error("cannot reach any server ({servers}): {last_error}")]
    Unreachable { servers: String, last_error: String },
}

/// A connection to one node of the cluster.
#[derive(Debug, Clone)]
pub struct ChatClient {
    grpc: GrpcChatClient<Channel>,
    server: String,
}

impl ChatClient {
    /// Connects to the first of `servers` (each `HOST:PORT` or a URL) that answers.
    pub async fn connect(servers: &[String]) -> Result<Self, ClientError> {
        if servers.is_empty() {
            return Err(ClientError::NoServers);
        }
        let mut last_error = String::new();
        for server in servers {
            let endpoint = endpoint(server)?;
            match endpoint.connect().await {
                Ok(channel) => return Ok(Self { grpc: GrpcChatClient::new(channel), server: server.clone() }),
                Err(error) => last_error = format!("{server}: {}", describe_transport_error(&error)),
            }
        }
        Err(ClientError::Unreachable { servers: servers.join(", "), last_error })
    }

    /// The server this client talks to.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The generated gRPC client, for calling the API.
    pub fn grpc(&mut self) -> &mut GrpcChatClient<Channel> {
        &mut self.grpc
    }
}

/// A fresh client_msg_id: the time of this first attempt (which lets the server bound how
/// long it remembers ids) and 128 random bits, so two messages never share one by chance.
/// Retries of the same message must reuse it unchanged.
pub fn new_client_msg_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    crate::seam::os_seeded_rng().fill_bytes(&mut bytes);
    let random: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{random}", crate::seam::unix_time_ms())
}

fn endpoint(server: &str) -> Result<Endpoint, ClientError> {
    let url = if server.contains("://") { server.to_owned() } else { format!("http://{server}") };
    let bad = |reason: String| ClientError::BadAddress { address: server.to_owned(), reason };
    let endpoint = Endpoint::from_shared(url).map_err(|e| bad(e.to_string()))?;
    if endpoint.uri().port_u16().is_none() {
        return Err(bad("it has no port (expected HOST:PORT)".to_owned()));
    }
    Ok(endpoint.connect_timeout(CONNECT_TIMEOUT).timeout(REQUEST_TIMEOUT))
}

/// tonic's transport errors say little at the top level; the cause says what happened.
fn describe_transport_error(error: &tonic::transport::Error) -> String {
    let mut description = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        description = format!("{description}: {cause}");
        source = cause.source();
    }
    description
}
