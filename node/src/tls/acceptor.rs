//! Accepting connections on a node's ports: each connection's handshake runs in a task of
//! its own under a deadline, at most [`HANDSHAKES_MAX`] at once (more wait in the listen
//! backlog), so that a client that opens connections and says nothing holds neither the
//! port nor memory for long. A connection that
//! does not speak what the port speaks (plaintext to a TLS node, TLS to one started with
//! `--insecure`) is refused with a warning that says which, since that is a node or client
//! configured differently from this one.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use tracing::Instrument;

use super::material::{NodeTls, Side};

/// Handshakes under way at once on one port; further connections wait to be accepted.
pub const HANDSHAKES_MAX: usize = 128;
/// Handshakes under way at once from one address (an IPv6 address counts by its /64):
/// beyond, its new connections are closed at once, so that one host cannot take every
/// slot and keep the port from everyone else.
pub const HANDSHAKES_PER_ADDRESS_MAX: usize = 16;
/// Longest a connection may take from its arrival to a completed handshake, and to its
/// first byte (a client that connects and says nothing is let go sooner).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
/// At most one warning about refused connections per this interval (a stranger's flood of
/// connections must not flood the log); the count in `cluster status` has them all.
const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// The first byte of HTTP/2's connection preface ("PRI * HTTP/2.0").
const HTTP2_PREFACE_START: u8 = b'P';

/// What a port expects of a new connection.
#[derive(Clone)]
pub enum Handshake {
    /// Plaintext HTTP/2 (`--insecure`).
    Plain,
    /// A TLS handshake with the node's current material for `side`.
    Tls { tls: Arc<NodeTls>, side: Side },
}

/// What a request's handler may learn of its connection (a request extension).
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub remote: SocketAddr,
    /// The client's certificate chain, verified against the cluster's CA during the
    /// handshake; `None` on plaintext connections and from clients that sent none.
    pub peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// An accepted connection, after its handshake.
pub struct Connection {
    io: Io,
    info: ConnectionInfo,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Connections refused on a node's ports (failed, late or mismatched handshakes), counted in a counter `cluster status` reports.
pub struct Refusals {
    count: Arc<AtomicU64>,
    last_warning: Mutex<Option<tokio::time::Instant>>,
}

impl Refusals {
    pub fn new(count: Arc<AtomicU64>) -> Self {
        Self { count, last_warning: Mutex::new(None) }
    }

    async fn refuse(&self, port: &str, remote: SocketAddr, reason: &str) {
        let refused = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let now = crate::seam::monotonic_now();
        let mut last = self.last_warning.lock().await;
        if last.is_none_or(|at| now.duration_since(at) >= REFUSAL_WARNING_INTERVAL) {
            *last = Some(now);
            tracing::warn!(port, %remote, reason, refused_so_far = refused, "refused a connection");
        } else {
            tracing::debug!(port, %remote, reason, "refused a connection");
        }
    }
}

/// The connections `listener` accepts, once their handshakes complete; refusals are
/// counted in `refusals`. The accepting stops when the stream is dropped (its server
/// stopped).
pub fn incoming(listener: TcpListener, port: &'static str, handshake: Handshake, refusals: Arc<Refusals>) -> Incoming {
    let (accepted, receiver) = mpsc::channel(HANDSHAKES_MAX);
    tokio::spawn(accept(listener, port, handshake, refusals, accepted).in_current_span());
    Incoming { receiver }
}

/// A stream of accepted connections, for tonic's `serve_with_incoming`.
pub struct Incoming {
    receiver: mpsc::Receiver<Connection>,
}

impl futures_core::Stream for Incoming {
    type Item = Result<Connection, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx).map(|connection| connection.map(Ok))
    }
}

