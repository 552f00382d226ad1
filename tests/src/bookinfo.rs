//! Istio's Bookinfo: its traffic-management manifests, unchanged, as the
//! samples ship them (kept with the config crate's tests), and Bookinfo
//! played by the test app on the test cluster, its services calling each
//! other as Bookinfo's do, all bound to a waypoint, with an ingress gateway
//! in front when asked: what the suite, the demo and the bench share.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};

use crate::ca::TestCa;
use crate::mesh::{self, sample, MeshConfig, NodeAgent, Source};
use crate::otlp::Collector;
use crate::testapp::{HttpLoad, HttpSummary, Server};
use crate::waypoint::Waypoint;
use crate::{Cluster, Pod, Process};

/// The documents of the Bookinfo manifest `file`.
pub fn manifest(file: &str) -> anyhow::Result<Vec<Value>> {
    let text = match file {
        "destination-rule-all.yaml" => {
            include_str!("../../config/tests/fixtures/bookinfo/destination-rule-all.yaml")
        }
        "bookinfo-gateway.yaml" => {
            include_str!("../../config/tests/fixtures/bookinfo/bookinfo-gateway.yaml")
        }
        "routing-all-v1.yaml" => {
            include_str!("../../config/tests/fixtures/bookinfo/routing-all-v1.yaml")
        }
        "reviews-v2-for-jason.yaml" => {
            include_str!("../../config/tests/fixtures/bookinfo/reviews-v2-for-jason.yaml")
        }
        "reviews-50-v3.yaml" => {
            include_str!("../../config/tests/fixtures/bookinfo/reviews-50-v3.yaml")
        }
        "reviews-90-10.yaml" => {
            include_str!("../../config/tests/fixtures/bookinfo/reviews-90-10.yaml")
        }
        "ratings-delay-for-jason.yaml" => {
            include_str!("../../config/tests/fixtures/bookinfo/ratings-delay-for-jason.yaml")
        }
        "ratings-abort-for-jason.yaml" => {
            include_str!("../../config/tests/fixtures/bookinfo/ratings-abort-for-jason.yaml")
        }
        _ => bail!("no Bookinfo manifest {file} in the test bed"),
    };
    Ok(serde_saphyr::from_multiple(text)?)
}

const WAYPOINT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 34);
/// The pods that are not Bookinfo's own workloads: never enrolled.
const OUTSIDE_THE_MESH: [&str; 3] = ["waypoint", GATEWAY_POD, OUTSIDE_POD];
/// The ingress gateway's pod, labelled as Istio's (`istio: ingressgateway`).
pub const GATEWAY_POD: &str = "ingressgateway";
/// A client outside the mesh, in a namespace of its own.
pub const OUTSIDE_POD: &str = "outside";
/// Two HTTPS servers inside the mesh, for PASSTHROUGH.
pub const SECURE: [(&str, Ipv4Addr); 2] = [
    ("secure-one", Ipv4Addr::new(10, 96, 0, 30)),
    ("secure-two", Ipv4Addr::new(10, 96, 0, 31)),
];
pub const SECURE_PORT: u16 = 8443;
const APPS: [(&str, Ipv4Addr); 4] = [
    ("productpage", Ipv4Addr::new(10, 96, 0, 35)),
    ("details", Ipv4Addr::new(10, 96, 0, 36)),
    ("reviews", Ipv4Addr::new(10, 96, 0, 37)),
    ("ratings", Ipv4Addr::new(10, 96, 0, 38)),
];
/// How long productpage waits for reviews: Bookinfo's 3 s (it retries
/// once more; the test app does not).
pub const PRODUCTPAGE_PATIENCE: Duration = Duration::from_secs(3);

/// Bookinfo's four services, each at a VIP of its own, all bound to the
/// waypoint: productpage calls details and reviews, reviews v2 and v3 call
/// ratings, each passing on the user and trace headers it was given.
pub struct Bookinfo {
    pub cluster: Cluster,
    ca: TestCa,
    agents: Vec<NodeAgent>,
    pub waypoint: Waypoint,
    /// The ingress gateway, when started with one.
    pub gateway: Option<Waypoint>,
    /// The collector the waypoint sends every request's span to, when
    /// started traced.
    pub collector: Option<Collector>,
    servers: Vec<Process>,
}

pub fn url(app: &str, path: &str) -> anyhow::Result<String> {
    let (_, vip) = APPS
        .iter()
        .find(|(name, _)| *name == app)
        .context("a Bookinfo app")?;
    Ok(format!("http://{vip}:9080{path}"))
}

/// What a Bookinfo starts beside the app: an ingress gateway (with its
/// client outside and HTTPS servers inside the mesh), and tracing of the
/// gateway and the waypoint to a collector.
#[derive(Default)]
struct Extras {
    gateway: bool,
    traced: bool,
}

