//! The snapshot files of a node: `snapshots/` in its data directory.
//!
//! A complete snapshot is `snapshot-<index>-<term>.sqlite3`, named by the last entry it
//! covers; it appears under that name only once its data is whole and durable (written as
//! a `.partial` file, fsynced, renamed, the directory fsynced). The log store records which
//! one is the latest; the node keeps that one (it sends it to followers, and installs it
//! again if it crashed midway through installing it) and deletes older ones.
//!
//! A snapshot received from a leader is `staged-<index>-<term>.sqlite3` until the replica
//! installs it, when the runtime renames it to its complete name: what a peer sends never
//! lands under the name of the snapshot the log records.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::replication::LogPosition;

const SUFFIX: &str = ".sqlite3";
const PREFIX: &str = "snapshot-";
const STAGED_PREFIX: &str = "staged-";
/// Bytes written to a received snapshot between two syncs: the last chunk's sync (and its
/// answer) then never waits for a whole multi-gigabyte file to reach the disk.
const SYNC_EVERY_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("snapshot file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("snapshot data from the leader is {got} bytes, not the {expected} announced")]
    Length { expected: u64, got: u64 },
    #[error("snapshot data from the leader fails its SHA-256")]
    Digest,
}

#[derive(Debug, Clone)]
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    /// Opens (creating) `snapshots/` under `data_dir`, removing partial files a crash left.
    pub fn open(data_dir: &Path) -> Result<Self, SnapshotFileError> {
        let dir = data_dir.join("snapshots");
        let io = |source| SnapshotFileError::Io { path: dir.clone(), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|extension| extension == "partial") {
                std::fs::remove_file(&path).map_err(|source| SnapshotFileError::Io { path, source })?;
            }
        }
        Ok(Self { dir })
    }

    /// Where the complete snapshot through `position` lives.
    pub fn path_of(&self, position: LogPosition) -> PathBuf {
        self.dir.join(format!("{PREFIX}{}-{}{SUFFIX}", position.index, position.term))
    }

    /// Gives a received, checked partial file its staged name (see
    /// [`SnapshotDir::staged_path_of`]): renamed, the directory fsynced.
    pub fn stage(&self, partial: &Path, position: LogPosition) -> Result<PathBuf, SnapshotFileError> {
        self.rename_durably(partial, self.staged_path_of(position))
    }

    /// Where a snapshot received from a leader waits to be installed.
    pub fn staged_path_of(&self, position: LogPosition) -> PathBuf {
        self.dir.join(format!("{STAGED_PREFIX}{}-{}{SUFFIX}", position.index, position.term))
    }

    /// Gives a staged snapshot its complete name (the replica installs it): renamed, the
    /// directory fsynced.
    pub fn promote(&self, position: LogPosition) -> Result<PathBuf, SnapshotFileError> {
        let (staged, path) = (self.staged_path_of(position), self.path_of(position));
        std::fs::rename(&staged, &path).map_err(|source| SnapshotFileError::Io { path: staged, source })?;
        self.sync_dir()?;
        Ok(path)
    }

    /// A fresh partial file's path for a snapshot being taken or received (`purpose` keeps
    /// the two apart). Any earlier file of that name is removed.
    pub fn partial(&self, purpose: &str) -> Result<PathBuf, SnapshotFileError> {
        let path = self.dir.join(format!("{purpose}.partial"));
        match std::fs::remove_file(&path) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                return Err(SnapshotFileError::Io { path, source });
            }
            _ => {}
        }
        Ok(path)
    }

    /// Gives a durable partial file its complete name: renamed, the directory fsynced.
    pub fn publish(&self, partial: &Path, position: LogPosition) -> Result<PathBuf, SnapshotFileError> {
        self.rename_durably(partial, self.path_of(position))
    }

    fn rename_durably(&self, partial: &Path, path: PathBuf) -> Result<PathBuf, SnapshotFileError> {
        std::fs::rename(partial, &path).map_err(|source| SnapshotFileError::Io { path: path.clone(), source })?;
        self.sync_dir()?;
        Ok(path)
    }

    fn sync_dir(&self) -> Result<(), SnapshotFileError> {
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| SnapshotFileError::Io { path: self.dir.clone(), source })
    }

    /// Deletes the complete and staged snapshots through an index below `kept`'s. Later
    /// ones stay: one may be a leader's, staged and waiting to be installed.
    pub fn remove_older_than(&self, kept: LogPosition) -> Result<(), SnapshotFileError> {
        let io = |source| SnapshotFileError::Io { path: self.dir.clone(), source };
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
            let index = name
                .strip_prefix(PREFIX)
                .or_else(|| name.strip_prefix(STAGED_PREFIX))
                .and_then(|rest| rest.strip_suffix(SUFFIX))
                .and_then(|rest| rest.split('-').next())
                .and_then(|index| index.parse::<u64>().ok());
            if index.is_some_and(|index| index < kept.index) {
                std::fs::remove_file(&path).map_err(|source| SnapshotFileError::Io { path, source })?;
            }
        }
        Ok(())
    }
}

/// A snapshot file open for sending. It is read through the handle opened first, so that
/// a newer snapshot deleting the file meanwhile (the leader takes them as it goes) does
/// not break the transfer: the data stays readable until the handle closes.
pub struct OutgoingSnapshot {
    path: PathBuf,
    file: File,
    length: u64,
    digest: [u8; 32],
}

impl OutgoingSnapshot {
    /// Opens the file; [`OutgoingSnapshot::hashed`] reads it through for its length and
    /// SHA-256.
    pub fn open(path: PathBuf) -> Result<Self, SnapshotFileError> {
        let file = File::open(&path).map_err(|source| SnapshotFileError::Io { path: path.clone(), source })?;
        Ok(Self { path, file, length: 0, digest: [0; 32] })
    }

