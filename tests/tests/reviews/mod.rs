//! Reviews v1 and v2 behind a waypoint, called from three pods: the bed the
//! routing and resilience tests share.

use std::net::Ipv4Addr;

use ambit_testbed::ca::TestCa;
use ambit_testbed::mesh::{self, MeshConfig, NodeAgent};
use ambit_testbed::testapp::{HttpLoad, HttpSummary, Server};
use ambit_testbed::waypoint::Waypoint;
use ambit_testbed::{Cluster, Process};
use anyhow::Context;
use serde_json::{json, Value};

pub const REVIEWS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
const WAYPOINT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 41);
pub const PORT: u16 = 9080;
/// A second port of reviews, for the `port` match.
pub const OTHER_PORT: u16 = 9081;

/// Three callers (`client` and `client-b` in `default`, `client-other` in
/// `other`), reviews v1 and v2 bound to a waypoint.
pub struct Bed {
    pub cluster: Cluster,
    _ca: TestCa,
    agents: Vec<NodeAgent>,
    pub waypoint: Waypoint,
    /// Reviews v1's and v2's servers.
    pub servers: Vec<Process>,
}

impl Bed {
    /// Started with each version's server as `server` makes it (given
    /// the version), listening on both ports.
    pub fn start_serving(server: impl Fn(&str) -> Server) -> anyhow::Result<Self> {
        let cluster = Cluster::builder()
            .node(&["client", "client-b", "client-other", "waypoint"])
            .node(&["reviews-v1", "reviews-v2"])
            .namespace("client-other", "other")
            .build()?;
        let config = Self::config(&cluster, vec![])?;
        let waypoint_pod = cluster.pod("waypoint")?;
        let (ca, agents, waypoint) = Waypoint::start_secured(&cluster, &config, waypoint_pod)?;
        let servers = ["v1", "v2"]
            .into_iter()
            .map(|version| {
                server(version)
                    .http(PORT)
                    .http(OTHER_PORT)
                    .start(&cluster, cluster.pod(&format!("reviews-{version}"))?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            cluster,
            _ca: ca,
            agents,
            waypoint,
            servers,
        })
    }

    pub fn config(cluster: &Cluster, istio: Vec<Value>) -> anyhow::Result<MeshConfig> {
        let [client, client_b, other, waypoint, v1, v2] = cluster.pods_named([
            "client",
            "client-b",
            "client-other",
            "waypoint",
            "reviews-v1",
            "reviews-v2",
        ])?;
        let config = MeshConfig {
            istio,
            ..mesh::enrolling(
                cluster,
                &[client, client_b, other, v1, v2],
                vec![
                    mesh::ServiceConfig {
                        waypoint: Some("waypoint".into()),
                        more_ports: vec![("http-other".into(), OTHER_PORT, OTHER_PORT)],
                        ..mesh::service("reviews", REVIEWS_VIP, PORT, PORT, &[v1, v2])
                    },
                    mesh::service("waypoint", WAYPOINT_VIP, 15008, 15008, &[waypoint]),
                ],
            )
        };
        Ok(config.versioned("reviews"))
    }

    /// Applies reviews' DestinationRule (subsets v1 and v2, with
    /// `traffic_policy`) and, when given, a VirtualService of `http`
    /// routes; waits until the waypoint's config dump shows them.
    pub fn apply(&self, traffic_policy: Value, http: Option<Value>) -> anyhow::Result<()> {
        let mut istio = vec![destination_rule(traffic_policy)];
        istio.extend(http.map(|http| virtual_service("reviews", http)));
        self.apply_objects(istio)
    }

    /// Applies these Istio objects; waits until the waypoint's config dump
    /// shows them.
    pub fn apply_objects(&self, istio: Vec<Value>) -> anyhow::Result<()> {
        self.waypoint
            .apply(&self.cluster, &Self::config(&self.cluster, istio)?)
    }

    /// What `load` from the pod `from` to reviews' `port` and `path` got.
    pub fn load(
        &self,
        load: HttpLoad,
        from: &str,
        port: u16,
        path: &str,
    ) -> anyhow::Result<HttpSummary> {
        let url = format!("http://{REVIEWS_VIP}:{port}{path}");
        let pod = self.cluster.pod(from)?;
        load.run(&self.cluster, pod.place(), &url)
            .with_context(|| self.outputs())
    }

    pub fn outputs(&self) -> String {
        let outputs = |processes: Vec<String>| processes.join("\n");
        format!(
            "waypoint:\n{}\nagents:\n{}\nreviews:\n{}",
            self.waypoint.output(),
            outputs(self.agents.iter().map(NodeAgent::output).collect()),
            outputs(self.servers.iter().map(Process::output).collect()),
        )
    }
}

/// Reviews' DestinationRule: subsets v1 and v2, and `traffic_policy`.
pub fn destination_rule(traffic_policy: Value) -> Value {
    let subset = |name: &str| json!({ "name": name, "labels": { "version": name } });
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": { "name": "reviews", "namespace": "default" },
        "spec": { "host": "reviews", "subsets": [subset("v1"), subset("v2")], "trafficPolicy": traffic_policy },
    })
}

/// A VirtualService for reviews named `name`, with these `http` routes.
pub fn virtual_service(name: &str, http: Value) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": { "name": name, "namespace": "default" },
        "spec": { "hosts": ["reviews"], "http": http },
    })
}
