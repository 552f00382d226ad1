//! The node agent: one per node, it captures enrolled pods' traffic with eBPF
//! and carries it between nodes.

pub mod app;
pub mod capture;
mod config;
pub mod netns;

pub use config::{Args, Config};
