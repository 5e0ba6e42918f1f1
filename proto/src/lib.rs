//! Generated code for Chorus's protocol buffers: the `chorus.v1` gRPC services and the
//! storage messages (the replicated `Command`).

#![allow(clippy::all)]
#![allow(missing_docs)]

pub mod v1 {
    tonic::include_proto!("chorus.v1");
}
