//! Messages between replicas. The core only produces and consumes them; carrying them is
//! the transport's job, which may lose, delay, duplicate or reorder them.

use super::types::{Entry, LogIndex, LogPosition, NodeId, SnapshotMeta, Term};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term; for a pre-vote request, the term it would campaign in.
    pub term: Term,
    pub body: MessageBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageBody {
    /// "Could I win an election?" Sent with `term` = the sender's term + 1, which the
    /// sender does not adopt (§9.6). `leadership_transfer` marks the pre-vote a target runs
    /// on a `TimeoutNow`: voters grant it despite hearing from the leader only while that
    /// leader's appends announce a transfer to this candidate, so a `TimeoutNow` that
    /// arrives after its transfer was abandoned ends here, without a term change.
    PreVoteRequest {
        last_log: LogPosition,
        leadership_transfer: bool,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// `leadership_transfer` marks a campaign the old leader asked for (TimeoutNow), which
    /// voters accept even while they still hear from that leader (§3.10).
    VoteRequest {
        last_log: LogPosition,
        leadership_transfer: bool,
    },
    VoteResponse {
        granted: bool,
    },
    /// Replicates entries after `previous`, or with no entries serves as a heartbeat.
    /// `heartbeat_round` numbers the leader's heartbeat rounds for ReadIndex (§6.4);
    /// `transfer_target` names the member leadership is being handed to, while it is.
    AppendRequest {
        previous: LogPosition,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
        heartbeat_round: u64,
        transfer_target: Option<NodeId>,
    },
    AppendResponse {
        result: AppendResult,
        heartbeat_round: u64,
    },
    /// From a leader to a follower that needs entries the leader's log no longer holds
    /// (they were compacted into a snapshot, §5): replace your state with this snapshot.
    /// The transport delivers it only once the snapshot's data has arrived whole and been
    /// staged beside the follower's state. The follower answers with an `AppendResponse`
    /// (accepted through `snapshot.last_included` once installed, or through its commit
    /// index if it already had that far).
    InstallSnapshot {
        snapshot: SnapshotMeta,
    },
    /// From a leader handing over leadership: campaign now (§3.10). `last_log` is where the
    /// leader's log ended when it sent this, which the target's log must match.
    TimeoutNow {
        last_log: LogPosition,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendResult {
    /// The follower's log matches the leader's through `match_index` (and that part is durable).
    Accepted { match_index: LogIndex },
    /// The follower has no entry matching `rejected_previous`. The hint lets the leader skip
    /// a whole conflicting term at once (§5.3's optimization): `conflict_term` is the term
    /// the follower has at that index (None if its log is shorter), and `first_index_of_term`
    /// the first index it holds of that term (or its last index + 1).
    Rejected { rejected_previous: LogIndex, conflict_term: Option<Term>, first_index_of_term: LogIndex },
}

impl MessageBody {
    /// The name of the message kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::PreVoteRequest { .. } => "PreVoteRequest",
            MessageBody::PreVoteResponse { .. } => "PreVoteResponse",
            MessageBody::VoteRequest { .. } => "VoteRequest",
            MessageBody::VoteResponse { .. } => "VoteResponse",
            MessageBody::AppendRequest { .. } => "AppendRequest",
            MessageBody::AppendResponse { .. } => "AppendResponse",
            MessageBody::TimeoutNow { .. } => "TimeoutNow",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
        }
    }
}
