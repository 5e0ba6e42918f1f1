//! Timing and flow-control settings of a replica.

/// Settings shared by all members of a cluster. Times are in milliseconds of the clock the
/// caller feeds to `tick`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// How often a leader sends heartbeats.
    pub heartbeat_interval_ms: u64,
    /// Election timeouts are drawn uniformly from [min, max] (§3.4, randomized timeouts).
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Most entries in one append message (batching bound).
    pub append_entries_max: usize,
    /// Most payload bytes in one append message; a single larger entry is still sent alone.
    pub append_bytes_max: usize,
    /// Most append messages in flight to one follower (pipelining bound).
    pub inflight_appends_max: usize,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            append_entries_max: 512,
            append_bytes_max: 1024 * 1024,
            inflight_appends_max: 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("heartbeat interval must be at least 1 ms")]
    HeartbeatZero,
    #[error(
        "election timeout minimum ({min} ms) must be at least twice the heartbeat interval ({heartbeat} ms), or followers time out between heartbeats"
    )]
    ElectionTooShort { min: u64, heartbeat: u64 },
    #[error("election timeout maximum ({max} ms) must exceed the minimum ({min} ms) so that timeouts are randomized")]
    ElectionRangeEmpty { min: u64, max: u64 },
    #[error("{name} must be at least 1")]
    BoundZero { name: &'static str },
}

impl ReplicaConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval_ms == 0 {
            return Err(ConfigError::HeartbeatZero);
        }
        if self.election_timeout_min_ms < 2 * self.heartbeat_interval_ms {
            return Err(ConfigError::ElectionTooShort {
                min: self.election_timeout_min_ms,
                heartbeat: self.heartbeat_interval_ms,
            });
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err(ConfigError::ElectionRangeEmpty {
                min: self.election_timeout_min_ms,
                max: self.election_timeout_max_ms,
            });
        }
        for (name, value) in [
            ("append_entries_max", self.append_entries_max),
            ("append_bytes_max", self.append_bytes_max),
            ("inflight_appends_max", self.inflight_appends_max),
        ] {
            if value == 0 {
                return Err(ConfigError::BoundZero { name });
            }
        }
        Ok(())
    }
}
