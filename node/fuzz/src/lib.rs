//! Coverage-guided fuzz targets: every decoder of data that comes from a peer or from the
//! disk, and the checks of client input. Each target is a function from bytes to nothing
//! that panics exactly when it finds a defect: a panic in Chorus's code, or a broken
//! property asserted here. `scripts/fuzz.sh` runs them under libFuzzer with coverage; `cargo
//! test` replays the committed corpus through them (see `tests` below), so an input that
//! once found a defect stays a regression test.
//!
//! Targets:
//! - [`raft_batch`]: a frame from a peer, through the very checks the Raft service runs.
//! - [`raft_step`]: one admitted peer message, stepped into a replica in each role.
//! - [`chat_command`]: log entries, decoded and applied by the chat state machine.
//! - [`log_record`]: a Raft log on disk, damaged field by field, opened and read back.
//! - [`api_input`]: the syntactic checks of every client-supplied string and number.
//! - [`api_handlers`]: calls to the chat service's handlers, with any request and any
//!   credentials.

mod allocation_limit;
pub mod api_handlers;
pub mod api_input;
pub mod chat_command;
pub mod input;
pub mod log_record;
pub mod raft_batch;
pub mod raft_step;
mod scratch;
pub mod seeds;

/// A target: runs one input, panicking on a defect.
pub type Target = fn(&[u8]);

/// The targets, by the name of their corpus directory and binary.
pub const TARGETS: [(&str, Target); 6] = [
    ("raft_batch", raft_batch::run),
    ("raft_step", raft_step::run),
    ("chat_command", chat_command::run),
    ("log_record", log_record::run),
    ("api_input", api_input::run),
    ("api_handlers", api_handlers::run),
];

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn corpus_dir(target: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target)
    }

    /// Every committed input runs clean: the seeds, what fuzzing added, and the inputs that
    /// once found a defect. Without instrumentation, this is the fuzzers' regression test.
    #[test]
    fn the_committed_corpus_runs_clean() {
        for (target, run) in TARGETS {
            let mut inputs: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
                .unwrap_or_else(|e| panic!("corpus of {target}: {e}"))
                .map(|entry| entry.expect("a corpus entry").path())
                .collect();
            inputs.sort();
            assert!(inputs.len() >= 3, "the corpus of {target} holds only {} inputs", inputs.len());
            for input in inputs {
                let data = std::fs::read(&input).expect("a corpus file");
                run(&data);
            }
        }
    }

    /// scripts/fuzz.sh runs exactly these targets, and each has its binary: a target added
    /// here but not there would never be fuzzed.
    #[test]
    fn the_script_and_the_manifest_name_every_target() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let script = std::fs::read_to_string(root.join("../../scripts/fuzz.sh")).expect("scripts/fuzz.sh");
        let listed = script
            .lines()
            .find_map(|line| line.strip_prefix("targets=(")?.strip_suffix(')'))
            .expect("fuzz.sh lists its targets as targets=(...)");
        let names: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
        assert_eq!(listed.split_whitespace().collect::<Vec<_>>(), names);
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("the manifest");
        for name in names {
            assert!(manifest.contains(&format!("name = \"{name}\"")), "no [[bin]] for {name}");
            assert!(root.join("fuzz_targets").join(format!("{name}.rs")).is_file(), "no fuzz_targets/{name}.rs");
        }
    }

    /// The committed corpus holds every seed as `fuzz-seeds` writes it: seeds changed with
    /// the code they exercise are written again (`scripts/fuzz.sh seed`).
    #[test]
    fn the_corpus_holds_the_current_seeds() {
        for seed in seeds::all() {
            let path = corpus_dir(seed.target).join(seed.file_name());
            let stored =
                std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run scripts/fuzz.sh seed", path.display()));
            assert_eq!(stored, seed.data, "{} differs from its seed; run scripts/fuzz.sh seed", path.display());
        }
    }
}
