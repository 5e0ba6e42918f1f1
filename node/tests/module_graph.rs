//! The library's modules are layers, and the imports must say so: each module may use only
//! the modules listed for it below, and the replication core and the chat state machine
//! may not name the crates that would tie them to a transport or a database. A new edge
//! fails this test until someone decides, here and in `docs/design.md`, that it belongs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each top-level module of `node/src`, lowest layer first, with the modules it may use.
const LAYERS: &[(&str, &[&str])] = &[
    ("bugs", &[]),
    ("seam", &[]),
    ("watch", &[]),
    ("blocking_pool", &["seam"]),
    ("sqlite", &[]),
    ("backoff", &[]),
    ("host", &[]),
    ("replication", &["bugs"]),
    ("cluster_config", &["replication"]),
    ("chat", &["bugs", "seam", "sqlite"]),
    ("storage", &["bugs", "replication", "sqlite"]),
    ("tls", &["host", "seam"]),
    // The transport streams snapshot files, which `storage` names and checks.
    ("transport", &["backoff", "bugs", "replication", "seam", "storage", "tls", "watch"]),
    ("runtime", &["blocking_pool", "bugs", "chat", "replication", "seam", "sqlite", "storage", "transport", "watch"]),
    ("server", &["blocking_pool", "chat", "cluster_config", "host", "replication", "runtime", "seam", "tls", "watch"]),
    (
        "node",
        &[
            "backoff",
            "blocking_pool",
            "bugs",
            "chat",
            "cluster_config",
            "replication",
            "runtime",
            "seam",
            "server",
            "sqlite",
            "storage",
            "tls",
            "transport",
            "watch",
        ],
    ),
    // The client knows the protocol (the proto crate) and nothing of the node.
    ("client", &["backoff", "seam", "tls"]),
    // Starts node processes; knows the configuration format and the protocol.
    ("supervisor", &["client", "cluster_config", "replication", "seam", "tls"]),
];

