//! The route tables in force (a waypoint's, or a gateway's): compiled
//! from each new mesh snapshot off the request path (on the blocking
//! pool), and swapped in whole, so a change applies to the next request
//! without a restart.

use std::sync::Arc;

use ambit_config::model::Mesh;
use ambit_mesh_source::MeshHandle;

/// The mesh snapshot and the tables compiled from it, which requests read.
pub struct Current<T> {
    pub mesh: Arc<Mesh>,
    pub tables: Arc<T>,
}

pub struct Tables<T>(tokio::sync::watch::Sender<Option<Arc<Current<T>>>>);

impl<T> Default for Tables<T> {
    fn default() -> Self {
        Self(tokio::sync::watch::Sender::new(None))
    }
}

/// What tables report of the objects they left out.
pub trait Compiled: Send + Sync + 'static {
    /// By object: why it was left out.
    fn problems(&self) -> &std::collections::BTreeMap<String, String>;
}

impl Compiled for ambit_route::RouteTables {
    fn problems(&self) -> &std::collections::BTreeMap<String, String> {
        &self.problems
    }
}

impl Compiled for ambit_route::GatewayTables {
    fn problems(&self) -> &std::collections::BTreeMap<String, String> {
        &self.problems
    }
}

/// The mesh the tables in force were compiled from, whatever the tables.
pub trait MeshInForce: Send + Sync {
    fn mesh(&self) -> Option<Arc<Mesh>>;
}

impl<T: Send + Sync> MeshInForce for Tables<T> {
    fn mesh(&self) -> Option<Arc<Mesh>> {
        self.0.borrow().as_ref().map(|current| current.mesh.clone())
    }
}

impl<T: Compiled> Tables<T> {
    /// The tables in force (none before the first compile).
    pub fn current(&self) -> Option<Arc<Current<T>>> {
        self.0.borrow().clone()
    }

    /// Changes of the tables in force.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<Arc<Current<T>>>> {
        self.0.subscribe()
    }

    /// Returns once the first tables are in force: until then the waypoint
    /// would refuse every stream, so it is not ready.
    pub async fn first_compiled(&self) {
        let mut compiled = self.0.subscribe();
        // The sender lives in `self`, so the wait cannot fail.
        let _ = compiled.wait_for(Option::is_some).await;
    }

    fn replace(&self, current: Current<T>) {
        self.0.send_replace(Some(Arc::new(current)));
    }

    /// Compiles the tables for the current mesh, then again at every change.
    pub async fn keep_current(
        self: Arc<Self>,
        mesh: Arc<MeshHandle>,
        compile: impl Fn(&Mesh) -> T + Clone + Send + 'static,
    ) {
        let mut changes = mesh.subscribe();
        loop {
            let snapshot = changes.borrow_and_update().clone();
            let compile = compile.clone();
            let compiled = tokio::task::spawn_blocking(move || {
                let tables = compile(&snapshot);
                Current {
                    mesh: snapshot,
                    tables: Arc::new(tables),
                }
            })
            .await;
            match compiled {
                Ok(current) => {
                    for (object, problem) in current.tables.problems() {
                        tracing::warn!(%object, %problem, "left out of the routes");
                    }
                    tracing::debug!("route tables compiled");
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

    use ambit_config::model::{Key, WaypointRef};
    use ambit_route::RouteTables;

    use super::*;

    #[tokio::test]
    async fn the_waypoint_is_ready_only_once_its_first_tables_are_in_force() {
        let tables = Arc::new(Tables::<RouteTables>::default());
        let waiting = tokio::spawn({
            let tables = tables.clone();
            async move { tables.first_compiled().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "ready with no tables");
        let waypoint = WaypointRef(Key::new("default", "waypoint"));
        let compile = move |mesh: &Mesh| ambit_route::compile(mesh, &waypoint);
        let compiling = tokio::spawn(
            tables
                .clone()
                .keep_current(Arc::new(MeshHandle::default()), compile),
        );
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("ready once compiled")
            .expect("the wait ends");
        assert!(tables.current().is_some());
        compiling.abort();
    }
}
