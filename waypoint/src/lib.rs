//! The waypoint: an optional L7 proxy for the Services of a namespace that
//! opt in with `istio.io/use-waypoint`. It reads the same mesh model as the
//! node agents, from the same sources, compiles it into route tables
//! ([`tables`]), and serves HBONE from the agents ([`front`]) as HTTP or
//! TCP ([`http`]).

pub mod app;
mod config;
pub mod front;
pub mod http;
pub mod tables;
mod tcp;

pub use config::{Args, Config, Mode};
