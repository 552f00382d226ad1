use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::capture;

/// Command-line flags, as typed.
#[derive(clap::Parser, Debug)]
#[command(name = "ambit-node-agent", version, about)]
pub struct Args {
    /// cgroup v2 directory whose processes' connections are captured: the
    /// cgroup v2 root or the kubelet's pods cgroup in a cluster.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    pub capture_cgroup: PathBuf,

    /// The BPF object built by `cargo xtask build-ebpf`; searched for next to
    /// the binary and in /usr/lib/ambit when not given.
    #[arg(long)]
    pub bpf_object: Option<PathBuf>,

    /// Where the readiness probe is served (Istio's port).
    #[arg(long, default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,
}

/// The validated configuration the agent runs with.
#[derive(Serialize, Debug, Clone)]
pub struct Config {
    pub capture_cgroup: PathBuf,
    pub bpf_object: PathBuf,
    pub readiness_addr: SocketAddr,
}

impl Config {
    pub fn from_args(args: Args) -> anyhow::Result<Self> {
        check_cgroup2_dir(&args.capture_cgroup)?;
        Ok(Self {
            bpf_object: capture::locate_object(args.bpf_object.as_deref())?,
            capture_cgroup: args.capture_cgroup,
            readiness_addr: args.readiness_addr,
        })
    }
}

fn check_cgroup2_dir(path: &Path) -> anyhow::Result<()> {
    let fs = nix::sys::statfs::statfs(path)
        .with_context(|| format!("--capture-cgroup {}: cannot read it", path.display()))?;
    if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        bail!(
            "--capture-cgroup {}: not a cgroup v2 directory (mount one with `mount -t cgroup2 none DIR`)",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn a_capture_cgroup_that_is_not_cgroup2_is_refused_by_name() {
        let args = Args::parse_from(["ambit-node-agent", "--capture-cgroup", "/tmp"]);
        let error = format!("{:#}", Config::from_args(args).unwrap_err());
        assert!(error.contains("--capture-cgroup /tmp"), "{error}");
        assert!(error.contains("not a cgroup v2 directory"), "{error}");
    }
}
