//! Where the agent's mesh comes from: a directory of Kubernetes manifests
//! (`--config-dir`), watched for changes, compiled into the shared model
//! (`ambit_config::model`); the Kubernetes API becomes another source of the
//! same objects. Readers take the current snapshot without holding a lock.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use ambit_config::document::{self, parse_sources, Severity};
use ambit_config::model::{MeshConfig, MeshSnapshot};

/// Reads every manifest (`.yaml`, `.yml`, `.json`) in `dir`. Problems are
/// logged, naming the file, object and field; objects with an error are
/// left out and everything else applies.
pub fn load_dir(dir: &Path) -> Result<MeshConfig, MeshConfigError> {
    let files = manifest_files(dir)?;
    let mut texts = Vec::new();
    for file in &files {
        texts.push(
            std::fs::read_to_string(file).map_err(|source| MeshConfigError::Read {
                path: file.display().to_string(),
                source,
            })?,
        );
    }
    let parsed = parse_sources(&texts.iter().map(String::as_str).collect::<Vec<_>>());
    for problem in &parsed.problems {
        let file = files[problem.source].display();
        match problem.severity {
            Severity::Error => tracing::error!("{file}: {problem}"),
            Severity::Warning => tracing::warn!("{file}: {problem}"),
        }
    }
    Ok(MeshConfig::from_resources(&parsed.resources))
}

#[derive(Debug, thiserror::Error)]
pub enum MeshConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, MeshConfigError> {
    document::manifest_files(dir).map_err(|source| MeshConfigError::Read {
        path: dir.display().to_string(),
        source,
    })
}

/// The current snapshot, replaced whole on every change. Readers clone the
/// `Arc` and never hold the lock across I/O.
#[derive(Debug, Default)]
pub struct MeshHandle(RwLock<Arc<MeshSnapshot>>);

impl MeshHandle {
    pub fn new(snapshot: MeshSnapshot) -> Self {
        Self(RwLock::new(Arc::new(snapshot)))
    }

    pub fn snapshot(&self) -> Arc<MeshSnapshot> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn replace(&self, snapshot: MeshSnapshot) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(snapshot);
    }
}

/// How often the config directory is checked for changes.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Watches the config directory and calls `changed` with the mesh each time
/// a file in it is added, changed or removed.
pub async fn watch(dir: PathBuf, mut changed: impl FnMut(MeshConfig)) {
    let mut seen = stamp(&dir);
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let now = stamp(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        match load_dir(&dir) {
            Ok(config) => changed(config),
            Err(error) => {
                tracing::error!(%error, "config change ignored; the previous config stays in force")
            }
        }
    }
}

/// Names, sizes and modification times of the manifests in `dir`.
fn stamp(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    manifest_files(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|file| {
            let metadata = std::fs::metadata(&file).ok()?;
            Some((file, metadata.len(), metadata.modified().ok()))
        })
        .collect()
}
