//! Adapters to durable storage: opening SQLite databases with the settings Chorus relies
//! on, versioned schemas, and the lock that keeps two processes off one data directory.

mod data_dir;
mod log_store;
mod raft_log;
mod sqlite;

pub use data_dir::{DataDir, DataDirError};
pub use log_store::{Creation, LogStore, LogStoreFactory, ScrubProgress, SharedLog};
pub use raft_log::{ClusterIdentity, LogStoreError, SqliteLog};
pub use sqlite::{Sharing, SqliteError, migrate, open_database, open_read_only};
