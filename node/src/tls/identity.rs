//! Which member a peer is: read from the certificate it proved it holds during the
//! handshake (mutual TLS), never from what its messages say.

use rustls_pki_types::{CertificateDer, ServerName};
use webpki::EndEntityCert;

use super::acceptor::ConnectionInfo;
use super::node_name;

/// The one member among `members` whose name ([`node_name`]) the certificate carries;
/// `None` if it names none of them, or several (this cluster's CA issues one name per node
/// certificate; anything else is not a node's).
pub fn member_named_by(cert: &CertificateDer<'_>, members: impl IntoIterator<Item = u64>) -> Option<u64> {
    let cert = EndEntityCert::try_from(cert).ok()?;
    let mut named = members.into_iter().filter(|&id| {
        let name = ServerName::try_from(node_name(id)).expect("node names are DNS names");
        cert.verify_is_valid_for_subject_name(&name).is_ok()
    });
    match (named.next(), named.next()) {
        (Some(id), None) => Some(id),
        _ => None,
    }
}

/// What the acceptor recorded of a request's connection; `None` for a request that did
/// not come through it.
pub fn connection_info<T>(request: &tonic::Request<T>) -> Option<&ConnectionInfo> {
    request.extensions().get::<ConnectionInfo>()
}
