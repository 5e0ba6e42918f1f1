//! The vocabulary of the replication core.

use std::collections::BTreeSet;

use bytes::Bytes;

/// A member of the cluster. Ids are chosen by the operator and never reused.
pub type NodeId = u64;
/// A Raft term: a period with at most one leader. Terms only grow.
pub type Term = u64;
/// A position in the replicated log, starting at 1; 0 means "before the first entry".
pub type LogIndex = u64;

/// The largest term a replica adopts, stores or campaigns in. Terms and indexes are kept
/// as SQLite's signed 64-bit integers, and every step on them (`+ 1`) must stay within
/// that range: a value beyond it can only come from a corrupt or forged frame, and is
/// refused. (A correct cluster never comes near it: 2^63 elections, one a second, take
/// longer than the age of the universe.)
pub const TERM_MAX: Term = i64::MAX as u64 - 1;
/// The largest log index a replica accepts or stores (see [`TERM_MAX`]).
pub const INDEX_MAX: LogIndex = i64::MAX as u64 - 1;

/// Where an entry sits: its index and the term of the leader that created it. Two logs
/// holding entries at the same position hold identical prefixes (Log Matching).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogPosition {
    pub term: Term,
    pub index: LogIndex,
}

impl LogPosition {
    pub const ZERO: Self = Self { term: 0, index: 0 };

    /// True when a log ending here is at least as up to date as one ending at `other`
    /// (Raft dissertation §3.6.1: compare last terms, then lengths).
    pub fn at_least_as_up_to_date_as(&self, other: &LogPosition) -> bool {
        (self.term, self.index) >= (other.term, other.index)
    }
}

/// What an entry carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Payload {
    /// Appended by every new leader (§3.6.2): committing it commits everything before it and
    /// tells the leader its commit index is current, which ReadIndex needs.
    Noop,
    /// An application command, opaque to the core.
    Command(Bytes),
    /// A new configuration of the cluster (§4.1), in effect from the moment a replica
    /// appends it, committed or not. Proposed through `Replica::propose_membership`, one
    /// member added, promoted or removed at a time.
    Membership(Membership),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    pub term: Term,
    pub index: LogIndex,
    pub payload: Payload,
}

impl Entry {
    pub fn position(&self) -> LogPosition {
        LogPosition { term: self.term, index: self.index }
    }

    /// Approximate size on the wire, for flow control.
    pub fn size_bytes(&self) -> usize {
        const HEADER_BYTES: usize = 24;
        HEADER_BYTES
            + match &self.payload {
                Payload::Noop => 0,
                Payload::Command(bytes) => bytes.len(),
                Payload::Membership(membership) => membership.size_bytes(),
            }
    }
}

/// Who takes part in the cluster (a configuration, §4). Voters elect leaders and count
/// toward every majority; learners receive the log (to catch up before a promotion) but
/// neither vote nor count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// What the caller attaches to this configuration, replicated with it and opaque to
    /// the core (Chorus: every member's addresses).
    pub context: Bytes,
}

/// Most voters a configuration may have (a majority of 7 is 4: more buys little and slows
/// every commit).
pub const VOTERS_MAX: usize = 7;
/// Most learners a configuration may have.
pub const LEARNERS_MAX: usize = 4;
/// Largest context a configuration may carry: it travels in every snapshot offer and
/// stays in memory for every configuration the log holds.
pub const MEMBERSHIP_CONTEXT_BYTES_MAX: usize = 16 * 1024;

impl Membership {
    /// Voters `voters`, no learners, no context: a cluster's first configuration.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Self { voters: voters.into_iter().collect(), ..Self::default() }
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// A voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Voters and learners, in id order.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        let mut all: Vec<NodeId> = self.voters.iter().chain(&self.learners).copied().collect();
        all.sort_unstable();
        all.into_iter()
    }

    /// How many voters make a majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Why no correct replica would hold this configuration, if none would.
    pub fn invalid(&self) -> Option<&'static str> {
        if self.voters.is_empty() {
            Some("a configuration without voters")
        } else if self.voters.len() > VOTERS_MAX || self.learners.len() > LEARNERS_MAX {
            Some("a configuration with more members than a cluster may have")
        } else if self.voters.contains(&0) || self.learners.contains(&0) {
            Some("a configuration naming node 0 (ids start at 1)")
        } else if !self.voters.is_disjoint(&self.learners) {
            Some("a configuration naming a node both voter and learner")
        } else if self.context.len() > MEMBERSHIP_CONTEXT_BYTES_MAX {
            Some("a configuration whose context is larger than a cluster's may be")
        } else {
            None
        }
    }

    fn size_bytes(&self) -> usize {
        8 * (self.voters.len() + self.learners.len()) + self.context.len()
    }
}

/// What a snapshot of the state machine covers: every entry through `last_included`
/// applied, with the configuration in effect at that point. The core handles only this
/// description; the state itself is the caller's (for Chorus, a copy of the chat database),
/// and travels beside the `InstallSnapshot` message that names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnapshotMeta {
    pub last_included: LogPosition,
    pub membership: Membership,
}

/// What must survive a crash besides the log: the current term and the vote cast in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
}

/// The role a replica plays in its current term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    /// Asking whether it could win an election, without changing its term (PreVote, §9.6).
    PreCandidate,
    Candidate,
    Leader,
}
