//! Ambit's test bed: a small cluster built from network namespaces and
//! cgroups on one machine, where the real binaries run.
//!
//! The end-to-end tests, `cargo xtask demo` and the benchmarks share it.
//! Everything it creates is named `ambit-<pid>-<n>-…`, lives in namespaces
//! and cgroups of its own, and is removed when the [`Cluster`] is dropped,
//! when the process is interrupted, or, after a `kill -9`, by the sweep at
//! the next start.

pub mod apiserver;
pub mod bare_relay;
pub mod bookinfo;
pub mod ca;
pub mod chart;
mod cluster;
pub mod envoy;
pub mod hbone;
pub mod host;
mod manifests;
pub mod mesh;
pub mod otlp;
pub mod pki;
mod process;
pub mod prometheus;
pub mod sniff;
pub mod testapp;
pub mod waypoint;
pub mod ztunnel;

pub use cluster::{Cluster, ClusterBuilder, Node, Place, Pod};
pub use process::{machine_busy_seconds, Binaries, Process, Usage};

/// Polls `check` every 200 ms until it holds; fails naming `what` after `within`.
pub fn wait_for(
    what: &str,
    within: std::time::Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + within;
    while !check()? {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Ok(())
}
