//! Installs the CNI plugin on the node from the agent's pod, so that no
//! one edits a node by hand and autoscaled nodes join the mesh: the plugin
//! binary copied whole into the node's CNI bin directory, and Ambit's
//! entry last in the cluster CNI's configuration, put back whenever
//! another CNI rewrites the file. An uninstall takes both out again (an
//! upgrade leaves them: the next agent takes over the same entry).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ambit_cni::conflist::{self, PLUGIN_TYPE};
use ambit_cni::policy::write_atomically;
use ambit_mesh_source::directory::Events;
use anyhow::Context;
use serde_json::Value;

/// How often the configuration is checked for Ambit's entry while its
/// directory is not watched (it does not exist yet, or inotify is not
/// available), and while it is, in case an event was lost.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);
const WATCHED_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Where the plugin goes and what its entry says.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CniInstall {
    /// The node's CNI configuration directory (/etc/cni/net.d).
    pub conf_dir: PathBuf,
    /// The node's CNI bin directory (/opt/cni/bin; GKE, k3s and
    /// OpenShift keep it elsewhere).
    pub bin_dir: PathBuf,
    /// The plugin binary to copy, shipped beside the agent.
    pub plugin: PathBuf,
    /// The entry, as [`conflist::entry`] makes it.
    pub entry: Value,
}

impl CniInstall {
    /// Copies the plugin into the bin directory: written beside its place
    /// and renamed there, so a runtime never runs half a binary. An
    /// identical plugin is left as it is.
    pub fn install_plugin(&self) -> anyhow::Result<()> {
        let bytes = std::fs::read(&self.plugin)
            .with_context(|| format!("reading the CNI plugin {}", self.plugin.display()))?;
        let target = self.bin_dir.join(PLUGIN_TYPE);
        if std::fs::read(&target).is_ok_and(|held| held == bytes) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.bin_dir)?;
        let temporary = self.bin_dir.join(format!(".{PLUGIN_TYPE}.tmp"));
        std::fs::write(&temporary, &bytes)?;
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&temporary, &target)
            .with_context(|| format!("installing the CNI plugin at {}", target.display()))?;
        tracing::info!(plugin = %target.display(), "CNI plugin installed");
        Ok(())
    }

    /// Puts the entry last in the configuration the runtime uses; returns
    /// the file written, if it had to be. No configuration yet (the
    /// cluster's CNI has not written one): nothing to do until it has.
    pub fn ensure_entry(&self) -> anyhow::Result<Option<PathBuf>> {
        let names = file_names(&self.conf_dir)?;
        let Some(primary) = conflist::primary(names.iter().map(String::as_str)) else {
            return Ok(None);
        };
        let path = self.conf_dir.join(primary);
        let config = read_json(&path)?;
        let Some(updated) = conflist::with_entry(&config, &self.entry)
            .map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))?
        else {
            return Ok(None);
        };
        // A single plugin's file becomes a list under the same name.
        let target = match primary.ends_with(".conflist") {
            true => path.clone(),
            false => path.with_extension("conflist"),
        };
        write_atomically(&target, &serde_json::to_vec_pretty(&updated)?)?;
        if target != path {
            std::fs::remove_file(&path)?;
        }
        Ok(Some(target))
    }

    /// Takes the entry out of every configuration and the plugin away.
    pub fn uninstall(&self) -> anyhow::Result<()> {
        for name in file_names(&self.conf_dir)? {
            let path = self.conf_dir.join(&name);
            let Ok(config) = read_json(&path) else {
                continue;
            };
            if let Some(cleaned) = conflist::without_entry(&config) {
                write_atomically(&path, &serde_json::to_vec_pretty(&cleaned)?)?;
                tracing::info!(file = %path.display(), "CNI entry removed");
            }
        }
        match std::fs::remove_file(self.bin_dir.join(PLUGIN_TYPE)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
            _ => Ok(()),
        }
    }
}

/// Keeps the entry in place for as long as the agent runs: a rewrite by
/// another CNI is repaired as soon as the directory shows it (pods the
/// runtime starts meanwhile would get no entry), or at the next check.
pub async fn keep(install: Arc<CniInstall>) {
    let mut changes = Events::watching(&install.conf_dir, "the CNI configuration");
    loop {
        let checked = install.clone();
        match tokio::task::spawn_blocking(move || checked.ensure_entry()).await {
            Ok(Ok(Some(file))) => tracing::info!(file = %file.display(), "CNI entry put in place"),
            Ok(Ok(None)) => {}
            Ok(Err(error)) => tracing::error!(%error, "the CNI entry cannot be put in place"),
            Err(error) => tracing::error!(%error, "checking the CNI entry"),
        }
        match &mut changes {
            Some(events) if events.is_watching() => {
                tokio::select! {
                    _ = events.next() => {}
                    () = tokio::time::sleep(WATCHED_CHECK_INTERVAL) => {}
                }
            }
            _ => tokio::time::sleep(CHECK_INTERVAL).await,
        }
        // A directory made since (or made again) is watched from now on.
        if let Some(events) = &mut changes {
            events.watch_tree(&install.conf_dir);
        }
    }
}

fn file_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("reading {}", dir.display())),
    };
    Ok(entries
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect())
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))
}
