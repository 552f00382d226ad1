use std::net::SocketAddr;
use std::path::PathBuf;

use ambit_admin::AdminAddrs;
use ambit_config::model::{Key, WaypointRef};
use ambit_mesh_source::{Source, SourceArgs};
use ambit_mesh_tls::config::{CaArgs, CaConfig};
use anyhow::bail;
use serde::Serialize;

use crate::http::spans::TracingConfig;

/// What the proxy serves.
#[derive(clap::ValueEnum, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// HBONE from the node agents, for the Services bound to it.
    Waypoint,
    /// An ingress gateway: the ports of the Gateway servers whose selector
    /// its pod's labels match, for clients outside the mesh.
    Gateway,
}

/// Command-line flags, as typed.
#[derive(clap::Parser, Debug)]
#[command(name = "ambit-waypoint", version, about)]
pub struct Args {
    #[arg(long, value_enum, default_value = "waypoint")]
    pub mode: Mode,

    /// The waypoint's name: the value of `istio.io/use-waypoint` on the
    /// Services (or namespace) it serves. In gateway mode, the gateway's
    /// (its Deployment's) name.
    #[arg(long, env = "WAYPOINT_NAME", default_value = "waypoint")]
    pub name: String,

    /// The pod the proxy runs in (Kubernetes' downward API sets it): in
    /// gateway mode its labels say which Gateways select it.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// In gateway mode, where the Secrets that Gateways name by
    /// `credentialName` are read from without a cluster: `DIR/NAME/`
    /// holding `tls.crt`, `tls.key` and `ca.crt`, as Kubernetes mounts a
    /// Secret. Changed files take effect at the next handshake.
    #[arg(long)]
    pub credentials_dir: Option<PathBuf>,

    /// The namespace the waypoint serves and runs in.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,

    /// The service account the waypoint runs as: its identity in the mesh.
    /// By default the waypoint's name, as Istio names it.
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,

    /// Where HBONE from the node agents is accepted; by default on every
    /// address, of both families.
    #[arg(long, default_value = "[::]:15008")]
    pub hbone_addr: SocketAddr,

    /// Threads that carry traffic; by default one per CPU the waypoint may
    /// use (its pod's CPU limit), as Envoy's concurrency. One thread runs
    /// everything on a single event loop, with no hand-offs between threads.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,

    /// Istio's root namespace: its AuthorizationPolicies apply mesh-wide.
    #[arg(long, default_value = ambit_config::policy::DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,

    /// The resolver the hosts of ServiceEntries of `resolution` DNS,
    /// DNS_ROUND_ROBIN and DYNAMIC_DNS bound to the waypoint are resolved
    /// with (`ADDRESS:PORT`); by default the pod's, the first `nameserver`
    /// of /etc/resolv.conf.
    #[arg(long)]
    pub dns_server: Option<SocketAddr>,

    /// Export a span for each request to this OpenTelemetry collector's
    /// OTLP/HTTP receiver (`http://HOST[:PORT][/PATH]`; port 4318 and
    /// `/v1/traces` unless given). Without it, trace headers pass on as
    /// they came and no span is made.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,

    /// The share of new traces sampled, in percent (Istio's default: 1).
    /// A caller's own decision, carried in its trace context, holds.
    #[arg(long, default_value_t = 1.0)]
    pub trace_sampling: f64,

    #[command(flatten)]
    pub ca: CaArgs,

    #[command(flatten)]
    pub source: SourceArgs,

    /// Read the mesh from the node agent's mesh view at this address (in
    /// Kubernetes, `127.0.0.1:15010` in a pod labelled
    /// `gateway.networking.k8s.io/gateway-name`): the API server's lists
    /// and watches through the agent, so the proxy needs no RBAC of its own
    /// for the mesh. A gateway still reads its Secrets from the API server
    /// (`--kubeconfig`, else in-cluster).
    #[arg(long, conflicts_with = "config_dir")]
    pub mesh_view: Option<SocketAddr>,

    #[command(flatten)]
    pub admin: AdminAddrs,

    #[command(flatten)]
    pub log: ambit_admin::LogArgs,
}

/// The validated configuration the waypoint runs with.
#[derive(Serialize, Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub waypoint: Key,
    /// The proxy's own pod; required in gateway mode.
    pub pod: Option<Key>,
    pub credentials_dir: Option<PathBuf>,
    pub service_account: String,
    pub hbone: SocketAddr,
    pub worker_threads: usize,
    pub root_namespace: String,
    pub dns_server: Option<SocketAddr>,
    pub tracing: Option<TracingConfig>,
    /// Without a CA the waypoint carries no traffic: agents reach it only
    /// over HBONE in mutual TLS.
    pub ca: Option<CaConfig>,
    pub source: Source,
    pub admin: AdminAddrs,
}

impl Config {
    pub fn from_args(args: Args) -> anyhow::Result<Self> {
        ambit_identity::tls::check_compliance_policy().map_err(anyhow::Error::msg)?;
        let service_account = args.service_account.unwrap_or_else(|| args.name.clone());
        for (flag, value) in [
            ("--name", &args.name),
            ("--namespace", &args.namespace),
            ("--service-account", &service_account),
        ] {
            if !is_dns_label(value) {
                bail!("{flag} {value:?}: not a Kubernetes name (lower-case letters, digits and '-', at most 63)");
            }
        }
        if args.mode == Mode::Gateway && args.pod_name.is_none() {
            bail!("--mode gateway needs --pod-name (POD_NAME): its pod's labels say which Gateways it serves");
        }
        Ok(Self {
            mode: args.mode,
            pod: args.pod_name.map(|pod| Key::new(&args.namespace, pod)),
            credentials_dir: args.credentials_dir,
            waypoint: Key::new(args.namespace, args.name),
            service_account,
            hbone: args.hbone_addr,
            worker_threads: args
                .worker_threads
                .map_or_else(ambit_admin::cpus, usize::from),
            root_namespace: args.root_namespace,
            dns_server: args.dns_server.or_else(ambit_dns::system_nameserver),
            tracing: args
                .otlp_endpoint
                .map(|endpoint| TracingConfig::new(&endpoint, args.trace_sampling))
                .transpose()?,
            ca: CaConfig::from_args(args.ca)?,
            source: match args.mesh_view {
                Some(address) => Source::AgentView {
                    address,
                    kubeconfig: args.source.kubeconfig,
                },
                None => Source::from_args(args.source)?,
            },
            admin: args.admin,
        })
    }

    pub fn waypoint(&self) -> WaypointRef {
        WaypointRef(self.waypoint.clone())
    }
}

/// RFC 1123 label, as Kubernetes names namespaces and Services.
fn is_dns_label(value: &str) -> bool {
    (1..=63).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn names_that_kubernetes_would_refuse_are_refused_by_flag() {
        for (flags, expected) in [
            (&["--namespace", "Shop"][..], "--namespace \"Shop\""),
            (&["--namespace", "shop", "--name=-wp"], "--name \"-wp\""),
        ] {
            let mut args = vec!["ambit-waypoint", "--config-dir", "/tmp"];
            args.extend_from_slice(flags);
            let error = Config::from_args(Args::parse_from(args)).unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
        }
        let ok = Args::parse_from([
            "ambit-waypoint",
            "--config-dir",
            "/tmp",
            "--namespace",
            "shop",
        ]);
        assert_eq!(
            Config::from_args(ok).unwrap().waypoint,
            Key::new("shop", "waypoint")
        );
    }
}
