//! The node agent: one per node. It captures enrolled pods' traffic with
//! eBPF and proxies it between nodes.

pub mod app;
pub mod capture;
mod cni_install;
mod cni_server;
mod config;
pub mod enrollment;
mod mesh_view;
pub mod metrics;
pub mod netns;
pub mod proxy;
mod redirection;

pub use config::{Args, Config};
