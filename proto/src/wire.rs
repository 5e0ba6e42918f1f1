//! Constants of the wire protocol that are not messages: the machine-readable reasons a
//! Chorus error carries. Every error a node returns has a `google.rpc.ErrorInfo` detail
//! (in the `grpc-status-details-bin` trailer, as gRPC's richer error model prescribes)
//! whose `domain` is [`ERROR_DOMAIN`] and whose `reason` is one of these. A client in any
//! language can act on the reason instead of parsing the message, which is written for
//! people and may change. `chat.proto` lists them with the status code each comes with.

/// `ErrorInfo.domain` of every Chorus error.
pub const ERROR_DOMAIN: &str = "chorus.v1";

/// UNAVAILABLE. This node is not the leader; nothing was applied. `ErrorInfo.metadata`
/// names the leader, when known, under [`LEADER_ID`] and [`LEADER_ADDRESS`] (its client
/// address): send the request there.
pub const NOT_LEADER: &str = "NOT_LEADER";
/// UNAVAILABLE. The request was certainly not applied (leadership changed or is moving, or
/// a read could not be confirmed); retrying it is safe. Comes with `RetryInfo`.
pub const NOT_APPLIED: &str = "NOT_APPLIED";
/// UNAVAILABLE. A change may or may not have taken effect (the leader lost its majority or
/// leadership before the command was known to commit). Retrying a send with the same
/// session and sequence is safe: it is stored once either way.
pub const OUTCOME_UNKNOWN: &str = "OUTCOME_UNKNOWN";
/// UNAVAILABLE. The node is stopping; nothing was applied. Try another node.
pub const SHUTTING_DOWN: &str = "SHUTTING_DOWN";
/// UNAVAILABLE. This node's storage failed; try another node.
pub const STORAGE_FAILURE: &str = "STORAGE_FAILURE";
/// RESOURCE_EXHAUSTED. The node is busy (too much waiting to commit, too many password
/// checks or subscriptions at once); nothing was applied. Retry after `RetryInfo`'s delay.
pub const OVERLOADED: &str = "OVERLOADED";
/// RESOURCE_EXHAUSTED. Too many login attempts for this account or from this address, or
/// too many sends from this account, on this node (the cluster's `[limits]`); nothing was
/// applied. Retry after `RetryInfo`'s delay.
pub const RATE_LIMITED: &str = "RATE_LIMITED";
/// INVALID_ARGUMENT. The request breaks a documented rule; the message says which.
pub const INVALID_INPUT: &str = "INVALID_INPUT";
/// UNAUTHENTICATED. No session, or it ended (logout, expiry, a password change in another
/// session, a newer login past the cap, account deleted): log in again.
pub const SESSION_INVALID: &str = "SESSION_INVALID";
/// UNAUTHENTICATED. A cluster method (`chorus.v1.Cluster`) called without a cluster
/// credential: over TLS, a client certificate from the cluster's CA.
pub const CREDENTIAL_REQUIRED: &str = "CREDENTIAL_REQUIRED";
/// UNAUTHENTICATED. Unknown username or wrong password (deliberately not saying which).
pub const LOGIN_FAILED: &str = "LOGIN_FAILED";
/// UNAUTHENTICATED. DeleteAccount or ChangePassword with the wrong password; nothing changed.
pub const WRONG_PASSWORD: &str = "WRONG_PASSWORD";
/// ALREADY_EXISTS. The username is taken, or belonged to a deleted account.
pub const USERNAME_TAKEN: &str = "USERNAME_TAKEN";
/// ALREADY_EXISTS. The session's sequence number was used for a different message;
/// `ErrorInfo.metadata[MESSAGE_ID]` is that message.
pub const SEQUENCE_REUSED: &str = "SEQUENCE_REUSED";
/// FAILED_PRECONDITION. The send's sequence is at or below what the session acknowledged,
/// so the server no longer remembers it: it was not stored (again).
pub const SEQUENCE_ACKNOWLEDGED: &str = "SEQUENCE_ACKNOWLEDGED";
/// RESOURCE_EXHAUSTED. The session has as many unacknowledged sends as the server
/// remembers; acknowledge answers (`acknowledged_through`) before sending more.
pub const UNACKNOWLEDGED_SENDS_LIMIT: &str = "UNACKNOWLEDGED_SENDS_LIMIT";
/// RESOURCE_EXHAUSTED. The session has as many live subscriptions on this node as a node
/// allows; close one (retrying will not help until then).
pub const SUBSCRIPTIONS_LIMIT: &str = "SUBSCRIPTIONS_LIMIT";
/// NOT_FOUND. A named user or message does not exist (or is not the caller's).
pub const NOT_FOUND: &str = "NOT_FOUND";
/// FAILED_PRECONDITION. A sender tried to delete a message its recipient already read.
pub const MESSAGE_ALREADY_READ: &str = "MESSAGE_ALREADY_READ";
/// ABORTED. The state changed while the request was in flight (a password changed, a
/// token collided); sending the request again (as a new request) may succeed.
pub const CONFLICT: &str = "CONFLICT";
/// INTERNAL. A bug in a node; the message says what.
pub const INTERNAL: &str = "INTERNAL";
/// UNAVAILABLE, from the client library rather than a node: no node served the call
/// before its deadline. `ErrorInfo.metadata[OUTCOME]` is `unknown` when some attempt may
/// have taken effect, `not_applied` when every node said it had not.
pub const CLUSTER_UNREACHABLE: &str = "CLUSTER_UNREACHABLE";

