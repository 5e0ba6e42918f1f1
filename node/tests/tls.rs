//! TLS on real sockets: which handshakes a node's ports refuse (no certificate, another
//! cluster's CA, an expired certificate, a certificate of the wrong member), plaintext and
//! TLS crossing, and certificates reloaded on SIGHUP without losing a connection.
//!
//! The simulation has no TLS (madsim's tonic ignores it), so these are the tests of it.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chorus::client::v1::chat_client::ChatClient;
use chorus::client::v1::raft_client::RaftClient;
use chorus::client::v1::{ListAccountsRequest, RaftBatch};
use chorus::client::{ClientSecurity, ClusterClient, RetryPolicy};
use chorus::tls::{CertificateAuthority, Validity, client_files, node_files};
use common::TestNode;
use common::cluster::{TestCluster, connect};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, AlertDescription, CertificateError, ClientConfig, RootCertStore};
use tonic::Code;

/// HTTP/2's connection preface and an empty SETTINGS frame: what a gRPC client sends first.
const HTTP2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A client configuration that trusts `ca_pem` and presents `identity` (cert, key PEM).
fn client_config(ca_pem: &str, identity: Option<(&str, &str)>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Connects to `address` over TLS as `config`, expecting the server to be `server_name`,
/// says hello in HTTP/2 and waits for the node's first bytes. `Ok` if they come; else the
/// TLS error that ended the connection.
async fn handshake(address: &str, config: Arc<ClientConfig>, server_name: &str) -> Result<(), rustls::Error> {
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let as_tls = |error: std::io::Error| match error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => tls.clone(),
        None => panic!("the connection failed, but not in TLS: {error}"),
    };
    let mut stream = TlsConnector::from(config).connect(name, tcp).await.map_err(as_tls)?;
    stream.write_all(HTTP2_HELLO).await.map_err(as_tls)?;
    let mut first = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut first)).await {
        Ok(Ok(0)) => panic!("the node closed the connection without a TLS alert"),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(as_tls(error)),
        Err(_) => panic!("the node neither answered nor refused within 10 s"),
    }
}

/// Whether the node closes a plaintext HTTP/2 connection without answering it.
async fn plaintext_is_refused(address: &str) -> bool {
    let mut tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    tcp.write_all(HTTP2_HELLO).await.unwrap();
    let mut buffer = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buffer)).await, Ok(Ok(0) | Err(_)))
}

fn peer_address(cluster: &TestCluster, id: u64) -> String {
    cluster.cluster.config().member(id).unwrap().peer_address.clone()
}

