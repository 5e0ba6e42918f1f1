//! Where targets keep their databases: a fresh directory per run, in memory when the
//! machine has /dev/shm (a run then costs no disk I/O, and its fsyncs are free), and
//! databases copied from a template made once per process (creating a schema costs far
//! more than copying a file, and would bound the runs per second).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub fn directory() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let made = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
    made.expect("a scratch directory for the fuzz target")
}

/// A database made once by `make` (which must close it, so that it is one file), kept
/// for the life of the process.
pub struct Template {
    _directory: tempfile::TempDir,
    path: PathBuf,
}

impl Template {
    pub fn get(cell: &'static OnceLock<Template>, make: fn(&Path)) -> &'static Template {
        cell.get_or_init(|| {
            let directory = directory();
            let path = directory.path().join("template.db");
            make(&path);
            for suffix in ["-wal", "-shm", "-journal"] {
                let side = PathBuf::from(format!("{}{suffix}", path.display()));
                assert!(!side.exists(), "the template left {} behind", side.display());
            }
            Template { _directory: directory, path }
        })
    }

    /// A copy of the template at `to`.
    pub fn copy_to(&self, to: &Path) {
        std::fs::copy(&self.path, to).expect("the template copies");
    }
}
