//! The route tables in force: compiled from each new mesh snapshot off the
//! request path (on the blocking pool), and swapped in whole, so a change
//! applies to the next request without a restart.

use std::sync::Arc;

use ambit_config::model::{Mesh, WaypointRef};
use ambit_mesh_source::MeshHandle;
use ambit_route::RouteTables;

/// The mesh snapshot and the tables compiled from it, which requests read.
pub struct Current {
    pub mesh: Arc<Mesh>,
    pub tables: Arc<RouteTables>,
}

pub struct Tables(tokio::sync::watch::Sender<Option<Arc<Current>>>);

impl Default for Tables {
    fn default() -> Self {
        Self(tokio::sync::watch::Sender::new(None))
    }
}

impl Tables {
    /// The tables in force (none before the first compile).
    pub fn current(&self) -> Option<Arc<Current>> {
        self.0.borrow().clone()
    }

    /// Returns once the first tables are in force: until then the waypoint
    /// would refuse every stream, so it is not ready.
    pub async fn first_compiled(&self) {
        let mut compiled = self.0.subscribe();
        // The sender lives in `self`, so the wait cannot fail.
        let _ = compiled.wait_for(Option::is_some).await;
    }

    fn replace(&self, current: Current) {
        self.0.send_replace(Some(Arc::new(current)));
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ambit_config::model::Key;

    use super::*;

    #[tokio::test]
    async fn the_waypoint_is_ready_only_once_its_first_tables_are_in_force() {
        let tables = Arc::new(Tables::default());
        let waiting = tokio::spawn({
            let tables = tables.clone();
            async move { tables.first_compiled().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "ready with no tables");
        let waypoint = WaypointRef(Key::new("default", "waypoint"));
        let compiling = tokio::spawn(
            tables
                .clone()
                .keep_current(Arc::new(MeshHandle::default()), waypoint),
        );
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("ready once compiled")
            .expect("the wait ends");
        assert!(tables.current().is_some());
        compiling.abort();
    }
}
