//! The composition root: a running node is its data directory, the chat state machine,
//! the replication runtime, the transport to its peers and the servers for clients and
//! peers, put together here and nowhere else. Everything below this module knows only
//! the layers under it (see `docs/design.md`, "Layers").

mod run;

pub use run::{
    BoundAddresses, CLIENT_STREAMS_PER_CONNECTION_MAX, NodeConfig, NodeError, NodeSecurity, initialize_data_dir,
    run_node,
};
