use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_admin::AdminAddrs;
use ambit_mesh_source::{Source, SourceArgs};
use ambit_mesh_tls::config::{CaArgs, CaConfig};
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

    /// Where the BPF maps are pinned (bpffs), so a restarted agent keeps them.
    #[arg(long, default_value = "/sys/fs/bpf/ambit")]
    pub bpf_pin_dir: PathBuf,

    /// The Unix socket the CNI plugin hands new pods to.
    #[arg(long, default_value = ambit_cni::protocol::DEFAULT_AGENT_SOCKET)]
    pub cni_socket: PathBuf,

    /// Where the agent keeps the pods it knows across restarts.
    #[arg(long, default_value = "/var/run/ambit")]
    pub state_dir: PathBuf,

    #[command(flatten)]
    pub source: SourceArgs,

    #[command(flatten)]
    pub admin: AdminAddrs,

    #[command(flatten)]
    pub ca: CaArgs,

    /// The mesh's root namespace: its PeerAuthentication and
    /// AuthorizationPolicies apply to every workload (Istio's `rootNamespace`).
    #[arg(long, default_value = ambit_config::policy::DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,

    /// On SIGTERM, how long established connections may take to finish.
    #[arg(long, default_value_t = 30)]
    pub drain_seconds: u64,

    /// Threads that carry traffic; by default a quarter of the CPUs the
    /// agent may use, at least one. One thread runs everything on a single
    /// event loop, with no hand-offs between threads.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,

    /// Relay plain TCP between the two sockets of a connection inside the
    /// kernel (sockmap), so the agent is not woken per message. With
    /// `false` the agent moves the bytes itself (splice).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub kernel_relay: bool,

    /// The resolver ServiceEntry hosts of `resolution: DNS` are resolved
    /// with (`ADDRESS:PORT`); by default the node's, the first
    /// `nameserver` of /etc/resolv.conf.
    #[arg(long)]
    pub dns_server: Option<std::net::SocketAddr>,
}

/// The validated configuration the agent runs with.
#[derive(Serialize, Debug, Clone)]
pub struct Config {
    pub capture_cgroup: PathBuf,
    pub bpf_object: PathBuf,
    pub bpf_pin_dir: PathBuf,
    pub cni_socket: PathBuf,
    pub state_dir: PathBuf,
    pub source: Source,
    pub admin: AdminAddrs,
    pub ca: Option<CaConfig>,
    pub root_namespace: String,
    pub drain_timeout: Duration,
    pub worker_threads: usize,
    pub kernel_relay: bool,
    pub dns_server: Option<std::net::SocketAddr>,
}

impl Config {
    pub fn from_args(args: Args) -> anyhow::Result<Self> {
        check_cgroup2_dir(&args.capture_cgroup)?;
        Ok(Self {
            bpf_object: capture::locate_object(args.bpf_object.as_deref())?,
            capture_cgroup: args.capture_cgroup,
            bpf_pin_dir: args.bpf_pin_dir,
            cni_socket: args.cni_socket,
            state_dir: args.state_dir,
            source: Source::from_args(args.source)?,
            admin: args.admin,
            ca: CaConfig::from_args(args.ca)?,
            root_namespace: args.root_namespace,
            drain_timeout: Duration::from_secs(args.drain_seconds),
            worker_threads: args
                .worker_threads
                .map_or_else(default_worker_threads, usize::from),
            kernel_relay: args.kernel_relay,
            dns_server: args.dns_server.or_else(ambit_dns::system_nameserver),
        })
    }
}

fn default_worker_threads() -> usize {
    (ambit_admin::cpus() / 4).max(1)
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

    #[test]
    fn zero_worker_threads_are_refused() {
        let error = Args::try_parse_from(["ambit-node-agent", "--worker-threads", "0"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--worker-threads"), "{error}");
    }

    #[test]
    fn the_kernel_relay_is_on_unless_turned_off() {
        let relay = |extra: &[&str]| {
            let args = ["ambit-node-agent", "--capture-cgroup", "/tmp"];
            Args::try_parse_from(args.iter().chain(extra)).map(|args| args.kernel_relay)
        };
        assert!(relay(&[]).unwrap());
        assert!(!relay(&["--kernel-relay=false"]).unwrap());
        let error = relay(&["--kernel-relay=maybe"]).unwrap_err().to_string();
        assert!(error.contains("--kernel-relay"), "{error}");
    }
}
