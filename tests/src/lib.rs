//! Test hosts for Chorus: "machines" with network stacks of their own on one box, as
//! Linux network namespaces on a private bridge, with the faults of a real network between
//! them, and a Chorus cluster placed across them.
//!
//! - [`netns`]: namespaces, made and entered, and swept when a run that made them died.
//! - [`network`]: hosts on a bridge and their faults (airplane mode, partitions one way or
//!   both, loss), in each host's own nftables table.
//! - [`delay`]: delay on a host's link, through NFQUEUE (no `tc netem` needed).
//! - [`testbed`]: `chorus node` processes on the hosts, people running the `chorus`
//!   client on them, and an observer host that asks the members for their status.
//! - [`traffic`]: the simulation's workload run by clients on the hosts, and its history
//!   checkers run on what they recorded.
//! - [`shell`]: the verbs of `chorus-hosts` (scripts/hosts.sh), for people.
//!
//! Everything needs root (CI runs as root). Nothing here touches the machine's own
//! network: every address is inside namespaces made here, and dropping a network removes
//! them, with every process still inside.

pub mod delay;
pub mod netns;
pub mod network;
pub mod shell;
pub mod testbed;
pub mod traffic;

pub use network::{HostFaults, Network, NetworkError};
pub use testbed::{CliRun, Placement, Testbed, TestbedError, TestbedOptions};
pub use traffic::Traffic;

/// Whether this machine lets us make network namespaces and filter inside them; if not,
/// the reason (for a test's plain SKIPPED line).
pub fn namespaces_refused() -> Option<String> {
    let probe = match netns::Namespace::create("probe") {
        Ok(probe) => probe,
        Err(error) => return Some(error.to_string()),
    };
    for (program, args) in [("nft", &["list", "tables"][..]), ("iptables", &["-w", "-L", "-n"][..])] {
        if let Err(error) = probe.exec(program, args, None) {
            return Some(format!("{program} does not work inside a namespace: {error}"));
        }
    }
    None
}
