//! The waypoint: an optional L7 proxy for the Services of a namespace that
//! opt in with `istio.io/use-waypoint`. It reads the same mesh model as the
//! node agents, from the same sources.

pub mod app;
pub mod bindings;
mod config;

pub use config::{Args, Config};
