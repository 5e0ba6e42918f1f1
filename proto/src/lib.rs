//! Chorus's protocol: the generated code for the `chorus.v1` gRPC services and the storage
//! messages (the replicated `Command`), and the constants of the wire that are not
//! messages ([`wire`]: the reasons errors carry).

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("chorus.v1");
}

pub mod wire;
