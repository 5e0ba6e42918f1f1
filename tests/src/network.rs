//! Hosts on a private bridge, each a network namespace with one interface (`eth0`) and an
//! address of its own, and the faults a real network has between them: a link down
//! (airplane mode), packets dropped from or to other hosts (partitions, one way or both),
//! and random loss and delay.
//!
//! The bridge lives in a namespace of its own too, so nothing of this touches the
//! machine's own network: every address is private to the namespaces made here, and two
//! networks running at once (tests in parallel) never see each other, even with the same
//! addresses.
//!
//! Faults are kept as a model per host ([`HostFaults`]) and rendered as a whole into the
//! host's own nftables table on every change, in one transaction, so that they compose
//! (a slow host can also be partitioned) and `status` shows exactly what is in force.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::delay::DelayQueue;
use crate::netns::{Namespace, NetError};

/// The interface of a host, its end of the veth pair to the bridge.
pub const HOST_INTERFACE: &str = "eth0";
/// The hosts' subnet (a /24); host `i` (from 0) is `.i+1`.
const SUBNET: [u8; 3] = [10, 99, 0];
/// The most hosts a network holds (addresses .1 to .200; the rest are left alone).
pub const HOSTS_MAX: usize = 200;

/// What is wrong with one host's network, as the nemesis or a person set it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFaults {
    /// Its link is down, as in airplane mode: nothing in or out.
    pub airplane: bool,
    /// Hosts whose packets it never receives.
    pub deaf_to: BTreeSet<String>,
    /// Hosts it can no longer send to.
    pub mute_to: BTreeSet<String>,
    /// Percent of the packets it sends, and of those it receives, dropped at random.
    pub loss_percent: u8,
    /// Every packet it sends and receives held this long.
    pub delay: Duration,
}

impl HostFaults {
    pub fn is_healthy(&self) -> bool {
        *self == Self::default()
    }
}

/// A host of the network: a namespace, its name and its address.
#[derive(Debug)]
pub struct Host {
    pub name: String,
    pub address: Ipv4Addr,
    faults: HostFaults,
    /// The process holding its delayed packets, while it has a delay. Declared before the
    /// namespace: its rules are removed while the namespace is still there.
    delay: Option<DelayQueue>,
    pub namespace: Namespace,
}

impl Host {
    pub fn faults(&self) -> &HostFaults {
        &self.faults
    }

    /// The process id of the reader holding its delayed packets, while it has a delay.
    pub fn delay_reader(&self) -> Option<u32> {
        self.delay.as_ref().map(DelayQueue::pid)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("no host is named {0:?}")]
    NoSuchHost(String),
    #[error("host name {0:?}: use letters and digits, at most 8, and each name once")]
    BadHostName(String),
    #[error("a network holds 1 to {HOSTS_MAX} hosts, not {0}")]
    HostCount(usize),
    #[error("loss is a percentage: 0 to 100, not {0}")]
    BadLoss(u8),
    #[error("a partition needs at least two sides, each naming hosts, every host on one side at most")]
    BadPartition,
    #[error("the delay on host {host} was lost: its packet reader exited ({status}), so packets passed undelayed")]
    DelayLost { host: String, status: String },
}

/// Hosts on a private bridge. Dropping it removes every namespace it made, killing what
/// still runs inside.
#[derive(Debug)]
pub struct Network {
    // Hosts drop before the bridge: their veth ends go with them.
    hosts: BTreeMap<String, Host>,
    bridge: Namespace,
    /// The program that holds delayed packets (`chorus-hosts delay-queue`).
    delay_program: Option<std::path::PathBuf>,
    /// Delay readers in process groups of their own (a terminal's Ctrl-C is not theirs).
    own_process_groups: bool,
}

