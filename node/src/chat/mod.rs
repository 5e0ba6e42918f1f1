//! The chat service's state machine: accounts, sessions and messages, changed only by
//! applying `Command`s in log order. It knows nothing of how the log is replicated.

pub mod credentials;
pub mod limits;
mod outcome;
mod queries;
mod schema;
mod snapshot;
mod state_machine;
pub mod validate;

pub use outcome::{MessagePage, MessageView, Outcome, Rejection};
pub use queries::{ChatReader, Credentials, SessionUser};
pub use snapshot::check_snapshot;
pub use state_machine::{AppliedBatch, ChatStateMachine, StateMachineError};

use chorus_proto::v1::Command;
use prost::Message as _;

/// The command a log entry's payload holds. A payload that does not decode (a damaged or
/// forged entry) is an empty command, which apply rejects the same way on every replica:
/// the log is never stuck on an entry, nor are replicas split by one.
pub fn decode_logged_command(payload: &[u8]) -> Command {
    Command::decode(payload).unwrap_or_default()
}
