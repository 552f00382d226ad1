//! The route tables in force: compiled from each new mesh snapshot off the
//! request path (on the blocking pool), and swapped in whole, so a change
//! applies to the next request without a restart.

use std::sync::{Arc, RwLock};

use ambit_config::model::{Mesh, WaypointRef};
use ambit_mesh_source::MeshHandle;
use ambit_route::RouteTables;

/// The mesh snapshot and the tables compiled from it, which requests read.
pub struct Current {
    pub mesh: Arc<Mesh>,
    pub tables: Arc<RouteTables>,
}

#[derive(Default)]
pub struct Tables(RwLock<Option<Arc<Current>>>);

impl Tables {
    /// The tables in force (empty before the first compile).
    pub fn current(&self) -> Option<Arc<Current>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, current: Current) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(current));
    }

    /// Compiles the tables for the current mesh, then again at every change.
    pub async fn keep_current(self: Arc<Self>, mesh: Arc<MeshHandle>, waypoint: WaypointRef) {
        let mut changes = mesh.subscribe();
        loop {
            let snapshot = changes.borrow_and_update().clone();
            let waypoint = waypoint.clone();
            let compiled = tokio::task::spawn_blocking(move || {
                let tables = ambit_route::compile(&snapshot, &waypoint);
                Current {
                    mesh: snapshot,
                    tables: Arc::new(tables),
                }
            })
            .await;
            match compiled {
                Ok(current) => {
                    for (object, problem) in &current.tables.problems {
                        tracing::warn!(%object, %problem, "left out of the routes");
                    }
                    tracing::debug!(ports = current.tables.ports.len(), "route tables compiled");
                    self.replace(current);
                }
                Err(error) => tracing::error!(%error, "compiling the route tables failed"),
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}
