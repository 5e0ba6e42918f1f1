//! Compiles the `.proto` files with protox, a protobuf compiler written in Rust, so the
//! build needs no `protoc` on the machine. madsim-tonic-build takes the descriptor set
//! from a file and emits both the real and the simulated tonic code.

use std::path::PathBuf;

use prost::Message;

const PROTO_ROOT: &str = "proto";
const PROTOS: &[&str] = &[
    "proto/chorus/v1/chat.proto",
    "proto/chorus/v1/command.proto",
    "proto/chorus/v1/raft.proto",
    "proto/chorus/v1/cluster.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, [PROTO_ROOT])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("chorus_descriptor.bin");
    std::fs::write(&descriptor_path, descriptors.encode_to_vec())?;
    tonic_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        // Log entry payloads are shared between the replica's log and every follower's
        // append: reference-counted bytes instead of a copy each.
        .bytes([".chorus.v1.LogEntry.command"])
        .compile_protos(PROTOS, &[PROTO_ROOT])?;
    Ok(())
}
