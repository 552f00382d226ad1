//! A waypoint on the test cluster: the real `ambit-waypoint` in a pod of
//! its own, as its Deployment would run it.

use std::net::SocketAddr;

use anyhow::bail;
use nix::sys::signal::Signal;

use crate::ca::TestCa;
use crate::mesh::{wait_ready, MeshConfig, Source};
use crate::{Cluster, Place, Pod, Process};

pub struct Waypoint {
    process: Process,
    place: Place,
    metrics: SocketAddr,
}

impl Waypoint {
    /// Starts the waypoint `name` for `pod`'s namespace, in `pod`, reading
    /// the mesh from `source`, with its identity from `ca` (it carries
    /// traffic only with one), and waits until it is ready.
    pub fn start(
        cluster: &Cluster,
        pod: &Pod,
        name: &str,
        source: &Source,
        ca: Option<&TestCa>,
    ) -> anyhow::Result<Self> {
        Self::start_with(cluster, pod, name, source, ca, Vec::new())
    }

    /// Starts `ambit-waypoint --mode gateway` in `pod`, as the ingress
    /// gateway `name` running as the pod's own service account, reading
    /// the mesh from `source`, and Secrets standalone from `credentials`
    /// (`DIR/NAME/tls.crt`…) if given, else from the API server.
    pub fn start_gateway(
        cluster: &Cluster,
        pod: &Pod,
        name: &str,
        (source, credentials): (&Source, Option<&std::path::Path>),
        ca: &TestCa,
        extra: Vec<std::ffi::OsString>,
    ) -> anyhow::Result<Self> {
        let mut args: Vec<std::ffi::OsString> = vec![
            "--mode".into(),
            "gateway".into(),
            "--pod-name".into(),
            pod.name.clone().into(),
            "--service-account".into(),
            pod.name.clone().into(),
        ];
        if let Some(credentials) = credentials {
            args.extend(["--credentials-dir".into(), credentials.into()]);
        }
        args.extend(extra);
        Self::start_with(cluster, pod, name, source, Some(ca), args)
    }

    /// [`Waypoint::start`] with `extra` flags.
    pub fn start_with(
        cluster: &Cluster,
        pod: &Pod,
        name: &str,
        source: &Source,
        ca: Option<&TestCa>,
        extra: Vec<std::ffi::OsString>,
    ) -> anyhow::Result<Self> {
        let binary = cluster.binaries().get("ambit-waypoint")?;
        let readiness = SocketAddr::from((pod.ip, 15021));
        let mut args: Vec<std::ffi::OsString> = vec![
            "--name".into(),
            name.into(),
            "--namespace".into(),
            pod.namespace.clone().into(),
            "--readiness-addr".into(),
            readiness.to_string().into(),
            "--metrics-addr".into(),
            SocketAddr::from((pod.ip, 15020)).to_string().into(),
            // One thread, as the agents have on a machine of few cores,
            // which every process of the cluster shares.
            "--worker-threads".into(),
            "1".into(),
        ];
        args.extend(extra);
        args.extend(source.flags(cluster));
        if let Some(ca) = ca {
            // Standalone, the CA knows the waypoint by its node's token.
            args.extend(ca.agent_args(cluster.node(&pod.node)?)?);
        }
        let mut process = cluster.spawn(pod.place(), &format!("waypoint-{name}"), &binary, args)?;
        wait_ready(
            &mut process,
            pod.place(),
            readiness,
            &format!("the waypoint {name}"),
        )?;
        Ok(Self {
            process,
            place: pod.place().clone(),
            metrics: SocketAddr::from((pod.ip, 15020)),
        })
    }

    /// Writes `config`, starts the CA and the agents (as
    /// [`crate::mesh::start_secured`]), then the waypoint `waypoint` in
    /// `pod` with its identity from that CA.
    pub fn start_secured(
        cluster: &Cluster,
        config: &MeshConfig,
        pod: &Pod,
    ) -> anyhow::Result<(TestCa, Vec<crate::mesh::NodeAgent>, Self)> {
        let (ca, agents) = crate::mesh::start_secured(cluster, config, 3600)?;
        let waypoint = Self::start(cluster, pod, "waypoint", &Source::Directory, Some(&ca))?;
        Ok((ca, agents, waypoint))
    }

    /// The effective configuration, from the admin port on the pod's loopback.
    pub fn config_dump(&self) -> anyhow::Result<serde_json::Value> {
        let admin = SocketAddr::from(([127, 0, 0, 1], 15000));
        let (status, body) = self.place.http_get(admin, "/config_dump")?;
        if status != 200 {
            bail!("config dump of the waypoint: HTTP {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Writes `config` for the mesh and waits until the waypoint's config
    /// dump shows a change.
    pub fn apply(&self, cluster: &Cluster, config: &MeshConfig) -> anyhow::Result<()> {
        Self::apply_to(cluster, config, &[self])
    }

    /// Writes `config` for the mesh and waits until each of `proxies`
    /// shows a change in its config dump.
    pub fn apply_to(
        cluster: &Cluster,
        config: &MeshConfig,
        proxies: &[&Self],
    ) -> anyhow::Result<()> {
        let before = proxies
            .iter()
            .map(|proxy| proxy.config_dump())
            .collect::<anyhow::Result<Vec<_>>>()?;
        crate::mesh::write_config(cluster, config)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for (proxy, before) in proxies.iter().zip(before) {
            while proxy.config_dump()? == before {
                if std::time::Instant::now() > deadline {
                    bail!("the proxy never took the new config:\n{}", proxy.output());
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Its Prometheus metrics, from its 15020 as Prometheus scrapes them.
    /// Where it serves its metrics (the pod's address, 15020).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    pub fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = self.place.http_get(self.metrics, "/metrics")?;
        if status != 200 {
            bail!("metrics of the waypoint: HTTP {status}: {body}");
        }
        Ok(body)
    }

    pub fn output(&self) -> String {
        self.process.output()
    }

    /// Its CPU time so far and resident memory now.
    pub fn usage(&self) -> anyhow::Result<crate::Usage> {
        self.process.usage()
    }

    /// Stops the waypoint with SIGTERM; it must exit cleanly.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.process.signal(Signal::SIGTERM)?;
        let status = self.process.wait_exit(std::time::Duration::from_secs(10))?;
        if !status.success() {
            bail!(
                "the waypoint exited with {status}:\n{}",
                self.process.output()
            );
        }
        Ok(())
    }
}
