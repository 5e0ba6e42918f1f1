//! The gRPC services a node offers.

mod chat_service;
mod cluster_service;
mod password_pool;
mod rate_limit;
pub mod status;
mod subscription;

pub use chat_service::ChatService;
pub use cluster_service::{ClusterService, RefusalCounts};
pub use status::LeaderHints;
pub use subscription::StreamEnds;
