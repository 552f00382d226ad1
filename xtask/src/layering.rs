//! The dependency rules of DESIGN.md, checked on the normal dependency
//! trees (`cargo tree -e normal`): the route crate stays pure, the agent
//! does not take in the CA, and the waypoint takes in neither.

use anyhow::bail;

use crate::Workspace;

/// (crate, dependencies it must never have, why).
const RULES: &[(&str, &[&str], &str)] = &[
    (
        "ambit-route",
        &[
            "tokio",
            "hyper",
            "hyper-util",
            "h2",
            "mio",
            "socket2",
            "tokio-rustls",
        ],
        "the waypoint's decisions are pure: no runtime, HTTP stack or sockets",
    ),
    (
        "ambit-node-agent",
        &["ambit-ca"],
        "the agent talks to the CA through ambit-mesh-tls only",
    ),
    (
        "ambit-waypoint",
        &["ambit-ca", "ambit-node-agent"],
        "the waypoint shares libraries with the agent, never its binary crates",
    ),
];

pub fn check(workspace: &Workspace) -> anyhow::Result<()> {
    let mut broken = Vec::new();
    for (krate, forbidden, why) in RULES {
        let output = workspace
            .cargo()
            .args([
                "tree", "-p", krate, "-e", "normal", "--prefix", "none", "--format", "{p}",
            ])
            .output()?;
        if !output.status.success() {
            bail!(
                "cargo tree -p {krate}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let tree = String::from_utf8_lossy(&output.stdout);
        for line in tree.lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if forbidden.contains(&name) {
                broken.push(format!("{krate} depends on {name}: {why}"));
            }
        }
    }
    broken.sort();
    broken.dedup();
    if !broken.is_empty() {
        bail!("dependency rules broken:\n  {}", broken.join("\n  "));
    }
    Ok(())
}
