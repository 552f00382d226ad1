//! The certificate authority. It holds the root key (no proxy ever does)
//! and certifies a node agent's workload keys, only for service accounts
//! that have a pod on that agent's node. In Kubernetes, agents authenticate
//! with their pod-bound service account token (TokenReview) and the root is
//! kept in a Secret; standalone, with a per-node bootstrap token and a root
//! directory.

pub mod api;
pub mod app;
pub mod authenticate;
pub mod authorize;
mod config;
pub mod root;

pub use config::{Args, Config, Mode};
