//! The standalone source: a directory of Kubernetes manifests
//! (`--config-dir`), read again whenever a file in it is added, changed or
//! removed. A removed file or document removes its objects.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ambit_config::document::{self, parse_sources, rejections, Severity, KINDS};
use ambit_config::model::Mesh;

/// Reads every manifest (`.yaml`, `.yml`, `.json`) in `dir` into `mesh`.
/// Problems are logged, naming the file, object and field; an object with
/// an error is rejected on its own (see [`Mesh::reject`]) and everything
/// else applies.
pub fn load(dir: &Path, mesh: &mut Mesh) -> Result<(), ReadError> {
    let files = manifest_files(dir)?;
    let mut texts = Vec::new();
    for file in &files {
        texts.push(std::fs::read_to_string(file).map_err(|source| ReadError {
            path: file.display().to_string(),
            source,
        })?);
    }
    let parsed = parse_sources(&texts.iter().map(String::as_str).collect::<Vec<_>>());
    for problem in &parsed.problems {
        let file = files[problem.source].display();
        match problem.severity {
            Severity::Error => tracing::error!("{file}: {problem}"),
            Severity::Warning => tracing::warn!("{file}: {problem}"),
        }
    }
    let kinds: Vec<&str> = KINDS.iter().map(|(_, kind, _)| *kind).collect();
    let rejected = rejections(&parsed.problems);
    mesh.replace(&kinds, parsed.resources, rejected);
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {source}")]
pub struct ReadError {
    path: String,
    source: std::io::Error,
}

fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ReadError> {
    document::manifest_files(dir).map_err(|source| ReadError {
        path: dir.display().to_string(),
        source,
    })
}

/// How often the directory is checked for changes.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Watches `dir` and calls `changed` with the model each time a file in it
/// is added, changed or removed.
pub async fn watch(dir: PathBuf, mut mesh: Mesh, mut changed: impl FnMut(&Mesh)) {
    let mut seen = stamp(&dir);
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let now = stamp(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        // Read into a copy: a directory that cannot be read leaves the
        // mesh in force untouched.
        let mut next = mesh.clone();
        match load(&dir, &mut next) {
            Ok(()) => {
                mesh = next;
                changed(&mesh);
            }
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
