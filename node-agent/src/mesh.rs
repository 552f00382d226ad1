//! Where the agent's mesh comes from, and how the data path reads it. A
//! source (a directory of manifests, or the Kubernetes API) applies changes
//! to the shared model (`ambit_config::model::Mesh`) and publishes a
//! snapshot; readers take the current snapshot without holding a lock.

use std::sync::{Arc, RwLock};

use ambit_config::model::Mesh;

pub mod directory;

/// The current snapshot, replaced whole after every batch of changes.
/// Readers clone the `Arc` and never hold the lock across I/O.
#[derive(Debug, Default)]
pub struct MeshHandle(RwLock<Arc<Mesh>>);

impl MeshHandle {
    pub fn snapshot(&self) -> Arc<Mesh> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Publishes `mesh` (a clone: the model's maps are shared, not copied).
    pub fn publish(&self, mesh: &Mesh) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(mesh.clone());
    }
}