/// Node 1's peer port admits only members of this cluster, by their certificates: none,
/// another CA's, an expired one and a plaintext connection are refused at the handshake; a
/// member's is admitted; an operator's client certificate gets through the handshake (it is
/// from the CA) but may not send Raft batches; and a link insists on the member it dials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_admits_members_only() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(dir.path(), 3);
    let certs = cluster.cluster.certs_dir();
    let ca_pem = read(&certs.join("ca.pem"));
    let node_1 = chorus::tls::node_name(1);
    let address = peer_address(&cluster, 1);
    let node_2 = node_files(&certs, 2);
    let (cert_2, key_2) = (read(&node_2.cert), read(&node_2.key));

    // A member: admitted.
    handshake(&address, client_config(&ca_pem, Some((&cert_2, &key_2))), &node_1).await.unwrap();

    // No certificate.
    let refused = handshake(&address, client_config(&ca_pem, None), &node_1).await.unwrap_err();
    assert_eq!(refused, rustls::Error::AlertReceived(AlertDescription::CertificateRequired));

    // Node 2's name, from another cluster's CA.
    let elsewhere = tempfile::tempdir().unwrap();
    let other_ca = CertificateAuthority::create(elsewhere.path(), "other", Validity::ca_default()).unwrap();
    let forged = other_ca.issue_node(2, &["127.0.0.1".to_owned()], Validity::leaf_default()).unwrap();
    let refused = handshake(&address, client_config(&ca_pem, Some((&forged.cert_pem, &forged.key_pem))), &node_1)
        .await
        .unwrap_err();
    assert_eq!(refused, rustls::Error::AlertReceived(AlertDescription::UnknownCA));

    // Node 2's, from this cluster's CA, but expired yesterday.
    let now = i64::try_from(chorus::seam::unix_time_ms() / 1000).unwrap();
    let expired_validity = Validity { not_before_unix_s: now - 3 * 86_400, not_after_unix_s: now - 86_400 };
    let expired = CertificateAuthority::open(&certs).unwrap().issue_node(2, &[], expired_validity).unwrap();
    let refused = handshake(&address, client_config(&ca_pem, Some((&expired.cert_pem, &expired.key_pem))), &node_1)
        .await
        .unwrap_err();
    assert_eq!(refused, rustls::Error::AlertReceived(AlertDescription::CertificateExpired));

    // Plaintext HTTP/2, as from a node started with --insecure.
    let before = cluster.status(1, false).await.unwrap().connections_refused;
    assert!(plaintext_is_refused(&address).await, "plaintext on a TLS peer port is refused");
    // It is counted just after the connection closes.
    let mut after = before;
    for _ in 0..100 {
        after = cluster.status(1, false).await.unwrap().connections_refused;
        if after > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(after - before, 1, "the refused plaintext connection is counted");

    // A link to node 1 that expects node 3 refuses node 1's certificate.
    let refused = handshake(&address, client_config(&ca_pem, Some((&cert_2, &key_2))), &chorus::tls::node_name(3))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })),
        "{refused:?}"
    );

    // The operator's client certificate is from the CA, but names no member.
    let operator = client_files(&certs, chorus::supervisor::OPERATOR_CLIENT);
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(
            chorus::tls::client_tls_config(&ca_pem, Some((&read(&operator.cert), &read(&operator.key))))
                .domain_name(node_1.clone()),
        )
        .unwrap();
    let mut raft = RaftClient::new(endpoint.connect().await.unwrap());
    let batch = RaftBatch { cluster_id: "e2e".to_owned(), from: 2, to: 1, messages: vec![] };
    let status = raft.deliver(batch).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("names no other member"), "{status:?}");
}

/// The client port encrypts but asks for no client certificate (people log in with
/// passwords); a plaintext client is refused. A node started with --insecure refuses TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_must_speak_what_the_node_speaks() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(dir.path(), 1);
    let address = cluster.client_address(1);
    let ca_pem = read(&cluster.cluster.certs_dir().join("ca.pem"));
    handshake(&address, client_config(&ca_pem, None), "127.0.0.1").await.unwrap();
    let mut chat =
        ChatClient::new(connect(&address, &ClientSecurity::Tls { ca_pem: ca_pem.clone(), identity: None }).await);
    chat.list_accounts(ListAccountsRequest::default()).await.unwrap();
    assert!(plaintext_is_refused(&address).await);
    // The refusal is logged just after the connection closes.
    wait_for(|| cluster.log_of(1).contains("it speaks plaintext HTTP/2"), "a log line saying why").await;

    // A client that trusts another CA refuses the node.
    let elsewhere = tempfile::tempdir().unwrap();
    let other_ca = CertificateAuthority::create(elsewhere.path(), "other", Validity::ca_default()).unwrap();
    let refused = handshake(&address, client_config(other_ca.cert_pem(), None), "127.0.0.1").await.unwrap_err();
    assert!(matches!(refused, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)), "{refused:?}");

    let insecure_dir = tempfile::tempdir().unwrap();
    let insecure = TestNode::start(insecure_dir.path());
    let tls = TlsConnector::from(client_config(&ca_pem, None));
    let tcp = tokio::net::TcpStream::connect(insecure.address).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    assert!(tls.connect(name, tcp).await.is_err(), "an insecure node refuses a TLS handshake");
    let mut client = ClusterClient::new(
        &[insecure.address.to_string()],
        RetryPolicy { call_deadline: Duration::from_secs(10), ..RetryPolicy::default() },
        ClientSecurity::Insecure,
    )
    .unwrap();
    let mut status = Default::default();
    for _ in 0..100 {
        status = client.cluster_of(0).status(chorus::client::v1::StatusRequest::default()).await.unwrap().into_inner();
        if status.connections_refused > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status: chorus::client::v1::StatusResponse = status;
    assert!(!status.tls);
    assert_eq!(status.connections_refused, 1, "the TLS attempt is counted");
}