async fn accept(
    listener: TcpListener,
    port: &'static str,
    handshake: Handshake,
    refusals: Arc<Refusals>,
    accepted: mpsc::Sender<Connection>,
) {
    let slots = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    let per_address: Arc<std::sync::Mutex<BTreeMap<IpAddr, usize>>> = Arc::default();
    loop {
        // With every slot taken, stop accepting: new connections wait in the kernel's
        // listen backlog (bounded, and costing this process nothing) until a handshake
        // ends, rather than being closed; a burst of legitimate clients is slowed, not
        // refused, and whoever holds the slots holds each for at most HANDSHAKE_TIMEOUT.
        let slot = tokio::select! {
            biased;
            () = accepted.closed() => return,
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (tcp, remote) = tokio::select! {
            biased;
            () = accepted.closed() => return,
            result = listener.accept() => match result {
                Ok(connection) => connection,
                Err(error) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(port, %error, "cannot accept connections");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(address_slot) = AddressSlot::take(&per_address, remote.ip()) else {
            drop(tcp);
            refusals.refuse(port, remote, "too many handshakes under way from its address").await;
            continue;
        };
        // Raft messages and chat calls are small and latency-bound.
        let _ = tcp.set_nodelay(true);
        let (handshake, refusals, accepted) = (handshake.clone(), Arc::clone(&refusals), accepted.clone());
        let connect = async move {
            let _slots = (slot, address_slot);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake.complete(tcp, remote)).await {
                Ok(Ok(connection)) => {
                    let _ = accepted.send(connection).await;
                }
                Ok(Err(reason)) => refusals.refuse(port, remote, &reason).await,
                Err(_) => refusals.refuse(port, remote, "no handshake in time").await,
            }
        };
        tokio::spawn(connect.in_current_span());
    }
}

/// One of an address's handshake slots, given back when dropped.
struct AddressSlot {
    counts: Arc<std::sync::Mutex<BTreeMap<IpAddr, usize>>>,
    address: IpAddr,
}

impl AddressSlot {
    fn take(counts: &Arc<std::sync::Mutex<BTreeMap<IpAddr, usize>>>, address: IpAddr) -> Option<Self> {
        let address = crate::host::host_of(address);
        let mut map = counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = map.entry(address).or_insert(0);
        if *count >= HANDSHAKES_PER_ADDRESS_MAX {
            return None;
        }
        *count += 1;
        Some(Self { counts: Arc::clone(counts), address })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = map.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.address);
            }
        }
    }
}

impl Handshake {
    async fn complete(self, tcp: TcpStream, remote: SocketAddr) -> Result<Connection, String> {
        let mut first = [0u8; 1];
        let seen = tokio::time::timeout(FIRST_BYTE_TIMEOUT, tcp.peek(&mut first))
            .await
            .map_err(|_| format!("said nothing within {} s", FIRST_BYTE_TIMEOUT.as_secs()))?
            .map_err(|error| format!("connection failed: {error}"))?;
        if seen == 0 {
            return Err("closed before saying anything".to_owned());
        }
        match self {
            Handshake::Plain => {
                if first[0] == TLS_HANDSHAKE_RECORD {
                    return Err("it speaks TLS, and this node runs with --insecure (without TLS): \
                                start every node and client the same way"
                        .to_owned());
                }
                Ok(Connection { io: Io::Plain(tcp), info: ConnectionInfo { remote, peer_certs: None } })
            }
            Handshake::Tls { tls, side } => {
                if first[0] == HTTP2_PREFACE_START {
                    return Err(
                        "it speaks plaintext HTTP/2 (started with --insecure?), and this node requires TLS".to_owned()
                    );
                }
                let stream = TlsAcceptor::from(tls.server_config(side))
                    .accept(tcp)
                    .await
                    .map_err(|error| format!("TLS handshake failed: {error}"))?;
                let peer_certs = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|chain| Arc::new(chain.iter().map(|cert| cert.clone().into_owned()).collect()));
                Ok(Connection { io: Io::Tls(Box::new(stream)), info: ConnectionInfo { remote, peer_certs } })
            }
        }
    }
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(tcp) => tcp.is_write_vectored(),
            Io::Tls(tls) => tls.is_write_vectored(),
        }
    }
}