/// External crates a module must not name: the core runs in any runtime and under any
/// storage, and the state machine knows nothing of networks or async runtimes.
const FORBIDDEN_CRATES: &[(&str, &[&str])] = &[
    ("replication", &["rusqlite", "tonic", "tokio", "chorus_proto", "prost", "madsim"]),
    ("chat", &["tonic", "tokio", "madsim"]),
    ("client", &["rusqlite"]),
];

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The Rust files of one top-level module: `name.rs`, or everything under `name/`.
fn module_files(name: &str) -> Vec<PathBuf> {
    let single = source_dir().join(format!("{name}.rs"));
    if single.is_file() {
        return vec![single];
    }
    let mut files = Vec::new();
    let mut pending = vec![source_dir().join(name)];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("module {name}: {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// How deep below the crate root the module a file defines sits: `seam.rs` and
/// `chat/mod.rs` are 1, `chat/queries.rs` is 2. That many `super::` reach the root.
fn file_depth(file: &Path) -> usize {
    let relative = file.strip_prefix(source_dir()).expect("a file under src/");
    let components = relative.components().count();
    if relative.file_name().is_some_and(|name| name == "mod.rs") { components - 1 } else { components }
}

/// The top-level modules a file names: through `crate::` (paths, `crate::a::B`, and
/// grouped imports, `use crate::{a::B, b}`; a glob `crate::*` counts as `*`), and through
/// as many `super::` as reach the crate root from it (only names of top-level modules
/// count there: a test module's `super::` is its file's).
fn root_references(source: &str, depth: usize) -> BTreeSet<String> {
    let mut found = paths_after(source, "crate::");
    let supers = "super::".repeat(depth);
    let modules: BTreeSet<&str> = LAYERS.iter().map(|(name, _)| *name).collect();
    found.extend(paths_after(source, &supers).into_iter().filter(|name| modules.contains(name.as_str())));
    found
}

/// The first segments of the paths that follow `prefix` (which starts a path: not
/// preceded by an identifier, `$` or another `::`). Further `super::`, as inside an inline
/// module, are skipped: they lead no lower.
fn paths_after(source: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find(prefix) {
        let before = &rest[..at];
        let inside_a_longer_path = before.chars().next_back().is_some_and(|c| c.is_alphanumeric() || "_$:".contains(c));
        rest = &rest[at + prefix.len()..];
        if inside_a_longer_path {
            continue; // `$crate::` in a macro, `a::super::`, or a longer identifier
        }
        let mut path = rest;
        while let Some(further) = path.strip_prefix("super::") {
            path = further;
        }
        if let Some(group) = path.strip_prefix('{') {
            // A group's top-level items: each one's first segment, up to `::` or `,`.
            let (mut depth, mut item, mut past_first_segment) = (0, String::new(), false);
            for c in group.chars() {
                match c {
                    '}' if depth == 0 => break,
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        take_ident(&item, &mut found);
                        (item, past_first_segment) = (String::new(), false);
                    }
                    ':' if depth == 0 => past_first_segment = true,
                    _ if depth == 0 && !past_first_segment => item.push(c),
                    _ => {}
                }
            }
            take_ident(&item, &mut found);
        } else if path.starts_with('*') {
            found.insert("*".to_owned());
        } else {
            let ident: String = path.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            take_ident(&ident, &mut found);
        }
    }
    found
}

fn take_ident(item: &str, found: &mut BTreeSet<String>) {
    let ident = item.trim();
    if !ident.is_empty() && ident.chars().all(|c| c.is_alphanumeric() || c == '_') {
        found.insert(ident.to_owned());
    }
}

/// Whether `source` names the crate `krate`: as a path root (`krate::`, `::krate::`), or
/// in `use krate …` / `extern crate krate`; not as part of a longer name or a sub-path.
fn names_crate(source: &str, krate: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    source.match_indices(krate).any(|(at, _)| {
        let (before, after) = (&source[..at], &source[at + krate.len()..]);
        if before.chars().next_back().is_some_and(ident) || after.chars().next().is_some_and(ident) {
            return false;
        }
        // `a::krate::` is a path through some other root, `::krate::` names the crate.
        if let Some(head) = before.strip_suffix("::")
            && head.chars().next_back().is_some_and(|c| ident(c) || c == '>')
        {
            return false;
        }
        let head = before.trim_end();
        after.starts_with("::") || head.ends_with("use") || head.ends_with("extern crate")
    })
}

#[test]
fn the_reference_parser_sees_paths_and_groups() {
    let source = "use crate::a::B;\nuse crate::{b::C, c, d::{E, F}};\nfn f() { crate::e::g(); $crate::h::i(); }";
    let found: Vec<_> = root_references(source, 1).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "d", "e"]);
    assert!(root_references("use crate::*;", 1).contains("*"));
    // Through `super::` only as many as reach the root, and only module names.
    let supers = "use super::server::X; use super::local; mod tests { use super::super::node; use super::*; }";
    assert_eq!(root_references(supers, 1).into_iter().collect::<Vec<_>>(), ["node", "server"]);
    assert_eq!(root_references(supers, 2).into_iter().collect::<Vec<_>>(), ["node"]);
    for naming in ["use tokio::sync;", "use ::tokio::sync::Mutex;", "use tokio as t;", "extern crate tokio;"] {
        assert!(names_crate(naming, "tokio"), "{naming}");
    }
    assert!(!names_crate("use my_tokio::sync; chorus::tokio::x; <T>::tokio::y; // tokio runtime", "tokio"));
}

#[test]
fn every_module_is_in_a_layer() {
    let mut on_disk = BTreeSet::new();
    for entry in std::fs::read_dir(source_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        // lib.rs declares the modules; main.rs and cli/ are the binary, above all layers.
        if !["lib", "main", "cli"].contains(&name.as_str()) {
            on_disk.insert(name);
        }
    }
    let listed: BTreeSet<String> = LAYERS.iter().map(|(name, _)| (*name).to_owned()).collect();
    assert_eq!(on_disk, listed, "every module of node/src has a place in LAYERS, and only those");
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let mut violations = Vec::new();
    for (module, allowed) in LAYERS {
        for file in module_files(module) {
            let source = std::fs::read_to_string(&file).unwrap();
            for used in root_references(&source, file_depth(&file)) {
                if used != *module && !allowed.contains(&used.as_str()) {
                    violations.push(format!("{} uses crate::{used}", file.display()));
                }
            }
        }
    }
    // The layer list itself is one way: a module is allowed only modules listed before it.
    for (position, (module, allowed)) in LAYERS.iter().enumerate() {
        for used in *allowed {
            let below = LAYERS[..position].iter().any(|(name, _)| name == used);
            assert!(below, "LAYERS lets {module} use {used}, which is not below it");
        }
    }
    assert!(violations.is_empty(), "imports against the layers:\n{}", violations.join("\n"));
}

#[test]
fn the_core_and_the_state_machine_name_no_transport_or_database() {
    let mut violations = Vec::new();
    for (module, crates) in FORBIDDEN_CRATES {
        for file in module_files(module) {
            let source = std::fs::read_to_string(&file).unwrap();
            for krate in *crates {
                if names_crate(&source, krate) {
                    violations.push(format!("{} names {krate}", file.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
