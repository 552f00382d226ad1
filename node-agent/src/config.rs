use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_admin::AdminAddrs;
use ambit_config::model::Key;
use ambit_mesh_source::{Source, SourceArgs};
use ambit_mesh_tls::config::{CaArgs, CaConfig};
use anyhow::{bail, Context};
use serde::Serialize;

use ambit_cni::conflist;

use crate::capture;
use crate::cni_install::CniInstall;

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
    pub log: ambit_admin::LogArgs,

    #[command(flatten)]
    pub ca: CaArgs,

    /// The mesh's root namespace: its PeerAuthentication and
    /// AuthorizationPolicies apply to every workload (Istio's `rootNamespace`).
    #[arg(long, default_value = ambit_config::policy::DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,

    /// On SIGTERM, how long established connections may take to finish.
    #[arg(long, default_value_t = 30)]
    pub drain_seconds: u64,

    /// How often the bytes open connections have carried are added to
    /// `istio_tcp_*_bytes_total` (Istio's `tcpReportingDuration`); the
    /// rest when they close.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub tcp_reporting_seconds: u64,

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

    /// The node's CNI configuration directory (/etc/cni/net.d): with it the
    /// agent installs its CNI plugin into --cni-bin-dir and keeps its entry
    /// last in the cluster CNI's configuration there.
    #[arg(long, requires = "cni_bin_dir")]
    pub cni_conf_dir: Option<PathBuf>,

    /// The node's CNI bin directory (/opt/cni/bin; GKE's is
    /// /home/kubernetes/bin, k3s and OpenShift have their own).
    #[arg(long, requires = "cni_conf_dir")]
    pub cni_bin_dir: Option<PathBuf>,

    /// The plugin binary to install; by default `ambit-cni` beside the agent.
    #[arg(long)]
    pub cni_plugin: Option<PathBuf>,

    /// Namespaces whose pods start even while no agent answers and none has
    /// recorded which pods are enrolled (kube-system always does).
    #[arg(long, value_delimiter = ',')]
    pub cni_exempt_namespaces: Vec<String>,

    /// When the agent stops, whether it takes the plugin and its entry out:
    /// `never` (a restart or an upgrade: the next agent keeps them),
    /// `always`, or `if-daemonset-removed` (the DaemonSet --daemonset names
    /// is gone or being deleted, as at `helm uninstall`).
    #[arg(long, value_enum, default_value = "never")]
    pub cni_uninstall: CniUninstall,

    /// The agent's own DaemonSet, `NAMESPACE/NAME`, for
    /// `--cni-uninstall if-daemonset-removed`.
    #[arg(long)]
    pub daemonset: Option<String>,

    /// The service accounts (`NAMESPACE/NAME`, comma-separated) of the
    /// waypoints and gateways served the mesh view (in Kubernetes): a pod
    /// labelled `gateway.networking.k8s.io/gateway-name` is served it only
    /// if it runs as one of them. None by default.
    #[arg(long, value_delimiter = ',')]
    pub mesh_view_for: Vec<String>,
}

/// When a stopping agent takes its CNI plugin out of the node.
#[derive(clap::ValueEnum, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CniUninstall {
    Never,
    Always,
    IfDaemonsetRemoved,
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
    pub tcp_reporting: Duration,
    pub worker_threads: usize,
    pub kernel_relay: bool,
    pub dns_server: Option<std::net::SocketAddr>,
    /// The plugin and entry this agent installs, if it does.
    pub cni_install: Option<CniInstall>,
    pub cni_uninstall: Uninstall,
    /// Who is served the mesh view: service accounts, as (namespace, name).
    pub mesh_view_for: BTreeSet<Key>,
}

/// When a stopping agent takes its CNI plugin out, checked.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Uninstall {
    Never,
    Always,
    IfDaemonsetRemoved { namespace: String, name: String },
}

impl Config {
    pub fn from_args(args: Args) -> anyhow::Result<Self> {
        ambit_identity::tls::check_compliance_policy().map_err(anyhow::Error::msg)?;
        check_cgroup2_dir(&args.capture_cgroup)?;
        let cni_install = match (&args.cni_conf_dir, &args.cni_bin_dir) {
            (Some(conf_dir), Some(bin_dir)) => Some(CniInstall {
                conf_dir: conf_dir.clone(),
                bin_dir: bin_dir.clone(),
                plugin: match &args.cni_plugin {
                    Some(plugin) => plugin.clone(),
                    None => plugin_beside_agent()?,
                },
                entry: conflist::entry(&args.cni_socket, &args.cni_exempt_namespaces),
            }),
            _ => None,
        };
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
            tcp_reporting: Duration::from_secs(args.tcp_reporting_seconds),
            worker_threads: args
                .worker_threads
                .map_or_else(default_worker_threads, usize::from),
            kernel_relay: args.kernel_relay,
            dns_server: args.dns_server.or_else(ambit_dns::system_nameserver),
            cni_install,
            cni_uninstall: match (args.cni_uninstall, args.daemonset.as_deref()) {
                (CniUninstall::Never, _) => Uninstall::Never,
                (CniUninstall::Always, _) => Uninstall::Always,
                (CniUninstall::IfDaemonsetRemoved, Some(daemonset)) => {
                    let Some((namespace, name)) = daemonset.split_once('/') else {
                        bail!("--daemonset {daemonset:?}: not NAMESPACE/NAME");
                    };
                    Uninstall::IfDaemonsetRemoved {
                        namespace: namespace.to_string(),
                        name: name.to_string(),
                    }
                }
                (CniUninstall::IfDaemonsetRemoved, None) => {
                    bail!("--cni-uninstall if-daemonset-removed needs --daemonset NAMESPACE/NAME")
                }
            },
            mesh_view_for: args
                .mesh_view_for
                .iter()
                .map(|account| match account.split_once('/') {
                    Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => {
                        Ok(Key::new(namespace, name))
                    }
                    _ => bail!("--mesh-view-for {account:?}: not NAMESPACE/NAME"),
                })
                .collect::<anyhow::Result<_>>()?,
        })
    }
}

/// The CNI plugin shipped beside the agent's binary.
fn plugin_beside_agent() -> anyhow::Result<PathBuf> {
    let agent = std::env::current_exe().context("locating the agent's binary")?;
    let plugin = agent.with_file_name(conflist::PLUGIN_TYPE);
    if !plugin.exists() {
        bail!(
            "no CNI plugin at {} to install: give --cni-plugin",
            plugin.display()
        );
    }
    Ok(plugin)
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
