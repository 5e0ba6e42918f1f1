//! The gRPC services a node offers.

mod chat_service;
pub mod status;
mod subscription;

pub use chat_service::ChatService;
