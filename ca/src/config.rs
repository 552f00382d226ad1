use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ambit_admin::AdminAddrs;
use ambit_identity::spiffe::DEFAULT_TRUST_DOMAIN;
use ambit_identity::Identity;
use ambit_mesh_source::{Source, SourceArgs};
use anyhow::bail;
use serde::Serialize;

/// Command-line flags, as typed.
#[derive(clap::Parser, Debug)]
#[command(name = "ambit-ca", version, about)]
pub struct Args {
    /// The trust domain of every identity the CA certifies.
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,

    /// The namespace the CA runs in; its own identity is
    /// spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/ambit-ca.
    #[arg(long, env = "POD_NAMESPACE", default_value = "ambit-system")]
    pub namespace: String,

    /// Standalone: where the root is kept, in Istio's plug-in CA files
    /// (`ca-cert.pem`, `ca-key.pem`, for an intermediate also
    /// `root-cert.pem` and `cert-chain.pem`), created on first start.
    #[arg(long, default_value = "/var/lib/ambit-ca")]
    pub root_dir: PathBuf,

    /// In Kubernetes: the Secret in NAMESPACE the root is kept in (the
    /// same keys as the files; Istio's `cacerts` can be named here),
    /// created on first start.
    #[arg(long, default_value = "ambit-ca-root")]
    pub root_secret: String,

    /// Standalone: node agents' bootstrap tokens, lines of `NODE TOKEN`.
    #[arg(long)]
    pub node_tokens: Option<PathBuf>,

    /// In Kubernetes: the service account (in NAMESPACE) whose pod-bound
    /// tokens node agents present; TokenReview checks them.
    #[arg(long, default_value = "ambit-node-agent")]
    pub node_agent_service_account: String,

    /// Where certificate requests are served (istiod's CA port); by default
    /// on every address, of both families.
    #[arg(long, default_value = "[::]:15012")]
    pub listen: SocketAddr,

    /// The CA's Service in NAMESPACE: its serving certificate names
    /// SERVICE.NAMESPACE.svc, as istiod's names `istiod.istio-system.svc`,
    /// so ztunnels and sidecars, which verify the CA by host name, can use
    /// it (`CA_ADDRESS`, or `ALT_CA_HOSTNAME` when dialled by address).
    #[arg(long, default_value = "ambit-ca")]
    pub service_name: String,

    /// Lifetime of workload certificates, in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    pub workload_cert_ttl_seconds: u64,

    #[command(flatten)]
    pub source: SourceArgs,

    #[command(flatten)]
    pub admin: AdminAddrs,

    #[command(flatten)]
    pub log: ambit_admin::LogArgs,
}

/// The validated configuration the CA runs with.
#[derive(Serialize, Debug, Clone)]
pub struct Config {
    pub trust_domain: String,
    pub identity: Identity,
    /// The host names the CA's serving certificate names.
    pub dns_names: Vec<String>,
    pub mode: Mode,
    pub listen: SocketAddr,
    pub workload_cert_ttl: Duration,
    pub source: Source,
    pub admin: AdminAddrs,
}

impl Config {
    pub fn from_args(args: Args) -> anyhow::Result<Self> {
        ambit_identity::tls::check_compliance_policy().map_err(anyhow::Error::msg)?;
        if !(60..=366 * 24 * 3600).contains(&args.workload_cert_ttl_seconds) {
            bail!(
                "--workload-cert-ttl-seconds {}: between 60 (a minute) and 31622400 (a year)",
                args.workload_cert_ttl_seconds
            );
        }
        let source = Source::from_args(args.source)?;
        let mode = match (&source, args.node_tokens) {
            (Source::Directory(_), Some(node_tokens)) => Mode::Standalone {
                root_dir: args.root_dir,
                node_tokens,
            },
            (Source::Directory(_), None) => bail!(
                "standalone (--config-dir), node agents authenticate with bootstrap tokens: give --node-tokens FILE"
            ),
            (Source::Kubernetes { kubeconfig }, None) => Mode::Kubernetes {
                kubeconfig: kubeconfig.clone(),
                root_secret: args.root_secret,
                node_agent_service_account: args.node_agent_service_account,
            },
            (Source::Kubernetes { .. }, Some(_)) => bail!(
                "--node-tokens is for standalone mode: in Kubernetes, node agents authenticate with their service account tokens"
            ),
            (Source::AgentView { .. }, _) => {
                bail!("the CA reads the Kubernetes API itself, not a node agent's mesh view")
            }
        };
        let dns_names = vec![format!("{}.{}.svc", args.service_name, args.namespace)];
        let identity = Identity::new(args.trust_domain.as_str(), args.namespace, "ambit-ca");
        Ok(Self {
            trust_domain: args.trust_domain,
            identity,
            dns_names,
            mode,
            listen: args.listen,
            workload_cert_ttl: Duration::from_secs(args.workload_cert_ttl_seconds),
            source,
            admin: args.admin,
        })
    }
}

/// Where the root is kept and how node agents prove their node; both follow
/// from where the CA runs. Secret and service account are in the CA's own
/// namespace.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// A root directory, and a file of per-node bootstrap tokens.
    Standalone {
        root_dir: PathBuf,
        node_tokens: PathBuf,
    },
    /// A root Secret, and pod-bound tokens of the node agents' service
    /// account, checked by TokenReview.
    Kubernetes {
        kubeconfig: Option<PathBuf>,
        root_secret: String,
        node_agent_service_account: String,
    },
}
