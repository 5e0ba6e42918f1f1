//! A node's TLS material (the cluster's CA, its certificate and key), loaded and checked
//! from files, and reloaded from them on request (SIGHUP) without a restart: each new
//! connection takes the configuration current when it arrives, connections already open
//! keep theirs, so no request is lost to a reload.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::ServerCertVerifier;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, version};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::authority::{CA_CERT_FILE, node_files, read_text};
use super::{TlsError, node_name};

/// The ALPN protocol gRPC runs on; tonic's clients insist on it.
const ALPN_H2: &[u8] = b"h2";

/// Where a node's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Node `id`'s files in a certificates directory (`chorus certs` writes them so).
    pub fn of_node(dir: &Path, id: u64) -> Self {
        let files = node_files(dir, id);
        Self { ca: dir.join(CA_CERT_FILE), cert: files.cert, key: files.key }
    }
}

/// Which server a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The peer port: a client certificate from the cluster's CA is required.
    Peer,
    /// The client port: a client certificate is optional (an operator's, for the cluster
    /// methods); people log in with passwords.
    Client,
}

/// One loaded, checked generation of the material.
struct Loaded {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    peer_server: Arc<ServerConfig>,
    client_server: Arc<ServerConfig>,
}

/// A node's TLS material, reloadable.
pub struct NodeTls {
    node_id: u64,
    files: TlsFiles,
    current: RwLock<Arc<Loaded>>,
}

impl NodeTls {
    /// Loads node `node_id`'s material, refusing what would fail at the first handshake
    /// anyway: a certificate that is not this node's, not from this CA, expired or not yet
    /// valid, or a key that is not the certificate's.
    pub fn load(node_id: u64, files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let loaded = load(node_id, &files)?;
        Ok(Arc::new(Self { node_id, files, current: RwLock::new(Arc::new(loaded)) }))
    }

    /// Reads the files again. On success, new connections use the new material; on failure
    /// the old stays in use (a half-copied certificate must not take a node off the network).
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = load(self.node_id, &self.files)?;
        *self.current.write().expect("TLS material lock") = Arc::new(loaded);
        Ok(())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn current(&self) -> Arc<Loaded> {
        Arc::clone(&self.current.read().expect("TLS material lock"))
    }

    /// The server configuration for new connections on `side`.
    pub fn server_config(&self, side: Side) -> Arc<ServerConfig> {
        let current = self.current();
        match side {
            Side::Peer => Arc::clone(&current.peer_server),
            Side::Client => Arc::clone(&current.client_server),
        }
    }

    /// The client configuration of a link to member `peer`: it trusts only the cluster's
    /// CA, accepts only a certificate that names `peer` (whatever address it answers on),
    /// and presents this node's own certificate.
    pub fn peer_client_config(&self, peer: u64) -> ClientTlsConfig {
        let current = self.current();
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&current.ca_pem))
            .identity(Identity::from_pem(&current.cert_pem, &current.key_pem))
            .domain_name(node_name(peer))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

/// Now by this machine's clock, through the seam.
fn now() -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_millis(crate::seam::unix_time_ms()))
}

fn load(node_id: u64, files: &TlsFiles) -> Result<Loaded, TlsError> {
    let invalid = |path: &Path, reason: String| TlsError::Invalid { path: path.to_owned(), reason };
    let ca_pem = read_text(&files.ca)?;
    let cert_pem = read_text(&files.cert)?;
    let key_pem = read_text(&files.key)?;
    let roots = Arc::new(root_store(&files.ca, &ca_pem)?);
    let chain = certificates(&files.cert, &cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| TlsError::NoPem { path: files.key.clone(), what: "private key" })?;

    // The node's own certificate must be what its peers will accept: from this CA, valid
    // now, and naming this node.
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), provider())
        .build()
        .map_err(|error| invalid(&files.ca, error.to_string()))?;
    let name = ServerName::try_from(node_name(node_id)).expect("node names are DNS names");
    verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], now()).map_err(|error| {
        invalid(
            &files.cert,
            format!("not a valid certificate of node {node_id} from the CA in {}: {error}", files.ca.display()),
        )
    })?;

    let server = |side: Side| -> Result<Arc<ServerConfig>, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider());
        let verifier = match side {
            Side::Peer => verifier.build(),
            Side::Client => verifier.allow_unauthenticated().build(),
        }
        .map_err(|error| invalid(&files.ca, error.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider())
            // Both ends are Chorus: the newest version only.
            .with_protocol_versions(&[&version::TLS13])?
            .with_client_cert_verifier(verifier)
            // Checks that the key is the certificate's.
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|error| invalid(&files.key, format!("does not go with {}: {error}", files.cert.display())))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    };
    Ok(Loaded { peer_server: server(Side::Peer)?, client_server: server(Side::Client)?, ca_pem, cert_pem, key_pem })
}

