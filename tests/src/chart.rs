//! The Helm chart's objects as Helm itself renders them
//! (`xtask/chart.py`, Helm 4 as a library), for tests that check what a
//! cluster would be given.

use anyhow::Context;
use serde_json::Value;

/// The chart's objects for the value set `set` of xtask/chart.py
/// (`default`, `gke`, `k3s`, `openshift`, `canary`, `full`).
pub fn render(set: &str) -> anyhow::Result<Vec<Value>> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../xtask/chart.py");
    let output = std::process::Command::new("python3")
        .arg(&script)
        .args(["render-json", set])
        .output()
        .context("running xtask/chart.py (`cargo xtask setup` installs its libraries)")?;
    anyhow::ensure!(
        output.status.success(),
        "rendering the chart (`cargo xtask setup` installs helm-python-sdk): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}
