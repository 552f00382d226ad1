//! The fake Kubernetes API server on the test cluster: served over HTTP
//! from node-1's underlay address (as a control-plane endpoint every node
//! reaches), with a kubeconfig the agents start with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ambit_fake_apiserver::FakeApiServer;
use anyhow::Context;

use crate::manifests::MeshConfig;
use crate::Cluster;

const PORT: u16 = 6443;

pub struct ApiServer {
    server: Arc<FakeApiServer>,
    kubeconfig: PathBuf,
    /// Serves the API until dropped.
    _runtime: tokio::runtime::Runtime,
}

impl ApiServer {
    pub fn start(cluster: &Cluster) -> anyhow::Result<Self> {
        let node = cluster.node("node-1")?;
        let addr = SocketAddr::from((node.underlay_ip, PORT));
        // Bound inside the node's namespace: the socket stays there.
        let listener = node
            .place()
            .in_netns(|| std::net::TcpListener::bind(addr))?
            .with_context(|| format!("binding the fake API server to {addr}"))?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let server = Arc::new(FakeApiServer::default());
        let listener = runtime.block_on(async { tokio::net::TcpListener::from_std(listener) })?;
        runtime.spawn(server.clone().serve(listener));
        let kubeconfig = cluster.work_dir().join("kubeconfig");
        std::fs::write(&kubeconfig, server.kubeconfig(&format!("http://{addr}")))?;
        Ok(Self {
            server,
            kubeconfig,
            _runtime: runtime,
        })
    }

    pub fn kubeconfig(&self) -> &std::path::Path {
        &self.kubeconfig
    }

    pub fn server(&self) -> &FakeApiServer {
        &self.server
    }

    /// Makes the server hold `config`'s objects (created or replaced).
    pub fn apply(&self, config: &MeshConfig) -> anyhow::Result<()> {
        for object in config.objects() {
            self.server
                .apply(object)
                .map_err(|refusal| anyhow::anyhow!("{}", refusal.message))?;
        }
        Ok(())
    }
}
