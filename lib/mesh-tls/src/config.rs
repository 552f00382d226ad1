//! The flags that name a proxy's CA, read and checked.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ambit_identity::{Identity, TrustBundle};
use anyhow::{bail, Context};
use serde::Serialize;

use crate::ca_client::{CaClient, Credential};
use crate::certificates::Certificates;
use crate::hbone::MeshTls;

/// How a proxy reaches the CA that certifies its workloads.
#[derive(clap::Args, Debug)]
pub struct CaArgs {
    /// The CA (`ambit-ca`), as `host:port` (in Kubernetes its Service,
    /// `ambit-ca.ambit-system.svc:15012`). Without it the proxy holds no
    /// workload identities, and its traffic is not encrypted.
    #[arg(long, requires_all = ["ca_root", "ca_token_file"])]
    pub ca_addr: Option<String>,

    /// The roots (PEM) the CA's own certificate is checked against.
    #[arg(long)]
    pub ca_root: Option<PathBuf>,

    /// The token the proxy presents to the CA, read at every request: its
    /// node's bootstrap token (standalone), or in Kubernetes the proxy's
    /// projected service account token for the audience `ambit-ca`.
    #[arg(long)]
    pub ca_token_file: Option<PathBuf>,

    /// The namespace the CA runs in: it must prove
    /// spiffe://TRUST_DOMAIN/ns/CA_NAMESPACE/sa/ambit-ca.
    #[arg(long, default_value = "ambit-system")]
    pub ca_namespace: String,

    /// The trust domain of the mesh's identities.
    #[arg(long, default_value = ambit_identity::spiffe::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
}

/// The CA, as a proxy uses it.
#[derive(Serialize, Debug, Clone)]
pub struct CaConfig {
    pub addr: String,
    pub identity: Identity,
    pub trust_domain: String,
    /// The roots of `--ca-root`, which also verify peers.
    #[serde(skip)]
    pub bundle: TrustBundle,
    #[serde(skip)]
    pub credential: Credential,
}

impl CaConfig {
    pub fn from_args(args: CaArgs) -> anyhow::Result<Option<Self>> {
        let (Some(addr), Some(root), Some(token)) =
            (args.ca_addr, args.ca_root, args.ca_token_file)
        else {
            return Ok(None);
        };
        let port = addr.rsplit_once(':').map(|(_, port)| port.parse::<u16>());
        if !matches!(port, Some(Ok(_))) {
            bail!("--ca-addr {addr}: expected HOST:PORT, such as ambit-ca.ambit-system.svc:15012");
        }
        let read = |flag: &str, path: &Path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("{flag} {}: cannot read it", path.display()))
        };
        let bundle = TrustBundle::from_pem(&args.trust_domain, &read("--ca-root", &root)?)
            .with_context(|| format!("--ca-root {}", root.display()))?;
        // Read now too, so a wrong path fails the start rather than each renewal.
        read("--ca-token-file", &token)?;
        let credential = Credential::TokenFile(token);
        let identity = Identity::new(args.trust_domain.as_str(), args.ca_namespace, "ambit-ca");
        Ok(Some(Self {
            addr,
            identity,
            trust_domain: args.trust_domain,
            bundle,
            credential,
        }))
    }
}

impl CaConfig {
    /// The client of the CA, the task that keeps the certificates, and
    /// HBONE in mutual TLS with them. Within a Tokio runtime.
    pub fn start(&self) -> anyhow::Result<MeshTls> {
        let client = CaClient::new(
            &self.addr,
            &self.bundle,
            &self.identity,
            self.credential.clone(),
        )?;
        let certificates = Arc::new(Certificates::new(client, self.trust_domain.clone()));
        tokio::spawn(certificates.clone().run());
        let mesh_tls = MeshTls::new(certificates, self.bundle.clone());
        tokio::spawn(mesh_tls.release_idle_connections());
        Ok(mesh_tls)
    }
}