fn certificates(path: &Path, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|error| TlsError::Invalid { path: path.to_owned(), reason: error.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::NoPem { path: path.to_owned(), what: "certificate" });
    }
    Ok(chain)
}

fn root_store(path: &Path, pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path, pem)? {
        roots.add(cert).map_err(|error| TlsError::Invalid { path: path.to_owned(), reason: error.to_string() })?;
    }
    Ok(roots)
}

/// The client side of TLS to nodes, for the client library: trust `ca_pem` only, and
/// present `identity` (certificate and key PEM) if given.
pub fn client_tls_config(ca_pem: &str, identity: Option<(&str, &str)>) -> ClientTlsConfig {
    let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    match identity {
        Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
        None => config,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{CertificateAuthority, Validity, member_named_by};

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// What the first handshake would refuse is refused at load: another node's
    /// certificate, another CA's, an expired one, a key that is not the certificate's.
    #[test]
    fn only_this_nodes_valid_certificate_from_this_ca_loads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::create(dir.path(), "test", Validity::ca_default()).unwrap();
        let ca_path = dir.path().join(CA_CERT_FILE);
        let hosts = ["127.0.0.1".to_owned()];
        let node_1 = ca.issue_node(1, &hosts, Validity::leaf_default()).unwrap();
        let files = |cert: &str, key: &str| TlsFiles {
            ca: ca_path.clone(),
            cert: write(dir.path(), "cert.pem", cert),
            key: write(dir.path(), "key.pem", key),
        };
        let reason = |result: Result<Arc<NodeTls>, TlsError>| match result {
            Err(TlsError::Invalid { reason, .. }) => reason,
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(_) => panic!("loaded"),
        };
        let tls = NodeTls::load(1, files(&node_1.cert_pem, &node_1.key_pem)).unwrap();

        assert!(reason(NodeTls::load(2, files(&node_1.cert_pem, &node_1.key_pem))).contains("of node 2"));
        let other_dir = tempfile::tempdir().unwrap();
        let other = CertificateAuthority::create(other_dir.path(), "other", Validity::ca_default()).unwrap();
        let foreign = other.issue_node(1, &hosts, Validity::leaf_default()).unwrap();
        assert!(reason(NodeTls::load(1, files(&foreign.cert_pem, &foreign.key_pem))).contains("UnknownIssuer"));
        let now = i64::try_from(crate::seam::unix_time_ms() / 1000).unwrap();
        let past = Validity { not_before_unix_s: now - 7200, not_after_unix_s: now - 3600 };
        let expired = ca.issue_node(1, &hosts, past).unwrap();
        let refused = reason(NodeTls::load(1, files(&expired.cert_pem, &expired.key_pem)));
        assert!(refused.contains("xpired"), "{refused}");
        let another = ca.issue_node(1, &hosts, Validity::leaf_default()).unwrap();
        assert!(reason(NodeTls::load(1, files(&node_1.cert_pem, &another.key_pem))).contains("does not go with"));

        // A reload that fails leaves the loaded material in place.
        write(dir.path(), "cert.pem", "not a certificate");
        assert!(tls.reload().is_err());
        assert!(tls.server_config(Side::Peer).alpn_protocols.contains(&ALPN_H2.to_vec()));
    }

    #[test]
    fn a_certificate_names_its_member_only_and_a_client_certificate_none() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::create(dir.path(), "test", Validity::ca_default()).unwrap();
        let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let node_3 = ca.issue_node(3, &["10.0.0.3".to_owned()], Validity::leaf_default()).unwrap();
        assert_eq!(member_named_by(&der(&node_3.cert_pem), 1..=5), Some(3));
        assert_eq!(member_named_by(&der(&node_3.cert_pem), [1, 2, 4, 5]), None);
        let client = ca.issue_client("ops", Validity::leaf_default()).unwrap();
        assert_eq!(member_named_by(&der(&client.cert_pem), 1..=5), None);
    }
}
