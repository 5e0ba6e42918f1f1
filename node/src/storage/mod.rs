//! Adapters to durable storage: opening SQLite databases with the settings Chorus relies
//! on, versioned schemas, and the lock that keeps two processes off one data directory.

mod data_dir;
mod log_store;
mod membership_codec;
mod snapshot_dir;
mod sqlite_log;

pub use data_dir::{DataDir, DataDirError};
pub use log_store::{Creation, LogStore, LogStoreFactory, ScrubProgress, SharedLog};
pub use membership_codec::{decode_membership, encode_membership};
pub use snapshot_dir::{IncomingSnapshot, OutgoingSnapshot, SnapshotDir, SnapshotFileError};
pub use sqlite_log::{ClusterIdentity, LogStoreError, SqliteLog, entry_checksum, hard_state_checksum};
