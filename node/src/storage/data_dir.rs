//! A node's data directory, held under an exclusive lock for as long as the node runs.
//! Two processes writing one SQLite database through separate connections would be safe for
//! SQLite but fatal for Raft (two nodes with one identity), so the second one is refused.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create data directory {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("cannot open lock file {path}: {source}")]
    LockFile { path: PathBuf, source: std::io::Error },
    #[error("data directory {path} is in use by another process (is a node already running on it?)")]
    InUse { path: PathBuf },
}

/// An open, locked data directory. The lock is released when this is dropped (or the
/// process dies: the operating system releases it then).
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

const LOCK_FILE_NAME: &str = "LOCK";

impl DataDir {
    pub fn open(path: &Path) -> Result<Self, DataDirError> {
        std::fs::create_dir_all(path).map_err(|source| DataDirError::Create { path: path.to_owned(), source })?;
        let lock_path = path.join(LOCK_FILE_NAME);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| DataDirError::LockFile { path: lock_path.clone(), source })?;
        match lock.try_lock() {
            Ok(()) => Ok(Self { path: path.to_owned(), _lock: lock }),
            Err(TryLockError::WouldBlock) => Err(DataDirError::InUse { path: path.to_owned() }),
            Err(TryLockError::Error(source)) => Err(DataDirError::LockFile { path: lock_path, source }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the chat state machine's database lives.
    pub fn chat_database(&self) -> PathBuf {
        self.path.join("chat.sqlite3")
    }

    /// Where the replication log, term and vote live.
    pub fn raft_database(&self) -> PathBuf {
        self.path.join("raft.sqlite3")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_of_a_locked_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap();
        assert!(matches!(DataDir::open(dir.path()), Err(DataDirError::InUse { .. })));
        drop(first);
        DataDir::open(dir.path()).unwrap();
    }
}
