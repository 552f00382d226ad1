//! The certificate authority. It holds the root key (no proxy ever does)
//! and certifies a node agent's workload keys, only for service accounts
//! that have a pod on that agent's node. Standalone, agents authenticate
//! with a per-node bootstrap token.

pub mod api;
pub mod app;
pub mod authorize;
pub mod client;
mod config;
pub mod root;

pub use config::{Args, Config};
