//! An OpenTelemetry collector's OTLP/HTTP receiver (the test app's), run
//! by the test bed on a node as a cluster runs one beside the mesh; asked
//! for every span it received.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::{Cluster, Node, Process};

pub struct Collector {
    process: Process,
    node: String,
    addr: SocketAddr,
}

impl Collector {
    /// Starts the receiver on `node`'s address, port 4318 (OTLP/HTTP's).
    pub fn start(cluster: &Cluster, node: &Node) -> anyhow::Result<Self> {
        let addr = SocketAddr::from((node.bridge_ip, 4318));
        let binary = cluster.binaries().get(crate::testapp::BINARY)?;
        let args = vec!["otlp".to_string(), format!("--listen={addr}")];
        let process = cluster.spawn(node.place(), "otlp-collector", &binary, args)?;
        node.place()
            .wait_for_listener(addr, Duration::from_secs(10))
            .with_context(|| process.output())?;
        Ok(Self {
            process,
            node: node.name.clone(),
            addr,
        })
    }

    /// What a proxy is told to export to (`--otlp-endpoint`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far: OTLP's fields, with `attributes` and
    /// `resource` as `{key: value}` maps.
    pub fn spans(&self, cluster: &Cluster) -> anyhow::Result<Vec<Value>> {
        let (status, body) = cluster
            .node(&self.node)?
            .place()
            .http_get(self.addr, "/spans")?;
        if status != 200 {
            bail!("the collector answered {status}: {body}");
        }
        serde_json::from_str(&body).with_context(|| body.clone())
    }

    pub fn output(&self) -> String {
        self.process.output()
    }
}
