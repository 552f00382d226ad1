//! Wiring of the agent's parts, started from `main`.

use ambit_admin::{AdminServer, Readiness, StopSignal};
use anyhow::Context;

use crate::capture::Capture;
use crate::Config;

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let stop = StopSignal::install()?;
    tracing::info!(?config, "starting ambit-node-agent");
    let capture = Capture::attach(&config.bpf_object, &config.capture_cgroup)
        .context("starting traffic capture")?;
    tracing::info!(cgroup = %config.capture_cgroup.display(), "traffic capture attached");

    let readiness = Readiness::default();
    let admin = AdminServer::bind(config.readiness_addr, readiness.clone()).await?;
    readiness.set_ready(true);
    tracing::info!(addr = %admin.local_addr()?, "ready");
    admin.serve(stop.received()).await;

    drop(capture);
    tracing::info!("traffic capture detached; stopped");
    Ok(())
}
