//! Wiring of the waypoint's parts, started from `main`.

use std::sync::Arc;

use ambit_admin::{AdminEndpoints, ConfigDump, Readiness, StopSignal};
use ambit_mesh_source::{MeshHandle, SourceThread};
use anyhow::Context;
use prometheus_client::registry::Registry;

use crate::bindings::bindings;
use crate::Config;

/// Runs the waypoint until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let stop = StopSignal::install()?;
    tracing::info!(?config, "starting ambit-waypoint");
    let mesh = Arc::new(MeshHandle::default());
    // On a thread of its own: re-reading a large mesh must not stall traffic.
    let source = SourceThread::start(&config.source, mesh.clone())
        .await
        .context("reading the mesh configuration")?;

    let waypoint = config.waypoint();
    let config_dump: ConfigDump = {
        let mesh = mesh.clone();
        Arc::new(move || {
            let snapshot = mesh.snapshot();
            serde_json::json!({
                "waypoint": waypoint.0,
                "services": bindings(&snapshot, &waypoint),
                "mesh": *snapshot,
            })
        })
    };
    let readiness = Readiness::default();
    let admin = AdminEndpoints::start(
        config.admin,
        readiness.clone(),
        Arc::new(Registry::default()),
        config_dump,
    )
    .await?;
    readiness.set_ready(true);
    tracing::info!(waypoint = %config.waypoint, "ready");

    stop.received().await;
    readiness.set_ready(false);
    drop(source);
    admin.stop().await;
    tracing::info!("stopped");
    Ok(())
}
