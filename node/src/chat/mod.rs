//! The chat service's state machine: accounts, sessions and messages, changed only by
//! applying `Command`s in log order. It knows nothing of how the log is replicated.

pub mod credentials;
pub mod limits;
mod outcome;
mod queries;
mod schema;
mod state_machine;
pub mod validate;

pub use outcome::{MessagePage, MessageView, Outcome, Rejection};
pub use queries::{ChatReader, Credentials, SessionUser};
pub use state_machine::{AppliedBatch, ChatStateMachine, StateMachineError};
