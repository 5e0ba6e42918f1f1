//! Chorus: a replicated, persistent chat service.
//!
//! The modules are layers; each uses only the ones listed before it (checked by
//! `tests/module_graph.rs`, drawn in `docs/design.md`):
//!
//! - [`seam`]: the one place that reads the clock and the OS's randomness; [`bugs`]: the
//!   planted mistakes the simulation must catch (off unless asked for).
//! - [`watch`], [`blocking_pool`], [`sqlite`], [`backoff`], [`host`]: small tools the
//!   layers above share.
//! - [`tls`]: the cluster's certificates, TLS configurations that reload, the acceptor,
//!   and which member a peer's certificate names (real builds only).
//! - [`replication`]: the Raft core (knows nothing of chat, gRPC or SQLite).
//! - [`cluster_config`]: the `cluster.toml` format: the members and the timing.
//! - [`chat`]: the chat state machine (knows nothing of replication).
//! - [`storage`]: the Raft log in SQLite and the data directory.
//! - [`transport`]: carries the core's messages between nodes over gRPC.
//! - [`runtime`]: drives the core, applies what commits to the chat state, and is the seam
//!   through which commands are proposed.
//! - [`server`]: the gRPC services clients call.
//! - [`node`]: the composition root, a running node made of all of the above.
//! - [`client`]: the client library the CLI uses; it knows only the protocol.
//! - [`supervisor`]: a cluster of node processes on this machine (`chorus demo`, the
//!   end-to-end tests).

pub mod bugs;
pub mod seam;

pub mod backoff;
pub mod blocking_pool;
pub mod host;
pub mod sqlite;
pub mod watch;

#[cfg(not(madsim))]
pub mod tls;

pub mod replication;

pub mod chat;
pub mod cluster_config;
pub mod storage;
pub mod transport;

pub mod runtime;

pub mod server;

pub mod node;

pub mod client;

#[cfg(not(madsim))]
pub mod supervisor;
