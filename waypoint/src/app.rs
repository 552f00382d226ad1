//! Wiring of the waypoint's parts, started from `main`.

use std::sync::Arc;

use ambit_admin::{AdminEndpoints, ConfigDump, Readiness, StopSignal};
use ambit_identity::Identity;
use ambit_mesh_source::{MeshHandle, SourceThread};
use ambit_telemetry::http::HttpMetrics;
use anyhow::Context;
use prometheus_client::registry::Registry;

use crate::front::hbone::{self, Shared};
use crate::http::authz::Authz;
use crate::http::upstream::Upstream;
use crate::tables::Tables;
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
    let tables = Arc::new(Tables::default());
    let compiling = tokio::spawn(tables.clone().keep_current(mesh.clone(), waypoint.clone()));
    let config_dump: ConfigDump = {
        let tables = tables.clone();
        Arc::new(move || {
            // The snapshot the tables in force were compiled from: a
            // change shows here once it routes requests.
            let current = tables.current();
            let current = current.as_deref();
            serde_json::json!({
                "waypoint": waypoint.0,
                "services": current.map(|current| &current.tables.bindings),
                "routes": current.map(|current| &current.tables),
                "mesh": current.map(|current| &current.mesh),
            })
        })
    };
    let readiness = Readiness::default();
    let mut registry = Registry::default();
    let metrics = Arc::new(HttpMetrics::register(&mut registry));
    let admin = AdminEndpoints::start(
        config.admin,
        readiness.clone(),
        Arc::new(registry),
        config_dump,
    )
    .await?;

    // Agents reach the waypoint only over HBONE in mutual TLS: without a
    // CA it serves its admin endpoints and carries nothing.
    let serving = match &config.ca {
        Some(ca) => {
            let mesh_tls = Arc::new(ca.start()?);
            let identity = Identity::new(
                ca.trust_domain.as_str(),
                &config.waypoint.namespace,
                &config.service_account,
            );
            mesh_tls.certificates().want([identity.clone()].into());
            let upstream = Arc::new(Upstream::new(mesh_tls.clone(), identity.clone()));
            let listener = tokio::net::TcpListener::bind(config.hbone)
                .await
                .with_context(|| format!("binding HBONE on {}", config.hbone))?;
            let shared = Arc::new(Shared {
                mesh_tls,
                identity,
                tables: tables.clone(),
                upstream,
                metrics,
                authz: Arc::new(Authz {
                    tables: tables.clone(),
                    waypoint: config.waypoint.clone(),
                    root_namespace: config.root_namespace.clone(),
                }),
            });
            Some(tokio::spawn(hbone::serve(
                listener,
                shared,
                readiness.clone(),
            )))
        }
        None => {
            tracing::warn!("no CA (--ca-addr): the waypoint carries no traffic");
            None
        }
    };
    tables.first_compiled().await;
    readiness.set_ready(true);
    tracing::info!(waypoint = %config.waypoint, "ready");

    stop.received().await;
    readiness.set_ready(false);
    if let Some(serving) = serving {
        serving.abort();
    }
    compiling.abort();
    drop(source);
    admin.stop().await;
    tracing::info!("stopped");
    Ok(())
}