/// The request metadata key that carries a session token, as `Bearer <token>`
/// ([`BEARER_PREFIX`]): every call that acts as a user sends it, and no request body
/// holds a token.
pub const AUTHORIZATION: &str = "authorization";
/// How the value of [`AUTHORIZATION`] begins (the scheme and its space). Nodes accept the
/// scheme in any case, as HTTP does.
pub const BEARER_PREFIX: &str = "Bearer ";

/// `ErrorInfo.metadata` key of [`NOT_LEADER`]: the leader's member id.
pub const LEADER_ID: &str = "leader_id";
/// `ErrorInfo.metadata` key of [`NOT_LEADER`]: the leader's client address (`HOST:PORT`).
pub const LEADER_ADDRESS: &str = "leader_address";
/// `ErrorInfo.metadata` key of [`SEQUENCE_REUSED`]: the id of the message stored first.
pub const MESSAGE_ID: &str = "message_id";
/// `ErrorInfo.metadata` key of [`CLUSTER_UNREACHABLE`]: `unknown` or `not_applied`. The
/// client library also sets it to `unknown` on any other error it returns after an earlier
/// attempt of the same call may have taken effect (a retried send refused because its
/// session ended meanwhile may still have been stored).
pub const OUTCOME: &str = "outcome";

/// Every reason above, for tests and clients that want to check they know them all.
pub const ALL_REASONS: [&str; 22] = [
    NOT_LEADER,
    NOT_APPLIED,
    OUTCOME_UNKNOWN,
    SHUTTING_DOWN,
    STORAGE_FAILURE,
    OVERLOADED,
    RATE_LIMITED,
    INVALID_INPUT,
    SESSION_INVALID,
    CREDENTIAL_REQUIRED,
    LOGIN_FAILED,
    WRONG_PASSWORD,
    USERNAME_TAKEN,
    SEQUENCE_REUSED,
    SEQUENCE_ACKNOWLEDGED,
    UNACKNOWLEDGED_SENDS_LIMIT,
    SUBSCRIPTIONS_LIMIT,
    NOT_FOUND,
    MESSAGE_ALREADY_READ,
    CONFLICT,
    INTERNAL,
    CLUSTER_UNREACHABLE,
];
