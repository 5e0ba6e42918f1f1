//! `chorus certs`: the cluster's certificate authority and the certificates it issues.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chorus::tls::{CertificateAuthority, IssuedFiles, Validity, client_files, node_files};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum CertsVerb {
    /// Make the cluster's certificate authority: DIR/ca.pem (give it to every node and
    /// client) and DIR/ca.key (keep it off the nodes; it issues certificates).
    Init {
        /// Directory for the CA's files (created if missing).
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// The cluster's name, written into the CA certificate.
        #[arg(long, default_value = "chorus")]
        cluster_id: String,
        /// How long the CA is valid, in days.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
    /// Issue node ID's certificate: DIR/node-ID.pem and DIR/node-ID.key. It names the
    /// member (peers accept it only as node ID) and every host clients reach it at.
    Node {
        id: u64,
        /// A host name or IP address the node is reached at (no port); repeat for each.
        #[arg(long = "addr", required = true)]
        hosts: Vec<String>,
        /// The CA's directory; the certificate is written there too.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// How long the certificate is valid, in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
    /// Issue a client certificate NAME (DIR/client-NAME.pem and .key): an operator's
    /// credential for the cluster methods (`--cert` and `--key` of the client verbs).
    Client {
        name: String,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
}

pub fn run(verb: CertsVerb) -> Result<()> {
    match verb {
        CertsVerb::Init { dir, cluster_id, days } => {
            CertificateAuthority::create(&dir, &cluster_id, Validity::days_from_now(days))?;
            println!("made the CA of cluster '{cluster_id}' in {}", dir.display());
            println!("  {}: give it to every node and client", dir.join(chorus::tls::CA_CERT_FILE).display());
            println!("  {}: keep it secret and off the nodes", dir.join(chorus::tls::CA_KEY_FILE).display());
        }
        CertsVerb::Node { id, hosts, dir, days } => {
            let issued = open(&dir)?.issue_node(id, &hosts, Validity::days_from_now(days))?;
            let files = node_files(&dir, id);
            issued.write(&files)?;
            report(&format!("node {id} ({})", hosts.join(", ")), &files);
        }
        CertsVerb::Client { name, dir, days } => {
            let issued = open(&dir)?.issue_client(&name, Validity::days_from_now(days))?;
            let files = client_files(&dir, &name);
            issued.write(&files)?;
            report(&format!("client '{name}'"), &files);
        }
    }
    Ok(())
}

fn open(dir: &Path) -> Result<CertificateAuthority> {
    CertificateAuthority::open(dir)
        .with_context(|| format!("no usable CA in {} (make one with `chorus certs init`)", dir.display()))
}

fn report(what: &str, files: &IssuedFiles) {
    println!("issued the certificate of {what}: {} and {}", files.cert.display(), files.key.display());
}