impl Bookinfo {
    /// Started with Istio's `destination-rule-all` and `routing-all-v1`.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(Extras::default())
    }

    /// Started as [`Bookinfo::start_with_gateway`], the waypoint and the
    /// gateway exporting a span for every request to
    /// [`Bookinfo::collector`].
    pub fn start_traced() -> anyhow::Result<Self> {
        Self::start_with(Extras {
            gateway: true,
            traced: true,
        })
    }

    /// Started as [`Bookinfo::start`], with an ingress gateway (in
    /// `istio-system`, reading Secrets from [`Bookinfo::credentials`]), a
    /// client outside the mesh, and two HTTPS servers inside it (started
    /// by the test that wants them).
    pub fn start_with_gateway() -> anyhow::Result<Self> {
        Self::start_with(Extras {
            gateway: true,
            traced: false,
        })
    }

    fn start_with(Extras { gateway, traced }: Extras) -> anyhow::Result<Self> {
        let mut first = vec!["client", "client-b", "productpage-v1", "waypoint"];
        let mut second = vec![
            "details-v1",
            "reviews-v1",
            "reviews-v2",
            "reviews-v3",
            "ratings-v1",
        ];
        let mut builder = Cluster::builder();
        if gateway {
            first.extend([GATEWAY_POD, OUTSIDE_POD]);
            second.extend(SECURE.map(|(name, _)| name));
            builder = builder
                .namespace(GATEWAY_POD, "istio-system")
                .namespace(OUTSIDE_POD, "outside");
        }
        let cluster = builder.node(&first).node(&second).build()?;
        let config = Self::config(&cluster, manifest("routing-all-v1.yaml")?)?;
        let collector = traced
            .then(|| Collector::start(&cluster, cluster.node("node-1")?))
            .transpose()?;
        let tracing: Vec<std::ffi::OsString> = collector
            .iter()
            .flat_map(|collector| {
                [
                    "--otlp-endpoint".into(),
                    collector.endpoint().into(),
                    "--trace-sampling=100".into(),
                ]
            })
            .collect();
        let (ca, agents) = mesh::start_secured(&cluster, &config, 3600)?;
        let waypoint = Waypoint::start_with(
            &cluster,
            cluster.pod("waypoint")?,
            "waypoint",
            &Source::Directory,
            Some(&ca),
            tracing.clone(),
        )?;
        let credentials = credentials_dir(&cluster);
        std::fs::create_dir_all(&credentials)?;
        let gateway = gateway
            .then(|| {
                let pod = cluster.pod(GATEWAY_POD)?;
                let standalone = (&Source::Directory, Some(credentials.as_path()));
                Waypoint::start_gateway(&cluster, pod, GATEWAY_POD, standalone, &ca, tracing)
            })
            .transpose()?;
        let ratings = url("ratings", "/ratings/0")?;
        let servers = [
            (
                "productpage-v1",
                Server::new("productpage", "v1")
                    .calls(&url("details", "/details/0")?)
                    .calls(&url("reviews", "/reviews/0")?)
                    .call_timeout(PRODUCTPAGE_PATIENCE),
            ),
            ("details-v1", Server::new("details", "v1")),
            ("reviews-v1", Server::new("reviews", "v1")),
            ("reviews-v2", Server::new("reviews", "v2").calls(&ratings)),
            ("reviews-v3", Server::new("reviews", "v3").calls(&ratings)),
            ("ratings-v1", Server::new("ratings", "v1")),
        ];
        let servers = servers
            .into_iter()
            .map(|(pod, server)| server.http(9080).start(&cluster, cluster.pod(pod)?))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            cluster,
            ca,
            agents,
            waypoint,
            gateway,
            collector,
            servers,
        })
    }

    /// Where the gateway reads Secrets from: `DIR/NAME/tls.crt`…
    pub fn credentials(&self) -> PathBuf {
        credentials_dir(&self.cluster)
    }

    /// The mesh with Istio's `destination-rule-all` and `routes`.
    fn config(cluster: &Cluster, routes: Vec<Value>) -> anyhow::Result<MeshConfig> {
        let pods: Vec<&Pod> = cluster
            .pods()
            .iter()
            .filter(|pod| !OUTSIDE_THE_MESH.contains(&pod.name.as_str()))
            .collect();
        let mut services = vec![mesh::service(
            "waypoint",
            WAYPOINT_VIP,
            15008,
            15008,
            &[cluster.pod("waypoint")?],
        )];
        for (app, vip) in APPS {
            let prefix = format!("{app}-");
            let endpoints: Vec<&Pod> = pods
                .iter()
                .copied()
                .filter(|pod| pod.name.starts_with(&prefix))
                .collect();
            services.push(mesh::ServiceConfig {
                waypoint: Some("waypoint".to_string()),
                ..mesh::service(app, vip, 9080, 9080, &endpoints)
            });
        }
        for (name, vip) in SECURE {
            if let Ok(pod) = cluster.pod(name) {
                services.push(mesh::ServiceConfig {
                    port_name: "tls".to_string(),
                    ..mesh::service(name, vip, SECURE_PORT, SECURE_PORT, &[pod])
                });
            }
        }
        let istio = [manifest("destination-rule-all.yaml")?, routes].concat();
        let mut config = MeshConfig {
            istio,
            ..mesh::enrolling(cluster, &pods, services)
        };
        for pod in config.pods.iter_mut().filter(|pod| pod.name == GATEWAY_POD) {
            pod.labels = vec![("istio".into(), "ingressgateway".into())];
        }
        Ok(APPS
            .iter()
            .fold(config, |config, (app, _)| config.versioned(app)))
    }

    /// Applies `routes` beside the DestinationRules; returns once the
    /// waypoint (and the gateway) route by them.
    pub fn apply(&self, routes: Vec<Value>) -> anyhow::Result<()> {
        let config = Self::config(&self.cluster, routes)?;
        let proxies: Vec<&Waypoint> = std::iter::once(&self.waypoint)
            .chain(&self.gateway)
            .collect();
        Waypoint::apply_to(&self.cluster, &config, &proxies)
    }

    /// `load` from the client outside the mesh to `url`, connecting to the
    /// gateway's `port` whatever host the URL names.
    pub fn outside_to(&self, load: HttpLoad, url: &str, port: u16) -> anyhow::Result<HttpSummary> {
        let gateway = self.cluster.pod(GATEWAY_POD)?;
        let outside = self.cluster.pod(OUTSIDE_POD)?;
        let load = load.connect(SocketAddr::from((gateway.ip, port)));
        load.run(&self.cluster, outside.place(), url)
            .with_context(|| self.outputs())
    }

    /// The gateway's `istio_requests_total` with these labels.
    pub fn gateway_requests(&self, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        let gateway = self.gateway.as_ref().context("started with a gateway")?;
        Ok(sample(&gateway.metrics()?, "istio_requests_total", labels))
    }

    /// Everyone's output, for a failure's message.
    pub fn outputs(&self) -> String {
        let outputs = |processes: Vec<String>| processes.join("\n");
        format!(
            "waypoint:\n{}\ngateway:\n{}\nagents:\n{}\nservers:\n{}",
            self.waypoint.output(),
            self.gateway
                .as_ref()
                .map(Waypoint::output)
                .unwrap_or_default(),
            outputs(self.agents.iter().map(NodeAgent::output).collect()),
            outputs(self.servers.iter().map(Process::output).collect()),
        )
    }

    /// Where each proxy (and the CA) serves its metrics, by Prometheus
    /// job: the agents on their nodes' addresses, the waypoint on its pod's.
    pub fn metrics_targets(&self) -> anyhow::Result<Vec<(&'static str, std::net::SocketAddr)>> {
        let mut targets = vec![
            ("waypoint", self.waypoint.metrics_addr()),
            ("ca", self.ca.metrics_addr),
        ];
        for agent in &self.agents {
            targets.push((
                "node-agent",
                agent.addr(&self.cluster, mesh::AgentPort::Metrics)?,
            ));
        }
        Ok(targets)
    }

    /// `load` from `client` to `app`'s `path`.
    pub fn run(&self, load: HttpLoad, app: &str, path: &str) -> anyhow::Result<HttpSummary> {
        let client = self.cluster.pod("client")?;
        load.run(&self.cluster, client.place(), &url(app, path)?)
    }

    /// Who answered down the chain, for `load` to the product page; every
    /// answer whole (200) and each chain one trace.
    pub fn chains(&self, load: HttpLoad) -> anyhow::Result<Vec<(String, usize)>> {
        let summary = self.run(load, "productpage", "/productpage")?;
        ensure!(
            summary.status(200) == summary.requests && summary.one_trace == summary.requests,
            "every answer whole, each chain one trace: {summary:?}\n{}",
            self.outputs()
        );
        Ok(summary.chains.into_iter().collect())
    }

    /// The waypoint's `istio_requests_total` to `app` with `flags`.
    pub fn requests_flagged(&self, app: &str, flags: &str) -> anyhow::Result<f64> {
        Ok(sample(
            &self.waypoint.metrics()?,
            "istio_requests_total",
            &[("destination_service_name", app), ("response_flags", flags)],
        ))
    }
}

/// Where the gateway reads Secrets from.
fn credentials_dir(cluster: &Cluster) -> PathBuf {
    cluster.work_dir().join("credentials")
}

/// A VirtualService for `host` in `default` with these `http` routes.
pub fn virtual_service(host: &str, http: Value) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": { "name": host, "namespace": "default" },
        "spec": { "hosts": [host], "http": http },
    })
}

/// The product page's chain with reviews answering as `reviews`.
pub fn page(reviews: &str, count: usize) -> Vec<(String, usize)> {
    vec![(format!("productpage/v1 -> [details/v1, {reviews}]"), count)]
}

/// A call that failed, as the caller reports it in its chain.
pub fn failed(app: &str, path: &str, why: &str) -> anyhow::Result<String> {
    Ok(format!("{}/failed: {why}", url(app, path)?))
}
