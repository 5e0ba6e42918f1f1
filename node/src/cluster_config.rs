//! The cluster configuration file (`cluster.toml`): who the members are, where they listen,
//! and the replication timing. Every mistake is reported by name.
//!
//! ```toml
//! cluster_id = "chorus-demo"
//!
//! [timing]                      # optional; these are the defaults
//! heartbeat_interval_ms = 100
//! election_timeout_min_ms = 1000
//! election_timeout_max_ms = 2000
//!
//! [limits]                      # optional; these are the defaults
//! session_lifetime_hours = 168          # a session ends a week after login
//! logins_per_account_per_minute = 10    # login attempts, per node
//! logins_per_address_per_minute = 60
//! sends_per_account_per_minute = 600
//!
//! [compaction]                  # optional; these are the defaults
//! snapshot_every_entries = 10000  # snapshot once the log is this many entries past the last
//! log_tail_entries = 1000         # entries kept before the snapshot for slightly-behind followers
//!
//! [[members]]
//! id = 1
//! peer_address = "10.0.0.1:7101"    # node-to-node traffic
//! client_address = "10.0.0.1:7001"  # the chat API
//! data_dir = "/var/lib/chorus"      # optional: where this member keeps its data
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::replication::{ConfigError, NodeId, ReplicaConfig};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub cluster_id: String,
    #[serde(default)]
    pub timing: Timing,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub compaction: Compaction,
    pub members: Vec<MemberConfig>,
}

/// When a node snapshots its chat state and compacts its log behind the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Compaction {
    /// A snapshot is taken once this many entries were applied after the last one.
    #[serde(default = "defaults::snapshot_every_entries")]
    pub snapshot_every_entries: u64,
    /// Entries kept in the log before a snapshot's last one: a follower less far behind
    /// than this catches up from the log, without a snapshot.
    #[serde(default = "defaults::log_tail_entries")]
    pub log_tail_entries: u64,
}

impl Default for Compaction {
    fn default() -> Self {
        Self {
            snapshot_every_entries: defaults::snapshot_every_entries(),
            log_tail_entries: defaults::log_tail_entries(),
        }
    }
}

/// What one account, one client address and one session may do. The rates are token
/// buckets per node: up to N at once, refilled at N per minute.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "defaults::session_lifetime_hours")]
    pub session_lifetime_hours: u64,
    #[serde(default = "defaults::logins_per_account_per_minute")]
    pub logins_per_account_per_minute: u64,
    #[serde(default = "defaults::logins_per_address_per_minute")]
    pub logins_per_address_per_minute: u64,
    #[serde(default = "defaults::sends_per_account_per_minute")]
    pub sends_per_account_per_minute: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            session_lifetime_hours: defaults::session_lifetime_hours(),
            logins_per_account_per_minute: defaults::logins_per_account_per_minute(),
            logins_per_address_per_minute: defaults::logins_per_address_per_minute(),
            sends_per_account_per_minute: defaults::sends_per_account_per_minute(),
        }
    }
}

impl Limits {
    /// Limits no test or benchmark reaches: for loads that measure something else.
    pub fn generous() -> Self {
        Self {
            logins_per_account_per_minute: RATE_MAX,
            logins_per_address_per_minute: RATE_MAX,
            sends_per_account_per_minute: RATE_MAX,
            ..Self::default()
        }
    }

    pub fn session_lifetime(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.session_lifetime_hours.saturating_mul(3600))
    }

    fn validate(&self) -> Result<(), ClusterConfigError> {
        if !(1..=SESSION_LIFETIME_HOURS_MAX).contains(&self.session_lifetime_hours) {
            return Err(ClusterConfigError::Limit {
                field: "session_lifetime_hours",
                value: self.session_lifetime_hours,
                max: SESSION_LIFETIME_HOURS_MAX,
            });
        }
        for (field, value) in [
            ("logins_per_account_per_minute", self.logins_per_account_per_minute),
            ("logins_per_address_per_minute", self.logins_per_address_per_minute),
            ("sends_per_account_per_minute", self.sends_per_account_per_minute),
        ] {
            if !(1..=RATE_MAX).contains(&value) {
                return Err(ClusterConfigError::Limit { field, value, max: RATE_MAX });
            }
        }
        Ok(())
    }
}

/// Ten years.
const SESSION_LIFETIME_HOURS_MAX: u64 = 87_600;
const RATE_MAX: u64 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    #[serde(default = "defaults::heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    #[serde(default = "defaults::election_timeout_min_ms")]
    pub election_timeout_min_ms: u64,
    #[serde(default = "defaults::election_timeout_max_ms")]
    pub election_timeout_max_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: defaults::heartbeat_interval_ms(),
            election_timeout_min_ms: defaults::election_timeout_min_ms(),
            election_timeout_max_ms: defaults::election_timeout_max_ms(),
        }
    }
}