impl Network {
    /// A bridge and one host per name, each with an address on the bridge's subnet, in the
    /// order given. `delay_program` is the `chorus-hosts` binary, for delays (without it,
    /// a delay is refused).
    pub fn create(names: &[&str], delay_program: Option<std::path::PathBuf>) -> Result<Self, NetworkError> {
        if names.is_empty() || names.len() > HOSTS_MAX {
            return Err(NetworkError::HostCount(names.len()));
        }
        let mut seen = BTreeSet::new();
        for name in names {
            let valid = !name.is_empty() && name.len() <= 8 && name.chars().all(|c| c.is_ascii_alphanumeric());
            if !valid || !seen.insert(*name) {
                return Err(NetworkError::BadHostName((*name).to_owned()));
            }
        }
        crate::netns::sweep_orphans();
        let bridge = Namespace::create("bridge")?;
        bridge.ip(["link", "add", "br0", "type", "bridge"])?;
        bridge.ip(["link", "set", "br0", "up"])?;
        let mut network = Self { hosts: BTreeMap::new(), bridge, delay_program, own_process_groups: false };
        for (index, name) in names.iter().enumerate() {
            let index = u8::try_from(index + 1).expect("at most HOSTS_MAX hosts");
            let address = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], index);
            let namespace = Namespace::create(name)?;
            // The bridge's end is named after the host: its namespace holds nothing else.
            let bridge_end = format!("h-{name}");
            network.bridge.ip([
                "link",
                "add",
                &bridge_end,
                "type",
                "veth",
                "peer",
                "name",
                HOST_INTERFACE,
                "netns",
                namespace.name(),
            ])?;
            network.bridge.ip(["link", "set", &bridge_end, "master", "br0", "up"])?;
            namespace.ip(["addr", "add", &format!("{address}/24"), "dev", HOST_INTERFACE])?;
            namespace.ip(["link", "set", HOST_INTERFACE, "up"])?;
            let host =
                Host { name: (*name).to_owned(), address, faults: HostFaults::default(), delay: None, namespace };
            network.hosts.insert(host.name.clone(), host);
        }
        for name in names {
            network.apply(name, HostFaults::default())?;
        }
        Ok(network)
    }

    /// Starts delay readers from now on in process groups of their own, so that a Ctrl-C
    /// at the shell's terminal (meant for a command run on a host) does not end them.
    pub fn set_own_process_groups(&mut self, own: bool) {
        self.own_process_groups = own;
    }

    pub fn host(&self, name: &str) -> Result<&Host, NetworkError> {
        self.hosts.get(name).ok_or_else(|| NetworkError::NoSuchHost(name.to_owned()))
    }

    /// The hosts, by name.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    /// Airplane mode: the host's link goes down.
    pub fn airplane(&mut self, name: &str) -> Result<(), NetworkError> {
        self.change(name, |faults| faults.airplane = true)
    }

    /// Out of airplane mode: its link comes back up.
    pub fn land(&mut self, name: &str) -> Result<(), NetworkError> {
        self.change(name, |faults| faults.airplane = false)
    }

    /// Cuts the network into `sides`: no host hears any host of another side. Hosts named
    /// on no side keep hearing everyone. Partitions add to those already in force.
    pub fn partition(&mut self, sides: &[Vec<String>]) -> Result<(), NetworkError> {
        let named: Vec<&String> = sides.iter().flatten().collect();
        let distinct: BTreeSet<&String> = named.iter().copied().collect();
        if sides.len() < 2 || sides.iter().any(Vec::is_empty) || distinct.len() != named.len() {
            return Err(NetworkError::BadPartition);
        }
        for name in &named {
            self.host(name)?;
        }
        for (index, side) in sides.iter().enumerate() {
            let others: Vec<String> =
                sides.iter().enumerate().filter(|(other, _)| *other != index).flat_map(|(_, s)| s.clone()).collect();
            for name in side {
                self.change(name, |faults| {
                    faults.deaf_to.extend(others.iter().cloned());
                    faults.mute_to.extend(others.iter().cloned());
                })?;
            }
        }
        Ok(())
    }

    /// `from` keeps sending to each of `to`, but hears nothing back from them.
    pub fn one_way(&mut self, from: &str, to: &[String]) -> Result<(), NetworkError> {
        for name in to {
            self.host(name)?;
        }
        self.change(from, |faults| faults.deaf_to.extend(to.iter().cloned()))
    }

    /// Every partition and one-way cut removed (airplane mode, loss and delay stay).
    pub fn heal(&mut self) -> Result<(), NetworkError> {
        let names: Vec<String> = self.hosts.keys().cloned().collect();
        for name in names {
            self.change(&name, |faults| {
                faults.deaf_to.clear();
                faults.mute_to.clear();
            })?;
        }
        Ok(())
    }

    /// Host `name` hears and reaches every other host again (its own cuts, and every
    /// other host's cuts towards it, removed; airplane mode, loss and delay stay).
    pub fn reconnect(&mut self, name: &str) -> Result<(), NetworkError> {
        self.host(name)?;
        let others: Vec<String> = self.hosts.keys().filter(|other| *other != name).cloned().collect();
        self.change(name, |faults| {
            faults.deaf_to.clear();
            faults.mute_to.clear();
        })?;
        for other in others {
            let cut =
                self.hosts[&other].faults.deaf_to.contains(name) || self.hosts[&other].faults.mute_to.contains(name);
            if cut {
                self.change(&other, |faults| {
                    faults.deaf_to.remove(name);
                    faults.mute_to.remove(name);
                })?;
            }
        }
        Ok(())
    }

    /// `loss_percent` of the host's packets dropped, each way, and every packet held
    /// `delay`; zero for both makes the host's link fast again.
    pub fn slow(&mut self, name: &str, delay: Duration, loss_percent: u8) -> Result<(), NetworkError> {
        if loss_percent > 100 {
            return Err(NetworkError::BadLoss(loss_percent));
        }
        self.change(name, |faults| {
            faults.delay = delay;
            faults.loss_percent = loss_percent;
        })
    }

    fn change(&mut self, name: &str, edit: impl FnOnce(&mut HostFaults)) -> Result<(), NetworkError> {
        let host = self.hosts.get(name).ok_or_else(|| NetworkError::NoSuchHost(name.to_owned()))?;
        let mut faults = host.faults.clone();
        edit(&mut faults);
        self.apply(name, faults)
    }

    /// Makes the host's link, filter table and delay queue what `faults` say, and records
    /// them as its faults once they are in force (a change that fails leaves the model as
    /// it was, so `status` never shows a fault that is not there).
    fn apply(&mut self, name: &str, faults: HostFaults) -> Result<(), NetworkError> {
        let addresses: BTreeMap<String, Ipv4Addr> = self.hosts.values().map(|h| (h.name.clone(), h.address)).collect();
        let host = self.hosts.get_mut(name).ok_or_else(|| NetworkError::NoSuchHost(name.to_owned()))?;
        let wants_delay = !faults.delay.is_zero();
        if let Some(queue) = &mut host.delay {
            // A delay that was in force must have been all along: a reader that died let
            // packets through undelayed, and the test that asked for it must hear of it.
            if let Some(status) = queue.exited() {
                host.delay = None;
                return Err(NetworkError::DelayLost { host: name.to_owned(), status });
            }
        }
        // A changed delay gets a new queue: the old one lets go of what it holds first.
        if host.delay.as_ref().is_some_and(|queue| !wants_delay || queue.delay() != faults.delay) {
            host.delay = None;
        }
        if wants_delay && host.delay.is_none() {
            let Some(program) = &self.delay_program else {
                return Err(NetError::Unsupported("no delay program was given to this network".to_owned()).into());
            };
            host.delay = Some(DelayQueue::start(program, &host.namespace, faults.delay, self.own_process_groups)?);
        }
        let ruleset = ruleset(&faults, &addresses);
        host.namespace.exec("nft", &["-f", "-"], Some(&ruleset))?;
        // The link last: every step that can fail is behind it.
        let link = if faults.airplane { "down" } else { "up" };
        host.namespace.ip(["link", "set", HOST_INTERFACE, link])?;
        host.faults = faults;
        Ok(())
    }
}

