//! The cluster's certificate authority: `chorus certs init` makes one, and it issues the
//! certificates of nodes (`chorus certs node`) and of operators' clients (`chorus certs
//! client`). Private keys are written readable by their owner only (0600), and no file is
//! ever overwritten: replacing a key is a decision someone makes by moving the old one away.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

use super::{TlsError, client_name, node_name};

pub const CA_CERT_FILE: &str = "ca.pem";
/// The domain of the identity names ([`node_name`], [`client_name`]).
const RESERVED_SUFFIX: &str = "chorus.internal";
pub const CA_KEY_FILE: &str = "ca.key";

/// How long certificates are valid by default: a year for nodes and clients, ten for the CA.
const LEAF_DAYS_DEFAULT: u32 = 365;
const CA_DAYS_DEFAULT: u32 = 3650;
/// A certificate is valid from a little before it was made: machines' clocks differ, and a
/// certificate that a peer with a slow clock thinks is from the future would be refused.
const BACKDATE_SECS: i64 = 3600;

/// A certificate's validity period, in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before_unix_s: i64,
    pub not_after_unix_s: i64,
}

impl Validity {
    /// From an hour ago until `days` from now, by this machine's clock.
    pub fn days_from_now(days: u32) -> Self {
        let now = i64::try_from(crate::seam::unix_time_ms() / 1000).unwrap_or(i64::MAX / 2);
        Self { not_before_unix_s: now - BACKDATE_SECS, not_after_unix_s: now + i64::from(days) * 86_400 }
    }

    pub fn leaf_default() -> Self {
        Self::days_from_now(LEAF_DAYS_DEFAULT)
    }

    pub fn ca_default() -> Self {
        Self::days_from_now(CA_DAYS_DEFAULT)
    }

    fn apply(&self, params: &mut CertificateParams) -> Result<(), TlsError> {
        let at = |secs: i64| time::OffsetDateTime::from_unix_timestamp(secs).map_err(|_| TlsError::BadValidity(*self));
        params.not_before = at(self.not_before_unix_s)?;
        params.not_after = at(self.not_after_unix_s)?;
        Ok(())
    }
}

/// Where an issued certificate and its key are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The files of node `id`'s certificate in a certificates directory.
pub fn node_files(dir: &Path, id: u64) -> IssuedFiles {
    IssuedFiles { cert: dir.join(format!("node-{id}.pem")), key: dir.join(format!("node-{id}.key")) }
}

/// The files of client certificate `name` in a certificates directory.
pub fn client_files(dir: &Path, name: &str) -> IssuedFiles {
    IssuedFiles { cert: dir.join(format!("client-{name}.pem")), key: dir.join(format!("client-{name}.key")) }
}

/// A certificate and its private key, in PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// Writes both files; refuses if either exists (neither is written then).
    pub fn write(&self, files: &IssuedFiles) -> Result<(), TlsError> {
        refuse_existing(&[&files.cert, &files.key])?;
        write_new(&files.key, self.key_pem.as_bytes(), 0o600)?;
        write_new(&files.cert, self.cert_pem.as_bytes(), 0o644)
    }
}

pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    /// Makes a new CA for cluster `cluster_id` and writes it to `dir` (`ca.pem`, and
    /// `ca.key` readable by its owner only). Refuses if either file exists.
    pub fn create(dir: &Path, cluster_id: &str, validity: Validity) -> Result<Self, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        refuse_existing(&[&cert_path, &key_path])?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("Chorus CA of cluster {cluster_id}"));
        // It signs end certificates only: a leaked node key cannot mint certificates.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity.apply(&mut params)?;
        let cert = params.self_signed(&key)?;
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.to_owned(), source })?;
        write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
        Ok(Self { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// The CA in `dir`, to issue certificates with.
    pub fn open(dir: &Path) -> Result<Self, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = read_text(&cert_path)?;
        let key_pem = read_text(&key_path)?;
        let invalid =
            |path: &Path, error: rcgen::Error| TlsError::Invalid { path: path.to_owned(), reason: error.to_string() };
        let key = KeyPair::from_pem(&key_pem).map_err(|error| invalid(&key_path, error))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|error| invalid(&cert_path, error))?;
        Ok(Self { cert_pem, issuer })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for member `id`, reached at `hosts` (IP addresses or DNS names, no
    /// ports): it names the member ([`node_name`]) and each host, and serves both ends of
    /// a connection (nodes are servers to clients and peers, and clients of peers).
    pub fn issue_node(&self, id: u64, hosts: &[String], validity: Validity) -> Result<Issued, TlsError> {
        let mut names = vec![SanType::DnsName(node_name(id).try_into()?)];
        for host in hosts {
            names.push(host_name(host)?);
        }
        let usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(format!("chorus node {id}"), names, usages, validity)
    }

    /// A client certificate `name`: a cluster credential for operators and tools.
    pub fn issue_client(&self, name: &str, validity: Validity) -> Result<Issued, TlsError> {
        if !valid_client_name(name) {
            return Err(TlsError::BadClientName(name.to_owned()));
        }
        let names = vec![SanType::DnsName(client_name(name).try_into()?)];
        self.issue(format!("chorus client {name}"), names, vec![ExtendedKeyUsagePurpose::ClientAuth], validity)
    }

    fn issue(
        &self,
        common_name: String,
        names: Vec<SanType>,
        usages: Vec<ExtendedKeyUsagePurpose>,
        validity: Validity,
    ) -> Result<Issued, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.subject_alt_names = names;
        params.extended_key_usages = usages;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        validity.apply(&mut params)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// A host as a subject alternative name: an IP address, or a DNS name.
fn host_name(host: &str) -> Result<SanType, TlsError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    // The names that say "member N" or "operator X" are the CA's to give, one per
    // certificate: a host name among them would let one member answer for another.
    if host.to_ascii_lowercase().trim_end_matches('.').ends_with(RESERVED_SUFFIX) {
        return Err(TlsError::BadHost(host.to_owned()));
    }
    let plausible = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !plausible {
        return Err(TlsError::BadHost(host.to_owned()));
    }
    Ok(SanType::DnsName(host.to_owned().try_into().map_err(|_| TlsError::BadHost(host.to_owned()))?))
}

fn valid_client_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn refuse_existing(paths: &[&PathBuf]) -> Result<(), TlsError> {
    match paths.iter().find(|path| path.exists()) {
        Some(path) => Err(TlsError::Exists { path: (*path).clone() }),
        None => Ok(()),
    }
}

/// Writes a file that must not exist yet (`create_new`: a race with another writer fails
/// rather than overwrites), with `mode` from its creation on, and syncs it.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let error = |source| match source {
        ref e if std::io::Error::kind(e) == std::io::ErrorKind::AlreadyExists => {
            TlsError::Exists { path: path.to_owned() }
        }
        source => TlsError::Write { path: path.to_owned(), source },
    };
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(error)?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| TlsError::Write { path: path.to_owned(), source })
}

pub(super) fn read_text(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn keys_are_private_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::create(dir.path(), "test", Validity::ca_default()).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join(CA_KEY_FILE)), 0o600);
        let again = CertificateAuthority::create(dir.path(), "test", Validity::ca_default());
        assert!(matches!(again, Err(TlsError::Exists { .. })), "a second init refuses");

        let files = node_files(dir.path(), 3);
        ca.issue_node(3, &["127.0.0.1".into(), "db-3.example".into()], Validity::leaf_default())
            .unwrap()
            .write(&files)
            .unwrap();
        assert_eq!(mode(&files.key), 0o600);
        let first_key = std::fs::read(&files.key).unwrap();
        let reissued =
            CertificateAuthority::open(dir.path()).unwrap().issue_node(3, &[], Validity::leaf_default()).unwrap();
        assert!(matches!(reissued.write(&files), Err(TlsError::Exists { .. })));
        assert_eq!(std::fs::read(&files.key).unwrap(), first_key, "the key is unchanged");
    }

    #[test]
    fn names_that_are_not_hosts_or_client_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::create(dir.path(), "test", Validity::ca_default()).unwrap();
        for host in
            ["", "a..b", "*.example", "host:7001", "white space", "node-2.chorus.internal", "Node-2.CHORUS.Internal."]
        {
            assert!(
                matches!(ca.issue_node(1, &[host.into()], Validity::leaf_default()), Err(TlsError::BadHost(_))),
                "{host:?}"
            );
        }
        for name in ["", "Admin", "*", "-x", "node-1.chorus.internal", &"a".repeat(64)] {
            assert!(
                matches!(ca.issue_client(name, Validity::leaf_default()), Err(TlsError::BadClientName(_))),
                "{name:?}"
            );
        }
        ca.issue_client("ops-1", Validity::leaf_default()).unwrap();
    }
}
