//! The CA on the test cluster: the real `ambit-ca` on node-1's underlay
//! address (a control-plane endpoint every node reaches), its root in the
//! run's work directory, one bootstrap token per node. It reads the same
//! mesh manifests as the agents, to know which pods run where.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ambit_identity::{
    certificate_request, CertificateAuthority, Identity, TrustBundle, WorkloadCertificate,
};

use crate::mesh::{config_dir, wait_ready};
use crate::{Cluster, Node, Process};

const PORT: u16 = 15012;
const TRUST_DOMAIN: &str = "cluster.local";

pub struct TestCa {
    process: Process,
    pub addr: SocketAddr,
    /// Where its metrics are served (on node-1's address).
    pub metrics_addr: SocketAddr,
    node: String,
    dir: PathBuf,
    run: String,
}

impl TestCa {
    /// Starts the CA, issuing workload certificates valid `ttl_seconds`.
    /// The mesh config must have been written.
    pub fn start(cluster: &Cluster, ttl_seconds: u64) -> anyhow::Result<Self> {
        let node = cluster.node("node-1")?;
        let dir = cluster.work_dir().join("ca");
        std::fs::create_dir_all(&dir)?;
        let run = cluster.run_name().to_string();
        let tokens: String = cluster
            .nodes()
            .iter()
            .map(|node| format!("{} {}\n", node.name, token(&run, &node.name)))
            .collect();
        std::fs::write(dir.join("tokens"), tokens)?;
        let addr = SocketAddr::from((node.underlay_ip, PORT));
        let readiness = SocketAddr::from((node.underlay_ip, 15021));
        let metrics_addr = SocketAddr::from((node.underlay_ip, 15020));
        let args: Vec<OsString> = vec![
            format!("--listen={addr}").into(),
            format!("--readiness-addr={readiness}").into(),
            format!("--metrics-addr={metrics_addr}").into(),
            "--admin-addr=127.0.0.1:15900".into(),
            "--root-dir".into(),
            dir.join("root").into(),
            "--node-tokens".into(),
            dir.join("tokens").into(),
            "--config-dir".into(),
            config_dir(cluster).into(),
            format!("--workload-cert-ttl-seconds={ttl_seconds}").into(),
        ];
        let binary = cluster.binaries().get("ambit-ca")?;
        let mut process = cluster.spawn(node.place(), "ca", &binary, args)?;
        wait_ready(&mut process, node.place(), readiness, "the CA")?;
        Ok(Self {
            process,
            addr,
            metrics_addr,
            node: node.name.clone(),
            dir,
            run,
        })
    }

    /// Its metrics, in Prometheus' text format.
    pub fn metrics(&self, cluster: &Cluster) -> anyhow::Result<String> {
        let (status, body) = cluster
            .node(&self.node)?
            .place()
            .http_get(self.metrics_addr, "/metrics")?;
        anyhow::ensure!(status == 200, "the CA's metrics: {status} {body}");
        Ok(body)
    }

    /// The flags that give `node`'s agent access to the CA.
    pub fn agent_args(&self, node: &Node) -> anyhow::Result<Vec<OsString>> {
        let token_file = self.dir.join(format!("token-{}", node.name));
        std::fs::write(&token_file, self.token(&node.name))?;
        Ok(vec![
            format!("--ca-addr={}", self.addr).into(),
            "--ca-root".into(),
            self.root_pem_file().into(),
            "--ca-token-file".into(),
            token_file.into(),
        ])
    }

    /// `node`'s bootstrap token.
    pub fn token(&self, node: &str) -> String {
        token(&self.run, node)
    }

    pub fn root_pem_file(&self) -> PathBuf {
        self.dir.join("root").join("ca-cert.pem")
    }

    /// What agents trust: the CA's root.
    pub fn bundle(&self) -> anyhow::Result<TrustBundle> {
        let root = std::fs::read_to_string(self.root_pem_file())?;
        Ok(TrustBundle::from_pem(TRUST_DOMAIN, &root)?)
    }

    /// The CA's own signing authority, from its root files: what the test
    /// signs with to act as a workload the mesh trusts.
    pub fn authority(&self) -> anyhow::Result<CertificateAuthority> {
        let root = std::fs::read_to_string(self.root_pem_file())?;
        let key = std::fs::read_to_string(self.root_pem_file().with_file_name("ca-key.pem"))?;
        Ok(CertificateAuthority::from_pem(&root, &key, TRUST_DOMAIN)?)
    }

    /// A certificate for `identity`, valid an hour, signed by the mesh's root.
    pub fn certify(&self, identity: &Identity) -> anyhow::Result<WorkloadCertificate> {
        let (key, chain) = self.issue(identity)?;
        Ok(WorkloadCertificate::new(identity, &key, &chain)?)
    }

    /// The same, written in `dir` as `key.pem` and `chain.pem` (leaf
    /// first), for a proxy that reads its certificate from files.
    pub fn certify_into(&self, identity: &Identity, dir: &Path) -> anyhow::Result<()> {
        let (key, chain) = self.issue(identity)?;
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
        std::fs::write(dir.join("chain.pem"), chain)?;
        Ok(())
    }

    /// A new key and its chain for `identity`, valid an hour.
    fn issue(&self, identity: &Identity) -> anyhow::Result<(rcgen::KeyPair, String)> {
        let (key, csr) = certificate_request(identity)?;
        let chain =
            self.authority()?
                .issue(&csr, identity, std::time::Duration::from_secs(3600))?;
        Ok((key, chain))
    }

    pub fn output(&self) -> String {
        self.process.output()
    }
}

fn token(run: &str, node: &str) -> String {
    format!("{run}-{node}-bootstrap-token")
}