/// The name of the nftables table holding a host's faults.
pub const TABLE: &str = "chorus_faults";

/// The host's nftables table for `faults`, replacing the one in force in one transaction
/// (the table is declared first so that its deletion never fails).
fn ruleset(faults: &HostFaults, addresses: &BTreeMap<String, Ipv4Addr>) -> String {
    let set = |names: &BTreeSet<String>| -> Option<String> {
        let listed: Vec<String> =
            names.iter().filter_map(|name| addresses.get(name)).map(ToString::to_string).collect();
        (!listed.is_empty()).then(|| listed.join(", "))
    };
    let mut text = format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
    for (chain, hook, direction, peers) in
        [("input", "input", "iifname", &faults.deaf_to), ("output", "output", "oifname", &faults.mute_to)]
    {
        let address = if chain == "input" { "saddr" } else { "daddr" };
        // Before iptables' filter chains (priority 0), where a delay queues packets: a
        // packet dropped here is never delayed first.
        let _ = writeln!(text, "  chain {chain} {{\n    type filter hook {hook} priority -10; policy accept;");
        if let Some(listed) = set(peers) {
            let _ = writeln!(text, "    {direction} \"{HOST_INTERFACE}\" ip {address} {{ {listed} }} drop");
        }
        if faults.loss_percent > 0 {
            let _ = writeln!(
                text,
                "    {direction} \"{HOST_INTERFACE}\" numgen random mod 100 < {} drop",
                faults.loss_percent
            );
        }
        text.push_str("  }\n");
    }
    text.push_str("}\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_drops_what_the_faults_say_and_nothing_else() {
        let addresses: BTreeMap<String, Ipv4Addr> = [("A", 1), ("B", 2), ("C", 3)]
            .iter()
            .map(|(n, i)| ((*n).to_owned(), Ipv4Addr::new(10, 99, 0, *i)))
            .collect();
        let healthy = ruleset(&HostFaults::default(), &addresses);
        assert!(!healthy.contains("drop"), "{healthy}");
        let faults = HostFaults {
            deaf_to: ["B".to_owned(), "C".to_owned()].into(),
            mute_to: ["C".to_owned()].into(),
            loss_percent: 5,
            ..HostFaults::default()
        };
        let text = ruleset(&faults, &addresses);
        assert!(text.contains("iifname \"eth0\" ip saddr { 10.99.0.2, 10.99.0.3 } drop"), "{text}");
        assert!(text.contains("oifname \"eth0\" ip daddr { 10.99.0.3 } drop"), "{text}");
        assert_eq!(text.matches("numgen random mod 100 < 5 drop").count(), 2, "{text}");
        assert!(text.starts_with("table inet chorus_faults {}\ndelete table inet chorus_faults\n"), "{text}");
    }
}
