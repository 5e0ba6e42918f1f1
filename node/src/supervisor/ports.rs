//! Loopback ports for clusters started on this machine, claimed so that two of them can
//! never be handed the same one.
//!
//! A cluster's members must know each other's peer addresses before any of them starts,
//! so "bind port 0 and read it back" cannot name them. Picking a free port by binding 0
//! and closing it again races twice: another process (a test binary running beside this
//! one) can be handed the same port, and any outgoing connection can take it as its
//! ephemeral source port before the node binds it. So ports come from below the kernel's
//! ephemeral range (which outgoing connections never use), and each is claimed with an
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
/// Fewest ports the claim range must hold.
const CLAIM_PORTS_MIN: u16 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("cannot use the port-claim directory {path}: {source}")]
    ClaimsDir { path: PathBuf, source: std::io::Error },
    #[error("no free loopback port in {low}..{high} (wanted {wanted}, claimed {claimed})")]
    Exhausted { low: u16, high: u16, wanted: usize, claimed: usize },
    #[error(
        "the kernel's ephemeral port range starts at {ephemeral_min} (net.ipv4.ip_local_port_range), leaving no room below it for claimed ports; raise it above {}",
        CLAIM_PORT_MIN + CLAIM_PORTS_MIN
    )]
    NoRoomBelowEphemeral { ephemeral_min: u16 },
    #[error("port {port} is held by another cluster on this machine (claimed in {path})")]
    Held { port: u16, path: PathBuf },
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
    let (low, high) = (CLAIM_PORT_MIN, ephemeral_port_min()?);
    let span = high - low;
    // Start somewhere random so that concurrent claimers rarely contend for the same files.
    let start = crate::seam::os_seeded_rng().random_range(0..span);
    let mut claims = Vec::with_capacity(count);
    for offset in 0..span {
        if claims.len() == count {
            break;
        }
        let port = low + (start + offset) % span;
        // Held by another process, or something else listens there.
        if let Some(claim) = try_claim(&dir, port)? {
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
    try_claim(&dir, port)?.ok_or_else(|| PortError::Held { port, path: dir.join(format!("{port}.lock")) })
}

fn claims_dir() -> Result<PathBuf, PortError> {
    let dir = std::env::temp_dir().join(CLAIMS_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| PortError::ClaimsDir { path: dir.clone(), source })?;
    Ok(dir)
}

/// The claim of `port`, or `None` if another process holds it or something that knows
/// nothing of claims listens on it.
fn try_claim(dir: &std::path::Path, port: u16) -> Result<Option<PortClaim>, PortError> {
    let path = dir.join(format!("{port}.lock"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| PortError::ClaimsDir { path: path.clone(), source })?;
    let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else { return Ok(None) };
    let free = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).is_ok();
    Ok(free.then_some(PortClaim { port, _lock: lock }))
}

/// The first port of the kernel's ephemeral range, from which outgoing connections take
/// their source ports; claims stay below it, and there must be room for them there.
fn ephemeral_port_min() -> Result<u16, PortError> {
    let ephemeral_min = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(EPHEMERAL_PORT_MIN_DEFAULT);
    if ephemeral_min < CLAIM_PORT_MIN + CLAIM_PORTS_MIN {
        return Err(PortError::NoRoomBelowEphemeral { ephemeral_min });
    }
    Ok(ephemeral_min)
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
        assert!(ports.iter().all(|&port| (CLAIM_PORT_MIN..ephemeral_port_min().unwrap()).contains(&port)));
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
