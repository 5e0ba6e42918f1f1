//! Loopback ports for clusters started on this machine, claimed so that two of them can
//! never be handed the same one.
//!
//! A cluster's members must know each other's peer addresses before any of them starts,
//! so "bind port 0 and read it back" cannot name them. Picking a free port by binding 0
//! and closing it again races twice: another process (a test binary running beside this
//! one) can be handed the same port, and any outgoing connection can take it as its
//! ephemeral source port before the node binds it. So ports come from outside the kernel's
//! ephemeral range (below it, or above it if it starts too low; outgoing connections never
//! use them), and each is claimed with an
//! exclusive `flock` on a file named after it: the claim lasts as long as the
//! [`PortClaim`], and the kernel releases it when the claiming process dies, however it
//! dies. A port some other program listens on fails the bind check and is skipped.

use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};
use rand::Rng;

/// Where claims are taken; shared by every process on the machine.
const CLAIMS_DIR: &str = "chorus-port-claims";
/// Lowest port handed out: above the well-known and the usual registered service ports.
const CLAIM_PORT_MIN: u16 = 10_000;
/// Where the range stops if the kernel's ephemeral range cannot be read (Linux's default
/// ephemeral range starts at 32768).
const EPHEMERAL_PORT_MIN_DEFAULT: u16 = 32_768;
const EPHEMERAL_PORT_MAX_DEFAULT: u16 = 60_999;
/// Fewest ports the claim range must hold.
const CLAIM_PORTS_MIN: u16 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("cannot use the port-claim directory {path}: {source}")]
    ClaimsDir { path: PathBuf, source: std::io::Error },
    #[error("no free loopback port in {low}..{high} (wanted {wanted}, claimed {claimed})")]
    Exhausted { low: u16, high: u16, wanted: usize, claimed: usize },
    #[error(
        "the kernel's ephemeral port range ({low}-{high}, net.ipv4.ip_local_port_range) leaves fewer than {CLAIM_PORTS_MIN} ports outside it from {CLAIM_PORT_MIN} up for clusters; narrow it"
    )]
    NoRoomOutsideEphemeral { low: u16, high: u16 },
    #[error("port {port} is held by another cluster on this machine (claimed in {path})")]
    Held { port: u16, path: PathBuf },
    #[error("port {port} is in use by another program (or by nodes left running)")]
    InUse { port: u16 },
}

/// A loopback port this process holds until the claim is dropped.
#[derive(Debug)]
pub struct PortClaim {
    port: u16,
    _lock: Flock<File>,
}

impl PortClaim {
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// Claims `count` distinct loopback ports that nothing listens on right now.
pub fn claim_loopback_ports(count: usize) -> Result<Vec<PortClaim>, PortError> {
    let dir = claims_dir()?;
    let (low, high) = claim_range()?;
    let span = high - low;
    // Start somewhere random so that concurrent claimers rarely contend for the same files.
    let start = crate::seam::os_seeded_rng().random_range(0..span);
    let mut claims = Vec::with_capacity(count);
    for offset in 0..span {
        if claims.len() == count {
            break;
        }
        let port = low + (start + offset) % span;
        // Held by another process, or something else listens there: try the next.
        if let Ok(claim) = try_claim(&dir, port)? {
            claims.push(claim);
        }
    }
    if claims.len() < count {
        return Err(PortError::Exhausted { low, high, wanted: count, claimed: claims.len() });
    }
    Ok(claims)
}

/// Claims one given port (a cluster's configured one, reopened), or says who holds it.
pub fn claim_loopback_port(port: u16) -> Result<PortClaim, PortError> {
    let dir = claims_dir()?;
    try_claim(&dir, port)?
}

fn claims_dir() -> Result<PathBuf, PortError> {
    let dir = std::env::temp_dir().join(CLAIMS_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| PortError::ClaimsDir { path: dir.clone(), source })?;
    Ok(dir)
}

/// The claim of `port`; inside, why not: another process holds it, or something that
/// knows nothing of claims listens on it. Outside, a claim directory that cannot be used.
fn try_claim(dir: &std::path::Path, port: u16) -> Result<Result<PortClaim, PortError>, PortError> {
    let path = dir.join(format!("{port}.lock"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| PortError::ClaimsDir { path: path.clone(), source })?;
    let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
        return Ok(Err(PortError::Held { port, path }));
    };
    if TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).is_err() {
        return Ok(Err(PortError::InUse { port }));
    }
    Ok(Ok(PortClaim { port, _lock: lock }))
}

/// The ports claims come from (`low..high`): outside the kernel's ephemeral range, from
/// which outgoing connections take their source ports. Below it when there is room
/// there (Linux's default), else above it.
fn claim_range() -> Result<(u16, u16), PortError> {
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut numbers = text.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((numbers.next()??, numbers.next()??))
        })
        .unwrap_or((EPHEMERAL_PORT_MIN_DEFAULT, EPHEMERAL_PORT_MAX_DEFAULT));
    if low >= CLAIM_PORT_MIN + CLAIM_PORTS_MIN {
        return Ok((CLAIM_PORT_MIN, low));
    }
    let above = high.saturating_add(1).max(CLAIM_PORT_MIN);
    if u16::MAX - above >= CLAIM_PORTS_MIN {
        return Ok((above, u16::MAX));
    }
    Err(PortError::NoRoomOutsideEphemeral { low, high })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_port_is_not_claimed_again_until_released() {
        let first = claim_loopback_ports(8).unwrap();
        let mut ports: Vec<u16> = first.iter().map(PortClaim::port).collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 8, "claims are distinct");
        let (low, high) = claim_range().unwrap();
        assert!(ports.iter().all(|&port| (low..high).contains(&port)));
        let error = claim_loopback_port(ports[1]).unwrap_err();
        assert!(matches!(error, PortError::Held { port, .. } if port == ports[1]), "{error}");
        // Claims taken meanwhile (as by another test binary) never include a held one.
        for _ in 0..20 {
            let more = claim_loopback_ports(8).unwrap();
            assert!(more.iter().all(|claim| !ports.contains(&claim.port())));
        }
        // A held claim's file cannot be locked by anyone else.
        let path = std::env::temp_dir().join(CLAIMS_DIR).join(format!("{}.lock", ports[0]));
        let other = OpenOptions::new().write(true).open(&path).unwrap();
        assert!(Flock::lock(other, FlockArg::LockExclusiveNonblock).is_err());
        drop(first);
        let other = OpenOptions::new().write(true).open(&path).unwrap();
        assert!(Flock::lock(other, FlockArg::LockExclusiveNonblock).is_ok(), "released with the claim");
    }
}
