//! A real Prometheus (Debian's), run by the test bed in a node's namespace
//! and scraping the proxies' metrics ports every second, as a cluster's
//! Prometheus scrapes them by the chart's annotations; asked through its
//! HTTP API, as dashboards ask it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::{Cluster, Node, Process};

pub struct Prometheus {
    process: Process,
    node: String,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus on `node`, scraping each `(job, target)` every
    /// second, and waits until it answers.
    pub fn start(
        cluster: &Cluster,
        node: &Node,
        targets: &[(&str, SocketAddr)],
    ) -> anyhow::Result<Self> {
        let dir = cluster.work_dir().join("prometheus");
        std::fs::create_dir_all(&dir)?;
        let mut jobs: Vec<&str> = targets.iter().map(|(job, _)| *job).collect();
        jobs.dedup();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for job in jobs {
            let addrs: Vec<String> = targets
                .iter()
                .filter(|(j, _)| *j == job)
                .map(|(_, addr)| format!("'{addr}'"))
                .collect();
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                addrs.join(", ")
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let addr = SocketAddr::from((node.bridge_ip, 9090));
        let args: Vec<std::ffi::OsString> = vec![
            format!("--config.file={}", dir.join("prometheus.yml").display()).into(),
            format!("--storage.tsdb.path={}", dir.join("data").display()).into(),
            format!("--web.listen-address={addr}").into(),
        ];
        let binary = crate::host::on_path("prometheus")
            .context("no prometheus on the PATH: `cargo xtask setup` installs Debian's")?;
        let process = cluster.spawn(node.place(), "prometheus", &binary, args)?;
        node.place()
            .wait_for_listener(addr, Duration::from_secs(20))
            .with_context(|| process.output())?;
        Ok(Self {
            process,
            node: node.name.clone(),
            addr,
        })
    }

    /// The value of the instant query `query`, summed over its series
    /// (none: no series).
    pub fn query(&self, cluster: &Cluster, query: &str) -> anyhow::Result<Option<f64>> {
        let path = format!("/api/v1/query?query={}", encode(query));
        let (status, body) = cluster
            .node(&self.node)?
            .place()
            .http_get(self.addr, &path)?;
        if status != 200 {
            bail!("{query}: HTTP {status}: {body}");
        }
        let answer: Value = serde_json::from_str(&body).with_context(|| body.clone())?;
        let series = answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if series.is_empty() {
            return Ok(None);
        }
        let values: Option<Vec<f64>> = series
            .iter()
            .map(|s| s["value"][1].as_str()?.parse().ok())
            .collect();
        values
            .map(|values| Some(values.iter().sum()))
            .with_context(|| format!("{query}: unreadable {body}"))
    }

    /// Its URL, as a client of its API is given it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn output(&self) -> String {
        self.process.output()
    }
}

/// A query string's characters as a URL carries them.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}
