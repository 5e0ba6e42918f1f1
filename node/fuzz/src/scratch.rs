//! Where targets keep their databases: a fresh directory per run, in memory when the
//! machine has /dev/shm (a run then costs no disk I/O, and its fsyncs are free), and
//! databases copied from a template made once per process (creating a schema costs far
//! more than writing a file's bytes, and would bound the runs per second).

use std::path::Path;
use std::sync::OnceLock;

pub fn directory() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let made = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
    made.expect("a scratch directory for the fuzz target")
}

/// The bytes of a database made once by `make` (which must close it, so that it is one
/// file), kept in memory for the life of the process: nothing is left on disk.
pub struct Template {
    bytes: Vec<u8>,
}

impl Template {
    pub fn get(cell: &'static OnceLock<Template>, make: fn(&Path)) -> &'static Template {
        cell.get_or_init(|| {
            let directory = directory();
            let path = directory.path().join("template.db");
            make(&path);
            let left: Vec<_> = std::fs::read_dir(directory.path())
                .expect("the template's directory lists")
                .map(|entry| entry.expect("an entry").file_name())
                .collect();
            assert_eq!(left.len(), 1, "the template left more than its database behind: {left:?}");
            Template { bytes: std::fs::read(&path).expect("the template reads") }
        })
    }

    /// A copy of the template at `to`.
    pub fn copy_to(&self, to: &Path) {
        std::fs::write(to, &self.bytes).expect("the template copies");
    }
}
