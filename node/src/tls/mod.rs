//! Transport security: the cluster's certificate authority and the certificates it issues,
//! loading them into TLS configurations that reload without a restart, accepting TLS
//! connections, and reading which member a peer's certificate names.
//!
//! Every node holds a certificate from the cluster's own CA (made by `chorus certs init`).
//! Clients verify a node by its address, as any TLS client does, so a node's certificate
//! names the hosts it is reached at. Peers verify each other by identity: a node's
//! certificate also carries the DNS name [`node_name`]`(id)`, a link to node 3 accepts
//! only a certificate that names node 3, and the Raft service accepts a batch from node 3
//! only over a connection whose client certificate names node 3 (mutual TLS).
//!
//! Real processes only: madsim's tonic has no TLS, so the simulation runs its nodes without
//! (`docs/testing.md` says which tests check what it cannot).

mod acceptor;
mod authority;
mod identity;
mod material;

pub use acceptor::{
    Connection, ConnectionInfo, FIRST_BYTE_TIMEOUT, HANDSHAKE_TIMEOUT, HANDSHAKES_MAX, HANDSHAKES_PER_ADDRESS_MAX,
    Handshake, Incoming, Refusals, incoming,
};
pub use authority::{
    CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority, Issued, IssuedFiles, Validity, client_files, node_files,
};
pub use identity::{connection_info, member_named_by};
pub use material::{NodeTls, Side, TlsFiles, client_tls_config};

use std::path::PathBuf;

/// The DNS name that says "cluster member `id`" in a node's certificate. It is never looked
/// up: only this cluster's CA issues certificates that peers trust, and it issues this name
/// only to node `id`.
pub fn node_name(id: u64) -> String {
    format!("node-{id}.chorus.internal")
}

/// The DNS name of an operator's client certificate `name` (a cluster credential): never a
/// node's name, so a client certificate cannot speak for a member.
pub fn client_name(name: &str) -> String {
    format!("{name}.client.chorus.internal")
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} already exists; it is never overwritten: move it away first if you mean to replace it")]
    Exists { path: PathBuf },
    #[error("{path} holds no {what} in PEM form")]
    NoPem { path: PathBuf, what: &'static str },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("client name {0:?}: use 1-63 lowercase letters, digits and '-', not starting or ending with '-'")]
    BadClientName(String),
    #[error("host {0:?} is neither an IP address nor a DNS name")]
    BadHost(String),
    #[error("validity period {0:?} is out of range")]
    BadValidity(Validity),
    #[error("cannot issue the certificate: {0}")]
    Issue(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(#[from] tokio_rustls::rustls::Error),
}