/// SIGHUP reloads the node's certificate: connections made after it see the new one,
/// connections made before go on undisturbed, and files that do not load leave the old
/// certificate in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_sighup_without_losing_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(dir.path(), 1);
    let address = cluster.client_address(1);
    let certs = cluster.cluster.certs_dir();
    let ca_pem = read(&certs.join("ca.pem"));
    let files = node_files(&certs, 1);
    let security = ClientSecurity::Tls { ca_pem: ca_pem.clone(), identity: None };
    let mut before = ChatClient::new(connect(&address, &security).await);
    before.list_accounts(ListAccountsRequest::default()).await.unwrap();
    let hang_up = || assert!(cluster.cluster.reload_certificates(1).unwrap(), "node 1 runs");
    let reloads = |what: &str| cluster.log_of(1).matches(what).count();

    // A certificate that names "localhost" only: 127.0.0.1 is no longer the node's name.
    let replace = |issued: chorus::tls::Issued| {
        std::fs::remove_file(&files.cert).unwrap();
        std::fs::remove_file(&files.key).unwrap();
        issued.write(&files).unwrap();
    };
    let ca = CertificateAuthority::open(&certs).unwrap();
    replace(ca.issue_node(1, &["localhost".to_owned()], Validity::leaf_default()).unwrap());
    hang_up();
    wait_for(|| reloads("reloaded the TLS certificates") == 1, "the reload").await;
    let refused = handshake(&address, client_config(&ca_pem, None), "127.0.0.1").await.unwrap_err();
    assert!(
        matches!(refused, rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })),
        "{refused:?}"
    );
    handshake(&address, client_config(&ca_pem, None), "localhost").await.unwrap();
    before.list_accounts(ListAccountsRequest::default()).await.expect("the connection made before the reload goes on");

    // A half-written file: the reload fails and the certificate in use stays.
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nMII").unwrap();
    hang_up();
    wait_for(|| reloads("kept the previous TLS certificates") == 1, "the failed reload").await;
    handshake(&address, client_config(&ca_pem, None), "localhost").await.unwrap();

    // Back to a certificate for 127.0.0.1.
    replace(ca.issue_node(1, &["127.0.0.1".to_owned()], Validity::leaf_default()).unwrap());
    hang_up();
    wait_for(|| reloads("reloaded the TLS certificates") == 2, "the second reload").await;
    handshake(&address, client_config(&ca_pem, None), "127.0.0.1").await.unwrap();
    before.list_accounts(ListAccountsRequest::default()).await.unwrap();
}

async fn wait_for(condition: impl Fn() -> bool, what: &str) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 10 s");
}

/// One host may have at most 16 handshakes under way on a port (its 17th connection is
/// closed at once, and counted), and a connection that says nothing is let go after 2 s:
/// idle connections cannot keep a port from everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_hold_a_port() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(dir.path(), 1);
    let address = cluster.client_address(1);
    let before = cluster.status(1, false).await.unwrap().connections_refused;
    let mut idle = Vec::new();
    for _ in 0..chorus::tls::HANDSHAKES_PER_ADDRESS_MAX {
        idle.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    // Let the node accept them all before the one too many.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = tokio::net::TcpStream::connect(&address).await.unwrap();
    let mut buffer = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_millis(1500), extra.read(&mut buffer)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "the 17th connection is closed before the first 16 time out");
    // The idle ones are let go after the first-byte timeout, and counted.
    for mut connection in idle {
        let closed = tokio::time::timeout(Duration::from_secs(5), connection.read(&mut buffer)).await;
        assert!(matches!(closed, Ok(Ok(0) | Err(_))), "an idle connection is closed");
    }
    let mut refused = 0;
    for _ in 0..100 {
        refused = cluster.status(1, false).await.unwrap().connections_refused - before;
        if refused >= 17 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refused, 17);
    // And the port serves a real client at once afterwards.
    handshake(&address, client_config(&read(&cluster.cluster.certs_dir().join("ca.pem")), None), "127.0.0.1")
        .await
        .unwrap();
}