    /// Reads the whole file through the handle for its length and SHA-256.
    pub fn hashed(mut self) -> Result<Self, SnapshotFileError> {
        let io = |source| SnapshotFileError::Io { path: self.path.clone(), source };
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 16];
        let mut length = 0u64;
        loop {
            let read = self.file.read(&mut buffer).map_err(io)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            length += read as u64;
        }
        self.length = length;
        self.digest = hasher.finalize().into();
        Ok(self)
    }

    pub fn length(&self) -> u64 {
        self.length
    }

    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Up to `bytes_max` bytes from `offset`.
    pub fn read_chunk(&mut self, offset: u64, bytes_max: usize) -> Result<Vec<u8>, SnapshotFileError> {
        let io = |source| SnapshotFileError::Io { path: self.path.clone(), source };
        self.file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut chunk = Vec::with_capacity(bytes_max);
        (&mut self.file).take(bytes_max as u64).read_to_end(&mut chunk).map_err(io)?;
        Ok(chunk)
    }
}

/// A snapshot arriving from the leader, written in order to a partial file.
pub struct IncomingSnapshot {
    path: PathBuf,
    file: File,
    hasher: Sha256,
    written: u64,
    expected_bytes: u64,
    expected_digest: [u8; 32],
}

impl IncomingSnapshot {
    pub fn create(path: PathBuf, expected_bytes: u64, expected_digest: [u8; 32]) -> Result<Self, SnapshotFileError> {
        let file = File::create(&path).map_err(|source| SnapshotFileError::Io { path: path.clone(), source })?;
        Ok(Self { path, file, hasher: Sha256::new(), written: 0, expected_bytes, expected_digest })
    }

    /// Bytes written so far: where the next chunk must start.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn is_whole(&self) -> bool {
        self.written == self.expected_bytes
    }

    /// Appends the next chunk; refuses one that would run past the announced length.
    pub fn append(&mut self, data: &[u8]) -> Result<(), SnapshotFileError> {
        let got = self.written + data.len() as u64;
        if got > self.expected_bytes {
            return Err(SnapshotFileError::Length { expected: self.expected_bytes, got });
        }
        let io = |source| SnapshotFileError::Io { path: self.path.clone(), source };
        self.file.write_all(data).map_err(io)?;
        self.hasher.update(data);
        if got / SYNC_EVERY_BYTES != self.written / SYNC_EVERY_BYTES {
            self.file.sync_data().map_err(io)?;
        }
        self.written = got;
        Ok(())
    }

    /// Checks the digest and makes the file durable; returns it, still partial, for the
    /// node to check what it holds before staging it ([`SnapshotDir::stage`]).
    pub fn finish(self) -> Result<PathBuf, SnapshotFileError> {
        if self.written != self.expected_bytes {
            return Err(SnapshotFileError::Length { expected: self.expected_bytes, got: self.written });
        }
        if <[u8; 32]>::from(self.hasher.finalize()) != self.expected_digest {
            return Err(SnapshotFileError::Digest);
        }
        self.file.sync_all().map_err(|source| SnapshotFileError::Io { path: self.path.clone(), source })?;
        Ok(self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Received data becomes a complete snapshot only whole and matching its digest, and
    /// a clean-up removes only snapshots older than the kept one.
    #[test]
    fn incoming_data_is_published_only_whole_and_matching() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = SnapshotDir::open(dir.path()).unwrap();
        let source = dir.path().join("source");
        std::fs::write(&source, b"0123456789").unwrap();
        let mut outgoing = OutgoingSnapshot::open(source.clone()).unwrap().hashed().unwrap();
        let (length, digest) = (outgoing.length(), outgoing.digest());
        // Deleted under the transfer (a newer snapshot replaced it): still readable.
        std::fs::remove_file(&source).unwrap();
        let position = LogPosition { index: 7, term: 2 };

        let mut incoming = IncomingSnapshot::create(snapshots.partial("incoming").unwrap(), length, digest).unwrap();
        incoming.append(&outgoing.read_chunk(0, 4).unwrap()).unwrap();
        assert!(matches!(incoming.append(b"too much data"), Err(SnapshotFileError::Length { .. })));
        incoming.append(&outgoing.read_chunk(4, 100).unwrap()).unwrap();
        assert!(incoming.is_whole());
        let partial = incoming.finish().unwrap();
        let staged = snapshots.stage(&partial, position).unwrap();
        assert_eq!(staged, snapshots.staged_path_of(position));
        assert!(!snapshots.path_of(position).exists(), "staged, not under a complete snapshot's name");
        let path = snapshots.promote(position).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789");

        let mut damaged = IncomingSnapshot::create(snapshots.partial("incoming").unwrap(), length, digest).unwrap();
        damaged.append(b"0123456780").unwrap();
        assert!(matches!(damaged.finish(), Err(SnapshotFileError::Digest)));

        std::fs::write(snapshots.path_of(LogPosition { index: 3, term: 1 }), b"old").unwrap();
        std::fs::write(snapshots.staged_path_of(LogPosition { index: 4, term: 1 }), b"old").unwrap();
        std::fs::write(snapshots.path_of(LogPosition { index: 30, term: 3 }), b"new").unwrap();
        snapshots.remove_older_than(position).unwrap();
        assert!(path.exists());
        assert!(!snapshots.path_of(LogPosition { index: 3, term: 1 }).exists());
        assert!(!snapshots.staged_path_of(LogPosition { index: 4, term: 1 }).exists());
        assert!(snapshots.path_of(LogPosition { index: 30, term: 3 }).exists());
    }
}
