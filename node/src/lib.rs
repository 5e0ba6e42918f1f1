//! Chorus: a replicated, persistent chat service.
//!
//! - [`chat`]: the chat state machine (knows nothing of replication).
//! - [`replication`]: the Raft core (knows nothing of chat, gRPC or SQLite).
//! - [`storage`]: SQLite and data-directory adapters.
//! - [`runtime`]: the seam through which commands are proposed and applied.
//! - [`server`]: the gRPC services.
//! - [`client`]: the client library used by the CLI.
//! - [`seam`]: the one place that reads the clock and the OS's randomness.

pub mod blocking_pool;
pub mod bugs;
pub mod chat;
pub mod client;
pub mod replication;
pub mod runtime;
pub mod seam;
pub mod server;
pub mod storage;
pub mod transport;
pub mod watch;