mod defaults {
    pub fn heartbeat_interval_ms() -> u64 {
        100
    }
    pub fn election_timeout_min_ms() -> u64 {
        1000
    }
    pub fn election_timeout_max_ms() -> u64 {
        2000
    }
    pub fn session_lifetime_hours() -> u64 {
        7 * 24
    }
    pub fn logins_per_account_per_minute() -> u64 {
        10
    }
    pub fn logins_per_address_per_minute() -> u64 {
        60
    }
    pub fn sends_per_account_per_minute() -> u64 {
        600
    }
    pub fn snapshot_every_entries() -> u64 {
        10_000
    }
    pub fn log_tail_entries() -> u64 {
        1_000
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub id: NodeId,
    pub peer_address: String,
    pub client_address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterConfigError {
    #[error("{0}")]
    Syntax(#[from] toml::de::Error),
    #[error("cluster_id {0:?} must be 1-64 characters of letters, digits, '.', '_' and '-'")]
    BadClusterId(String),
    #[error("members: a cluster needs 1 to 7 members (5 tolerates 2 failures), found {0}")]
    MemberCount(usize),
    #[error("compaction: snapshot_every_entries must be at least 1")]
    SnapshotEveryZero,
    #[error("members: id 0 is reserved; number members from 1")]
    MemberIdZero,
    #[error("members: id {0} is too large; ids go up to 9223372036854775807 (2^63 - 1)")]
    MemberIdTooLarge(NodeId),
    #[error("members: id {0} appears more than once")]
    DuplicateId(NodeId),
    #[error("members[id={id}].{field}: {address:?} is not HOST:PORT")]
    BadAddress { id: NodeId, field: &'static str, address: String },
    #[error("members[id={id}].{field}: port 0 cannot be reached by the other members; give a fixed port")]
    PortZero { id: NodeId, field: &'static str },
    #[error("members: address {address} is used by members {first} and {second}")]
    DuplicateAddress { address: String, first: NodeId, second: NodeId },
    #[error("node id {id} is not among the members ({members})")]
    NotAMember { id: NodeId, members: String },
    #[error("timing: {0}")]
    Timing(#[from] ConfigError),
    #[error("limits.{field} = {value}: it must be from 1 to {max}")]
    Limit { field: &'static str, value: u64, max: u64 },
    #[error("cannot write the configuration as TOML: {0}")]
    Unwritable(#[from] toml::ser::Error),
}

impl ClusterConfig {
    /// Parses and checks a configuration file's text.
    pub fn from_toml(text: &str) -> Result<Self, ClusterConfigError> {
        let config: Self = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration as `cluster.toml` text that [`ClusterConfig::from_toml`] reads back
    /// unchanged, under `header` (comment lines, each starting with `#`). Strings and
    /// paths are escaped as TOML wants them.
    /// A path that is not UTF-8 cannot be written.
    pub fn to_toml(&self, header: &str) -> Result<String, ClusterConfigError> {
        assert!(header.lines().all(|line| line.starts_with('#')), "a header is comment lines");
        let body = toml::to_string(self)?;
        Ok(if header.is_empty() { body } else { format!("{header}\n\n{body}") })
    }

    /// A cluster of one node, for running without a configuration file.
    pub fn single(node_id: NodeId, client_address: String) -> Self {
        Self {
            cluster_id: format!("standalone-{node_id}"),
            timing: Timing::default(),
            limits: Limits::default(),
            compaction: Compaction::default(),
            members: vec![MemberConfig {
                id: node_id,
                peer_address: "127.0.0.1:0".to_owned(),
                client_address,
                data_dir: None,
            }],
        }
    }

    pub fn validate(&self) -> Result<(), ClusterConfigError> {
        let id_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if self.cluster_id.is_empty() || self.cluster_id.len() > 64 || !self.cluster_id.chars().all(id_ok) {
            return Err(ClusterConfigError::BadClusterId(self.cluster_id.clone()));
        }
        if self.members.is_empty() || self.members.len() > 7 {
            return Err(ClusterConfigError::MemberCount(self.members.len()));
        }
        let mut ids = BTreeSet::new();
        let mut addresses: BTreeMap<&str, NodeId> = BTreeMap::new();
        for member in &self.members {
            if member.id == 0 {
                return Err(ClusterConfigError::MemberIdZero);
            }
            // Stored as an SQLite integer (signed 64-bit) in the log's identity record.
            if member.id > i64::MAX as NodeId {
                return Err(ClusterConfigError::MemberIdTooLarge(member.id));
            }
            if !ids.insert(member.id) {
                return Err(ClusterConfigError::DuplicateId(member.id));
            }
            for (field, address) in [("peer_address", &member.peer_address), ("client_address", &member.client_address)]
            {
                if !is_host_port(address) {
                    return Err(ClusterConfigError::BadAddress { id: member.id, field, address: address.clone() });
                }
                // Port 0 ("any free port") is only meaningful for a cluster of one, where no
                // peer needs to find this node.
                if address.ends_with(":0") {
                    if self.members.len() > 1 {
                        return Err(ClusterConfigError::PortZero { id: member.id, field });
                    }
                    continue;
                }
                if let Some(&first) = addresses.get(address.as_str()) {
                    return Err(ClusterConfigError::DuplicateAddress {
                        address: address.clone(),
                        first,
                        second: member.id,
                    });
                }
                addresses.insert(address, member.id);
            }
        }
        self.replica_config().validate()?;
        if self.compaction.snapshot_every_entries == 0 {
            return Err(ClusterConfigError::SnapshotEveryZero);
        }
        self.limits.validate()
    }

    pub fn member(&self, id: NodeId) -> Result<&MemberConfig, ClusterConfigError> {
        self.members.iter().find(|m| m.id == id).ok_or_else(|| ClusterConfigError::NotAMember {
            id,
            members: self.members.iter().map(|m| m.id.to_string()).collect::<Vec<_>>().join(", "),
        })
    }

    pub fn member_ids(&self) -> BTreeSet<NodeId> {
        self.members.iter().map(|m| m.id).collect()
    }

    pub fn replica_config(&self) -> ReplicaConfig {
        ReplicaConfig {
            heartbeat_interval_ms: self.timing.heartbeat_interval_ms,
            election_timeout_min_ms: self.timing.election_timeout_min_ms,
            election_timeout_max_ms: self.timing.election_timeout_max_ms,
            ..ReplicaConfig::default()
        }
    }
}

/// `HOST:PORT` with a numeric port; HOST may be a name, an IPv4 address or `[IPv6]`.
fn is_host_port(address: &str) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else { return false };
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner.strip_suffix(']').is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
    };
    host_ok && port.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster_id = "demo"
[timing]
heartbeat_interval_ms = 50
[[members]]
id = 1
peer_address = "127.0.0.1:7101"
client_address = "127.0.0.1:7001"
[[members]]
id = 2
peer_address = "node2.example:7101"
client_address = "[::1]:7002"
data_dir = "/tmp/x"
"#;

    #[test]
    fn a_good_file_parses_with_defaults_filled_in() {
        let config = ClusterConfig::from_toml(GOOD).unwrap();
        assert_eq!(config.timing.heartbeat_interval_ms, 50);
        assert_eq!(config.timing.election_timeout_min_ms, 1000);
        assert_eq!(config.member(2).unwrap().data_dir, Some(PathBuf::from("/tmp/x")));
        assert!(matches!(config.member(3), Err(ClusterConfigError::NotAMember { id: 3, .. })));
    }

    #[test]
    fn the_written_file_reads_back_the_same_whatever_the_paths_hold() {
        let mut config = ClusterConfig::from_toml(GOOD).unwrap();
        // Quotes, backslashes, a newline and non-ASCII: Rust's Debug quoting is not TOML's.
        config.members[0].data_dir = Some(PathBuf::from("/tmp/a \"quoted\" \\ dir\n\u{e9}t\u{e9}"));
        let text = config.to_toml("# written by a test\n# second line").unwrap();
        assert!(text.starts_with("# written by a test\n"), "{text}");
        assert_eq!(ClusterConfig::from_toml(&text).unwrap(), config);
    }

    #[test]
    fn each_mistake_is_reported_by_name() {
        let cases: [(&str, &str); 12] = [
            (&GOOD.replace("id = 2", "id = 1"), "id 1 appears more than once"),
            (&GOOD.replace("node2.example:7101", "node2.example"), "members[id=2].peer_address"),
            (&GOOD.replace("[::1]:7002", "127.0.0.1:7001"), "address 127.0.0.1:7001 is used by members 1 and 2"),
            (&GOOD.replace("heartbeat_interval_ms", "heartbeat_ms"), "heartbeat_ms"),
            (&GOOD.replace("\"demo\"", "\"de mo\""), "cluster_id"),
            (&GOOD.replace("id = 2", "id = 0"), "id 0 is reserved"),
            (&GOOD.replace("id = 2", "id = 9223372036854775808"), "id 9223372036854775808 is too large"),
            (&GOOD.replace("heartbeat_interval_ms = 50", "heartbeat_interval_ms = 900"), "timing:"),
            (
                &GOOD.replace("[timing]", "[limits]\nsession_lifetime_hours = 0\n[timing]"),
                "limits.session_lifetime_hours = 0",
            ),
            (
                &GOOD.replace("[timing]", "[limits]\nsends_per_account_per_minute = 0\n[timing]"),
                "limits.sends_per_account",
            ),
            (&GOOD.replace("[timing]", "[limits]\nlogins = 5\n[timing]"), "unknown field"),
            ("cluster_id = \"x\"\nmembers = []", "1 to 7 members"),
        ];
        for (text, expected) in cases {
            let error = ClusterConfig::from_toml(text).unwrap_err().to_string();
            assert!(error.contains(expected), "expected {expected:?} in {error:?}");
        }
    }
}
